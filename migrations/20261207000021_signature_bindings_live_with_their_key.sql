-- A signature's binding to its method no longer expires with time (an expired binding could
-- be rebound to any method): it lives as long as its key, deleted with it (and, by the API,
-- once the key expired). Bindings made before this have no known key; they are kept, so
-- their signatures stay bound.
ALTER TABLE api_key_signatures
    ADD COLUMN api_key_id BIGINT REFERENCES api_keys (id) ON DELETE CASCADE;
CREATE INDEX api_key_signatures_api_key_id ON api_key_signatures (api_key_id);
DROP INDEX api_key_signatures_seen_at;
