//! Reading a cloud's answers within bounds: every call but the upload ends within the call
//! timeout, and no answer is read past a small fixed size (a hostile cloud cannot exhaust a
//! worker's memory with a huge body; nothing is decompressed: see `http_client`).

use std::future::Future;
use std::time::Duration;

use reqwest::Response;
use serde::de::DeserializeOwned;

use super::error::{Cause, CloudError};

/// Most bytes of an error answer read (what is kept as detail is shorter still).
pub(super) const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Most bytes of a JSON answer read: a Keystone token with a large catalog fits.
pub(super) const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;

/// Runs `call` (a request and the reading of its answer) within `limit`; past it, a
/// transient error that names the bound.
pub(super) async fn within<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, CloudError>>,
) -> Result<T, CloudError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(timed_out(what, limit)))
}

/// "Glance did not answer … within 2 s (cloud.call_timeout)".
pub(super) fn timed_out(what: &str, limit: Duration) -> CloudError {
    CloudError {
        summary: format!(
            "{what}: no answer within {} s (cloud.call_timeout)",
            limit.as_secs_f64()
        ),
        detail: None,
        cause: Cause::Bound,
    }
}

/// At most `limit` bytes of the body, and whether more was left unread.
pub async fn read_at_most(
    mut response: Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true)); // dropping `response` closes the connection
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The JSON answer of a successful call, refused past `MAX_JSON_BYTES` (permanent: the
/// same cloud would answer the same).
pub(super) async fn json<T: DeserializeOwned>(
    response: Response,
    what: &str,
) -> Result<T, CloudError> {
    let unreadable = |detail: String| CloudError {
        summary: format!("{what} with something unreadable"),
        detail: Some(detail),
        cause: Cause::BadAnswer,
    };
    let (body, cut) = read_at_most(response, MAX_JSON_BYTES)
        .await
        .map_err(|e| CloudError::transport(format!("{what}, but the answer was cut off"), &e))?;
    if cut {
        return Err(unreadable(format!(
            "the answer is longer than {} MiB: not read",
            MAX_JSON_BYTES >> 20
        )));
    }
    serde_json::from_slice(&body).map_err(|e| unreadable(e.to_string()))
}
