//! Keystone v3: logging in (scoped to a project), checking a stored account's password
//! (unscoped), finding Glance in the catalog, checking every address against the policy
//! BEFORE connecting, and telling a wrong password from an unreachable project. Answers are
//! read within the bounds of `answer`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;

use super::address_policy::Refusal;
use super::answer::{json, within};
use super::catalog::{image_endpoint, CatalogService, Region};
use super::error::{check, clip, Cause, CloudError};
use super::glance::glance_v2;
use super::session::Session;
use super::{http_client, AddressPolicy, Glance, OpenStackAccount};
use crate::secrets::Secret;

/// The part of a Keystone token answer pimage reads: the catalog and the token's lifetime.
#[derive(Deserialize)]
struct TokenAnswer {
    token: Token,
}

#[derive(Deserialize)]
struct Token {
    #[serde(default)]
    catalog: Vec<CatalogService>,
    issued_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

/// A token with no readable lifetime is used for this long at most.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);

/// A new token and what goes with it.
pub(super) struct Login {
    pub(super) client: reqwest::Client,
    pub(super) token: Secret,
    /// Glance's v2 base URL (checked).
    pub(super) glance: url::Url,
    /// Its catalog region; None when the account gave Glance's URL.
    pub(super) glance_region: Option<String>,
    /// `expires_at - issued_at`, both by Keystone's clock, so a skewed local clock is harmless.
    pub(super) lifetime: Duration,
}

fn refused(name: &str, why: String) -> CloudError {
    CloudError {
        summary: format!("{name} {why}"),
        detail: None,
        cause: Cause::Config,
    }
}

fn parse(name: &str, url: &str) -> Result<url::Url, CloudError> {
    url::Url::parse(url).map_err(|e| CloudError {
        summary: format!("{name} '{url}' is not a valid URL"),
        detail: Some(e.to_string()),
        cause: Cause::Config,
    })
}

/// The token endpoint under a Keystone URL given with or without its `/v3`.
fn tokens_url(keystone_url: &str) -> String {
    let base = keystone_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// Keystone v3, where an account logs in.
pub struct Keystone;

impl Keystone {
    /// Logs in to Keystone v3 (user in `domain`, scoped to `project` in the same domain), for
    /// one use; workers reuse sessions instead (`Sessions`). Every address called must pass
    /// `policy`.
    pub async fn login(
        account: &OpenStackAccount,
        policy: &AddressPolicy,
    ) -> Result<Glance, CloudError> {
        Session::start(account, policy).await.map(Glance::from)
    }

    /// Checks `user`'s password (in `domain`) with an unscoped login, as a stored account is
    /// checked before it is kept. Every address called must pass `policy`.
    pub async fn check_password(
        keystone_url: &str,
        user: &str,
        domain: &str,
        password: &Secret,
        policy: &AddressPolicy,
    ) -> Result<(), CloudError> {
        check_password(keystone_url, user, domain, password, policy).await
    }
}

/// A new token: the client it goes with, the token, and Glance's v2 base URL (checked).
pub(super) async fn log_in(
    account: &OpenStackAccount,
    policy: &AddressPolicy,
) -> Result<Login, CloudError> {
    let keystone = parse("keystoneUrl", &account.keystone_url)?;
    policy
        .check_url(&keystone)
        .map_err(|why| refused("keystoneUrl", why))?;
    // The glanceUrl given is checked before anything is sent.
    let given_glance = match &account.glance_url {
        Some(url) => {
            let url = parse("glanceUrl", url)?;
            policy
                .check_url(&url)
                .map_err(|why| refused("glanceUrl", why))?;
            Some(url)
        }
        None => None,
    };
    let ca_files = super::tls::ca_files(policy, &[&keystone]);
    let (client, refusal) = http_client(policy, &ca_files)?;
    let limit = policy.call_timeout_for(&keystone);
    let issued = request_token(&client, &refusal, account, limit).await?;
    let (glance, glance_region) = match given_glance {
        Some(url) => (url, None),
        None => {
            let (url, region) = glance_from_catalog(
                policy,
                &keystone,
                &issued.catalog,
                account.region.as_deref(),
            )?;
            (url, Some(region))
        }
    };
    // Glance's own profile may trust one more CA.
    let all = super::tls::ca_files(policy, &[&keystone, &glance]);
    let client = if all == ca_files {
        client
    } else {
        http_client(policy, &all)?.0
    };
    Ok(Login {
        client,
        token: issued.token,
        glance: glance_v2(glance),
        glance_region,
        lifetime: issued.lifetime,
    })
}

/// What a successful token request gave.
struct Issued {
    token: Secret,
    catalog: Vec<CatalogService>,
    lifetime: Duration,
}

/// The project-scoped token request, within `limit`; a refused login explained.
async fn request_token(
    client: &reqwest::Client,
    refusal: &Refusal,
    account: &OpenStackAccount,
    limit: Duration,
) -> Result<Issued, CloudError> {
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": account.user, "domain": {"name": account.domain},
            "password": account.password.expose()}}},
        "scope": {"project": {"name": account.project, "domain": {"name": account.domain}}}}});
    let what = format!("Keystone at '{}'", account.keystone_url);
    within(limit, &what, async {
        let response = client
            .post(tokens_url(&account.keystone_url))
            .json(&body)
            .send()
            .await
            .map_err(|e| not_sent(refusal, &account.keystone_url, &e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let refusal = check(response, |_| String::new()).await.err();
            return Err(explain_refused_login(client, account, refusal).await);
        }
        let response = check(response, |status| match status {
            404 => format!(
                "no Keystone v3 identity service at '{}' (check keystoneUrl)",
                account.keystone_url
            ),
            _ => format!(
                "Keystone at '{}' failed to log in user '{}'",
                account.keystone_url, account.user
            ),
        })
        .await?;
        read_token(response, &what).await
    })
    .await
}

/// A token request that got no answer. A name resolved only to addresses the policy forbids
/// is permanent, and said plainly.
fn not_sent(refusal: &Refusal, keystone_url: &str, e: &reqwest::Error) -> CloudError {
    let forbidden = refusal.lock().unwrap_or_else(|e| e.into_inner()).take();
    match forbidden {
        Some(why) => CloudError {
            summary: format!("may not call Keystone at '{keystone_url}': {why}"),
            detail: None,
            cause: Cause::Config,
        },
        None => CloudError::sending(format!("could not reach Keystone at '{keystone_url}'"), e),
    }
}

/// Checks a password with one unscoped Keystone v3 password login (the user in `domain`),
/// within the call timeout; the token is dropped unread. A stored account names no project,
/// so only the password can be checked.
pub(super) async fn check_password(
    keystone_url: &str,
    user: &str,
    domain: &str,
    password: &Secret,
    policy: &AddressPolicy,
) -> Result<(), CloudError> {
    let keystone = parse("keystoneUrl", keystone_url)?;
    policy
        .check_url(&keystone)
        .map_err(|why| refused("keystoneUrl", why))?;
    let (client, refusal) = http_client(policy, &super::tls::ca_files(policy, &[&keystone]))?;
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": domain}, "password": password.expose()}}}}});
    let what = format!("Keystone at '{keystone_url}'");
    within(policy.call_timeout_for(&keystone), &what, async {
        let response = client
            .post(tokens_url(keystone_url))
            .json(&body)
            .send()
            .await
            .map_err(|e| not_sent(&refusal, keystone_url, &e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let reason = check(response, |_| String::new()).await.err();
            let reason = reason.and_then(|e| e.detail).unwrap_or_default();
            return Err(CloudError {
                summary: format!(
                    "Keystone refused the login for '{user}' (user domain '{domain}'): {reason}"
                ),
                detail: None,
                cause: Cause::LoginRefused,
            });
        }
        check(response, |status| match status {
            404 => {
                format!("no Keystone v3 identity service at '{keystone_url}' (check keystoneUrl)")
            }
            _ => format!("Keystone at '{keystone_url}' failed to log in user '{user}'"),
        })
        .await
        .map(drop)
    })
    .await
}

/// The token (from its header) and the catalog and lifetime (from the body).
async fn read_token(response: reqwest::Response, what: &str) -> Result<Issued, CloudError> {
    let token = response
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(Secret::new)
        .ok_or_else(|| CloudError {
            summary: format!("{what} answered the login without a token"),
            detail: None,
            cause: Cause::BadAnswer,
        })?;
    let answer: TokenAnswer = json(response, &format!("{what} answered the login")).await?;
    let lifetime = match (answer.token.issued_at, answer.token.expires_at) {
        (Some(issued), Some(expires)) => (expires - issued).to_std().unwrap_or_default(),
        _ => UNKNOWN_LIFETIME,
    };
    Ok(Issued {
        token,
        catalog: answer.token.catalog,
        lifetime,
    })
}

/// Glance's endpoint from the catalog (in the publish's region, else the profile's, else
/// `cloud.region`), checked before the first connection to it (the resolver checks names
/// again).
fn glance_from_catalog(
    policy: &AddressPolicy,
    keystone: &url::Url,
    catalog: &[CatalogService],
    region: Option<&str>,
) -> Result<(url::Url, String), CloudError> {
    let profile = policy.profile_for(keystone);
    let configured = |name| Region {
        name,
        chosen_by: "cloud.region",
    };
    let region = match region {
        Some(name) => Some(Region {
            name,
            chosen_by: "publishLocation",
        }),
        None => profile
            .and_then(|p| p.region.as_deref())
            .or(policy.settings().region.as_deref())
            .map(configured),
    };
    let endpoint = image_endpoint(catalog, region)?;
    let url = parse("the catalog's Glance endpoint", &endpoint.url)?;
    policy
        .check_url(&url)
        .map_err(|why| refused("the catalog's Glance endpoint", why))?;
    Ok((url, endpoint.region))
}

/// Keystone answers 401 both to a wrong password and to a project the user cannot reach.
/// An unscoped login with the same password tells them apart.
async fn explain_refused_login(
    client: &reqwest::Client,
    account: &OpenStackAccount,
    refusal: Option<CloudError>,
) -> CloudError {
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": account.user, "domain": {"name": account.domain}, "password": account.password.expose()}}}}});
    // Within the caller's call timeout; the answer's body is never read.
    let unscoped_ok = match client
        .post(tokens_url(&account.keystone_url))
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
        detail: refusal.and_then(|e| e.detail).map(clip),
        cause: Cause::LoginRefused,
    }
}
