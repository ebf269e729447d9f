//! The ticket outbox: one row per ticket that is still to be handed to RabbitMQ, written in
//! the same transaction as the change that queued the ticket, deleted once RabbitMQ
//! confirmed the message.

use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

/// Adds the ticket's outbox row: the promise, in the caller's transaction, that it will be
/// handed to RabbitMQ. Returns the row's id.
pub(super) async fn enqueue_in(
    tx: &mut Transaction<'_, Postgres>,
    ticket_id: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO ticket_outbox (ticket_id) VALUES ($1) RETURNING id",
        ticket_id
    )
    .fetch_one(&mut **tx)
    .await
}

/// RabbitMQ confirmed the messages: their rows are no longer needed.
pub async fn done(pool: &PgPool, outbox_ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM ticket_outbox WHERE id = ANY($1)", outbox_ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Outbox rows older than `min_age_secs`, locked for this transaction (other relays skip them).
pub async fn claim_stale(
    tx: &mut Transaction<'_, Postgres>,
    min_age_secs: f64,
    limit: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT id, ticket_id FROM ticket_outbox
          WHERE created_at < now() - make_interval(secs => $1)
          ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        min_age_secs,
        limit
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.ticket_id)).collect())
}

/// `done`, in the relay's transaction.
pub async fn delete_in(
    tx: &mut Transaction<'_, Postgres>,
    outbox_id: i64,
) -> Result<(), sqlx::Error> {
    delete(&mut **tx, outbox_id).await
}

async fn delete<'e>(executor: impl PgExecutor<'e>, outbox_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM ticket_outbox WHERE id = $1", outbox_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Outbox rows waiting, and the age in seconds of the oldest.
pub async fn lag(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "pending!",
                  COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS "oldest_secs!"
             FROM ticket_outbox"#
    )
    .fetch_one(pool)
    .await?;
    Ok((row.pending, row.oldest_secs))
}
