//! Typed settings, layered: the defaults compiled in (`config/default.toml`), then the config
//! directory's `default.toml` when present and its `<PIMAGE_ENV>.toml`, then `PIMAGE__SECTION__KEY`
//! environment variables. Durations are written with units (`"30s"`, `"500ms"`) and checked
//! once, here, when the settings load: the code uses them as they are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
}

#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// The settings that hold secrets, which may come from a file instead: `PIMAGE__…_FILE`
/// names it (Docker secrets, as PostgreSQL's `POSTGRES_PASSWORD_FILE`). Only these: other
/// names end in `_FILE` of their own (`PIMAGE__CLOUD__CA_FILE` is `cloud.ca_file`).
const SECRETS_FROM_FILES: [&str; 4] = [
    "PIMAGE__DATABASE__URL",
    "PIMAGE__AMQP__URL",
    "PIMAGE__SECRETS__KEY",
    "PIMAGE__SECRETS__PREVIOUS_KEYS",
];

/// The `PIMAGE__…` variables, with each secret's `_FILE` read. A secret given both ways is
/// refused.
fn variables(
    all: &config::Map<String, String>,
) -> Result<config::Map<String, String>, config::ConfigError> {
    let mut out: config::Map<String, String> = all
        .iter()
        .filter(|(k, _)| k.starts_with("PIMAGE__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for target in SECRETS_FROM_FILES {
        let key = format!("{target}_FILE");
        let Some(path) = out.remove(&key) else {
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
        out.insert(
            target.to_string(),
            value.trim_end_matches(['\r', '\n']).to_string(),
        );
    }
    Ok(out)
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
        use config::{File, FileFormat};
        let all = vars.unwrap_or_else(|| std::env::vars().collect());
        let mut builder = config::Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(database_url_layer(&all).into_iter().collect::<Vec<_>>())
            .add_source(File::from(config_dir.join("default.toml")).required(false));
        // Profiles are not compiled in: dev.toml's public key must never ship in a release.
        if let Some(env) = profile {
            builder = builder.add_source(File::from(config_dir.join(format!("{env}.toml"))));
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("PIMAGE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("cloud.allowed_hosts")
                    .with_list_parse_key("secrets.previous_keys")
                    .source(Some(variables(&all)?)),
            )
            .build()?
            .try_deserialize()?;
        settings.check_durations()?;
        Ok(settings)
    }

    /// The effective settings as TOML-like text, with every secret masked.
    pub fn describe(&self) -> String {
        format!("{self:#?}")
    }

    /// Every duration setting with its key and the least it may be (what the code used to
    /// clamp to); none may exceed `LONGEST`.
    fn durations(&self) -> Vec<(String, Duration, Duration)> {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        let (api, w, l) = (&self.api, &self.worker, &self.limits);
        let mut all = vec![
            ("api.login_lockout", api.login_lockout, s(1)),
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
