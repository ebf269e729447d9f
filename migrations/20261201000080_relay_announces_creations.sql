-- The outbox relay announces the creations of the tickets it hands off too: an API that
-- died (or fell behind) before its batch was announced leaves them to it. A creation is
-- announced only while it is the ticket's latest event: a ticket claimed, cancelled or
-- requeued since then is not shown to live viewers as newly queued. One index probe per
-- ticket (ticket_events_ticket, newest first), however many events it has.
CREATE OR REPLACE FUNCTION announce_created_tickets(ticket_ids BIGINT[]) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    announced INT;
BEGIN
    PERFORM pg_notify('pimage_ticket_events', ticket_event_notice(e))
       FROM (SELECT DISTINCT unnest(ticket_ids) AS id) t
       CROSS JOIN LATERAL (SELECT * FROM ticket_events
                            WHERE ticket_id = t.id ORDER BY id DESC LIMIT 1) e
      WHERE e.kind = 'created'
      ORDER BY e.id;
    GET DIAGNOSTICS announced = ROW_COUNT;
    RETURN announced;
END $$;
