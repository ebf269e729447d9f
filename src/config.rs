//! Typed settings, layered: `config/default.toml`, then `config/<PIMAGE_ENV>.toml` if
//! `PIMAGE_ENV` is set, then `PIMAGE__SECTION__KEY` environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secrets::Secret;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub storage: StorageSettings,
    pub cloud: CloudSettings,
    pub secrets: SecretSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub limits: LimitSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: Secret,
    pub queue: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Failed password logins one login name may have in `login_lockout_secs` before it is
    /// locked for that long.
    pub login_max_failures: i32,
    pub login_lockout_secs: u64,
    /// How long a verified password is remembered (0: verify every request).
    pub credential_cache_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Where the worker serves /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    pub concurrency: u16,
    pub progress_interval_ms: u64,
    pub lease_seconds: u32,
    /// Claims a ticket may use up before it ends in error (a poison ticket).
    pub max_ticket_attempts: i32,
    /// How often every process runs the rescuer, in seconds.
    pub rescue_interval_secs: u64,
    /// On SIGTERM, how long running uploads may take to finish before they are handed back.
    pub shutdown_grace_secs: u64,
    /// One attempt (login, create, upload, read back) that runs longer ends, transient.
    pub attempt_deadline_secs: u64,
    /// An upload that sends fewer than `upload_min_bytes_per_sec` on average over
    /// `upload_stall_window_secs` is cut (transient): a trickling cloud cannot pin a slot.
    pub upload_min_bytes_per_sec: u64,
    pub upload_stall_window_secs: u64,
    /// Where images converted for a cloud's profile (`disk_format`) are written, one
    /// attempt at a time, and removed when it ends.
    #[serde(default = "default_scratch_dir")]
    pub scratch_dir: PathBuf,
    /// Images that expand to more than this many bytes (their virtual size) are refused at
    /// registration and before a conversion.
    #[serde(default = "default_max_virtual_size_bytes")]
    pub max_virtual_size_bytes: u64,
    /// qemu-img runs in a sandbox (Landlock: it reads only the image, writes only its copy,
    /// no network) under these limits: wall-clock and CPU seconds, address space, open files.
    #[serde(default = "default_convert_timeout_secs")]
    pub convert_timeout_secs: u64,
    #[serde(default = "default_convert_cpu_secs")]
    pub convert_cpu_secs: u64,
    #[serde(default = "default_convert_memory_bytes")]
    pub convert_memory_bytes: u64,
    #[serde(default = "default_convert_max_open_files")]
    pub convert_max_open_files: u64,
    /// On a kernel without Landlock, conversions are refused unless this is true.
    #[serde(default)]
    pub allow_unsandboxed_conversion: bool,
    pub retry: RetrySettings,
}

/// 1 TiB, as `image_files::inspect::DEFAULT_MAX_VIRTUAL_SIZE`.
fn default_max_virtual_size_bytes() -> u64 {
    1 << 40
}
fn default_convert_timeout_secs() -> u64 {
    3600
}
fn default_convert_cpu_secs() -> u64 {
    1800
}
fn default_convert_memory_bytes() -> u64 {
    2 << 30
}
fn default_convert_max_open_files() -> u64 {
    64
}

fn default_scratch_dir() -> PathBuf {
    std::env::temp_dir().join("pimage-scratch")
}

/// Transient failures are retried with exponential backoff and full jitter (`retry`).
#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    /// First delay, in milliseconds; it doubles at each retry.
    pub min_delay_ms: u64,
    /// Cap on one delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// No new attempt starts after this many seconds.
    pub deadline_secs: u64,
}

/// Which cloud addresses users may make the service call (`cloud::AddressPolicy` enforces
/// it), how long one cloud call may take, and how this deployment names its images.
#[derive(Debug, Clone, Deserialize)]
pub struct CloudSettings {
    /// Loopback addresses allowed (development against a local lab).
    pub allow_loopback: bool,
    /// When not empty, the only hosts allowed: names, `*.` wildcards, addresses or networks.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Longest wait for one cloud call but the upload (login, create, read back, delete,
    /// list), its answer read included, in milliseconds.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Names this deployment on every image it creates (Glance property): its orphan sweep
    /// deletes only images carrying it.
    #[serde(default = "default_deployment")]
    pub deployment: String,
    /// How often the reconciler looks for leftover images in every known account, in seconds.
    #[serde(default = "default_orphan_sweep_secs")]
    pub orphan_sweep_secs: u64,
    /// Uploads that may run at once to one cloud over the whole worker pool; a profile's
    /// `max_uploads` overrides it (`cloud::upload_limit_for`).
    #[serde(default = "default_max_uploads_per_cloud")]
    pub max_uploads_per_cloud: u32,
    /// A PEM bundle of CA certificates trusted beside the system roots (a company CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The catalog region whose Glance is used when `glanceUrl` is absent.
    #[serde(default)]
    pub region: Option<String>,
    /// Per-cloud settings by host pattern; the first profile whose `hosts` match wins.
    #[serde(default)]
    pub profiles: Vec<CloudProfile>,
}

/// How a cloud is configured by its operator, for the clouds whose Glance (or, for
/// `ca_file` and `region`, Keystone) host matches one of `hosts` (names, `*.domain`
/// wildcards, addresses or networks, as in `allowed_hosts`). Unset fields fall back to the
/// `cloud.*` settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CloudProfile {
    pub name: String,
    pub hosts: Vec<String>,
    /// PEM bundle trusted beside the system roots and `cloud.ca_file`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub region: Option<String>,
    /// The disk format Glance wants (e.g. `raw` on Ceph): other formats are converted with
    /// `qemu-img convert` before the upload.
    #[serde(default)]
    pub disk_format: Option<String>,
    /// Extra image properties set at creation (`hw_disk_bus`, `os_distro`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How the bytes reach Glance: `direct` (PUT …/file), `glance-direct` (stage + import),
    /// `web-download` (Glance fetches a signed link from `web_download_base_url`).
    #[serde(default)]
    pub import_method: Option<ImportMethod>,
    /// The root URL of pimage's API as this cloud's Glance reaches it (e.g.
    /// `http://pimage.internal:8080`), for `web-download`.
    #[serde(default)]
    pub web_download_base_url: Option<String>,
    /// Overrides `cloud.call_timeout_ms` for this cloud.
    #[serde(default)]
    pub call_timeout_ms: Option<u64>,
    /// How long Glance may take to import staged bytes, in seconds (default 1800).
    #[serde(default)]
    pub import_timeout_secs: Option<u64>,
    /// Uploads to this cloud at once, across workers (the scale-out limit).
    #[serde(default)]
    pub max_uploads: Option<u32>,
}

/// How the image's bytes reach Glance.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ImportMethod {
    /// `PUT /v2/images/{id}/file`; when Glance forbids it (403), `glance-direct`.
    Direct,
    /// `PUT …/stage`, then `POST …/import` with `glance-direct`, and a wait for `active`.
    GlanceDirect,
    /// `POST …/import` with `web-download` and a signed, expiring link to the file served by
    /// the API (`/image-links/{ticket}`), then the same wait for `active`.
    WebDownload,
}

fn default_call_timeout_ms() -> u64 {
    60_000
}

fn default_deployment() -> String {
    "pimage".into()
}

fn default_orphan_sweep_secs() -> u64 {
    600
}

fn default_max_uploads_per_cloud() -> u32 {
    8
}

impl Default for CloudSettings {
    fn default() -> CloudSettings {
        CloudSettings {
            allow_loopback: false,
            allowed_hosts: vec![],
            call_timeout_ms: default_call_timeout_ms(),
            deployment: default_deployment(),
            orphan_sweep_secs: default_orphan_sweep_secs(),
            ca_file: None,
            region: None,
            profiles: vec![],
            max_uploads_per_cloud: default_max_uploads_per_cloud(),
        }
    }
}

/// What one client or one user may hold of a process: connections that send nothing, event
/// streams, queued tickets, publishes per minute (issue 23).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// A request's head must arrive whole this long after the connection opened or its
    /// previous answer ended (so it is also how long a kept-alive connection may idle).
    pub header_read_timeout_secs: u64,
    /// A connection that moves no byte either way this long is closed (a stalled body, an
    /// answer not read). Longer than the event streams' 15 s keep-alive, and than a request
    /// may wait on a cloud (a DELETE that removes the image: a login and a delete).
    pub idle_timeout_secs: u64,
    /// Ticket event streams one user may hold open at once, per API process.
    pub event_streams_per_user: usize,
    /// How often open event streams check that their session or user still has access.
    pub stream_recheck_secs: u64,
    /// Tickets one user may have queued or running at once (over every API process).
    pub queued_tickets_per_user: i64,
    /// Publishes one user may file per minute, per API process, after a burst of
    /// `publish_burst`.
    pub publishes_per_minute: u32,
    pub publish_burst: u32,
    /// A request's whole body must arrive this long after its head: the idle timeout alone
    /// lets a body trickle in one byte at a time for ever.
    pub body_timeout_secs: u64,
    /// Connections one listener serves at once; past it new ones are closed at once. Kept
    /// below the process's open-file limit, so one client cannot take every descriptor.
    pub max_connections: usize,
}

impl Default for LimitSettings {
    fn default() -> LimitSettings {
        LimitSettings {
            header_read_timeout_secs: 10,
            idle_timeout_secs: 120,
            event_streams_per_user: 16,
            stream_recheck_secs: 5,
            queued_tickets_per_user: 200,
            publishes_per_minute: 120,
            publish_burst: 120,
            body_timeout_secs: 30,
            max_connections: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub image_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecretSettings {
    /// Base64 of the 32-byte AES-256-GCM key for cloud passwords.
    pub key: Secret,
    /// Keys sealing was done with before `key`: they only open (see `pimage secrets rotate`).
    #[serde(default)]
    pub previous_keys: Vec<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads settings from `config_dir` and the process environment.
    pub fn load(config_dir: &Path) -> Result<Settings, config::ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from(config_dir.join("default.toml")));
        if let Ok(env) = std::env::var("PIMAGE_ENV") {
            builder =
                builder.add_source(config::File::from(config_dir.join(format!("{env}.toml"))));
        }
        builder
            .add_source(
                config::Environment::with_prefix("PIMAGE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("cloud.allowed_hosts")
                    .with_list_parse_key("secrets.previous_keys"),
            )
            .build()?
            .try_deserialize()
    }

    /// Where config files live: `PIMAGE_CONFIG_DIR`, else `./config`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("PIMAGE_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"))
    }

    /// The effective settings as TOML-like text, with every secret masked.
    pub fn describe(&self) -> String {
        format!("{self:#?}")
    }
}
