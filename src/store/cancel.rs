//! A user's cancel of a ticket: ended at once while queued, or asked of the worker running it.

use sqlx::types::Json;
use sqlx::PgPool;

use super::events::{self, Before};
use super::tickets::{self, TicketState};
use super::{cleanups, groups};

#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was still queued: it is cancelled now and will never start.
    Cancelled,
    /// A worker runs it: the worker stops the upload and cleans up.
    Requested,
    /// It had already ended (complete, error or cancelled).
    AlreadyFinished(TicketState),
    NotFound,
}

/// Postgres NOTIFY channel carrying the ids of tickets whose cancel was requested.
pub const CANCEL_CHANNEL: &str = "pimage_ticket_cancel";

/// Cancels a queued ticket, or asks its worker to stop it. In one transaction: the change,
/// its event, and the image cleanup of a queued ticket that had run before (requeued).
pub async fn request_cancel(pool: &PgPool, id: i64) -> Result<CancelOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One statement, so a worker's concurrent claim sees either the cancel or nothing.
    let row = sqlx::query!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets WHERE id = $1 FOR UPDATE)
         UPDATE publish_tickets t SET
             cancel_requested = true,
             state = CASE WHEN t.state = 'queued' THEN 'cancelled' ELSE t.state END,
             message = CASE WHEN t.state = 'queued' THEN 'cancelled before it started'
                            ELSE 'cancel requested, stopping the upload' END,
             finished_at = CASE WHEN t.state = 'queued' THEN now() ELSE t.finished_at END,
             updated_at = now()
           FROM old
          WHERE t.id = old.id AND t.state IN ('queued', 'running')
         RETURNING old.state AS "before_state!: TicketState", to_jsonb(old) AS "before!: Json<Before>""#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = &row {
        let changed = [row.before.0.clone()];
        events::record_changes(&mut tx, &changed).await?;
        cleanups::record_for_ended(&mut tx, &changed).await?;
        // Its held targets are released for the relay to queue (or, under `all`, cancelled).
        groups::on_ended(&mut tx, &changed).await?;
    }
    tx.commit().await?;
    Ok(match row.map(|r| r.before_state) {
        Some(TicketState::Queued) => CancelOutcome::Cancelled,
        Some(_) => {
            // Wakes the worker that runs it at once; its progress writes are the fallback.
            sqlx::query!(
                r#"SELECT pg_notify($1, $2) AS "notified: ()""#,
                CANCEL_CHANNEL,
                id.to_string()
            )
            .execute(pool)
            .await?;
            CancelOutcome::Requested
        }
        None => match tickets::get(pool, id).await? {
            Some(t) => CancelOutcome::AlreadyFinished(t.state),
            None => CancelOutcome::NotFound,
        },
    })
}
