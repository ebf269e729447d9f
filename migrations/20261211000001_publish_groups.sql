-- Issue 28: one request, several targets. A group holds the ordinary tickets (its children)
-- of one fan-out publish; `policy` says whether they stand or fall together.
CREATE TABLE publish_groups (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    image_id bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    policy text NOT NULL CHECK (policy IN ('all', 'each')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX publish_groups_user_id_idx ON publish_groups (user_id);
CREATE INDEX publish_groups_image_id_idx ON publish_groups (image_id);

ALTER TABLE publish_tickets
    -- The group a ticket is a target of (NULL: an ordinary single-target publish).
    ADD COLUMN group_id bigint REFERENCES publish_groups (id) ON DELETE SET NULL,
    -- The Glance store the image goes to (NULL: the Glance's default store).
    ADD COLUMN glance_store text
        CHECK (glance_store IS NULL OR glance_store ~ '^[A-Za-z0-9_.-]{1,255}$'),
    -- A sibling in the same Keystone project whose image this one copies server-side
    -- (copy-image within one Glance, glance-download between regions) once it is complete;
    -- until then this ticket has no outbox row: it is held, not lost.
    ADD COLUMN copies_from bigint REFERENCES publish_tickets (id) ON DELETE SET NULL,
    -- The catalog region whose Glance the worker resolved (recorded with glance_url): a
    -- sibling's glance-download names it as its source.
    ADD COLUMN glance_region text CHECK (glance_region IS NULL OR length(glance_region) BETWEEN 1 AND 255);
CREATE INDEX publish_tickets_group_id_idx ON publish_tickets (group_id) WHERE group_id IS NOT NULL;
CREATE INDEX publish_tickets_copies_from_idx ON publish_tickets (copies_from) WHERE copies_from IS NOT NULL;

-- A copy-image target shares its source's image: its cleanup removes its store's copy only.
ALTER TABLE image_cleanups ADD COLUMN glance_store text;
