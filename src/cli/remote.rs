//! `--api URL`: a ticket-changing command sent to a running API with an administrator's
//! login (`/api/admin/tickets/{id}…`) instead of opened on the database, so an operator
//! needs the API's address and a login, not the database's password.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::api::admin::TicketAction;
use crate::secrets::Secret;

/// Where `pimage tickets cancel|delete|retry` go.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiTarget {
    /// Go through the API at this URL (e.g. http://pimage.example:8080) as an administrator,
    /// instead of opening the database.
    #[arg(long, value_name = "URL", env = "PIMAGE_API_URL")]
    pub api: Option<url::Url>,
    /// The administrator's login for --api; the password comes from PIMAGE_API_PASSWORD,
    /// else it is asked for at a terminal.
    #[arg(long, value_name = "LOGIN", env = "PIMAGE_API_USER", requires = "api")]
    pub api_user: Option<String>,
}

/// An administrator's session with a running API.
pub struct AdminApi {
    base: url::Url,
    login: String,
    password: Secret,
    client: reqwest::Client,
}

/// The body of an answer: `{"message": …}` on success, a `uforgeError` otherwise.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Said {
    message: Option<String>,
    localized_error_msg: Option<ErrorMessage>,
}

#[derive(Deserialize)]
struct ErrorMessage {
    message: String,
}

impl AdminApi {
    pub fn new(target: &ApiTarget, url: &url::Url) -> anyhow::Result<AdminApi> {
        let Some(login) = target.api_user.clone() else {
            anyhow::bail!(
                "--api needs --api-user LOGIN (or PIMAGE_API_USER): an administrator's login"
            );
        };
        let password = match std::env::var("PIMAGE_API_PASSWORD") {
            Ok(password) => password,
            Err(_) => super::users::ask_password(&login, false, "set PIMAGE_API_PASSWORD")?,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        // `http://host:8080`, `…/` and `…/api` (as hammr's -a) all name the same API.
        let mut base = url.clone();
        let path = base
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/api")
            .to_string();
        base.set_path(&format!("{path}/"));
        Ok(AdminApi {
            base,
            login,
            password: Secret::new(password),
            client,
        })
    }

    /// Does `action` to ticket `id`; the API's sentence, or an error naming its status.
    pub async fn apply(&self, id: i64, action: TicketAction) -> anyhow::Result<String> {
        let (method, tail) = match action {
            TicketAction::Cancel => (Method::POST, "/cancel"),
            TicketAction::Retry => (Method::POST, "/retry"),
            TicketAction::Delete => (Method::DELETE, ""),
        };
        let url = self.base.join(&format!("api/admin/tickets/{id}{tail}"))?;
        let answer = self
            .client
            .request(method, url.clone())
            .basic_auth(&self.login, Some(self.password.expose()))
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("the API at {} did not answer: {e}", self.base))?;
        let status = answer.status();
        let said = serde_json::from_slice::<Said>(&first_bytes(answer, 64 * 1024).await)
            .ok()
            .and_then(|s| s.message.or(s.localized_error_msg.map(|e| e.message)));
        match (status, said) {
            (StatusCode::OK, Some(message)) => Ok(message),
            (status, Some(why)) => anyhow::bail!("{why} (the API answered {status})"),
            (status, None) => {
                anyhow::bail!("{url} answered {status}: is it a pimage API of this version?")
            }
        }
    }
}

/// At most `limit` bytes of an answer: one is a sentence; a proxy's page is cut, not read whole.
async fn first_bytes(mut answer: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            body.truncate(limit);
            break;
        }
    }
    body
}
