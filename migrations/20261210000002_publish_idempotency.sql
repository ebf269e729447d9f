-- Issue 29, item 3: a publish's Idempotency-Key. One row per (user, key): the digest of the
-- request it came with (the image and the body) and, once filed, the ticket it made. A row
-- without a ticket is a request in flight (or one whose filing failed: removed then).
CREATE TABLE publish_idempotency (
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_digest bytea NOT NULL,
    ticket_id bigint REFERENCES publish_tickets (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
-- The cascade from a deleted ticket (retention deletes them in batches) finds its row.
CREATE INDEX publish_idempotency_ticket ON publish_idempotency (ticket_id) WHERE ticket_id IS NOT NULL;
