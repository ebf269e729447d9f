//! `--api URL`: a ticket-changing command sent to a running API with an administrator's
//! login (`/api/admin/tickets/{id}…`) instead of opened on the database, so an operator
//! needs the API's address and a login, not the database's password.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::api::admin::TicketAction;
use crate::printable::escaped;
use crate::secrets::Secret;

/// Where `pimage tickets cancel|delete|retry` go.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiTarget {
    /// Go through the API at this URL as an administrator, instead of opening the database:
    /// https://HOST[:PORT] (plain http only to this machine: it carries a password).
    #[arg(long, value_name = "URL", env = "PIMAGE_API_URL")]
    pub api: Option<String>,
    /// The administrator's login for --api; the password comes from PIMAGE_API_PASSWORD,
    /// else it is asked for at a terminal.
    #[arg(long, value_name = "LOGIN", env = "PIMAGE_API_USER")]
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
    pub fn new(target: &ApiTarget, url: &str) -> anyhow::Result<AdminApi> {
        let base = api_base(url)?;
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
            // A redirect would turn the POST into a GET, or drop the login on another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
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
        let said = serde_json::from_slice::<Said>(&first_bytes(answer).await)
            .ok()
            .and_then(|s| s.message.or(s.localized_error_msg.map(|e| e.message)));
        // What a server wrote is escaped: none may drive the terminal.
        match (status, said.as_deref().map(escaped)) {
            (StatusCode::OK, Some(message)) => Ok(message.into_owned()),
            (status, Some(why)) => anyhow::bail!("{why} (the API answered {status})"),
            (status, None) => {
                anyhow::bail!("{url} answered {status}: is it a pimage API of this version?")
            }
        }
    }
}

/// At most this much of an answer is read: one is a sentence; a proxy's page is cut.
const ANSWER_LIMIT: usize = 64 * 1024;

/// The first `ANSWER_LIMIT` bytes of an answer (the cloud client's bounded read); nothing
/// when it breaks off.
async fn first_bytes(answer: reqwest::Response) -> Vec<u8> {
    crate::cloud::read_at_most(answer, ANSWER_LIMIT)
        .await
        .map(|(body, _)| body)
        .unwrap_or_default()
}

/// The API's base URL from `--api`: https, or http to a loopback address (a password goes
/// with each call); `https://host`, `…/` and `…/api` (as hammr's `-a`) name the same API.
fn api_base(text: &str) -> anyhow::Result<url::Url> {
    let wanted = || anyhow::anyhow!("--api wants https://HOST[:PORT], not '{}'", escaped(text));
    let mut url = url::Url::parse(text).map_err(|_| wanted())?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => return Err(wanted()),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => anyhow::bail!(
            "--api {}: plain http would send the administrator's password in clear; use \
             https (http only to this machine)",
            escaped(text)
        ),
        _ => return Err(wanted()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        anyhow::bail!("--api: give the login with --api-user and the password in PIMAGE_API_PASSWORD, not in the URL");
    }
    let path = url
        .path()
        .trim_end_matches('/')
        .trim_end_matches("/api")
        .to_string();
    url.set_path(&format!("{path}/"));
    url.set_query(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::{api_base, first_bytes, ANSWER_LIMIT};

    #[tokio::test]
    async fn an_answer_is_read_to_64_kib_at_most() {
        let huge = axum::http::Response::new(vec![b'x'; 1 << 20]);
        assert_eq!(ANSWER_LIMIT, 64 * 1024);
        assert_eq!(first_bytes(huge.into()).await.len(), 64 * 1024);
    }

    #[test]
    fn the_api_url_is_https_or_loopback_http_without_credentials() {
        let base = |text| {
            api_base(text)
                .map(|u| u.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            base("https://pimage.example").unwrap(),
            "https://pimage.example/"
        );
        assert_eq!(
            base("https://pimage.example:8443/api/").unwrap(),
            "https://pimage.example:8443/"
        );
        assert_eq!(
            base("http://127.0.0.1:8080/api").unwrap(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            base("http://localhost:8080").unwrap(),
            "http://localhost:8080/"
        );
        assert!(base("http://pimage.example:8080")
            .unwrap_err()
            .contains("in clear"));
        assert!(base("pimage.example:8080")
            .unwrap_err()
            .contains("wants https://HOST"));
        assert!(base("https://root:pw@pimage.example")
            .unwrap_err()
            .contains("--api-user"));
    }
}
