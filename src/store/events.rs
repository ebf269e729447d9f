//! The ticket event log (table `ticket_events`, announced on `TICKET_EVENTS_CHANNEL`): what
//! live pages and clients are sent, what a reconnecting one is replayed from its
//! `Last-Event-ID`, and the points of the bytes-over-time chart. Every store function that
//! changes what a viewer sees of a ticket appends its event here (`record_changes`,
//! `record_deleted`), in its own transaction; `tickets::create` writes the `created` one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

/// NOTIFY channel of ticket events (payload: a `TicketEvent` as JSON).
pub const TICKET_EVENTS_CHANNEL: &str = "pimage_ticket_events";
/// NOTIFY channel of worker heartbeats (payload: a `WorkerEvent` as JSON).
pub const WORKER_EVENTS_CHANNEL: &str = "pimage_worker_events";

/// Replayed events at most per query: a client far behind is sent the rest on its next turn.
pub const REPLAY_BATCH: i64 = 500;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TicketEvent {
    pub id: i64,
    pub ticket_id: i64,
    /// `created`, `changed` or `deleted`.
    pub kind: String,
    pub state: String,
    pub old_state: Option<String>,
    pub percentage: i32,
    pub bytes_loaded: i64,
    pub bytes_total: i64,
    pub message: String,
    pub at: DateTime<Utc>,
}

impl TicketEvent {
    pub fn is_final(&self) -> bool {
        self.kind == "deleted" || matches!(self.state.as_str(), "complete" | "error" | "cancelled")
    }
}

/// A worker's heartbeat as announced (`gone` when it stopped).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerEvent {
    pub worker: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub slots_total: i32,
    pub slots_used: i32,
    pub beat_at: DateTime<Utc>,
    pub gone: bool,
    pub tickets: Vec<i64>,
}

/// What a viewer sees of a ticket, as it was before a change (read under the change's row
/// lock, as `to_jsonb` of `id, state, percentage, bytes_loaded, message, cloud_id`). The
/// change is an event when one of these differs after it: a lease extension or the claim's
/// bookkeeping alone is not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Before {
    pub id: i64,
    pub state: String,
    pub percentage: i32,
    pub bytes_loaded: i64,
    pub message: String,
    pub cloud_id: Option<String>,
}

/// The `Before` rows a change returned (`RETURNING to_jsonb(old) AS before`).
pub(crate) fn unwrap_before(rows: impl IntoIterator<Item = Json<Before>>) -> Vec<Before> {
    rows.into_iter().map(|Json(before)| before).collect()
}

/// Appends a `changed` event for each ticket of `before` that a viewer now sees otherwise,
/// and announces it on `TICKET_EVENTS_CHANNEL` (at commit): call it in the transaction of
/// the change, after its statement. Returns how many events were written.
pub(crate) async fn record_changes(
    tx: &mut Transaction<'_, Postgres>,
    before: &[Before],
) -> Result<usize, sqlx::Error> {
    if before.is_empty() {
        return Ok(0);
    }
    let recorded = sqlx::query!(
        r#"WITH e AS (
             INSERT INTO ticket_events (ticket_id, kind, state, old_state, percentage, bytes_loaded,
                 bytes_total, message)
             SELECT t.id, 'changed', t.state, o.state, t.percentage, t.bytes_loaded, t.bytes_total,
                    t.message
               FROM jsonb_to_recordset($1::jsonb) AS o(id bigint, state text, percentage int,
                                                       bytes_loaded bigint, message text, cloud_id text)
               JOIN publish_tickets t ON t.id = o.id
              WHERE (o.state, o.percentage, o.bytes_loaded, o.message, o.cloud_id)
                    IS DISTINCT FROM (t.state, t.percentage, t.bytes_loaded, t.message, t.cloud_id)
              ORDER BY t.id
             RETURNING id, ticket_event_notice(ticket_events) AS notice)
           SELECT pg_notify($2, e.notice) AS "notified: ()" FROM (SELECT * FROM e ORDER BY id) e"#,
        Json(before) as _,
        TICKET_EVENTS_CHANNEL,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(recorded.len())
}

/// Appends the `deleted` event of a ticket (its last status) and announces it: call it in
/// the deleting transaction, before the delete. Returns whether the ticket existed.
pub(crate) async fn record_deleted(
    tx: &mut Transaction<'_, Postgres>,
    ticket_id: i64,
) -> Result<bool, sqlx::Error> {
    let recorded = sqlx::query!(
        r#"WITH e AS (
             INSERT INTO ticket_events (ticket_id, kind, state, percentage, bytes_loaded, bytes_total,
                 message)
             SELECT id, 'deleted', state, percentage, bytes_loaded, bytes_total, message
               FROM publish_tickets WHERE id = $1
             RETURNING id, ticket_event_notice(ticket_events) AS notice)
           SELECT pg_notify($2, e.notice) AS "notified: ()" FROM e"#,
        ticket_id,
        TICKET_EVENTS_CHANNEL,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(recorded.is_some())
}

/// Announces the creation events of these tickets on `TICKET_EVENTS_CHANNEL`, in one commit:
/// their inserts do not (a NOTIFY per insert serialized the inserts' commits; see the
/// migration `status_cache`). Only a creation that is still its ticket's latest event is
/// announced (a ticket changed since is not shown as new). Returns how many were announced.
pub async fn announce_created(pool: &PgPool, ticket_ids: &[i64]) -> Result<i32, sqlx::Error> {
    let announced = sqlx::query_scalar!("SELECT announce_created_tickets($1)", ticket_ids)
        .fetch_one(pool)
        .await?;
    Ok(announced.unwrap_or(0))
}

/// Events after `after`, oldest first, of one ticket or of all.
pub async fn after(
    pool: &PgPool,
    after: i64,
    ticket_id: Option<i64>,
) -> Result<Vec<TicketEvent>, sqlx::Error> {
    sqlx::query_as!(
        TicketEvent,
        "SELECT id, ticket_id, kind, state, old_state, percentage, bytes_loaded, bytes_total,
                message, at
           FROM ticket_events
          WHERE id > $1 AND ($2::bigint IS NULL OR ticket_id = $2)
          ORDER BY id LIMIT $3",
        after,
        ticket_id,
        REPLAY_BATCH,
    )
    .fetch_all(pool)
    .await
}

/// The newest event of a ticket: where a client that names no `Last-Event-ID` starts.
pub async fn latest_of(pool: &PgPool, ticket_id: i64) -> Result<Option<TicketEvent>, sqlx::Error> {
    sqlx::query_as!(
        TicketEvent,
        "SELECT id, ticket_id, kind, state, old_state, percentage, bytes_loaded, bytes_total,
                message, at
           FROM ticket_events WHERE ticket_id = $1 ORDER BY id DESC LIMIT 1",
        ticket_id,
    )
    .fetch_optional(pool)
    .await
}

/// The newest event id of all (0 when none): where a page rendered now resumes from.
pub async fn newest_id(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let row = sqlx::query!(r#"SELECT COALESCE(max(id), 0) AS "id!" FROM ticket_events"#)
        .fetch_one(pool)
        .await?;
    Ok(row.id)
}

/// (time, bytes sent) of a ticket, for its chart: at most `points`, evenly picked.
pub async fn bytes_over_time(
    pool: &PgPool,
    ticket_id: i64,
    points: i64,
) -> Result<Vec<(DateTime<Utc>, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        // The most sent so far: a step that resets the counter (verifying, a new attempt)
        // does not undo what was sent.
        r#"WITH e AS (SELECT at, max(bytes_loaded) OVER (ORDER BY id) AS bytes_loaded,
                             row_number() OVER (ORDER BY id) AS n,
                             count(*) OVER () AS total
                        FROM ticket_events WHERE ticket_id = $1)
           SELECT at AS "at!", bytes_loaded AS "bytes!" FROM e
            WHERE n % GREATEST(total / $2, 1) = 0 OR n = total OR n = 1
            ORDER BY n"#,
        ticket_id,
        points.max(2),
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.at, r.bytes)).collect())
}

/// Forgets, at most `limit` at a time, the events older than `age_secs` of tickets that are no
/// longer queued or running (their chart goes with them; a live ticket keeps its history).
/// Returns how many went. Oldest first, by `ticket_events_at`: no pass reads the whole log.
pub async fn purge_old(pool: &PgPool, age_secs: f64, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        // = ANY(ARRAY(…)): the batch's ids are looked up one by one, never joined to a scan
        // of the whole log.
        "DELETE FROM ticket_events WHERE id = ANY(ARRAY(
             SELECT e.id FROM ticket_events e
              WHERE e.at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM publish_tickets t
                                 WHERE t.id = e.ticket_id AND t.state IN ('queued', 'running'))
              ORDER BY e.at LIMIT $2))",
        age_secs,
        limit
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
