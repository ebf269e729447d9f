-- API-key signatures cover only the URL (the UForge SDK's scheme), so the server binds each
-- accepted signature to its method, and writes to one use. Kept by digest of key + signature
-- (never the signature itself), for as long as its key lives (20261207000021).
CREATE TABLE api_key_signatures (
    digest   BYTEA PRIMARY KEY,
    method   TEXT NOT NULL,
    reused   BOOLEAN NOT NULL DEFAULT false,
    seen_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX api_key_signatures_seen_at ON api_key_signatures (seen_at);

-- Keys scoped to methods (NULL: every method, as before) and with an optional expiry.
ALTER TABLE api_keys ADD COLUMN methods TEXT[];
ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;
