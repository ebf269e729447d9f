-- The outbox relay announces the creations of the tickets it hands off too: an API that
-- died (or fell behind) before its batch was announced leaves them to it. A creation is
-- announced only while it is the ticket's latest event: a ticket claimed, cancelled or
-- requeued since then is not shown to live viewers as newly queued.
CREATE OR REPLACE FUNCTION announce_created_tickets(ticket_ids BIGINT[]) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    announced INT;
BEGIN
    PERFORM pg_notify('pimage_ticket_events', ticket_event_notice(e))
       FROM (SELECT * FROM ticket_events c
              WHERE c.ticket_id = ANY(ticket_ids) AND c.kind = 'created'
                AND NOT EXISTS (SELECT 1 FROM ticket_events later
                                 WHERE later.ticket_id = c.ticket_id AND later.id > c.id)
              ORDER BY c.id) e;
    GET DIAGNOSTICS announced = ROW_COUNT;
    RETURN announced;
END $$;
