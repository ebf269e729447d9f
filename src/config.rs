//! Typed settings, layered: the defaults compiled in (`config/default.toml`), then the config
//! directory's `default.toml` when present and its `<PIMAGE_ENV>.toml`, then `PIMAGE__SECTION__KEY`
//! environment variables. Durations are written with units (`"30s"`, `"500ms"`) and checked
//! once, here, when the settings load: the code uses them as they are. `pimage config` prints
//! them (`describe_sources`) as TOML, secrets masked, each value with the layer that set it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secrets::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(default)]
    pub retention: RetentionSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    #[serde(serialize_with = "masked_url")]
    pub url: Secret,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AmqpSettings {
    /// One broker URL, or the nodes of a cluster separated by commas (`urls()`).
    #[serde(serialize_with = "masked_urls")]
    pub url: Secret,
    pub queue: String,
}

impl AmqpSettings {
    /// The brokers to connect to, in the order given: one URL, or a cluster's nodes.
    pub fn urls(&self) -> Vec<&str> {
        broker_urls(self.url.expose())
    }
}

fn broker_urls(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Failed password logins one login name may have in `login_lockout` before it is
    /// locked for that long.
    pub login_max_failures: i32,
    #[serde(with = "humantime_serde")]
    pub login_lockout: Duration,
    /// How long a verified password is remembered (0s: verify every request).
    #[serde(with = "humantime_serde")]
    pub credential_cache: Duration,
    /// The UForge version `GET /api/status` answers, the one UForge clients check.
    pub uforge_version: String,
    /// How long a publish's `Idempotency-Key` answers with the ticket it first made.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WorkerSettings {
    /// Where the worker serves /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    pub concurrency: u16,
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// How long a claimed ticket stays owned without a progress write or a renewal.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Claims a ticket may use up before it ends in error (a poison ticket).
    pub max_ticket_attempts: i32,
    /// How often every process runs the rescuer.
    #[serde(with = "humantime_serde")]
    pub rescue_interval: Duration,
    /// On SIGTERM, how long running uploads may take to finish before they are handed back.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// One attempt (login, create, upload, read back) that runs longer ends, transient.
    #[serde(with = "humantime_serde")]
    pub attempt_deadline: Duration,
    /// An upload that sends fewer than `upload_min_bytes_per_sec` on average over
    /// `upload_stall_window` is cut (transient): a trickling cloud cannot pin a slot.
    pub upload_min_bytes_per_sec: u64,
    #[serde(with = "humantime_serde")]
    pub upload_stall_window: Duration,
    /// Where images converted for a cloud's profile (`disk_format`) are written, one
    /// attempt at a time, and removed when it ends.
    #[serde(default = "default_scratch_dir")]
    pub scratch_dir: PathBuf,
    /// Images that expand to more than this many bytes (their virtual size) are refused at
    /// registration and before a conversion.
    #[serde(default = "default_max_virtual_size_bytes")]
    pub max_virtual_size_bytes: u64,
    /// qemu-img runs in a sandbox (Landlock: it reads only the image, writes only its copy,
    /// no network) under these limits: wall-clock and CPU time, address space, open files.
    #[serde(default = "default_convert_timeout", with = "humantime_serde")]
    pub convert_timeout: Duration,
    #[serde(default = "default_convert_cpu", with = "humantime_serde")]
    pub convert_cpu: Duration,
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
fn default_convert_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_convert_cpu() -> Duration {
    Duration::from_secs(1800)
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
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RetrySettings {
    /// First delay; it doubles at each retry.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Cap on one delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// No new attempt starts after this long.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

/// Which cloud addresses users may make the service call (`cloud::AddressPolicy` enforces
/// it), how long one cloud call may take, and how this deployment names its images.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CloudSettings {
    /// Loopback addresses allowed (development against a local lab).
    pub allow_loopback: bool,
    /// When not empty, the only hosts allowed: names, `*.` wildcards, addresses or networks.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Longest wait for one cloud call but the upload (login, create, read back, delete,
    /// list), its answer read included.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Names this deployment on every image it creates (Glance property): its orphan sweep
    /// deletes only images carrying it.
    #[serde(default = "default_deployment")]
    pub deployment: String,
    /// How often the reconciler looks for leftover images in every known account.
    #[serde(default = "default_orphan_sweep", with = "humantime_serde")]
    pub orphan_sweep: Duration,
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
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
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
    /// Overrides `cloud.call_timeout` for this cloud.
    #[serde(default, with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    /// How long Glance may take to import staged bytes (default 30 min).
    #[serde(default, with = "humantime_serde")]
    pub import_timeout: Option<Duration>,
    /// Uploads to this cloud at once, across workers (the scale-out limit).
    #[serde(default)]
    pub max_uploads: Option<u32>,
}

/// How the image's bytes reach Glance.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
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

fn default_call_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_deployment() -> String {
    "pimage".into()
}

fn default_orphan_sweep() -> Duration {
    Duration::from_secs(600)
}

fn default_max_uploads_per_cloud() -> u32 {
    8
}

impl Default for CloudSettings {
    fn default() -> CloudSettings {
        CloudSettings {
            allow_loopback: false,
            allowed_hosts: vec![],
            call_timeout: default_call_timeout(),
            deployment: default_deployment(),
            orphan_sweep: default_orphan_sweep(),
            ca_file: None,
            region: None,
            profiles: vec![],
            max_uploads_per_cloud: default_max_uploads_per_cloud(),
        }
    }
}

/// What one client or one user may hold of a process: connections that send nothing, event
/// streams, queued tickets, publishes per minute (issue 23).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LimitSettings {
    /// A request's head must arrive whole this long after the connection opened or its
    /// previous answer ended (so it is also how long a kept-alive connection may idle).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection that moves no byte either way this long is closed (a stalled body, an
    /// answer not read). Longer than the event streams' 15 s keep-alive, and than a request
    /// may wait on a cloud (a DELETE that removes the image: a login and a delete).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Ticket event streams one user may hold open at once, per API process.
    pub event_streams_per_user: usize,
    /// How often open event streams check that their session or user still has access.
    #[serde(with = "humantime_serde")]
    pub stream_recheck: Duration,
    /// Tickets one user may have queued or running at once (over every API process).
    pub queued_tickets_per_user: i64,
    /// Publishes one user may file per minute, per API process, after a burst of
    /// `publish_burst`.
    pub publishes_per_minute: u32,
    pub publish_burst: u32,
    /// A request's whole body must arrive this long after its head: the idle timeout alone
    /// lets a body trickle in one byte at a time for ever.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Connections one listener serves at once; past it new ones are closed at once. Kept
    /// below the process's open-file limit, so one client cannot take every descriptor.
    pub max_connections: usize,
}

impl Default for LimitSettings {
    fn default() -> LimitSettings {
        LimitSettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            event_streams_per_user: 16,
            stream_recheck: Duration::from_secs(5),
            queued_tickets_per_user: 200,
            publishes_per_minute: 120,
            publish_burst: 120,
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// How long what tickets leave is kept (issue 26): a worker's rescuer deletes it past
/// these ages, `batch` rows per statement, each `every`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// Tickets ended (complete, error, cancelled) this long ago are deleted, with their
    /// attempts and events; not while their image cleanup is pending.
    #[serde(with = "humantime_serde")]
    pub finished_tickets: Duration,
    /// Events (charts, resumable streams) of ended tickets, this long after written.
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// Rows deleted per statement (its own transaction).
    pub batch: i64,
    /// Statements per round at most: past it, the next round goes on.
    pub batches_per_round: u32,
    /// How often a round runs.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

impl Default for RetentionSettings {
    fn default() -> RetentionSettings {
        RetentionSettings {
            finished_tickets: Duration::from_secs(90 * 24 * 3600),
            events: Duration::from_secs(7 * 24 * 3600),
            batch: 1000,
            batches_per_round: 100,
            every: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StorageSettings {
    /// Where image files are kept: a directory (a path or `file://` URL) or an S3 bucket
    /// (`s3://bucket/prefix`), as `crate::image_store::ImageStore` reads it.
    pub url: String,
    pub s3: S3Settings,
}

/// How an `s3://` image store is reached (any S3-compatible server).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct S3Settings {
    /// The server's URL; empty for AWS itself.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    #[serde(serialize_with = "masked")]
    pub secret_access_key: Secret,
    /// Plain `http://` endpoints are refused unless this is true (a lab, a private network).
    pub allow_http: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SecretSettings {
    /// Base64 of the 32-byte AES-256-GCM key for cloud passwords.
    #[serde(serialize_with = "masked")]
    pub key: Secret,
    /// Keys sealing was done with before `key`: they only open (see `pimage secrets rotate`).
    #[serde(default, serialize_with = "masked_all")]
    pub previous_keys: Vec<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The settings that hold secrets, which may come from a file instead: `PIMAGE__…_FILE`
/// names it (Docker secrets, as PostgreSQL's `POSTGRES_PASSWORD_FILE`). Only these: other
/// names end in `_FILE` of their own (`PIMAGE__CLOUD__CA_FILE` is `cloud.ca_file`).
const SECRETS_FROM_FILES: [&str; 5] = [
    "PIMAGE__DATABASE__URL",
    "PIMAGE__STORAGE__S3__SECRET_ACCESS_KEY",
    "PIMAGE__AMQP__URL",
    "PIMAGE__SECRETS__KEY",
    "PIMAGE__SECRETS__PREVIOUS_KEYS",
];

/// One `PIMAGE__…` variable's value, and the variable it was read from (`…_FILE` for a
/// secret read from a file): `pimage config` names it.
struct Variable {
    value: String,
    from: String,
}

/// The `PIMAGE__…` variables, with each secret's `_FILE` read. A secret given both ways is
/// refused.
fn variables(
    all: &config::Map<String, String>,
) -> Result<BTreeMap<String, Variable>, config::ConfigError> {
    let mut out: BTreeMap<String, Variable> = all
        .iter()
        .filter(|(k, _)| k.starts_with("PIMAGE__"))
        .map(|(k, v)| {
            let (value, from) = (v.clone(), k.clone());
            (k.clone(), Variable { value, from })
        })
        .collect();
    for target in SECRETS_FROM_FILES {
        let key = format!("{target}_FILE");
        let Some(Variable { value: path, .. }) = out.remove(&key) else {
            continue;
        };
        if out.contains_key(target) {
            return Err(config::ConfigError::Message(format!(
                "both {target} and {key} are set: set one"
            )));
        }
        let value = std::fs::read_to_string(&path).map_err(|e| {
            config::ConfigError::Message(format!("{key} = {path:?}: cannot read it: {e}"))
        })?;
        let value = value.trim_end_matches(['\r', '\n']).to_string();
        out.insert(target.to_string(), Variable { value, from: key });
    }
    Ok(out)
}

/// One variable read as `PIMAGE__SECTION__KEY` (lists split at commas where a list is due).
fn environment(name: &str, value: &str) -> config::Environment {
    let one = std::iter::once((name.to_string(), value.to_string()));
    config::Environment::with_prefix("PIMAGE")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("cloud.allowed_hosts")
        .with_list_parse_key("secrets.previous_keys")
        .source(Some(one.collect()))
}

/// sqlx's `DATABASE_URL`, as a layer just above the compiled-in defaults: the config files
/// and `PIMAGE__DATABASE__URL` still win over it.
fn database_url_layer(
    all: &config::Map<String, String>,
) -> Option<config::File<config::FileSourceString, config::FileFormat>> {
    let url = all.get("DATABASE_URL")?;
    // A JSON string is a TOML basic string: the URL is written escaped.
    let toml = format!(
        "[database]\nurl = {}\n",
        serde_json::Value::from(url.as_str())
    );
    Some(config::File::from_str(&toml, config::FileFormat::Toml))
}

/// The defaults, compiled in: the binary runs from any directory.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// One source of settings, and what `pimage config` calls it.
struct Layer {
    name: String,
    source: Box<dyn config::Source + Send + Sync>,
}

impl Layer {
    fn new(name: impl ToString, source: impl config::Source + Send + Sync + 'static) -> Layer {
        let (name, source) = (name.to_string(), Box::new(source));
        Layer { name, source }
    }
}

/// Every source of settings, lowest first (the last one setting a key wins): the defaults,
/// `DATABASE_URL`, the config files, then each variable as a layer of its own, so that
/// `pimage config` can name the one a value came from.
fn layers(
    config_dir: &Path,
    profile: Option<&str>,
    all: &config::Map<String, String>,
) -> Result<Vec<Layer>, config::ConfigError> {
    use config::{File, FileFormat};
    let mut layers = vec![Layer::new(
        "default",
        File::from_str(DEFAULTS, FileFormat::Toml),
    )];
    layers.extend(database_url_layer(all).map(|url| Layer::new("DATABASE_URL", url)));
    let default = config_dir.join("default.toml");
    let optional = File::from(default.clone()).required(false);
    layers.push(Layer::new(default.display(), optional));
    // Profiles are not compiled in: dev.toml's public key must never ship in a release.
    if let Some(env) = profile {
        let file = config_dir.join(format!("{env}.toml"));
        layers.push(Layer::new(file.display(), File::from(file.clone())));
    }
    for (name, variable) in variables(all)? {
        let source = environment(&name, &variable.value);
        layers.push(Layer::new(variable.from, source));
    }
    Ok(layers)
}

/// Longer than any duration setting may sensibly be (and short enough that adding it to
/// an `Instant` cannot overflow).
const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

impl Settings {
    /// Loads settings: the compiled-in defaults, then `config_dir`'s `default.toml` when
    /// present and its `<PIMAGE_ENV>.toml` (required when named), then the process environment; refuses durations out of range, naming the key.
    pub fn load(config_dir: &Path) -> Result<Settings, config::ConfigError> {
        Settings::load_from(config_dir, std::env::var("PIMAGE_ENV").ok(), None)
    }

    /// `load`, with the profile name and (when `Some`) the variables given rather than read
    /// from the process environment.
    fn load_from(
        config_dir: &Path,
        profile: Option<String>,
        vars: Option<config::Map<String, String>>,
    ) -> Result<Settings, config::ConfigError> {
        let all = vars.unwrap_or_else(|| std::env::vars().collect());
        Settings::from_layers(&layers(config_dir, profile.as_deref(), &all)?)
    }

    /// The settings the layers make, their durations checked.
    fn from_layers(layers: &[Layer]) -> Result<Settings, config::ConfigError> {
        let sources: Vec<Box<dyn config::Source + Send + Sync>> =
            layers.iter().map(|layer| layer.source.clone()).collect();
        let settings: Settings = config::Config::builder()
            .add_source(sources)
            .build()?
            .try_deserialize()?;
        settings.check_durations()?;
        Ok(settings)
    }

    /// Every duration setting with its key and the least it may be (what the code used to
    /// clamp to); none may exceed `LONGEST`.
    fn durations(&self) -> Vec<(String, Duration, Duration)> {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        let (api, w, l) = (&self.api, &self.worker, &self.limits);
        let mut all = vec![
            ("api.login_lockout", api.login_lockout, s(1)),
            ("api.idempotency_window", api.idempotency_window, s(60)),
            ("api.credential_cache", api.credential_cache, s(0)),
            ("worker.progress_interval", w.progress_interval, ms(100)),
            ("worker.lease", w.lease, s(1)),
            ("worker.rescue_interval", w.rescue_interval, s(1)),
            ("worker.shutdown_grace", w.shutdown_grace, s(0)),
            ("worker.attempt_deadline", w.attempt_deadline, s(1)),
            ("worker.upload_stall_window", w.upload_stall_window, s(1)),
            ("worker.convert_timeout", w.convert_timeout, s(1)),
            ("worker.convert_cpu", w.convert_cpu, s(1)),
            ("worker.retry.min_delay", w.retry.min_delay, ms(1)),
            ("worker.retry.max_delay", w.retry.max_delay, ms(1)),
            ("worker.retry.deadline", w.retry.deadline, s(0)),
            ("cloud.call_timeout", self.cloud.call_timeout, ms(1)),
            ("cloud.orphan_sweep", self.cloud.orphan_sweep, s(1)),
            ("limits.header_read_timeout", l.header_read_timeout, s(1)),
            ("limits.idle_timeout", l.idle_timeout, s(1)),
            ("limits.stream_recheck", l.stream_recheck, s(1)),
            ("limits.body_timeout", l.body_timeout, s(1)),
            (
                "retention.finished_tickets",
                self.retention.finished_tickets,
                s(3600),
            ),
            ("retention.events", self.retention.events, s(3600)),
            ("retention.every", self.retention.every, s(1)),
        ]
        .into_iter()
        .map(|(key, value, least)| (key.to_string(), value, least))
        .collect::<Vec<_>>();
        for p in &self.cloud.profiles {
            let key = |k: &str| format!("cloud.profiles[{}].{k}", p.name);
            if let Some(t) = p.call_timeout {
                all.push((key("call_timeout"), t, ms(1)));
            }
            if let Some(t) = p.import_timeout {
                all.push((key("import_timeout"), t, s(1)));
            }
        }
        all
    }

    fn check_durations(&self) -> Result<(), config::ConfigError> {
        for (key, value, least) in self.durations() {
            if value < least || value > LONGEST {
                return Err(config::ConfigError::Message(format!(
                    "{key} = \"{}\" is out of range: it must be at least {} and at most {}",
                    humantime::format_duration(value),
                    humantime::format_duration(least),
                    humantime::format_duration(LONGEST),
                )));
            }
        }
        Ok(())
    }
}

/// Opens `pimage config`'s output: TOML, so that it can be read back as a config file.
const DESCRIBE_HEADER: &str = "\
# pimage's effective settings. After each value, the source that set it, the last of:
# default (compiled in), DATABASE_URL, a config file, a PIMAGE__ variable (or its _FILE).
# Secrets are masked (***): fed back as a config file, they must be set again.
";

/// `pimage config`: the effective settings as TOML with every secret masked (a URL keeps all
/// but its password), each value followed by the layer that set it, and the keys that no
/// setting reads (loading ignores them) listed as `# unknown key: …`.
pub fn describe_sources(config_dir: &Path) -> Result<String, config::ConfigError> {
    describe_from(config_dir, std::env::var("PIMAGE_ENV").ok(), None)
}

/// `describe_sources`, with the profile and (when `Some`) the variables given.
fn describe_from(
    config_dir: &Path,
    profile: Option<String>,
    vars: Option<config::Map<String, String>>,
) -> Result<String, config::ConfigError> {
    use std::fmt::Write as _;
    let all = vars.unwrap_or_else(|| std::env::vars().collect());
    let layers = layers(config_dir, profile.as_deref(), &all)?;
    let effective = effective(&Settings::from_layers(&layers)?)?;
    // Each layer read on its own: the keys it sets, lowest layer first.
    let mut set_by = Vec::new();
    for layer in &layers {
        let mut alone = config::Value::from(config::Map::<String, config::Value>::new());
        layer.source.collect_to(&mut alone)?;
        let mut keys = Vec::new();
        leaves("", &alone.try_deserialize::<toml::Table>()?, &mut keys);
        keys.sort(); // a layer's keys come in no order
        set_by.extend(keys.into_iter().map(|key| (key, layer.name.as_str())));
    }
    let mut known = Vec::new();
    leaves("", &effective, &mut known);
    // An array of tables replaced by a later layer is no error: what it held is unknown
    // only in the layer that supplied the array in force.
    let unknown = |key: &String, layer: &str| {
        !known.contains(key)
            && key
                .split_once('[')
                .is_none_or(|(array, _)| source_of(array, &set_by) == layer)
    };
    let mut out = DESCRIBE_HEADER.to_string();
    for (key, layer) in set_by.iter().filter(|(key, layer)| unknown(key, layer)) {
        let _ = writeln!(out, "# unknown key: {key} ({})", comment(layer));
    }
    render(&mut out, "", &effective, &set_by);
    Ok(out)
}

/// The settings as a TOML table, secrets masked (see `masked_url`, `masked`).
fn effective(settings: &Settings) -> Result<toml::Table, config::ConfigError> {
    toml::Table::try_from(settings).map_err(|e| config::ConfigError::Message(e.to_string()))
}

/// Writes `table`'s values, each with the layer that set it, then its tables as sections.
/// Inside an array of tables (`[[cloud.profiles]]`) one layer set the whole array.
fn render(out: &mut String, prefix: &str, table: &toml::Table, set_by: &[(String, &str)]) {
    use std::fmt::Write as _;
    for (k, v) in table.iter().filter(|(_, v)| !is_section(v)) {
        let from = comment(source_of(&join(prefix, k), set_by));
        let _ = writeln!(out, "{} = {v}  # {from}", key(k));
    }
    for (k, v) in table {
        let path = join(prefix, k);
        match v {
            toml::Value::Table(t) => {
                let _ = writeln!(out, "\n[{path}]");
                render(out, &path, t, set_by);
            }
            toml::Value::Array(items) if is_section(v) => {
                let from = comment(source_of(&path, set_by));
                for item in items.iter().filter_map(toml::Value::as_table) {
                    let _ = writeln!(out, "\n[[{path}]]  # {from}");
                    for (k, v) in item {
                        let _ = writeln!(out, "{} = {v}", key(k));
                    }
                }
            }
            _ => {}
        }
    }
}

/// A table, or an array of tables: written as sections rather than on one line.
fn is_section(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(_) => true,
        toml::Value::Array(items) => !items.is_empty() && items.iter().all(|i| i.is_table()),
        _ => false,
    }
}

/// The dotted key of every value in `table` that is not a table, arrays of tables entered
/// (`cloud.profiles[0].name`): what a layer sets, or what the settings read.
fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = join(prefix, k);
        match v {
            toml::Value::Table(t) => leaves(&path, t, out),
            toml::Value::Array(items) if is_section(v) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(t) = item.as_table() {
                        leaves(&format!("{path}[{i}]"), t, out);
                    }
                }
            }
            _ => out.push(path),
        }
    }
}

/// The last layer that sets `key` (or, for an array of tables, any part of it); `default`
/// when none does (a default in the code).
fn source_of<'a>(key: &str, set_by: &[(String, &'a str)]) -> &'a str {
    let sets = |k: &str| {
        k.strip_prefix(key)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    let last = set_by.iter().rev().find(|(k, _)| sets(k));
    last.map_or("default", |(_, layer)| *layer)
}

/// `prefix.k`, as TOML writes a dotted key.
fn join(prefix: &str, k: &str) -> String {
    match prefix {
        "" => key(k),
        _ => format!("{prefix}.{}", key(k)),
    }
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn key(k: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !k.is_empty() && k.chars().all(bare) {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// A layer's name in a comment: a control character (a newline in a path) would end it.
fn comment(name: &str) -> String {
    let printable = |c: char| if c.is_control() { '?' } else { c };
    name.chars().map(printable).collect()
}

/// A secret as `pimage config` shows it: `***`, or empty when it is not set.
fn masked<S: serde::Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if secret.is_empty() { "" } else { "***" })
}

fn masked_all<S: serde::Serializer>(secrets: &[Secret], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(secrets.iter().map(|_| "***"))
}

/// A URL with its password masked: the host and database stay readable.
fn masked_url<S: serde::Serializer>(url: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&mask_url(url.expose()))
}

/// `masked_url` of each URL in a comma-separated list.
fn masked_urls<S: serde::Serializer>(list: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    let masked: Vec<String> = broker_urls(list.expose())
        .into_iter()
        .map(mask_url)
        .collect();
    serializer.serialize_str(&masked.join(","))
}

/// `url` with its password, and any `password` query parameter (libpq takes one), as
/// `***`; `***` whole when it does not parse.
fn mask_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "***".into();
    };
    if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
        return "***".into();
    }
    // libpq's `password` and `sslpassword` (the client key's passphrase), and their kin.
    let password = |k: &str| k.to_ascii_lowercase().contains("password");
    if parsed.query_pairs().any(|(k, _)| password(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if password(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(profile: Option<&str>, vars: &[(&str, &str)]) -> Result<Settings, String> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_from(
            Path::new("/nonexistent-config-dir"),
            profile.map(String::from),
            Some(vars.collect()),
        )
        .map_err(|e| e.to_string())
    }

    /// A directory of its own for one test (tests run at once, in one process).
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pimage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn describe_with(dir: &Path, profile: Option<&str>, vars: &[(&str, &str)]) -> String {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        describe_from(dir, profile.map(String::from), Some(vars.collect())).expect("describes")
    }

    fn assert_line(out: &str, line: &str) {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
    }

    /// `pimage config > x/default.toml`, then loading x alone, gives the same settings (as
    /// `pimage config` shows them: secrets masked).
    fn assert_loads_back(name: &str, out: &str, settings: &Settings) {
        let dir = scratch(&format!("config-back-{name}"));
        std::fs::write(dir.join("default.toml"), out).unwrap();
        let back = Settings::load_from(&dir, None, Some(Default::default())).expect("loads back");
        assert_eq!(effective(&back).unwrap(), effective(settings).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    const PROFILE: &str = r#"
[database]
max_connections = 20

[worker]
lease = "90s"
concurrrency = 2

[cloud]
allow_loopback = true

[[cloud.profiles]]
name = "ceph"
hosts = ["*.ceph.example.com", "10.20.0.0/16"]
disk_format = "raw"
regoin = "RegionTwo"
import_timeout = "30m"
properties = { hw_disk_bus = "scsi" }
"#;

    #[test]
    fn pimage_config_prints_toml_secrets_masked_and_where_each_value_came_from() {
        let dir = scratch("config-describe");
        std::fs::write(dir.join("prod.toml"), PROFILE).unwrap();
        // prod.toml's profiles replace these: `zone` is no longer read, nor reported.
        let replaced =
            "[amqp]\nqueue = \"q\"\n[[cloud.profiles]]\nname = \"a\"\nhosts = []\nzone = 1\n";
        std::fs::write(dir.join("default.toml"), replaced).unwrap();
        let key = "a2V5LWZyb20tYS1maWxlLW5vdC1pbi10aGUtb3V0cHV0IQ==";
        let key_file = dir.join("key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        let vars = [
            (
                "PIMAGE__DATABASE__URL",
                "postgres://pimage:hunter2@db.example:5432/pimagedb?sslmode=require&password=hunter3",
            ),
            ("PIMAGE__SECRETS__KEY_FILE", key_file.to_str().unwrap()),
            ("PIMAGE__SECRETS__PREVIOUS_KEYS", "b2xkLWtleS1vbmU=,b2xkLWtleS10d28="),
            ("PIMAGE__WORKER__CONCURENCY", "3"),
        ];
        let out = describe_with(&dir, Some("prod"), &vars);

        let parsed: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        for secret in [
            "hunter2",
            "hunter3",
            key,
            "b2xkLWtleS1vbmU=",
            "b2xkLWtleS10d28=",
        ] {
            assert!(!out.contains(secret), "{secret} in\n{out}");
        }
        assert!(
            !out.contains("guest:guest"),
            "the default AMQP password in\n{out}"
        );
        assert_line(
            &out,
            r#"url = "postgres://pimage:***@db.example:5432/pimagedb?sslmode=require&password=***"  # PIMAGE__DATABASE__URL"#,
        );
        assert_eq!(
            parsed["database"]["url"]
                .as_str()
                .map(|u| u.contains("@db.example:5432/pimagedb")),
            Some(true)
        );
        assert_line(
            &out,
            r#"url = "amqp://guest:***@127.0.0.1:5672/%2f"  # default"#,
        );
        assert_line(&out, r#"key = "***"  # PIMAGE__SECRETS__KEY_FILE"#);
        assert_line(
            &out,
            r#"previous_keys = ["***", "***"]  # PIMAGE__SECRETS__PREVIOUS_KEYS"#,
        );
        let prod = dir.join("prod.toml").display().to_string();
        assert_line(&out, &format!("max_connections = 20  # {prod}"));
        assert_line(&out, &format!(r#"lease = "1m 30s"  # {prod}"#));
        assert_line(&out, &format!("allow_loopback = true  # {prod}"));
        assert_line(&out, &format!("[[cloud.profiles]]  # {prod}"));
        assert_line(&out, r#"import_timeout = "30m""#);
        assert_line(&out, r#"properties = { hw_disk_bus = "scsi" }"#);
        assert_line(&out, "concurrency = 4  # default");
        assert_line(&out, "[worker.retry]");
        assert_line(&out, r#"min_delay = "2s"  # default"#);
        // Ignored when loading, as before; shown here.
        assert_line(
            &out,
            "# unknown key: worker.concurency (PIMAGE__WORKER__CONCURENCY)",
        );
        assert_line(
            &out,
            &format!("# unknown key: worker.concurrrency ({prod})"),
        );
        assert_line(
            &out,
            &format!("# unknown key: cloud.profiles[0].regoin ({prod})"),
        );
        assert!(!out.contains("zone"), "{out}");
        let queue = format!(r#"queue = "q"  # {}"#, dir.join("default.toml").display());
        assert_line(&out, &queue);

        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let settings =
            Settings::load_from(&dir, Some("prod".into()), Some(vars.collect())).unwrap();
        assert_loads_back("prod", &out, &settings);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pimage_config_names_database_url_and_the_profile_file() {
        // The profile alone: the repository's config/default.toml would set every key.
        let dir = scratch("config-dev");
        let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dev.toml");
        std::fs::copy(dev, dir.join("dev.toml")).unwrap();
        let vars = [
            ("DATABASE_URL", "postgres://sqlx:pw@db/pimage"),
            ("PIMAGE__WORKER__PROGRESS_INTERVAL", "250ms"),
            ("PIMAGE__CLOUD__ALLOWED_HOSTS", "*.example.com,10.0.0.0/8"),
        ];
        let out = describe_with(&dir, Some("dev"), &vars);
        toml::from_str::<toml::Table>(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_line(
            &out,
            r#"url = "postgres://sqlx:***@db/pimage"  # DATABASE_URL"#,
        );
        let dev = dir.join("dev.toml").display().to_string();
        assert_line(&out, &format!("allow_loopback = true  # {dev}"));
        assert_line(&out, &format!(r#"key = "***"  # {dev}"#));
        assert_line(
            &out,
            r#"progress_interval = "250ms"  # PIMAGE__WORKER__PROGRESS_INTERVAL"#,
        );
        assert_line(
            &out,
            r#"allowed_hosts = ["*.example.com", "10.0.0.0/8"]  # PIMAGE__CLOUD__ALLOWED_HOSTS"#,
        );
        assert!(!out.contains("unknown key"), "{out}");
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let settings = Settings::load_from(&dir, Some("dev".into()), Some(vars.collect())).unwrap();
        assert_loads_back("dev", &out, &settings);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn with_nothing_set_pimage_config_prints_the_defaults_and_an_empty_key() {
        let out = describe_with(Path::new("/nonexistent-config-dir"), None, &[]);
        assert_line(&out, r#"key = ""  # default"#);
        assert_line(&out, "previous_keys = []  # default");
        assert_line(&out, "profiles = []  # default");
        assert_line(
            &out,
            r#"url = "postgres://postgres@127.0.0.1:5432/pimage"  # default"#,
        );
        assert!(!out.contains("unknown key"), "{out}");
    }

    #[test]
    fn a_url_keeps_all_but_its_password() {
        assert_eq!(
            mask_url("postgres://postgres@127.0.0.1:5432/pimage"),
            "postgres://postgres@127.0.0.1:5432/pimage"
        );
        assert_eq!(
            mask_url("amqps://u:p%40ss@mq:5671/vhost?heartbeat=10"),
            "amqps://u:***@mq:5671/vhost?heartbeat=10"
        );
        assert_eq!(mask_url("not a url: s3cret"), "***");
        assert_eq!(
            mask_url("postgres:///pimage?host=/run/pg&PASSWORD=x"),
            "postgres:///pimage?host=%2Frun%2Fpg&PASSWORD=***"
        );
    }

    #[test]
    fn secrets_come_from_files_and_database_url_from_sqlx_s_variable() {
        let dir = std::env::temp_dir().join(format!("pimage-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("db-url");
        std::fs::write(&file, "postgres://from-a-file/pimage\n").unwrap();
        let path = file.to_str().unwrap();
        let s = load_with(None, &[("PIMAGE__DATABASE__URL_FILE", path)]).expect("loads");
        assert_eq!(s.database.url.expose(), "postgres://from-a-file/pimage");

        let s = load_with(None, &[("DATABASE_URL", "postgres://sqlx/db")]).expect("loads");
        assert_eq!(s.database.url.expose(), "postgres://sqlx/db");
        let s = load_with(
            None,
            &[
                ("DATABASE_URL", "postgres://sqlx/db"),
                ("PIMAGE__DATABASE__URL", "postgres://pimage/db"),
            ],
        )
        .expect("loads");
        assert_eq!(
            s.database.url.expose(),
            "postgres://pimage/db",
            "pimage's own wins"
        );

        let both = [
            ("PIMAGE__DATABASE__URL_FILE", path),
            ("PIMAGE__DATABASE__URL", "postgres://x/y"),
        ];
        let e = load_with(None, &both).unwrap_err();
        assert!(
            e.contains("both PIMAGE__DATABASE__URL and PIMAGE__DATABASE__URL_FILE"),
            "{e}"
        );
        // A setting whose own name ends in _FILE is that setting (found in review).
        let s = load_with(None, &[("PIMAGE__CLOUD__CA_FILE", "/etc/ssl/company.pem")]).unwrap();
        assert_eq!(
            s.cloud.ca_file.as_deref(),
            Some(Path::new("/etc/ssl/company.pem"))
        );
        // DATABASE_URL is below the config files (found in review).
        std::fs::write(
            dir.join("default.toml"),
            "[database]\nurl = \"postgres://from-the-config-file/db\"\n",
        )
        .unwrap();
        let vars = [("DATABASE_URL", "postgres://sqlx/db")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = Settings::load_from(&dir, None, Some(vars)).unwrap();
        assert_eq!(
            s.database.url.expose(),
            "postgres://from-the-config-file/db"
        );
        let e = load_with(None, &[("PIMAGE__SECRETS__KEY_FILE", "/nonexistent/key")]).unwrap_err();
        assert!(
            e.contains("PIMAGE__SECRETS__KEY_FILE") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_compiled_in_defaults_load_without_a_config_directory() {
        let s = load_with(None, &[]).expect("defaults load");
        assert_eq!(s.api.credential_cache, Duration::from_secs(60));
        assert_eq!(s.worker.progress_interval, Duration::from_secs(1));
        assert_eq!(s.worker.lease, Duration::from_secs(60));
        assert_eq!(s.worker.retry.min_delay, Duration::from_secs(2));
        assert_eq!(s.cloud.call_timeout, Duration::from_secs(60));
        assert_eq!(s.limits.header_read_timeout, Duration::from_secs(10));
        assert!(!s.cloud.allow_loopback);
    }

    #[test]
    fn a_named_profile_must_exist_and_is_read_over_the_defaults() {
        let e = load_with(Some("dev"), &[]).expect_err("no such file");
        assert!(e.contains("dev.toml"), "{e}");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let s = Settings::load_from(&dir, Some("dev".into()), Some(Default::default()))
            .expect("dev loads");
        assert!(s.cloud.allow_loopback);
    }

    #[test]
    fn retention_is_written_in_days_and_bounded() {
        let s = load_with(None, &[]).expect("loads");
        assert_eq!(
            s.retention.finished_tickets,
            Duration::from_secs(90 * 24 * 3600)
        );
        assert_eq!(s.retention.events, Duration::from_secs(7 * 24 * 3600));
        let vars = [("PIMAGE__RETENTION__FINISHED_TICKETS", "30 days")];
        let s = load_with(None, &vars).expect("loads");
        assert_eq!(
            s.retention.finished_tickets,
            Duration::from_secs(30 * 24 * 3600)
        );
        let e = load_with(None, &[("PIMAGE__RETENTION__EVENTS", "1m")]).unwrap_err();
        assert!(
            e.starts_with("retention.events = \"1m\" is out of range"),
            "{e}"
        );
    }

    #[test]
    fn durations_are_written_with_units() {
        let s = load_with(None, &[("PIMAGE__WORKER__PROGRESS_INTERVAL", "250ms")]).expect("loads");
        assert_eq!(s.worker.progress_interval, Duration::from_millis(250));
        let e = load_with(None, &[("PIMAGE__WORKER__PROGRESS_INTERVAL", "250")]).unwrap_err();
        assert!(e.contains("progress_interval"), "{e}");
    }

    #[test]
    fn a_duration_out_of_range_is_refused_naming_its_key() {
        let e = load_with(None, &[("PIMAGE__WORKER__RESCUE_INTERVAL", "0s")]).unwrap_err();
        assert!(
            e.starts_with(
                "worker.rescue_interval = \"0s\" is out of range: it must be at least 1s and at most "
            ),
            "{e}"
        );
        let e = load_with(None, &[("PIMAGE__LIMITS__IDLE_TIMEOUT", "1000years")]).unwrap_err();
        assert!(e.starts_with("limits.idle_timeout = "), "{e}");
        let e = load_with(None, &[("PIMAGE__WORKER__PROGRESS_INTERVAL", "10ms")]).unwrap_err();
        assert!(e.contains("at least 100ms"), "{e}");
        let e = load_with(None, &[("PIMAGE__WORKER__LEASE", "0s")]).unwrap_err();
        assert!(
            e.starts_with("worker.lease = \"0s\" is out of range"),
            "{e}"
        );
    }
}
