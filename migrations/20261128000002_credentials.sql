-- API keys, as the UForge SDK signs requests: the public key travels in the URL, the secret
-- key signs it (HMAC-SHA1). The server must recompute the HMAC, so it keeps the secret, but
-- only encrypted (AES-256-GCM with the service key, like cloud passwords).
CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    public_key  TEXT NOT NULL UNIQUE,
    secret_enc  BYTEA NOT NULL,               -- nonce || ciphertext of the secret key
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

-- Failed password logins, by the login as typed (known user or not, so a lockout reveals
-- nothing). Shared by every API process; a success deletes the row.
CREATE TABLE login_failures (
    login             TEXT PRIMARY KEY,
    failures          INT NOT NULL,
    window_started_at TIMESTAMPTZ NOT NULL,
    locked_until      TIMESTAMPTZ
);
