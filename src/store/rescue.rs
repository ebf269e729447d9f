//! Tickets put back in the queue: by the rescuer (lost workers, lost messages) and by an
//! operator (a failed or cancelled ticket run again). Each gets a new outbox row.

use sqlx::types::Json;
use sqlx::PgPool;

use super::events::{self, Before};
use super::{cleanups, groups, outbox};

/// A queued ticket untouched this long may have lost its message (see `requeue_lost`).
const STALE_QUEUED_SECS: f64 = 600.0;

/// What one rescuer pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// Tickets re-queued, with the outbox row each got: (ticket id, outbox id).
    pub requeued: Vec<(i64, i64)>,
    /// Tickets ended in `error` because they used up their attempts.
    pub gave_up: Vec<i64>,
}

/// Re-queues running tickets whose lease expired (their worker stopped writing progress),
/// and ends in `error` those that already had `max_attempts` claims. One statement each,
/// under row locks: two rescuers running at once never both take the same ticket. In the
/// same transaction: each ticket's event, and the image cleanup of each one ended.
pub async fn rescue_expired(pool: &PgPool, max_attempts: i32) -> Result<Rescued, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gave_up = sqlx::query_scalar!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE state = 'running' AND lease_expires_at < now() AND attempts >= $1
                           FOR UPDATE)
           UPDATE publish_tickets t SET state = 'error', eta = NULL,
               error_message = 'gave up after ' || t.attempts || ' attempts: the worker running it stopped each time',
               message = 'failed: gave up after ' || t.attempts || ' attempts',
               lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
        max_attempts
    )
    .fetch_all(&mut *tx)
    .await?;
    // A cancel requested while the worker was lost is honoured now, not re-queued.
    let cancelled = sqlx::query_scalar!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE state = 'running' AND lease_expires_at < now() AND cancel_requested
                           FOR UPDATE)
           UPDATE publish_tickets t SET state = 'cancelled', eta = NULL,
               message = 'cancelled (its worker was lost before it could stop)',
               lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING to_jsonb(old) AS "before!: Json<Before>""#
    )
    .fetch_all(&mut *tx)
    .await?;
    let lost = sqlx::query!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE state = 'running' AND lease_expires_at < now() FOR UPDATE),
                lost AS (
                    UPDATE publish_tickets t SET state = 'queued', eta = NULL,
                        message = 'worker lost, resuming on another worker',
                        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                      FROM old WHERE t.id = old.id
                    RETURNING t.id, to_jsonb(old) AS before),
                outbox AS (INSERT INTO ticket_outbox (ticket_id) SELECT id FROM lost RETURNING ticket_id, id)
           SELECT o.ticket_id, o.id, l.before AS "before!: Json<Before>"
             FROM outbox o JOIN lost l ON l.id = o.ticket_id"#,
    )
    .fetch_all(&mut *tx)
    .await?;
    let gave_up = events::unwrap_before(gave_up);
    let mut changed: Vec<Before> = gave_up.clone();
    changed.extend(events::unwrap_before(cancelled));
    changed.extend(lost.iter().map(|r| r.before.0.clone()));
    events::record_changes(&mut tx, &changed).await?;
    cleanups::record_for_ended(&mut tx, &changed).await?;
    groups::on_ended(&mut tx, &changed).await?;
    tx.commit().await?;
    let requeued = lost.into_iter().map(|r| (r.ticket_id, r.id)).collect();
    let gave_up = gave_up.into_iter().map(|before| before.id).collect();
    Ok(Rescued { requeued, gave_up })
}

/// Safety net for messages lost on the way (dead-lettered, purged queue): gives new outbox
/// rows to at most `limit` tickets queued for long with no outbox row, oldest first, and only
/// as many as the work queue is short of: with `queue_ready` messages waiting in RabbitMQ,
/// the first `queue_ready` of the tickets waiting for a message are taken to have theirs.
/// A backlog thus never grows the queue; a miscount (a message of an ended ticket still
/// queued) only delays the net until the queue drains. Returns (ticket id, outbox id).
pub async fn requeue_lost(
    pool: &PgPool,
    queue_ready: u32,
    limit: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let waiting = sqlx::query_scalar!(
        r#"SELECT count(*) AS "waiting!" FROM publish_tickets t
            WHERE t.state = 'queued' AND NOT t.cancel_requested
              AND NOT EXISTS (SELECT 1 FROM ticket_outbox o WHERE o.ticket_id = t.id)
              AND NOT EXISTS (SELECT 1 FROM publish_tickets s
                               WHERE s.id = t.copies_from AND s.state IN ('queued', 'running'))"#
    )
    .fetch_one(&mut *tx)
    .await?;
    let missing = (waiting - i64::from(queue_ready)).clamp(0, limit.max(0));
    if missing == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query!(
        "WITH lost AS (
             SELECT t.id FROM publish_tickets t
              WHERE t.state = 'queued' AND NOT t.cancel_requested
                AND t.updated_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM ticket_outbox o WHERE o.ticket_id = t.id)
                -- Held until its source ends (`groups`): not lost.
                AND NOT EXISTS (SELECT 1 FROM publish_tickets s
                                 WHERE s.id = t.copies_from AND s.state IN ('queued', 'running'))
              ORDER BY t.updated_at, t.id LIMIT $2
              FOR UPDATE OF t SKIP LOCKED),
         touched AS (
             UPDATE publish_tickets t SET updated_at = now() FROM lost WHERE t.id = lost.id
             RETURNING t.id)
         INSERT INTO ticket_outbox (ticket_id) SELECT id FROM touched RETURNING ticket_id, id",
        STALE_QUEUED_SECS,
        missing
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(|r| (r.ticket_id, r.id)).collect())
}

/// Runs a failed or cancelled ticket again: queued, status reset, with an outbox row (its id
/// is returned), and its event. `None`: no such ticket, or it has not failed or been
/// cancelled.
pub async fn retry(pool: &PgPool, id: i64) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let reset = sqlx::query_scalar!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE id = $1 AND state IN ('error', 'cancelled') FOR UPDATE)
           UPDATE publish_tickets t SET state = 'queued', attempts = 0, cancel_requested = false,
               message = 'queued again by an operator, waiting for a worker', percentage = 0,
               bytes_loaded = 0, eta = NULL, error_message = NULL, detailed_error_msg = NULL,
               cloud_id = NULL, lease_owner = NULL, lease_expires_at = NULL, started_at = NULL,
               finished_at = NULL, updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let reset = events::unwrap_before(reset);
    events::record_changes(&mut tx, &reset).await?;
    let outbox_id = if !reset.is_empty() {
        Some(outbox::enqueue_in(&mut tx, id).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(outbox_id)
}
