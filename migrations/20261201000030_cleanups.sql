-- Images a ticket may have left in the cloud, to delete until Glance confirms (reconciler).
-- A row is written in the same transaction that ends a ticket in anything but 'complete';
-- it carries its own copy of the account, so a deleted ticket's image is still removed.
CREATE TABLE image_cleanups (
    id                 BIGSERIAL PRIMARY KEY,
    ticket_id          BIGINT REFERENCES publish_tickets (id) ON DELETE SET NULL,
    ticket_key         UUID NOT NULL,                 -- the image's ticket property
    cloud_id           TEXT,                          -- the Glance image, when known
    keystone_url       TEXT NOT NULL,
    keystone_domain    TEXT NOT NULL,
    keystone_project   TEXT NOT NULL,
    glance_url         TEXT,
    cloud_login        TEXT NOT NULL,
    cloud_password_enc BYTEA NOT NULL,
    attempts           INT NOT NULL DEFAULT 0,
    last_error         TEXT,
    next_try_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at            TIMESTAMPTZ
);

CREATE INDEX image_cleanups_due ON image_cleanups (next_try_at) WHERE done_at IS NULL;
CREATE INDEX image_cleanups_ticket ON image_cleanups (ticket_id) WHERE done_at IS NULL;

-- Published images whose ticket record was deleted without deleteCloudImage: the user keeps
-- them, so the orphan sweep must not take them for leftovers.
CREATE TABLE kept_images (
    ticket_key UUID PRIMARY KEY,
    cloud_id   TEXT NOT NULL,
    kept_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every way a ticket ends (worker finish, rescuer give-up or cancel, cancel while queued,
-- record deleted) passes through these triggers, so the cleanup is recorded in the same
-- transaction whatever the path. A ticket never claimed (started_at NULL) owns no image.
CREATE FUNCTION record_image_cleanup() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t publish_tickets;
BEGIN
    IF TG_OP = 'DELETE' THEN
        t := OLD;
    ELSE
        t := NEW;
    END IF;
    IF t.state = 'complete' THEN
        -- Only reached on DELETE: the user keeps the published image.
        IF t.cloud_id IS NOT NULL THEN
            INSERT INTO kept_images (ticket_key, cloud_id) VALUES (t.ticket_key, t.cloud_id)
            ON CONFLICT (ticket_key) DO NOTHING;
        END IF;
    ELSIF t.started_at IS NOT NULL THEN
        INSERT INTO image_cleanups (ticket_id, ticket_key, cloud_id, keystone_url,
            keystone_domain, keystone_project, glance_url, cloud_login, cloud_password_enc)
        VALUES (CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE t.id END, t.ticket_key, t.cloud_id,
            t.keystone_url, t.keystone_domain, t.keystone_project, t.glance_url, t.cloud_login,
            t.cloud_password_enc);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER publish_tickets_ended_cleanup
    AFTER UPDATE OF state ON publish_tickets
    FOR EACH ROW
    WHEN (NEW.state IN ('error', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION record_image_cleanup();

CREATE TRIGGER publish_tickets_deleted_cleanup
    AFTER DELETE ON publish_tickets
    FOR EACH ROW
    -- An ended ticket's cleanup was recorded when it ended (and outlives the record).
    WHEN (OLD.state NOT IN ('error', 'cancelled'))
    EXECUTE FUNCTION record_image_cleanup();
