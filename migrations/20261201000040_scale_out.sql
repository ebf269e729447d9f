-- The cloud a ticket uploads to, for the per-cloud upload limit (cloud.max_uploads_per_cloud):
-- the host of its glanceUrl, else of its keystoneUrl (Glance from the catalog is known only
-- after a login, and the limit holds at claim time, before it).
ALTER TABLE publish_tickets ADD COLUMN cloud_host TEXT NOT NULL GENERATED ALWAYS AS (
    COALESCE(lower(substring(COALESCE(glance_url, keystone_url)
        FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?(\[[^]/]*\]|[^/?#:]*)')), '')
) STORED;

-- The claim's two questions: what is queued (oldest first), and what runs where.
CREATE INDEX publish_tickets_queued ON publish_tickets (created_at, id) WHERE state = 'queued';
CREATE INDEX publish_tickets_running_host ON publish_tickets (cloud_host, user_id) WHERE state = 'running';

-- A running ticket that ends, goes back to the queue or is deleted frees an upload slot of its
-- cloud: workers waiting for one (LISTEN pimage_slot_freed) try their claim again at once.
CREATE FUNCTION notify_slot_freed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pimage_slot_freed', OLD.cloud_host);
    RETURN NULL;
END $$;

CREATE TRIGGER publish_tickets_slot_freed
    AFTER UPDATE OF state ON publish_tickets
    FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state <> 'running')
    EXECUTE FUNCTION notify_slot_freed();

CREATE TRIGGER publish_tickets_slot_freed_deleted
    AFTER DELETE ON publish_tickets
    FOR EACH ROW
    WHEN (OLD.state = 'running')
    EXECUTE FUNCTION notify_slot_freed();
