//! `Idempotency-Key` on `POST …/pimages`: the same key from the same caller within
//! `api.idempotency_window` answers with the ticket the first request made (`200`, the
//! ticket as it is now) instead of filing a second one; the same key with another request
//! (another image or body) is a `409`. Keys are reserved in Postgres before filing, so two
//! requests sent at once with one key file one ticket (`store::idempotency`).

use std::time::Duration;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::printable;
use crate::store::idempotency::{self, Reserved};

const HEADER: &str = "idempotency-key";
/// How long a request waits for a concurrent one with its key to finish filing.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(3);
const IN_FLIGHT_POLL: Duration = Duration::from_millis(100);

/// A publish's key, and the digest of the request it came with.
pub struct IdempotencyKey {
    user_id: i64,
    key: String,
    digest: Vec<u8>,
}

/// What filing with a key comes to.
pub enum Claim {
    /// File the ticket, then `settle` (or `release` when filing fails).
    File(IdempotencyKey),
    /// The key's earlier request made this ticket: answer with it.
    Earlier(i64),
}

impl IdempotencyKey {
    /// The request's key, if it sent one: 1 to 255 visible ASCII characters.
    pub fn of(
        headers: &HeaderMap,
        user_id: i64,
        image_id: i64,
        body: &[u8],
    ) -> Result<Option<IdempotencyKey>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Idempotency-Key '{}' is not 1 to 255 visible ASCII characters",
                    printable::escaped(&String::from_utf8_lossy(value.as_bytes()))
                ))
            })?;
        let mut digest = Sha256::new();
        digest.update(image_id.to_le_bytes());
        digest.update(body);
        Ok(Some(IdempotencyKey {
            user_id,
            key: key.to_string(),
            digest: digest.finalize().to_vec(),
        }))
    }

    /// Reserves the key, or finds the ticket its earlier request made; waits a moment for a
    /// concurrent request with the key to finish filing.
    pub async fn claim(self, state: &AppState) -> Result<Claim, ApiError> {
        let window = state.idempotency_window;
        let until = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        loop {
            let (user, key, digest) = (self.user_id, &self.key, &self.digest);
            match idempotency::reserve(&state.pool, user, key, digest, window).await? {
                Reserved::Mine => return Ok(Claim::File(self)),
                Reserved::Used { request_digest, .. } if request_digest != self.digest => {
                    return Err(ApiError::Conflict(format!(
                        "Idempotency-Key '{key}' was sent with another request within the last \
                         {}: give each publish its own key",
                        humantime::format_duration(window)
                    )))
                }
                Reserved::Used {
                    ticket_id: Some(id),
                    ..
                } => return Ok(Claim::Earlier(id)),
                Reserved::Used {
                    ticket_id: None, ..
                } if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(IN_FLIGHT_POLL).await
                }
                Reserved::Used {
                    ticket_id: None, ..
                } => {
                    return Err(ApiError::Conflict(format!(
                        "a request with Idempotency-Key '{key}' is still being filed: send it \
                         again in a moment"
                    )))
                }
            }
        }
    }

    /// The key made `ticket_id`.
    pub async fn settle(&self, state: &AppState, ticket_id: i64) -> Result<(), ApiError> {
        Ok(idempotency::settle(&state.pool, self.user_id, &self.key, ticket_id).await?)
    }

    /// The key made no ticket: free it for a retry.
    pub async fn release(&self, state: &AppState) {
        if let Err(e) = idempotency::release(&state.pool, self.user_id, &self.key).await {
            // It frees itself after a minute (a stale reservation is taken over).
            tracing::warn!(error = %e, "an Idempotency-Key could not be released");
        }
    }
}
