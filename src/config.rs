//! Typed settings, layered: `config/default.toml`, then `config/<PIMAGE_ENV>.toml` if
//! `PIMAGE_ENV` is set, then `PIMAGE__SECTION__KEY` environment variables.

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
    pub retry: RetrySettings,
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
    /// Uploads that may run at once to one cloud over the whole worker pool (see
    /// `upload_limit_for`); `upload_limits` overrides it by host.
    #[serde(default = "default_max_uploads_per_cloud")]
    pub max_uploads_per_cloud: u32,
    #[serde(default)]
    pub upload_limits: Vec<UploadLimit>,
}

/// A per-cloud upload limit for the hosts `host` matches: a name, or `*.` and a domain (its
/// subdomains).
#[derive(Debug, Clone, Deserialize)]
pub struct UploadLimit {
    pub host: String,
    pub max_uploads: u32,
}

impl UploadLimit {
    fn matches(&self, host: &str) -> bool {
        let (pattern, host) = (self.host.to_ascii_lowercase(), host.to_ascii_lowercase());
        match pattern.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => pattern == host,
        }
    }
}

impl CloudSettings {
    /// The most uploads that may run at once to the cloud at `host` (a ticket's Glance host,
    /// or its Keystone host when Glance comes from the catalog), over every worker: the first
    /// `upload_limits` entry matching it, else `max_uploads_per_cloud`; never below 1.
    pub fn upload_limit_for(&self, host: &str) -> u32 {
        self.upload_limits
            .iter()
            .find(|limit| limit.matches(host))
            .map_or(self.max_uploads_per_cloud, |limit| limit.max_uploads)
            .max(1)
    }
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
            max_uploads_per_cloud: default_max_uploads_per_cloud(),
            upload_limits: vec![],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_limits_by_host_pattern_first_match_else_the_default() {
        let limit = |host: &str, max_uploads| UploadLimit {
            host: host.into(),
            max_uploads,
        };
        let cloud = CloudSettings {
            max_uploads_per_cloud: 8,
            upload_limits: vec![
                limit("glance.small.example", 2),
                limit("*.example.com", 3),
                limit("*.other.example.com", 4),
                limit("zero.example.org", 0),
            ],
            ..CloudSettings::default()
        };
        assert_eq!(cloud.upload_limit_for("glance.small.example"), 2);
        assert_eq!(cloud.upload_limit_for("GLANCE.Small.Example"), 2);
        assert_eq!(cloud.upload_limit_for("a.example.com"), 3);
        assert_eq!(cloud.upload_limit_for("b.other.example.com"), 3);
        assert_eq!(cloud.upload_limit_for("example.com"), 8);
        assert_eq!(cloud.upload_limit_for("badexample.com"), 8);
        assert_eq!(cloud.upload_limit_for("zero.example.org"), 1);
        assert_eq!(cloud.upload_limit_for("127.0.0.1"), 8);
    }
}
