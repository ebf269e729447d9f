//! OpenStack: Keystone v3 login (osauth), Glance v2 image create / upload / delete through
//! the osauth session, and reading an image back with the `openstack` crate.
//!
//! Every failure is a `CloudError`: a summary in plain words for the user, the cloud's own
//! answer as detail, and a `Cause` that `CloudError::is_transient` classifies.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use osauth::common::IdOrName;
use osauth::identity::Password;
use osauth::services::IMAGE;
use osauth::{ErrorKind, Session};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Response;
use serde::Deserialize;

use crate::secrets::Secret;

/// Glance property naming the ticket an image belongs to: a retried job finds its image by it.
pub const TICKET_PROPERTY: &str = "pimage_ticket";

/// Longest cloud answer kept as detail.
const MAX_DETAIL: usize = 2000;

/// Limit for every call but the upload (which may take hours): a hung cloud is a transient
/// failure, not a stuck worker.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom to publish (a `CredAccountOpenStack` plus the project scope).
#[derive(Debug, Clone)]
pub struct OpenStackAccount {
    pub keystone_url: String,
    pub glance_url: Option<String>,
    pub user: String,
    pub password: Secret,
    pub domain: String,
    pub project: String,
}

/// Which addresses pimage may call on a user's behalf. Users name the Keystone (and Glance)
/// to call, so without a guard they could make workers call the cloud metadata service or
/// other internal endpoints, and read the answers back in error messages (SSRF).
///
/// Never allowed: link-local (169.254.0.0/16, the metadata service; fe80::/10), unspecified,
/// multicast and broadcast addresses. Loopback only with `allow_loopback` (development).
/// With `allowed_hosts` set, a URL's host must match one entry: a host name (`keystone.example.com`),
/// a wildcard (`*.example.com`), or an address or network (`10.0.0.0/8`). Checked on the URLs
/// users give (at publish time and before login), on every address a name resolves to (so
/// DNS cannot point a listed name elsewhere), and on every redirect.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AddressPolicy {
    pub allow_loopback: bool,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl AddressPolicy {
    /// `Err` says, in words for the user, why `url` may not be called.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let refuse = |why: &str| Err(format!("'{url}' {why}"));
        if !matches!(url.scheme(), "http" | "https") {
            return refuse("is not an http or https URL");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("must not carry credentials");
        }
        let ip = match url.host() {
            None => return refuse("has no host"),
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
        };
        if let Some(ip) = ip {
            self.check_ip(ip).map_err(|why| format!("'{url}' {why}"))?;
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed_hosts.is_empty()
            && !self
                .allowed_hosts
                .iter()
                .any(|entry| host_matches(entry, &host, ip))
        {
            return refuse("is not on this service's list of allowed cloud hosts");
        }
        Ok(())
    }

    /// `Err` says why the address may not be called.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let forbidden = match ip {
            IpAddr::V4(v4) => {
                v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
            }
            IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified() || v6.is_multicast()
            }
        };
        if forbidden {
            return Err(format!("is a link-local, multicast or unspecified address ({ip}): pimage never calls those"));
        }
        if ip.is_loopback() && !self.allow_loopback {
            return Err(format!(
                "is a loopback address ({ip}): not allowed on this service"
            ));
        }
        Ok(())
    }
}

/// Does an `allowed_hosts` entry admit `host` (lower case; `ip` when it is an address)?
fn host_matches(entry: &str, host: &str, ip: Option<IpAddr>) -> bool {
    let entry = entry.trim().to_ascii_lowercase();
    if let Some(suffix) = entry.strip_prefix("*.") {
        return host.ends_with(&format!(".{suffix}"));
    }
    let (Some(ip), Some(network)) = (ip, parse_network(&entry)) else {
        return entry == host;
    };
    let (base, bits) = network;
    match (ip, base) {
        (IpAddr::V4(ip), IpAddr::V4(base)) => {
            let mask = u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(base)) => {
            let mask = u128::MAX.checked_shl(128 - bits.min(128)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(base) & mask
        }
        _ => false,
    }
}

/// `10.0.0.0/8`, or a single address as a full-length network.
fn parse_network(entry: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = entry.split_once('/').unwrap_or((entry, ""));
    let addr: IpAddr = addr.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let bits = if bits.is_empty() {
        full
    } else {
        bits.parse().ok()?
    };
    (bits <= full).then_some((addr, bits))
}

/// Why the resolver refused a name, kept for the error message: osauth's errors drop their
/// source, so the refusal cannot be read back from the failed call.
type Refusal = Arc<std::sync::Mutex<Option<String>>>;

/// Resolves names, keeping only the addresses the policy allows.
struct GuardedResolver {
    policy: AddressPolicy,
    refusal: Refusal,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let refusal = self.refusal.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why_not = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        why_not = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = format!(
                    "host '{host}' {}",
                    why_not.unwrap_or_else(|| "resolves to no address".into())
                );
                *refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What went wrong, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// No answer: connection refused or reset, timeout, cut response.
    Transport,
    /// An HTTP error answer.
    Http {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Keystone refused the credentials or the scope (permanent: retrying cannot fix it).
    LoginRefused,
    /// Bad account settings (URLs): permanent.
    Config,
    /// Glance answered, but not with what it should have.
    BadAnswer,
}

/// A failure talking to the cloud: `summary` is for the user, `detail` is the cloud's answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{summary}")]
pub struct CloudError {
    pub summary: String,
    pub detail: Option<String>,
    pub cause: Cause,
}

impl CloudError {
    fn from_osauth(summary: impl Into<String>, err: &osauth::Error) -> CloudError {
        let cause = match err.kind() {
            ErrorKind::ProtocolError | ErrorKind::OperationTimedOut => Cause::Transport,
            ErrorKind::InternalServerError => Cause::Http {
                status: 500,
                retry_after: None,
            },
            ErrorKind::AuthenticationFailed => Cause::Http {
                status: 401,
                retry_after: None,
            },
            ErrorKind::AccessDenied => Cause::Http {
                status: 403,
                retry_after: None,
            },
            ErrorKind::ResourceNotFound | ErrorKind::EndpointNotFound => Cause::Http {
                status: 404,
                retry_after: None,
            },
            ErrorKind::Conflict => Cause::Http {
                status: 409,
                retry_after: None,
            },
            ErrorKind::InvalidConfig => Cause::Config,
            ErrorKind::InvalidInput => Cause::Http {
                status: 400,
                retry_after: None,
            },
            _ => Cause::BadAnswer,
        };
        CloudError {
            summary: summary.into(),
            detail: Some(clip(err.to_string())),
            cause,
        }
    }

    fn transport(summary: impl Into<String>, err: &reqwest::Error) -> CloudError {
        CloudError {
            summary: summary.into(),
            detail: Some(clip(error_chain(err))),
            cause: Cause::Transport,
        }
    }

    /// The one classifier: may a new attempt succeed where this one failed?
    ///
    /// Transient: no answer at all, 408, 429, 5xx, and 401 from Glance (an expired token: the
    /// next attempt logs in again). Everything else is permanent: refused credentials or
    /// scope, 400, 403, 404, 409, 413 (quota, size), 415 (format), bad settings.
    pub fn is_transient(&self) -> bool {
        match &self.cause {
            Cause::Transport => true,
            Cause::Http { status, .. } => matches!(status, 401 | 408 | 429 | 500..=599),
            Cause::LoginRefused | Cause::Config | Cause::BadAnswer => false,
        }
    }

    /// How long the cloud asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.cause {
            Cause::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short reason for status messages: "Glance answered 503", "connection failed".
    pub fn short_reason(&self) -> String {
        match &self.cause {
            Cause::Http { status, .. } => format!("the cloud answered {status}"),
            Cause::Transport => "the connection failed".into(),
            _ => self.summary.clone(),
        }
    }
}

fn clip(mut text: String) -> String {
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Turns an error answer into a `CloudError` (keeping status and `Retry-After`).
async fn check(
    response: Response,
    summary: impl FnOnce(u16) -> String,
) -> Result<Response, CloudError> {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    Err(CloudError {
        summary: summary(status.as_u16()),
        detail: Some(clip(format!("HTTP {status}: {}", glance_message(&body)))),
        cause: Cause::Http {
            status: status.as_u16(),
            retry_after,
        },
    })
}

/// The message of an OpenStack JSON error body, or the body itself.
fn glance_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .map(|m| {
            m.replace("<br />", " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| body.trim().to_string())
}

/// A logged-in session on one project.
#[derive(Clone)]
pub struct Glance {
    session: Session,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GlanceImage {
    pub id: String,
    pub status: String,
    pub checksum: Option<String>,
    pub size: Option<u64>,
}

fn http_client(policy: &AddressPolicy) -> Result<(reqwest::Client, Refusal), CloudError> {
    let redirects = policy.clone();
    let refusal = Refusal::default();
    let resolver = GuardedResolver {
        policy: policy.clone(),
        refusal: refusal.clone(),
    };
    reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver))
        .redirect(reqwest::redirect::Policy::custom(
            move |attempt| match redirects.check_url(attempt.url()) {
                Err(why) => attempt.error(format!("refused to follow a redirect: {why}")),
                Ok(()) if attempt.previous().len() >= 5 => attempt.error("too many redirects"),
                Ok(()) => attempt.follow(),
            },
        ))
        .connect_timeout(Duration::from_secs(10))
        // A few calls per ticket: a fresh connection each costs nothing next to the upload,
        // and never races a server (uwsgi http-socket) that closes idle connections.
        .pool_max_idle_per_host(0)
        .build()
        .map(|client| (client, refusal))
        .map_err(|e| CloudError::transport("could not set up an HTTP client", &e))
}

impl Glance {
    /// Logs in to Keystone v3 (user in `domain`, scoped to `project` in the same domain).
    /// Every address called must pass `policy`.
    pub async fn login(
        account: &OpenStackAccount,
        policy: &AddressPolicy,
    ) -> Result<Glance, CloudError> {
        let refused = |name: &str, why: String| CloudError {
            summary: format!("{name} {why}"),
            detail: None,
            cause: Cause::Config,
        };
        let keystone = url::Url::parse(&account.keystone_url).map_err(|e| CloudError {
            summary: format!("keystoneUrl '{}' is not a valid URL", account.keystone_url),
            detail: Some(e.to_string()),
            cause: Cause::Config,
        })?;
        policy
            .check_url(&keystone)
            .map_err(|why| refused("keystoneUrl", why))?;
        let (client, refusal) = http_client(policy)?;
        // A name resolved only to addresses the policy forbids: permanent, and said plainly.
        let resolver_refused = |summary: String| {
            refusal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|why| CloudError {
                    summary: format!("{summary}: {why}"),
                    detail: None,
                    cause: Cause::Config,
                })
        };
        let auth = Password::new(
            &account.keystone_url,
            account.user.clone(),
            account.password.expose(),
            account.domain.clone(),
        )
        .map_err(|e| CloudError {
            summary: format!("keystoneUrl '{}' is not a valid URL", account.keystone_url),
            detail: Some(e.to_string()),
            cause: Cause::Config,
        })?
        .with_project_scope(
            IdOrName::from_name(account.project.clone()),
            IdOrName::from_name(account.domain.clone()),
        );
        let login =
            tokio::time::timeout(CALL_TIMEOUT, Session::new_with_client(client.clone(), auth));
        let login = login.await.map_err(|_| CloudError {
            summary: format!(
                "Keystone at '{}' did not answer within {} s",
                account.keystone_url,
                CALL_TIMEOUT.as_secs()
            ),
            detail: None,
            cause: Cause::Transport,
        })?;
        let mut session = match login {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::AuthenticationFailed => {
                return Err(explain_refused_login(&client, account, &e).await)
            }
            Err(e) => {
                if let Some(error) = resolver_refused(format!(
                    "may not call Keystone at '{}'",
                    account.keystone_url
                )) {
                    return Err(error);
                }
                let summary = match e.kind() {
                    ErrorKind::ProtocolError | ErrorKind::OperationTimedOut => {
                        format!("could not reach Keystone at '{}'", account.keystone_url)
                    }
                    ErrorKind::ResourceNotFound => {
                        format!(
                            "no Keystone v3 identity service at '{}' (check keystoneUrl)",
                            account.keystone_url
                        )
                    }
                    _ => format!(
                        "Keystone at '{}' failed to log in user '{}'",
                        account.keystone_url, account.user
                    ),
                };
                return Err(CloudError::from_osauth(summary, &e));
            }
        };
        if let Some(url) = &account.glance_url {
            let url = url::Url::parse(url).map_err(|e| CloudError {
                summary: format!("glanceUrl '{url}' is not a valid URL"),
                detail: Some(e.to_string()),
                cause: Cause::Config,
            })?;
            policy
                .check_url(&url)
                .map_err(|why| refused("glanceUrl", why))?;
            session.set_endpoint_override(IMAGE, url);
        } else {
            // Names in the catalog are checked when resolved; addresses only here.
            let endpoint = session
                .get_endpoint(IMAGE, std::iter::empty::<&str>())
                .await
                .map_err(|e| {
                    CloudError::from_osauth("no Glance (image service) in the Keystone catalog", &e)
                })?;
            policy
                .check_url(&endpoint)
                .map_err(|why| refused("the catalog's Glance endpoint", why))?;
        }
        Ok(Glance { session })
    }

    /// Creates an empty (queued) image carrying the ticket property.
    pub async fn create_image(
        &self,
        name: &str,
        disk_format: &str,
        public: bool,
        ticket_key: &str,
    ) -> Result<GlanceImage, CloudError> {
        let body = serde_json::json!({
            "name": name,
            "disk_format": disk_format,
            "container_format": "bare",
            "visibility": if public { "public" } else { "private" },
            TICKET_PROPERTY: ticket_key,
        });
        let response = self
            .session
            .post(IMAGE, &["images"])
            .timeout(CALL_TIMEOUT)
            .header(ACCEPT, "application/json")
            .json(&body)
            .send_unchecked()
            .await
            .map_err(|e| {
                CloudError::from_osauth("could not reach Glance to create the image", &e)
            })?;
        let response = check(response, |status| match status {
            403 if public => "Glance refused to create a public image: this cloud account may not publish \
                              public images (publish with publicImage=false, or ask the cloud administrator)"
                .to_string(),
            403 => "Glance refused to create the image (forbidden)".into(),
            400 => format!("Glance refused the image definition (disk format '{disk_format}', name '{name}')"),
            413 => "Glance refused the image: quota exceeded".into(),
            s => format!("Glance failed to create the image (HTTP {s})"),
        })
        .await?;
        response
            .json::<GlanceImage>()
            .await
            .map_err(|e| CloudError {
                summary: "Glance answered the image creation with something unreadable".into(),
                detail: Some(e.to_string()),
                cause: Cause::BadAnswer,
            })
    }

    /// Streams `body` (exactly `length` bytes) into the image. Sent with a Content-Length and
    /// no `Expect: 100-continue`: Glance behind uwsgi refuses large chunks and never answers 100.
    pub async fn upload(
        &self,
        image_id: &str,
        body: reqwest::Body,
        length: u64,
    ) -> Result<(), CloudError> {
        let response = self
            .session
            .put(IMAGE, &["images", image_id, "file"])
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length)
            .body(body)
            .send_unchecked()
            .await
            .map_err(|e| CloudError::from_osauth("the upload to Glance was cut off", &e))?;
        check(response, |status| match status {
            413 => "Glance refused the image data: quota or size limit exceeded".to_string(),
            415 | 400 => {
                "Glance refused the image data: the file does not match its disk format".into()
            }
            403 => "Glance refused the upload (forbidden)".into(),
            409 | 410 => "the image was removed from Glance during the upload".into(),
            s => format!("the upload to Glance failed (HTTP {s})"),
        })
        .await
        .map(|_| ())
    }

    /// Reads an image back (status, checksum, size) through the `openstack` crate.
    pub async fn image(&self, image_id: &str) -> Result<GlanceImage, CloudError> {
        let cloud = openstack::Cloud::from(self.session.clone());
        let image = cloud.get_image(image_id).await.map_err(|e| {
            CloudError::from_osauth(format!("could not read Glance image {image_id}"), &e)
        })?;
        Ok(GlanceImage {
            id: image.id().clone(),
            status: image.status().to_string(),
            checksum: image.checksum().clone(),
            size: image.size(),
        })
    }

    /// Deletes an image; an image that is already gone counts as deleted.
    pub async fn delete_image(&self, image_id: &str) -> Result<(), CloudError> {
        let response = self
            .session
            .delete(IMAGE, &["images", image_id])
            .timeout(CALL_TIMEOUT)
            .header(ACCEPT, "application/json")
            .send_unchecked()
            .await
            .map_err(|e| {
                CloudError::from_osauth(
                    format!("could not reach Glance to delete image {image_id}"),
                    &e,
                )
            })?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(response, |s| {
            format!("Glance refused to delete image {image_id} (HTTP {s})")
        })
        .await
        .map(|_| ())
    }

    /// The images carrying this ticket's property.
    pub async fn images_of_ticket(&self, ticket_key: &str) -> Result<Vec<GlanceImage>, CloudError> {
        #[derive(Deserialize)]
        struct Page {
            images: Vec<GlanceImage>,
        }
        let response = self
            .session
            .get(IMAGE, &["images"])
            .timeout(CALL_TIMEOUT)
            .header(ACCEPT, "application/json")
            .query(&[(TICKET_PROPERTY, ticket_key)])
            .send_unchecked()
            .await
            .map_err(|e| CloudError::from_osauth("could not reach Glance to list images", &e))?;
        let response = check(response, |s| {
            format!("Glance failed to list images (HTTP {s})")
        })
        .await?;
        response
            .json::<Page>()
            .await
            .map(|p| p.images)
            .map_err(|e| CloudError {
                summary: "Glance answered the image list with something unreadable".into(),
                detail: Some(e.to_string()),
                cause: Cause::BadAnswer,
            })
    }
}

/// Keystone answers 401 both to a wrong password and to a project the user cannot reach.
/// An unscoped login with the same password tells them apart.
async fn explain_refused_login(
    client: &reqwest::Client,
    account: &OpenStackAccount,
    err: &osauth::Error,
) -> CloudError {
    let base = account.keystone_url.trim_end_matches('/');
    let tokens = if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    };
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": account.user, "domain": {"name": account.domain}, "password": account.password.expose()}}}}});
    let unscoped_ok = match client
        .post(tokens)
        .timeout(CALL_TIMEOUT)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    };
    let summary = if unscoped_ok {
        format!(
            "project '{}' not found in domain '{}', or user '{}' has no role in it",
            account.project, account.domain, account.user
        )
    } else {
        format!(
            "wrong cloud password for user '{}' in domain '{}' (or no such user or domain in Keystone)",
            account.user, account.domain
        )
    };
    CloudError {
        summary,
        detail: Some(clip(err.to_string())),
        cause: Cause::LoginRefused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> CloudError {
        CloudError {
            summary: String::new(),
            detail: None,
            cause: Cause::Http {
                status,
                retry_after: None,
            },
        }
    }

    #[test]
    fn the_address_policy_keeps_users_away_from_internal_endpoints() {
        let strict = AddressPolicy::default();
        let url = |u: &str| url::Url::parse(u).unwrap();
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]:5000",
            "http://[::ffff:169.254.169.254]/",
            "http://0.0.0.0:5000",
            "http://127.0.0.1:5000",
            "http://[::1]:5000",
            "http://user:pw@keystone.example.com",
            "file:///etc/passwd",
        ] {
            assert!(strict.check_url(&url(bad)).is_err(), "{bad}");
        }
        for good in [
            "https://keystone.example.com:5000/v3",
            "http://10.1.2.3:5000",
            "http://[2001:db8::1]:9292",
        ] {
            assert!(strict.check_url(&url(good)).is_ok(), "{good}");
        }
        let dev = AddressPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(dev.check_url(&url("http://127.0.0.1:5000")).is_ok());
        assert!(dev.check_url(&url("http://169.254.169.254/")).is_err());

        let listed = AddressPolicy {
            allow_loopback: false,
            allowed_hosts: vec![
                "*.cloud.example.com".into(),
                "10.0.0.0/8".into(),
                "keystone.example.org".into(),
            ],
        };
        assert!(listed
            .check_url(&url("https://k.cloud.example.com"))
            .is_ok());
        assert!(listed.check_url(&url("http://10.200.0.5:5000")).is_ok());
        assert!(listed
            .check_url(&url("http://KEYSTONE.example.org"))
            .is_ok());
        assert!(listed
            .check_url(&url("http://cloud.example.com.evil.net"))
            .is_err());
        assert!(listed.check_url(&url("http://11.0.0.1")).is_err());
        assert!(listed.check_url(&url("http://example.org")).is_err());
    }

    #[test]
    fn transient_faults_are_retried() {
        for status in [500, 502, 503, 504, 429, 408, 401] {
            assert!(http(status).is_transient(), "HTTP {status} is transient");
        }
        let cut = CloudError {
            summary: String::new(),
            detail: None,
            cause: Cause::Transport,
        };
        assert!(cut.is_transient(), "connection refused / reset / timeout");
    }

    #[test]
    fn permanent_faults_are_not() {
        for status in [400, 403, 404, 409, 413, 415] {
            assert!(!http(status).is_transient(), "HTTP {status} is permanent");
        }
        for cause in [Cause::LoginRefused, Cause::Config, Cause::BadAnswer] {
            let e = CloudError {
                summary: String::new(),
                detail: None,
                cause,
            };
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn retry_after_is_kept() {
        let e = CloudError {
            summary: String::new(),
            detail: None,
            cause: Cause::Http {
                status: 429,
                retry_after: Some(Duration::from_secs(7)),
            },
        };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(http(503).retry_after(), None);
    }

    #[test]
    fn glance_error_bodies_are_made_readable() {
        let body = r#"{"message": "Image disk_format qcow2 does not match stream data raw<br /><br />\n\n\n", "code": "415", "title": "x"}"#;
        assert_eq!(
            glance_message(body),
            "Image disk_format qcow2 does not match stream data raw"
        );
        assert_eq!(glance_message(" plain "), "plain");
    }
}
