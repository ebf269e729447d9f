-- The current schema, as the migrations produce it (pg_dump --schema-only, normalised).
-- Do not edit: add a migration, then PIMAGE_WRITE_SCHEMA=1 cargo test --test suite schema::
CREATE FUNCTION public.announce_attempt_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('pimage_ticket_changed', OLD.ticket_id::text);
    ELSE
        PERFORM pg_notify('pimage_ticket_changed', NEW.ticket_id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION public.announce_created_tickets(ticket_ids bigint[]) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    announced INT;
BEGIN
    PERFORM pg_notify('pimage_ticket_events', ticket_event_notice(e))
       FROM (SELECT DISTINCT unnest(ticket_ids) AS id) t
       CROSS JOIN LATERAL (SELECT * FROM ticket_events
                            WHERE ticket_id = t.id ORDER BY id DESC LIMIT 1) e
      WHERE e.kind = 'created'
      ORDER BY e.id;
    GET DIAGNOSTICS announced = ROW_COUNT;
    RETURN announced;
END $$;

CREATE FUNCTION public.announce_ticket_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('pimage_ticket_changed', OLD.id::text);
    RETURN NULL;
END $$;

CREATE FUNCTION public.announce_worker() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    w worker_heartbeats;
BEGIN
    IF TG_OP = 'DELETE' THEN
        w := OLD;
    ELSE
        w := NEW;
    END IF;
    PERFORM pg_notify('pimage_worker_events', json_build_object(
        'worker', w.worker, 'host', w.host, 'pid', w.pid, 'version', w.version,
        'slotsTotal', w.slots_total, 'slotsUsed', w.slots_used, 'beatAt', w.beat_at,
        'gone', TG_OP = 'DELETE',
        'tickets', ARRAY(SELECT id FROM publish_tickets
                          WHERE state = 'running' AND lease_owner = w.worker ORDER BY id))::text);
    RETURN NULL;
END $$;

CREATE FUNCTION public.notify_slot_freed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('pimage_slot_freed', OLD.cloud_host);
    RETURN NULL;
END $$;

CREATE TABLE public.ticket_events (
    id bigint NOT NULL,
    ticket_id bigint NOT NULL,
    kind text NOT NULL,
    state text NOT NULL,
    old_state text,
    percentage integer NOT NULL,
    bytes_loaded bigint NOT NULL,
    bytes_total bigint NOT NULL,
    message text NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT ticket_events_kind_check CHECK ((kind = ANY (ARRAY['created'::text, 'changed'::text, 'deleted'::text])))
);

CREATE FUNCTION public.ticket_event_notice(e public.ticket_events) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    -- A NOTIFY payload is at most 8000 bytes: the message is cut (the row keeps it whole).
    SELECT json_build_object(
        'id', e.id, 'ticketId', e.ticket_id, 'kind', e.kind, 'state', e.state,
        'oldState', e.old_state, 'percentage', e.percentage, 'bytesLoaded', e.bytes_loaded,
        'bytesTotal', e.bytes_total, 'message', left(e.message, 1000), 'at', e.at)::text
$$;

CREATE TABLE public.api_key_signatures (
    digest bytea NOT NULL,
    method text NOT NULL,
    reused boolean DEFAULT false NOT NULL,
    seen_at timestamp with time zone DEFAULT now() NOT NULL,
    api_key_id bigint
);

CREATE TABLE public.api_keys (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    public_key text NOT NULL,
    secret_enc bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    methods text[],
    expires_at timestamp with time zone
);

CREATE SEQUENCE public.api_keys_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.api_keys_id_seq OWNED BY public.api_keys.id;

CREATE TABLE public.cloud_accounts (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    name text NOT NULL,
    platform text DEFAULT 'openstack'::text NOT NULL,
    keystone_url text NOT NULL,
    keystone_version text DEFAULT 'v3'::text NOT NULL,
    glance_url text,
    cloud_login text NOT NULL,
    cloud_password_enc bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT cloud_accounts_platform_check CHECK ((platform = 'openstack'::text))
);

CREATE SEQUENCE public.cloud_accounts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.cloud_accounts_id_seq OWNED BY public.cloud_accounts.id;

CREATE TABLE public.console_sessions (
    token_hash bytea NOT NULL,
    user_id bigint NOT NULL,
    csrf_token text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE public.image_cleanups (
    id bigint NOT NULL,
    ticket_id bigint,
    ticket_key uuid NOT NULL,
    cloud_id text,
    keystone_url text NOT NULL,
    keystone_domain text NOT NULL,
    keystone_project text NOT NULL,
    glance_url text,
    cloud_login text NOT NULL,
    cloud_password_enc bytea NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    next_try_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    done_at timestamp with time zone,
    glance_store text
);

CREATE SEQUENCE public.image_cleanups_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.image_cleanups_id_seq OWNED BY public.image_cleanups.id;

CREATE TABLE public.images (
    id bigint NOT NULL,
    scan_id bigint NOT NULL,
    name text NOT NULL,
    file_path text NOT NULL,
    file_name text NOT NULL,
    format text NOT NULL,
    size_bytes bigint NOT NULL,
    md5sum text NOT NULL,
    sha256sum text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    sha512sum text,
    CONSTRAINT images_size_bytes_check CHECK ((size_bytes >= 0))
);

CREATE SEQUENCE public.images_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.images_id_seq OWNED BY public.images.id;

CREATE TABLE public.kept_images (
    ticket_key uuid NOT NULL,
    cloud_id text NOT NULL,
    kept_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.login_failures (
    login text NOT NULL,
    failures integer NOT NULL,
    window_started_at timestamp with time zone NOT NULL,
    locked_until timestamp with time zone
);

CREATE TABLE public.publish_groups (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    image_id bigint NOT NULL,
    policy text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT publish_groups_policy_check CHECK ((policy = ANY (ARRAY['all'::text, 'each'::text])))
);

CREATE SEQUENCE public.publish_groups_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.publish_groups_id_seq OWNED BY public.publish_groups.id;

CREATE TABLE public.publish_idempotency (
    user_id bigint NOT NULL,
    key text NOT NULL,
    request_digest bytea NOT NULL,
    ticket_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT publish_idempotency_key_check CHECK (((length(key) >= 1) AND (length(key) <= 255)))
);

CREATE TABLE public.publish_tickets (
    id bigint NOT NULL,
    ticket_key uuid DEFAULT gen_random_uuid() NOT NULL,
    image_id bigint NOT NULL,
    user_id bigint NOT NULL,
    display_name text NOT NULL,
    public_image boolean NOT NULL,
    account_name text,
    keystone_url text NOT NULL,
    keystone_version text NOT NULL,
    keystone_domain text NOT NULL,
    keystone_project text NOT NULL,
    glance_url text,
    cloud_login text NOT NULL,
    cloud_password_enc bytea NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    lease_owner text,
    lease_expires_at timestamp with time zone,
    fencing_token bigint DEFAULT 0 NOT NULL,
    cancel_requested boolean DEFAULT false NOT NULL,
    message text NOT NULL,
    percentage integer DEFAULT 0 NOT NULL,
    bytes_loaded bigint DEFAULT 0 NOT NULL,
    bytes_total bigint DEFAULT 0 NOT NULL,
    eta timestamp with time zone,
    error_message text,
    detailed_error_msg text,
    cloud_id text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    cloud_host text GENERATED ALWAYS AS (COALESCE(lower("substring"(COALESCE(glance_url, keystone_url), '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?(\[[^]/]*\]|[^/?#:]*)'::text)), ''::text)) STORED NOT NULL,
    cloud_account_id bigint,
    publish_location text,
    group_id bigint,
    glance_store text,
    copies_from bigint,
    glance_region text,
    CONSTRAINT publish_tickets_glance_region_check CHECK (((glance_region IS NULL) OR ((length(glance_region) >= 1) AND (length(glance_region) <= 255)))),
    CONSTRAINT publish_tickets_glance_store_check CHECK (((glance_store IS NULL) OR (glance_store ~ '^[A-Za-z0-9_.-]{1,255}$'::text))),
    CONSTRAINT publish_tickets_percentage_check CHECK (((percentage >= 0) AND (percentage <= 100))),
    CONSTRAINT publish_tickets_publish_location_check CHECK (((publish_location IS NULL) OR ((length(publish_location) >= 1) AND (length(publish_location) <= 255)))),
    CONSTRAINT publish_tickets_state_check CHECK ((state = ANY (ARRAY['queued'::text, 'running'::text, 'complete'::text, 'error'::text, 'cancelled'::text])))
);

CREATE SEQUENCE public.publish_tickets_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.publish_tickets_id_seq OWNED BY public.publish_tickets.id;

CREATE TABLE public.scanned_instances (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    name text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    os_name text,
    os_version text,
    os_arch text,
    CONSTRAINT scanned_instances_os_arch_check CHECK ((os_arch = ANY (ARRAY['i386'::text, 'i586'::text, 'i686'::text, 'noarch'::text, 'x86_64'::text]))),
    CONSTRAINT scanned_instances_os_name_check CHECK ((os_name = ANY (ARRAY['CentOS'::text, 'Debian'::text, 'Fedora Core'::text, 'OpenSUSE'::text, 'Oracle Linux'::text, 'RedHat Enterprise Linux'::text, 'Scientific Linux'::text, 'SUSE Linux Enterprise Server'::text, 'Ubuntu'::text, 'Windows'::text]))),
    CONSTRAINT scanned_instances_os_version_check CHECK ((os_version ~ '^[A-Za-z0-9._-]{1,32}$'::text)),
    CONSTRAINT scanned_instances_os_whole CHECK ((((os_name IS NULL) = (os_version IS NULL)) AND ((os_name IS NULL) = (os_arch IS NULL))))
);

CREATE SEQUENCE public.scanned_instances_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.scanned_instances_id_seq OWNED BY public.scanned_instances.id;

CREATE TABLE public.scans (
    id bigint NOT NULL,
    scanned_instance_id bigint NOT NULL,
    name text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE SEQUENCE public.scans_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.scans_id_seq OWNED BY public.scans.id;

CREATE TABLE public.ticket_attempts (
    id bigint NOT NULL,
    ticket_id bigint NOT NULL,
    number integer NOT NULL,
    fencing_token bigint NOT NULL,
    worker text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    ended_at timestamp with time zone,
    outcome text,
    error text,
    bytes_sent bigint DEFAULT 0 NOT NULL,
    CONSTRAINT ticket_attempts_outcome_check CHECK ((outcome = ANY (ARRAY['published'::text, 'failed'::text, 'cancelled'::text, 'retried'::text, 'lost'::text, 'released'::text])))
);

CREATE SEQUENCE public.ticket_attempts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.ticket_attempts_id_seq OWNED BY public.ticket_attempts.id;

CREATE SEQUENCE public.ticket_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.ticket_events_id_seq OWNED BY public.ticket_events.id;

CREATE TABLE public.ticket_outbox (
    id bigint NOT NULL,
    ticket_id bigint NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE SEQUENCE public.ticket_outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.ticket_outbox_id_seq OWNED BY public.ticket_outbox.id;

CREATE TABLE public.user_entitlements (
    user_id bigint NOT NULL,
    entitlement text NOT NULL
);

CREATE TABLE public.users (
    id bigint NOT NULL,
    login text NOT NULL,
    password_hash text NOT NULL,
    is_admin boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT users_login_check CHECK ((login ~ '^[A-Za-z0-9._-]{1,64}$'::text))
);

CREATE SEQUENCE public.users_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;

CREATE TABLE public.worker_heartbeats (
    worker text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    slots_total integer NOT NULL,
    slots_used integer NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    beat_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.worker_ref_key (
    only_row boolean DEFAULT true NOT NULL,
    key text NOT NULL,
    CONSTRAINT worker_ref_key_only_row_check CHECK (only_row)
);

ALTER TABLE ONLY public.api_keys ALTER COLUMN id SET DEFAULT nextval('public.api_keys_id_seq'::regclass);

ALTER TABLE ONLY public.cloud_accounts ALTER COLUMN id SET DEFAULT nextval('public.cloud_accounts_id_seq'::regclass);

ALTER TABLE ONLY public.image_cleanups ALTER COLUMN id SET DEFAULT nextval('public.image_cleanups_id_seq'::regclass);

ALTER TABLE ONLY public.images ALTER COLUMN id SET DEFAULT nextval('public.images_id_seq'::regclass);

ALTER TABLE ONLY public.publish_groups ALTER COLUMN id SET DEFAULT nextval('public.publish_groups_id_seq'::regclass);

ALTER TABLE ONLY public.publish_tickets ALTER COLUMN id SET DEFAULT nextval('public.publish_tickets_id_seq'::regclass);

ALTER TABLE ONLY public.scanned_instances ALTER COLUMN id SET DEFAULT nextval('public.scanned_instances_id_seq'::regclass);

ALTER TABLE ONLY public.scans ALTER COLUMN id SET DEFAULT nextval('public.scans_id_seq'::regclass);

ALTER TABLE ONLY public.ticket_attempts ALTER COLUMN id SET DEFAULT nextval('public.ticket_attempts_id_seq'::regclass);

ALTER TABLE ONLY public.ticket_events ALTER COLUMN id SET DEFAULT nextval('public.ticket_events_id_seq'::regclass);

ALTER TABLE ONLY public.ticket_outbox ALTER COLUMN id SET DEFAULT nextval('public.ticket_outbox_id_seq'::regclass);

ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);

ALTER TABLE ONLY public.api_key_signatures
    ADD CONSTRAINT api_key_signatures_pkey PRIMARY KEY (digest);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_public_key_key UNIQUE (public_key);

ALTER TABLE ONLY public.cloud_accounts
    ADD CONSTRAINT cloud_accounts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.cloud_accounts
    ADD CONSTRAINT cloud_accounts_user_id_name_key UNIQUE (user_id, name);

ALTER TABLE ONLY public.console_sessions
    ADD CONSTRAINT console_sessions_pkey PRIMARY KEY (token_hash);

ALTER TABLE ONLY public.image_cleanups
    ADD CONSTRAINT image_cleanups_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.kept_images
    ADD CONSTRAINT kept_images_pkey PRIMARY KEY (ticket_key);

ALTER TABLE ONLY public.login_failures
    ADD CONSTRAINT login_failures_pkey PRIMARY KEY (login);

ALTER TABLE ONLY public.publish_groups
    ADD CONSTRAINT publish_groups_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.publish_idempotency
    ADD CONSTRAINT publish_idempotency_pkey PRIMARY KEY (user_id, key);

ALTER TABLE ONLY public.publish_tickets
    ADD CONSTRAINT publish_tickets_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.publish_tickets
    ADD CONSTRAINT publish_tickets_ticket_key_key UNIQUE (ticket_key);

ALTER TABLE ONLY public.scanned_instances
    ADD CONSTRAINT scanned_instances_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.scans
    ADD CONSTRAINT scans_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.ticket_attempts
    ADD CONSTRAINT ticket_attempts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.ticket_attempts
    ADD CONSTRAINT ticket_attempts_ticket_id_number_key UNIQUE (ticket_id, number);

ALTER TABLE ONLY public.ticket_events
    ADD CONSTRAINT ticket_events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.ticket_outbox
    ADD CONSTRAINT ticket_outbox_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.user_entitlements
    ADD CONSTRAINT user_entitlements_pkey PRIMARY KEY (user_id, entitlement);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_login_key UNIQUE (login);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.worker_heartbeats
    ADD CONSTRAINT worker_heartbeats_pkey PRIMARY KEY (worker);

ALTER TABLE ONLY public.worker_ref_key
    ADD CONSTRAINT worker_ref_key_pkey PRIMARY KEY (only_row);

CREATE INDEX api_key_signatures_api_key_id ON public.api_key_signatures USING btree (api_key_id);

CREATE INDEX api_keys_user_id ON public.api_keys USING btree (user_id);

CREATE INDEX console_sessions_expires ON public.console_sessions USING btree (expires_at);

CREATE INDEX image_cleanups_done ON public.image_cleanups USING btree (done_at) WHERE (done_at IS NOT NULL);

CREATE INDEX image_cleanups_due ON public.image_cleanups USING btree (next_try_at) WHERE (done_at IS NULL);

CREATE INDEX image_cleanups_pending ON public.image_cleanups USING btree (id) WHERE (done_at IS NULL);

CREATE INDEX image_cleanups_ticket ON public.image_cleanups USING btree (ticket_id);

CREATE INDEX images_scan_id ON public.images USING btree (scan_id);

CREATE INDEX publish_groups_image_id_idx ON public.publish_groups USING btree (image_id);

CREATE INDEX publish_groups_user_id_idx ON public.publish_groups USING btree (user_id);

CREATE INDEX publish_idempotency_ticket ON public.publish_idempotency USING btree (ticket_id) WHERE (ticket_id IS NOT NULL);

CREATE INDEX publish_tickets_account ON public.publish_tickets USING btree (hashtextextended(((((((((keystone_url || ''::text) || keystone_domain) || ''::text) || keystone_project) || ''::text) || cloud_login) || ''::text) || COALESCE(glance_url, ''::text)), (0)::bigint), id DESC);

CREATE INDEX publish_tickets_cloud_account ON public.publish_tickets USING btree (cloud_account_id) WHERE (cloud_account_id IS NOT NULL);

CREATE INDEX publish_tickets_cloud_id ON public.publish_tickets USING btree (keystone_url, id);

CREATE INDEX publish_tickets_copies_from_idx ON public.publish_tickets USING btree (copies_from) WHERE (copies_from IS NOT NULL);

CREATE INDEX publish_tickets_created_at ON public.publish_tickets USING btree (created_at);

CREATE INDEX publish_tickets_finished_at ON public.publish_tickets USING btree (finished_at) WHERE (finished_at IS NOT NULL);

CREATE INDEX publish_tickets_group_id_idx ON public.publish_tickets USING btree (group_id) WHERE (group_id IS NOT NULL);

CREATE INDEX publish_tickets_image_id_id ON public.publish_tickets USING btree (image_id, id);

CREATE INDEX publish_tickets_lease ON public.publish_tickets USING btree (lease_expires_at) WHERE (state = 'running'::text);

CREATE INDEX publish_tickets_queued ON public.publish_tickets USING btree (created_at, id) WHERE (state = 'queued'::text);

CREATE INDEX publish_tickets_running_host ON public.publish_tickets USING btree (cloud_host, user_id) WHERE (state = 'running'::text);

CREATE INDEX publish_tickets_running_owner ON public.publish_tickets USING btree (lease_owner) WHERE (state = 'running'::text);

CREATE INDEX publish_tickets_state_id ON public.publish_tickets USING btree (state, id);

CREATE INDEX publish_tickets_unfinished_user ON public.publish_tickets USING btree (user_id) WHERE (state = ANY (ARRAY['queued'::text, 'running'::text]));

CREATE INDEX publish_tickets_user_id_id ON public.publish_tickets USING btree (user_id, id);

CREATE INDEX ticket_attempts_ended_at ON public.ticket_attempts USING btree (ended_at) WHERE (ended_at IS NOT NULL);

CREATE INDEX ticket_attempts_open ON public.ticket_attempts USING btree (ticket_id) WHERE (ended_at IS NULL);

CREATE INDEX ticket_events_at ON public.ticket_events USING btree (at);

CREATE INDEX ticket_events_ticket ON public.ticket_events USING btree (ticket_id, id);

CREATE INDEX ticket_outbox_ticket ON public.ticket_outbox USING btree (ticket_id);

CREATE TRIGGER publish_tickets_changed AFTER UPDATE ON public.publish_tickets FOR EACH ROW WHEN (((to_jsonb(old.*) - 'lease_expires_at'::text) IS DISTINCT FROM (to_jsonb(new.*) - 'lease_expires_at'::text))) EXECUTE FUNCTION public.announce_ticket_change();

CREATE TRIGGER publish_tickets_removed AFTER DELETE ON public.publish_tickets FOR EACH ROW EXECUTE FUNCTION public.announce_ticket_change();

CREATE TRIGGER publish_tickets_slot_freed AFTER UPDATE OF state ON public.publish_tickets FOR EACH ROW WHEN (((old.state = 'running'::text) AND (new.state <> 'running'::text))) EXECUTE FUNCTION public.notify_slot_freed();

CREATE TRIGGER publish_tickets_slot_freed_deleted AFTER DELETE ON public.publish_tickets FOR EACH ROW WHEN ((old.state = 'running'::text)) EXECUTE FUNCTION public.notify_slot_freed();

CREATE TRIGGER ticket_attempts_changed AFTER INSERT OR DELETE OR UPDATE ON public.ticket_attempts FOR EACH ROW EXECUTE FUNCTION public.announce_attempt_change();

CREATE TRIGGER worker_heartbeats_announce AFTER INSERT OR DELETE OR UPDATE ON public.worker_heartbeats FOR EACH ROW EXECUTE FUNCTION public.announce_worker();

ALTER TABLE ONLY public.api_key_signatures
    ADD CONSTRAINT api_key_signatures_api_key_id_fkey FOREIGN KEY (api_key_id) REFERENCES public.api_keys(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.cloud_accounts
    ADD CONSTRAINT cloud_accounts_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.console_sessions
    ADD CONSTRAINT console_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.image_cleanups
    ADD CONSTRAINT image_cleanups_ticket_id_fkey FOREIGN KEY (ticket_id) REFERENCES public.publish_tickets(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_scan_id_fkey FOREIGN KEY (scan_id) REFERENCES public.scans(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.publish_groups
    ADD CONSTRAINT publish_groups_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.images(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.publish_groups
    ADD CONSTRAINT publish_groups_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.publish_idempotency
    ADD CONSTRAINT publish_idempotency_ticket_id_fkey FOREIGN KEY (ticket_id) REFERENCES public.publish_tickets(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.publish_idempotency
    ADD CONSTRAINT publish_idempotency_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.publish_tickets
    ADD CONSTRAINT publish_tickets_cloud_account_id_fkey FOREIGN KEY (cloud_account_id) REFERENCES public.cloud_accounts(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.publish_tickets
    ADD CONSTRAINT publish_tickets_copies_from_fkey FOREIGN KEY (copies_from) REFERENCES public.publish_tickets(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.publish_tickets
    ADD CONSTRAINT publish_tickets_group_id_fkey FOREIGN KEY (group_id) REFERENCES public.publish_groups(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.publish_tickets
    ADD CONSTRAINT publish_tickets_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.images(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.publish_tickets
    ADD CONSTRAINT publish_tickets_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.scanned_instances
    ADD CONSTRAINT scanned_instances_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.scans
    ADD CONSTRAINT scans_scanned_instance_id_fkey FOREIGN KEY (scanned_instance_id) REFERENCES public.scanned_instances(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.ticket_attempts
    ADD CONSTRAINT ticket_attempts_ticket_id_fkey FOREIGN KEY (ticket_id) REFERENCES public.publish_tickets(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.ticket_outbox
    ADD CONSTRAINT ticket_outbox_ticket_id_fkey FOREIGN KEY (ticket_id) REFERENCES public.publish_tickets(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.user_entitlements
    ADD CONSTRAINT user_entitlements_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
