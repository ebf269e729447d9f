-- Users see the worker of an attempt as an opaque id, not its host name and pid (issue 23,
-- finding 11): a digest of the worker's name under this random key, which only the database
-- holds (an unkeyed digest of a guessable host name and a small pid could be reversed).
CREATE TABLE worker_ref_key (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    key TEXT NOT NULL
);
INSERT INTO worker_ref_key (key) VALUES (gen_random_uuid()::text || gen_random_uuid()::text);
