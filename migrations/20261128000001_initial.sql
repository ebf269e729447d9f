-- Users of the API, with their entitlements (e.g. migration_publish).
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    login         TEXT NOT NULL UNIQUE CHECK (login ~ '^[A-Za-z0-9._-]{1,64}$'),
    password_hash TEXT NOT NULL,          -- argon2id PHC string, never the password
    is_admin      BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE user_entitlements (
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    entitlement TEXT NOT NULL,
    PRIMARY KEY (user_id, entitlement)
);

-- users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}
CREATE TABLE scanned_instances (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE scans (
    id                  BIGSERIAL PRIMARY KEY,
    scanned_instance_id BIGINT NOT NULL REFERENCES scanned_instances (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE images (
    id          BIGSERIAL PRIMARY KEY,
    scan_id     BIGINT NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    file_path   TEXT NOT NULL,            -- absolute path, readable by every worker
    file_name   TEXT NOT NULL,
    format      TEXT NOT NULL,            -- Glance disk_format: raw, qcow2, vmdk, vhd, vdi, iso …
    size_bytes  BIGINT NOT NULL CHECK (size_bytes >= 0),
    md5sum      TEXT NOT NULL,
    sha256sum   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX images_scan_id ON images (scan_id);

-- One request to publish an image to a cloud account, and its status.
CREATE TABLE publish_tickets (
    id                 BIGSERIAL PRIMARY KEY,                     -- pitid
    ticket_key         UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(), -- names the ticket in the cloud (Glance property)
    image_id           BIGINT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    user_id            BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,

    -- What to publish, and where (credAccount of type openstack).
    display_name       TEXT NOT NULL,
    public_image       BOOLEAN NOT NULL,
    account_name       TEXT,
    keystone_url       TEXT NOT NULL,
    keystone_version   TEXT NOT NULL,
    keystone_domain    TEXT NOT NULL,
    keystone_project   TEXT NOT NULL,
    glance_url         TEXT,
    cloud_login        TEXT NOT NULL,
    cloud_password_enc BYTEA NOT NULL,                            -- AES-256-GCM: nonce || ciphertext

    -- Life of the job.
    state              TEXT NOT NULL DEFAULT 'queued'
                       CHECK (state IN ('queued', 'running', 'complete', 'error', 'cancelled')),
    attempts           INT NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_expires_at   TIMESTAMPTZ,
    fencing_token      BIGINT NOT NULL DEFAULT 0,                 -- bumped by every claim
    cancel_requested   BOOLEAN NOT NULL DEFAULT false,

    -- The status object users poll.
    message            TEXT NOT NULL,
    percentage         INT NOT NULL DEFAULT 0 CHECK (percentage BETWEEN 0 AND 100),
    bytes_loaded       BIGINT NOT NULL DEFAULT 0,
    bytes_total        BIGINT NOT NULL DEFAULT 0,
    eta                TIMESTAMPTZ,
    error_message      TEXT,
    detailed_error_msg TEXT,
    cloud_id           TEXT,                                      -- Glance image id

    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at         TIMESTAMPTZ,
    finished_at        TIMESTAMPTZ
);
CREATE INDEX publish_tickets_image_id ON publish_tickets (image_id);
CREATE INDEX publish_tickets_user_id ON publish_tickets (user_id);
CREATE INDEX publish_tickets_lease ON publish_tickets (lease_expires_at) WHERE state = 'running';

-- Tickets waiting to be handed to RabbitMQ; written in the same transaction as the ticket.
CREATE TABLE ticket_outbox (
    id         BIGSERIAL PRIMARY KEY,
    ticket_id  BIGINT NOT NULL REFERENCES publish_tickets (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
