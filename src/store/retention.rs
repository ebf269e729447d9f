//! Retention: finished tickets forgotten once older than the settings (`[retention]`), with
//! their attempts (the foreign key cascades), their events and their done cleanups, a
//! bounded batch per statement, so that the tables stay bounded at a steady rate.

use sqlx::PgPool;

/// Deletes at most `limit` tickets that finished (complete, error, cancelled) over
/// `age_secs` ago, oldest first, except those whose image cleanup is still pending (the
/// reconciler needs the ticket's lock and state). In the same statement: their events and
/// done cleanups; a published image is recorded in `kept_images`, so that the orphan sweep
/// spares it, as when a user deletes the record. Tickets another transaction holds are
/// skipped (`SKIP LOCKED`). Returns how many tickets went.
pub async fn forget_finished(pool: &PgPool, age_secs: f64, limit: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH old AS (
             SELECT t.id, t.ticket_key, t.state, t.cloud_id FROM publish_tickets t
              WHERE t.finished_at < now() - make_interval(secs => $1)
                AND t.state IN ('complete', 'error', 'cancelled')
                AND NOT EXISTS (SELECT 1 FROM image_cleanups c
                                 WHERE c.ticket_id = t.id AND c.done_at IS NULL)
              ORDER BY t.finished_at LIMIT $2
                FOR UPDATE OF t SKIP LOCKED),
           kept AS (INSERT INTO kept_images (ticket_key, cloud_id)
                    SELECT ticket_key, cloud_id FROM old
                     WHERE state = 'complete' AND cloud_id IS NOT NULL
                    ON CONFLICT (ticket_key) DO NOTHING),
           events AS (DELETE FROM ticket_events e USING old WHERE e.ticket_id = old.id),
           cleanups AS (DELETE FROM image_cleanups c USING old
                         WHERE c.ticket_id = old.id AND c.done_at IS NOT NULL),
           gone AS (DELETE FROM publish_tickets t USING old WHERE t.id = old.id RETURNING t.id)
           SELECT count(*) AS "forgotten!" FROM gone"#,
        age_secs,
        limit
    )
    .fetch_one(pool)
    .await
}

/// Deletes at most `limit` cleanups confirmed over `age_secs` ago (a deleted ticket's, or
/// one of an earlier run): nothing reads a done cleanup but the history. Returns how many.
pub async fn forget_done_cleanups(
    pool: &PgPool,
    age_secs: f64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM image_cleanups WHERE id = ANY(ARRAY(
             SELECT id FROM image_cleanups
              WHERE done_at < now() - make_interval(secs => $1)
              ORDER BY done_at LIMIT $2))",
        age_secs,
        limit
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
