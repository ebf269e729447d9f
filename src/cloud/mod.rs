//! OpenStack: Keystone v3 login and Glance v2 image create / upload / read back / delete,
//! over plain HTTP calls whose time and answer sizes are bounded (`answer`).
//!
//! Every failure is a `CloudError`: a summary in plain words for the user, the cloud's own
//! answer as detail, and a `Cause` that `CloudError::is_transient` classifies.
//!
//! This file: the account to publish with, and the one HTTP client every call goes through.

mod address_policy;
mod answer;
mod catalog;
mod error;
mod glance;
mod keystone;
mod profile;
mod session;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use crate::secrets::Secret;

use address_policy::{GuardedResolver, Refusal};

pub use address_policy::AddressPolicy;
pub use answer::read_at_most;
pub use error::{Cause, CloudError};
pub use glance::{
    Glance, GlanceImage, GlanceStore, StoreDelete, DEPLOYMENT_PROPERTY, TICKET_PROPERTY,
};
pub use keystone::Keystone;
pub use profile::{describe_for_url, upload_limit_for, DEFAULT_IMPORT_TIMEOUT};
pub use session::Sessions;

/// Where and as whom to publish (a `CredAccountOpenStack` plus the project scope).
#[derive(Debug, Clone)]
pub struct OpenStackAccount {
    pub keystone_url: String,
    pub glance_url: Option<String>,
    /// The catalog region whose Glance to use when `glance_url` is not given (a publish's
    /// `publishLocation`); `None`: the configured one.
    pub region: Option<String>,
    pub user: String,
    pub password: Secret,
    pub domain: String,
    pub project: String,
}

/// The client for every cloud call: names resolved through the policy's guard, redirects
/// checked too, the CA files of `ca_files` trusted beside the system roots; the `Refusal`
/// tells why the guard refused a name.
fn http_client(
    policy: &AddressPolicy,
    ca_files: &[std::path::PathBuf],
) -> Result<(reqwest::Client, Refusal), CloudError> {
    let redirects = policy.clone();
    let refusal = Refusal::default();
    let resolver = GuardedResolver {
        policy: policy.clone(),
        refusal: refusal.clone(),
    };
    tls::trust(reqwest::Client::builder(), ca_files)?
        .dns_resolver(Arc::new(resolver))
        .redirect(reqwest::redirect::Policy::custom(
            move |attempt| match redirects.check_url(attempt.url()) {
                Err(why) => attempt.error(format!("refused to follow a redirect: {why}")),
                Ok(()) if attempt.previous().len() >= 5 => attempt.error("too many redirects"),
                Ok(()) => attempt.follow(),
            },
        ))
        .connect_timeout(Duration::from_secs(10))
        // Never ask for nor inflate compressed answers, should another crate switch reqwest's
        // gzip feature on: a 254 KiB gzip answer can inflate to 256 MiB.
        .no_gzip()
        // A few calls per ticket: a fresh connection each costs nothing next to the upload,
        // and never races a server (uwsgi http-socket) that closes idle connections.
        .pool_max_idle_per_host(0)
        .build()
        .map(|client| (client, refusal))
        .map_err(|e| CloudError::transport("could not set up an HTTP client", &e))
}
