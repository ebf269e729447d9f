//! Worker processes as they report themselves (`worker_heartbeats`; each write is announced
//! on `events::WORKER_EVENTS_CHANNEL` by a trigger), and the leases they hold.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

pub struct Beat<'a> {
    pub worker: &'a str,
    pub host: &'a str,
    pub pid: i32,
    pub version: &'a str,
    pub slots_total: i32,
    pub slots_used: i32,
}

pub async fn beat(pool: &PgPool, beat: &Beat<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO worker_heartbeats (worker, host, pid, version, slots_total, slots_used)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (worker) DO UPDATE SET version = $4, slots_total = $5, slots_used = $6,
             beat_at = now()",
        beat.worker,
        beat.host,
        beat.pid,
        beat.version,
        beat.slots_total,
        beat.slots_used,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A worker that stops says so (the Workers page drops it at once).
pub async fn gone(pool: &PgPool, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM worker_heartbeats WHERE worker = $1", worker)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub worker: String,
    /// `None` for a lease holder that never reported a heartbeat.
    pub host: Option<String>,
    pub pid: Option<i32>,
    pub version: Option<String>,
    pub slots_total: Option<i32>,
    pub slots_used: Option<i32>,
    pub beat_at: Option<DateTime<Utc>>,
    pub tickets: Vec<i64>,
}

/// Workers heard from in the last `fresh_secs`, and every holder of a running ticket's lease.
pub async fn live(pool: &PgPool, fresh_secs: f64) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as!(
        WorkerRow,
        r#"WITH leases AS (SELECT lease_owner AS worker, array_agg(id ORDER BY id) AS tickets
                             FROM publish_tickets
                            WHERE state = 'running' AND lease_owner IS NOT NULL
                            GROUP BY lease_owner),
                beats AS (SELECT * FROM worker_heartbeats
                           WHERE beat_at > now() - make_interval(secs => $1))
           SELECT COALESCE(b.worker, l.worker) AS "worker!", b.host AS "host?",
                  b.pid AS "pid?", b.version AS "version?", b.slots_total AS "slots_total?",
                  b.slots_used AS "slots_used?", b.beat_at AS "beat_at?",
                  COALESCE(l.tickets, '{}') AS "tickets!"
             FROM beats b FULL JOIN leases l ON l.worker = b.worker
            ORDER BY 1"#,
        fresh_secs,
    )
    .fetch_all(pool)
    .await
}

/// Forgets the heartbeats of workers silent for `age_secs` (killed ones never remove theirs).
pub async fn purge_silent(pool: &PgPool, age_secs: f64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM worker_heartbeats WHERE beat_at < now() - make_interval(secs => $1)",
        age_secs
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
