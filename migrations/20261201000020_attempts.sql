-- One row per attempt at a ticket: started by the worker's claim (or its retry of a
-- transient failure), ended when it publishes, fails, retries, is cancelled, is lost to
-- another worker, or is handed back on shutdown. Shown by `tickets show` and the JSON API.
CREATE TABLE ticket_attempts (
    id            BIGSERIAL PRIMARY KEY,
    ticket_id     BIGINT NOT NULL REFERENCES publish_tickets (id) ON DELETE CASCADE,
    number        INT NOT NULL,                  -- 1, 2, … per ticket
    fencing_token BIGINT NOT NULL,               -- the claim the attempt ran under
    worker        TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at      TIMESTAMPTZ,
    outcome       TEXT CHECK (outcome IN ('published', 'failed', 'cancelled', 'retried', 'lost', 'released')),
    error         TEXT,
    bytes_sent    BIGINT NOT NULL DEFAULT 0,
    UNIQUE (ticket_id, number)
);
CREATE INDEX ticket_attempts_open ON ticket_attempts (ticket_id) WHERE ended_at IS NULL;
