-- Issue 26: every recurring query reads an index, so that none grows with the tickets kept.

-- The orphan sweep's accounts: one index probe per distinct account (a skip scan, paged),
-- newest ticket first within it (its sealed password is the one the sweep logs in with).
-- Keyed by a 64-bit hash of what the account logs in as, not the five columns: a third of
-- the size per ticket (glance_url is NULL when Glance comes from the catalog).
CREATE INDEX publish_tickets_account ON publish_tickets
    ((hashtextextended(keystone_url || E'\x1f' || keystone_domain || E'\x1f' || keystone_project
                         || E'\x1f' || cloud_login || E'\x1f' || COALESCE(glance_url, ''), 0)),
     id DESC);

-- A ticket's outbox row: requeue_lost's "has none" check, and a deleted ticket's cascade.
CREATE INDEX ticket_outbox_ticket ON ticket_outbox (ticket_id);

-- Deleting a ticket sets its cleanups' ticket_id to NULL (the foreign key), done ones too:
-- the partial index cannot find those.
DROP INDEX image_cleanups_ticket;
CREATE INDEX image_cleanups_ticket ON image_cleanups (ticket_id);
-- Done cleanups by age (retention), and the sweep's pending ones page by id.
CREATE INDEX image_cleanups_done ON image_cleanups (done_at) WHERE done_at IS NOT NULL;
CREATE INDEX image_cleanups_pending ON image_cleanups (id) WHERE done_at IS NULL;

-- Event pruning takes the oldest events first.
CREATE INDEX ticket_events_at ON ticket_events (at);
