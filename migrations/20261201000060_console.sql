-- Operator console (issue 17): sessions, the ticket event log behind live updates, worker
-- heartbeats, and the indexes the console's filters and keyset pages use.

-- A console login. The cookie carries a random token; only its SHA-256 is stored.
CREATE TABLE console_sessions (
    token_hash BYTEA PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,                      -- put in every form of the session
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- Every visible change of a ticket, in order: the id is the SSE event id (Last-Event-ID),
-- the rows give the bytes-over-time chart. No foreign key: a deleted ticket's last event
-- ('deleted') outlives it.
CREATE TABLE ticket_events (
    id           BIGSERIAL PRIMARY KEY,
    ticket_id    BIGINT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('created', 'changed', 'deleted')),
    state        TEXT NOT NULL,
    old_state    TEXT,
    percentage   INT NOT NULL,
    bytes_loaded BIGINT NOT NULL,
    bytes_total  BIGINT NOT NULL,
    message      TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ticket_events_ticket ON ticket_events (ticket_id, id);

-- Written by the triggers below and announced on channel pimage_ticket_events (one API
-- listener fans it out to every browser and client: src/live.rs).
CREATE FUNCTION record_ticket_event() RETURNS trigger LANGUAGE plpgsql AS $$
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
    -- A NOTIFY payload is at most 8000 bytes: the message is cut (the row keeps it whole).
    PERFORM pg_notify('pimage_ticket_events', json_build_object(
        'id', e.id, 'ticketId', e.ticket_id, 'kind', e.kind, 'state', e.state,
        'oldState', e.old_state, 'percentage', e.percentage, 'bytesLoaded', e.bytes_loaded,
        'bytesTotal', e.bytes_total, 'message', left(e.message, 1000), 'at', e.at)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER publish_tickets_event_insert
    AFTER INSERT ON publish_tickets
    FOR EACH ROW EXECUTE FUNCTION record_ticket_event();
CREATE TRIGGER publish_tickets_event_update
    AFTER UPDATE ON publish_tickets
    FOR EACH ROW
    -- Lease extensions and claims' bookkeeping change nothing a viewer sees.
    WHEN ((OLD.state, OLD.percentage, OLD.bytes_loaded, OLD.message, OLD.cloud_id)
          IS DISTINCT FROM (NEW.state, NEW.percentage, NEW.bytes_loaded, NEW.message, NEW.cloud_id))
    EXECUTE FUNCTION record_ticket_event();
CREATE TRIGGER publish_tickets_event_delete
    AFTER DELETE ON publish_tickets
    FOR EACH ROW EXECUTE FUNCTION record_ticket_event();

-- Each live worker process, as it reports itself every few seconds (src/worker/heartbeat.rs).
CREATE TABLE worker_heartbeats (
    worker      TEXT PRIMARY KEY,                 -- host:pid, as in publish_tickets.lease_owner
    host        TEXT NOT NULL,
    pid         INT NOT NULL,
    version     TEXT NOT NULL,
    slots_total INT NOT NULL,
    slots_used  INT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    beat_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The running tickets of one worker (heartbeats, the Workers page).
CREATE INDEX publish_tickets_running_owner ON publish_tickets (lease_owner) WHERE state = 'running';

CREATE FUNCTION announce_worker() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    w worker_heartbeats;
BEGIN
    IF TG_OP = 'DELETE' THEN
        w := OLD;
    ELSE
        w := NEW;
    END IF;
    PERFORM pg_notify('pimage_worker_events', json_build_object(
        'worker', w.worker, 'host', w.host, 'pid', w.pid, 'version', w.version,
        'slotsTotal', w.slots_total, 'slotsUsed', w.slots_used, 'beatAt', w.beat_at,
        'gone', TG_OP = 'DELETE',
        'tickets', ARRAY(SELECT id FROM publish_tickets
                          WHERE state = 'running' AND lease_owner = w.worker ORDER BY id))::text);
    RETURN NULL;
END $$;

CREATE TRIGGER worker_heartbeats_announce
    AFTER INSERT OR UPDATE OR DELETE ON worker_heartbeats
    FOR EACH ROW EXECUTE FUNCTION announce_worker();

-- The console's ticket list: newest first, one page after another by id (keyset), filtered.
CREATE INDEX publish_tickets_state_id ON publish_tickets (state, id);
CREATE INDEX publish_tickets_user_id_id ON publish_tickets (user_id, id);
CREATE INDEX publish_tickets_image_id_id ON publish_tickets (image_id, id);
CREATE INDEX publish_tickets_cloud_id ON publish_tickets (keystone_url, id);
CREATE INDEX publish_tickets_created_at ON publish_tickets (created_at);
-- Throughput over the last hour (Overview).
CREATE INDEX publish_tickets_finished_at ON publish_tickets (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX ticket_attempts_ended_at ON ticket_attempts (ended_at) WHERE ended_at IS NOT NULL;
