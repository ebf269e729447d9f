-- Every change of a ticket's row or of its attempts, announced on channel
-- pimage_ticket_changed (payload: the ticket's id), so that each API process can keep the
-- status of tickets in memory and drop an entry as soon as it changes (src/live/statuses.rs).
-- Inserts are not announced: nothing caches a ticket before it exists. Within a transaction
-- PostgreSQL sends one notice per distinct payload, so a claim (ticket + attempt) costs one.
CREATE FUNCTION announce_ticket_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pimage_ticket_changed', OLD.id::text);
    RETURN NULL;
END $$;

CREATE FUNCTION announce_attempt_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('pimage_ticket_changed', OLD.ticket_id::text);
    ELSE
        PERFORM pg_notify('pimage_ticket_changed', NEW.ticket_id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER publish_tickets_changed
    AFTER UPDATE ON publish_tickets
    FOR EACH ROW
    -- A lease extension alone changes nothing a status shows, and a NOTIFY has a price
    -- (below): not announced. (A cached running status lives 2 s, for the lease's end.)
    WHEN ((to_jsonb(OLD) - 'lease_expires_at') IS DISTINCT FROM (to_jsonb(NEW) - 'lease_expires_at'))
    EXECUTE FUNCTION announce_ticket_change();
CREATE TRIGGER publish_tickets_removed
    AFTER DELETE ON publish_tickets
    FOR EACH ROW EXECUTE FUNCTION announce_ticket_change();
CREATE TRIGGER ticket_attempts_changed
    AFTER INSERT OR UPDATE OR DELETE ON ticket_attempts
    FOR EACH ROW EXECUTE FUNCTION announce_attempt_change();

-- A transaction that NOTIFYs takes, at commit, a lock that serializes every notifying commit
-- of the cluster through its WAL flush: one NOTIFY per ticket insert halved the rate at which
-- tickets could be stored (1,525 against 2,978 inserts/s with pgbench, 16 clients). So the
-- creation of a ticket is no longer announced by its insert: the event row is still written
-- in the insert's transaction, and the API's hand-off (outbox::HandOffs) announces the
-- creations of a whole batch in one statement, one commit (announce_created_tickets).
CREATE FUNCTION ticket_event_notice(e ticket_events) RETURNS text LANGUAGE sql STABLE AS $$
    -- A NOTIFY payload is at most 8000 bytes: the message is cut (the row keeps it whole).
    SELECT json_build_object(
        'id', e.id, 'ticketId', e.ticket_id, 'kind', e.kind, 'state', e.state,
        'oldState', e.old_state, 'percentage', e.percentage, 'bytesLoaded', e.bytes_loaded,
        'bytesTotal', e.bytes_total, 'message', left(e.message, 1000), 'at', e.at)::text
$$;

CREATE OR REPLACE FUNCTION record_ticket_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t publish_tickets;
    e ticket_events;
BEGIN
    IF TG_OP = 'DELETE' THEN
        t := OLD;
    ELSE
        t := NEW;
    END IF;
    INSERT INTO ticket_events (ticket_id, kind, state, old_state, percentage, bytes_loaded,
        bytes_total, message)
    VALUES (t.id,
        CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'DELETE' THEN 'deleted' ELSE 'changed' END,
        t.state, CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, t.percentage, t.bytes_loaded,
        t.bytes_total, t.message)
    RETURNING * INTO e;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('pimage_ticket_events', ticket_event_notice(e));
    END IF;
    RETURN NULL;
END $$;

-- Announces the creation events of these tickets; returns how many.
CREATE FUNCTION announce_created_tickets(ticket_ids BIGINT[]) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    announced INT;
BEGIN
    PERFORM pg_notify('pimage_ticket_events', ticket_event_notice(e))
       FROM (SELECT * FROM ticket_events
              WHERE ticket_id = ANY(ticket_ids) AND kind = 'created' ORDER BY id) e;
    GET DIAGNOSTICS announced = ROW_COUNT;
    RETURN announced;
END $$;
