-- Issue 25: cloud accounts stored per user (hammr's `account create`), so that a publish can
-- name one instead of carrying the password. The password is sealed like a ticket's
-- (AES-256-GCM with the service key), and never answered.
CREATE TABLE cloud_accounts (
    id                 BIGSERIAL PRIMARY KEY,                     -- caid
    user_id            BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    platform           TEXT NOT NULL DEFAULT 'openstack' CHECK (platform = 'openstack'),
    keystone_url       TEXT NOT NULL,
    keystone_version   TEXT NOT NULL DEFAULT 'v3',
    glance_url         TEXT,
    cloud_login        TEXT NOT NULL,
    cloud_password_enc BYTEA NOT NULL,                            -- sealed, never clear text
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);

-- The stored account a ticket was published with (its password was copied, sealed, into the
-- ticket). An account that queued or running tickets use is not deleted (the API says so);
-- an ended ticket keeps its record when the account goes.
ALTER TABLE publish_tickets
    ADD COLUMN cloud_account_id BIGINT REFERENCES cloud_accounts (id) ON DELETE SET NULL;
CREATE INDEX publish_tickets_cloud_account ON publish_tickets (cloud_account_id)
    WHERE cloud_account_id IS NOT NULL;
