//! The rescuer: re-queues tickets whose worker stopped writing progress (its lease expired),
//! and gives up on tickets that used up their attempts. Judged by heartbeat age, never by
//! total runtime, so a long upload that keeps reporting is never taken away. Every process
//! may run it; concurrent passes are safe (see `rescue::rescue_expired`). Each pass also
//! forgets failed-login counts nobody has added to for a day; every hour, the ticket events
//! of ended tickets older than a week and the heartbeats of workers silent for an hour.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics_catalog;
use crate::outbox;
use crate::queue::Publisher;
use crate::store::{events, login_lock, rescue, retention, workers};

/// Lost messages re-published per pass at most (see `rescue::requeue_lost`).
const LOST_MESSAGES_PER_PASS: i64 = 20;

/// A worker heartbeat silent this long is a dead worker's.
const SILENT_WORKER: Duration = Duration::from_secs(3600);
/// How often the heartbeats are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Failed-login windows older than this are forgotten.
const STALE_LOGIN_FAILURES: Duration = Duration::from_secs(24 * 3600);

/// One pass: returns how many tickets were re-queued and how many given up.
pub async fn rescue_once(
    pool: &PgPool,
    publisher: &Publisher,
    max_attempts: i32,
) -> Result<(usize, usize), sqlx::Error> {
    let mut rescued = rescue::rescue_expired(pool, max_attempts).await?;
    for &(ticket_id, outbox_id) in &rescued.requeued {
        info!(ticket_id, "worker lost (lease expired): ticket re-queued");
        metrics::counter!(metrics_catalog::RESCUES).increment(1);
        outbox::hand_off(pool, publisher, ticket_id, outbox_id).await;
    }
    // Without the queue's depth, lost messages cannot be told from waiting ones: skip.
    if let Ok(ready) = publisher.queue_depth().await {
        let lost = rescue::requeue_lost(pool, ready, LOST_MESSAGES_PER_PASS).await?;
        for &(ticket_id, outbox_id) in &lost {
            info!(
                ticket_id,
                "message lost (queued for long, missing from RabbitMQ): re-published"
            );
            metrics::counter!(metrics_catalog::RESCUES).increment(1);
            outbox::hand_off(pool, publisher, ticket_id, outbox_id).await;
        }
        rescued.requeued.extend(lost);
    }
    for ticket_id in &rescued.gave_up {
        warn!(
            ticket_id,
            max_attempts, "ticket used up its attempts: ended in error"
        );
        metrics::counter!(metrics_catalog::TICKETS_GIVEN_UP).increment(1);
    }
    Ok((rescued.requeued.len(), rescued.gave_up.len()))
}

/// Runs a pass every `interval` until `shutdown`; applies `retention` every `retention.every`.
pub async fn run(
    pool: PgPool,
    publisher: Arc<Publisher>,
    max_attempts: i32,
    interval: Duration,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let mut pruned_at: Option<tokio::time::Instant> = None;
    let mut retained_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = rescue_once(&pool, &publisher, max_attempts).await {
            warn!(error = %e, "rescuer pass failed");
        }
        // Failed-login counts of names typed once and never again would pile up.
        if let Err(e) = login_lock::purge_stale(&pool, STALE_LOGIN_FAILURES).await {
            warn!(error = %e, "could not purge old failed-login counts");
        }
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(tokio::time::Instant::now());
            if let Err(e) = workers::purge_silent(&pool, SILENT_WORKER.as_secs_f64()).await {
                warn!(error = %e, "could not prune silent workers' heartbeats");
            }
        }
        if retained_at.is_none_or(|at| at.elapsed() >= retention.every) {
            retained_at = Some(tokio::time::Instant::now());
            match apply_retention(&pool, &retention).await {
                Ok(done) if done == Retained::default() => {}
                Ok(done) => info!(?done, "retention: forgot what is older than it keeps"),
                Err(e) => warn!(error = %e, "retention round failed"),
            }
        }
    }
}

/// What retention keeps (`[retention]`, `config::RetentionSettings`, as the worker gives
/// it): ages past which rows go, rows per statement, statements per round, rounds' interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub finished_tickets: Duration,
    pub events: Duration,
    pub batch: i64,
    pub batches_per_round: u32,
    pub every: Duration,
}

/// What one retention round deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    pub tickets: u64,
    pub events: u64,
    pub cleanups: u64,
}

/// One retention round: finished tickets (with their attempts and events), the events of
/// ended tickets, and done cleanups, each older than `settings` keeps; `settings.batch`
/// rows per statement, at most `settings.batches_per_round` statements of each kind.
pub async fn apply_retention(pool: &PgPool, settings: &Retention) -> Result<Retained, sqlx::Error> {
    let (tickets_age, events_age) = (
        settings.finished_tickets.as_secs_f64(),
        settings.events.as_secs_f64(),
    );
    let batch = settings.batch.max(1);
    let mut done = Retained::default();
    for _ in 0..settings.batches_per_round {
        let n = retention::forget_finished(pool, tickets_age, batch).await?;
        done.tickets += n as u64;
        if n < batch {
            break;
        }
    }
    for _ in 0..settings.batches_per_round {
        let n = events::purge_old(pool, events_age, batch).await?;
        done.events += n;
        if n < batch as u64 {
            break;
        }
    }
    for _ in 0..settings.batches_per_round {
        let n = retention::forget_done_cleanups(pool, tickets_age, batch).await?;
        done.cleanups += n;
        if n < batch as u64 {
            break;
        }
    }
    Ok(done)
}
