-- What a ticket's state change writes (its image cleanup, its event row and that event's
-- NOTIFY) is now written by the store function that makes the change, by name and in its
-- transaction (src/store/events.rs, src/store/cleanups.rs; docs/ARCHITECTURE.md "What each
-- state change writes"). The triggers that wrote them go. The triggers that remain only
-- announce (NOTIFY pimage_slot_freed, pimage_ticket_changed, pimage_worker_events): a row
-- changed by hand still reaches every cache and waiting worker.
DROP TRIGGER publish_tickets_ended_cleanup ON publish_tickets;
DROP TRIGGER publish_tickets_deleted_cleanup ON publish_tickets;
DROP FUNCTION record_image_cleanup();

DROP TRIGGER publish_tickets_event_insert ON publish_tickets;
DROP TRIGGER publish_tickets_event_update ON publish_tickets;
DROP TRIGGER publish_tickets_event_delete ON publish_tickets;
DROP FUNCTION record_ticket_event();
