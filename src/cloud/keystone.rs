//! Keystone v3: logging in (scoped to a project), checking every address against the
//! policy, and telling a wrong password from an unreachable project.

use osauth::common::IdOrName;
use osauth::identity::Password;
use osauth::services::IMAGE;
use osauth::{ErrorKind, Session};

use super::error::{clip, Cause, CloudError};
use super::{http_client, AddressPolicy, Glance, OpenStackAccount, CALL_TIMEOUT};

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
