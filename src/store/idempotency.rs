//! A publish's `Idempotency-Key`: which ticket a user's key made, and from which request.
//! A key is reserved before its ticket is filed (so two concurrent requests with one key
//! cannot both file one), then settled with the ticket, or released when filing failed.

use std::time::Duration;

use sqlx::PgPool;

/// What a reservation found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserved {
    /// The key is this request's: file the ticket, then `settle` (or `release`).
    Mine,
    /// The key was used within the window: by the request of that digest, which made that
    /// ticket (`None`: still being filed).
    Used {
        request_digest: Vec<u8>,
        ticket_id: Option<i64>,
    },
}

/// How long a reservation may stay without its ticket before another request takes it
/// over (its API process died between the two).
const STALE_RESERVATION: Duration = Duration::from_secs(60);

/// Reserves `key` for `user_id`'s request of `digest`, unless it was used within `window`.
pub async fn reserve(
    pool: &PgPool,
    user_id: i64,
    key: &str,
    digest: &[u8],
    window: Duration,
) -> Result<Reserved, sqlx::Error> {
    let mine = sqlx::query_scalar!(
        r#"INSERT INTO publish_idempotency (user_id, key, request_digest) VALUES ($1, $2, $3)
           ON CONFLICT (user_id, key) DO UPDATE
              SET request_digest = EXCLUDED.request_digest, ticket_id = NULL, created_at = now()
            WHERE publish_idempotency.created_at < now() - make_interval(secs => $4)
               OR (publish_idempotency.ticket_id IS NULL
                   AND publish_idempotency.created_at < now() - make_interval(secs => $5))
           RETURNING true AS "mine!""#,
        user_id,
        key,
        digest,
        window.as_secs_f64(),
        STALE_RESERVATION.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?;
    if mine.is_some() {
        return Ok(Reserved::Mine);
    }
    let used = sqlx::query!(
        "SELECT request_digest, ticket_id FROM publish_idempotency WHERE user_id = $1 AND key = $2",
        user_id,
        key
    )
    .fetch_optional(pool)
    .await?;
    // Gone meanwhile (its ticket deleted): reserve again.
    match used {
        Some(row) => Ok(Reserved::Used {
            request_digest: row.request_digest,
            ticket_id: row.ticket_id,
        }),
        None => Box::pin(reserve(pool, user_id, key, digest, window)).await,
    }
}

/// The ticket the reserved key made.
pub async fn settle(
    pool: &PgPool,
    user_id: i64,
    key: &str,
    ticket_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE publish_idempotency SET ticket_id = $3 WHERE user_id = $1 AND key = $2",
        user_id,
        key,
        ticket_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The reserved key made no ticket (its filing failed): free for a retry at once.
pub async fn release(pool: &PgPool, user_id: i64, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM publish_idempotency WHERE user_id = $1 AND key = $2 AND ticket_id IS NULL",
        user_id,
        key
    )
    .execute(pool)
    .await?;
    Ok(())
}
