//! Cloud failures: `CloudError` (summary for the user, the cloud's answer as detail), its
//! `Cause`, the one classifier of what is worth retrying, and the reading of error answers.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::Response;

use super::answer::{read_at_most, MAX_ERROR_BYTES};

/// Longest cloud answer kept as detail.
const MAX_DETAIL: usize = 2000;

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
    /// One of our bounds was hit (call timeout, upload stall, attempt deadline): transient,
    /// and the summary names the bound.
    Bound,
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
    /// A request that got no answer; a refused redirect is permanent (following it can
    /// never be allowed), everything else transient.
    pub(super) fn sending(summary: impl Into<String>, err: &reqwest::Error) -> CloudError {
        let summary = summary.into();
        if let Some(certificate) = super::tls::certificate_failure(err) {
            return certificate;
        }
        if err.is_redirect() {
            return CloudError {
                summary: format!("{summary}: {}", error_chain(err)),
                detail: None,
                cause: Cause::Config,
            };
        }
        CloudError::transport(summary, err)
    }

    pub(super) fn transport(summary: impl Into<String>, err: &reqwest::Error) -> CloudError {
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
            Cause::Transport | Cause::Bound => true,
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

/// Cuts a cloud answer to `MAX_DETAIL`, on a character boundary.
pub(super) fn clip(mut text: String) -> String {
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

pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Turns an error answer into a `CloudError` (keeping status and `Retry-After`); reads at
/// most `MAX_ERROR_BYTES` of it.
pub(super) async fn check(
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
    let (body, _) = read_at_most(response, MAX_ERROR_BYTES)
        .await
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    Err(CloudError {
        summary: summary(status.as_u16()),
        detail: Some(clip(format!("HTTP {status}: {}", glance_message(&body)))),
        cause: Cause::Http {
            status: status.as_u16(),
            retry_after,
        },
    })
}

/// The message of an OpenStack JSON error body (Glance's `message`, Keystone's
/// `error.message`), or the body itself.
fn glance_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error").and_then(|e| e.get("message")))
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
        let keystone = r#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#;
        assert_eq!(
            glance_message(keystone),
            "The request you have made requires authentication."
        );
    }
}
