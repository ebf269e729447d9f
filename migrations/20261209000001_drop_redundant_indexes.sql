-- Each publish writes every index of publish_tickets; these two are prefixes of
-- publish_tickets_image_id_id and publish_tickets_user_id_id, which serve the same lookups.
DROP INDEX IF EXISTS publish_tickets_image_id;
DROP INDEX IF EXISTS publish_tickets_user_id;
