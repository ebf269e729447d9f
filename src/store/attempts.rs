//! The attempts of a ticket: one row per try (claim, or retry of a transient failure),
//! with its worker, start, end, outcome, error and bytes sent. Written by the worker under
//! its claim's fencing token; read by `tickets show` and the JSON API.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    Published,
    Failed,
    Cancelled,
    /// A transient failure: the next attempt follows under the same claim.
    Retried,
    /// Its worker stopped holding the ticket (died, or another worker took it).
    Lost,
    /// Handed back to the queue on shutdown.
    Released,
}

impl AttemptEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Published => "published",
            AttemptEnd::Failed => "failed",
            AttemptEnd::Cancelled => "cancelled",
            AttemptEnd::Retried => "retried",
            AttemptEnd::Lost => "lost",
            AttemptEnd::Released => "released",
        }
    }
}

/// One attempt as shown. `outcome` is `None` while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub number: i32,
    /// The worker's name (host:pid), for administrators.
    pub worker: String,
    /// The same worker as an opaque id (`w-` and 12 hex digits), for its users: a keyed
    /// digest of its name, stable across attempts and API processes.
    pub worker_ref: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub bytes_sent: i64,
}

/// Starts the first attempt of a claim, in the claim's transaction. Attempts the ticket
/// still had open belonged to a worker that lost it: they end as `lost`.
pub(super) async fn start_in(
    tx: &mut Transaction<'_, Postgres>,
    ticket_id: i64,
    token: i64,
    worker: &str,
) -> Result<(), sqlx::Error> {
    end_abandoned_in(tx, ticket_id).await?;
    sqlx::query!(
        "INSERT INTO ticket_attempts (ticket_id, number, fencing_token, worker)
         SELECT $1, COALESCE(max(number), 0) + 1, $2, $3 FROM ticket_attempts WHERE ticket_id = $1",
        ticket_id,
        token,
        worker
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the open attempts of a ticket whose worker is gone, as `lost`.
pub(super) async fn end_abandoned_in(
    tx: &mut Transaction<'_, Postgres>,
    ticket_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE ticket_attempts SET ended_at = now(), outcome = 'lost'
          WHERE ticket_id = $1 AND ended_at IS NULL",
        ticket_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the running attempt of the claim `token`; the bytes sent are the ticket's last
/// progress (each attempt starts its progress from zero). Touches the ticket, so that its
/// ETag changes with its attempts. The claim's final write and its hand-back end the attempt
/// in their own transaction (`claims::finish`, `claims::release`): never a ticket ended or
/// queued again with its attempt still open.
pub async fn end<'e>(
    executor: impl PgExecutor<'e>,
    ticket_id: i64,
    token: i64,
    how: AttemptEnd,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH ended AS (
             UPDATE ticket_attempts a SET ended_at = now(), outcome = $3, error = $4,
                 bytes_sent = t.bytes_loaded
               FROM publish_tickets t
              WHERE a.ticket_id = $1 AND a.fencing_token = $2 AND a.ended_at IS NULL
                AND t.id = a.ticket_id
             RETURNING a.ticket_id)
         UPDATE publish_tickets SET updated_at = now()
          WHERE id IN (SELECT ticket_id FROM ended) AND fencing_token = $2",
        ticket_id,
        token,
        how.as_str(),
        error
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Starts the next attempt of the claim `token` (a retry after a transient failure), while
/// that claim still holds the ticket.
pub async fn start_next(
    pool: &PgPool,
    ticket_id: i64,
    token: i64,
    worker: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO ticket_attempts (ticket_id, number, fencing_token, worker)
         SELECT $1, COALESCE((SELECT max(number) FROM ticket_attempts WHERE ticket_id = $1), 0) + 1, $2, $3
           FROM publish_tickets WHERE id = $1 AND fencing_token = $2 AND state = 'running'",
        ticket_id,
        token,
        worker
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The attempts of a ticket, first first. An attempt still open is told by the ticket:
/// running (its claim held), ended under its claim (the worker is recording it: the
/// ticket's end), or else `lost` (its worker stopped or another took the ticket).
pub async fn of_ticket(pool: &PgPool, ticket_id: i64) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as!(
        Attempt,
        r#"SELECT a.number, a.worker,
                  'w-' || left(encode(sha256(convert_to(
                      COALESCE((SELECT key FROM worker_ref_key), '') || a.worker, 'UTF8')), 'hex'), 12)
                      AS "worker_ref!",
                  a.started_at, a.ended_at,
                  CASE WHEN a.outcome IS NOT NULL THEN a.outcome
                       WHEN t.fencing_token <> a.fencing_token THEN 'lost'
                       WHEN t.state = 'running' AND t.lease_expires_at >= now() THEN NULL
                       WHEN t.state = 'complete' THEN 'published'
                       WHEN t.state = 'error' THEN 'failed'
                       WHEN t.state = 'cancelled' THEN 'cancelled'
                       ELSE 'lost' END AS outcome,
                  COALESCE(a.error, CASE WHEN a.outcome IS NULL AND t.fencing_token = a.fencing_token
                                              AND t.state = 'error' THEN t.error_message END) AS error,
                  a.bytes_sent
             FROM ticket_attempts a JOIN publish_tickets t ON t.id = a.ticket_id
            WHERE a.ticket_id = $1 ORDER BY a.number"#,
        ticket_id
    )
    .fetch_all(pool)
    .await
}
