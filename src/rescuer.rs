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
use crate::store::{events, login_lock, rescue, workers};

/// Lost messages re-published per pass at most (see `rescue::requeue_lost`).
const LOST_MESSAGES_PER_PASS: i64 = 20;

/// Ticket events (the console's charts and resumable streams) kept after a ticket ended.
const ENDED_EVENTS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// A worker heartbeat silent this long is a dead worker's.
const SILENT_WORKER: Duration = Duration::from_secs(3600);
/// How often the event log and the heartbeats are pruned, and how much at once.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const EVENTS_PER_PRUNE: i64 = 50_000;

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

/// Runs a pass every `interval` until `shutdown`.
pub async fn run(
    pool: PgPool,
    publisher: Arc<Publisher>,
    max_attempts: i32,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut pruned_at: Option<tokio::time::Instant> = None;
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
            prune(&pool).await;
        }
    }
}

/// The event log and the heartbeats would otherwise grow with every ticket and every worker.
async fn prune(pool: &PgPool) {
    match events::purge_old(pool, ENDED_EVENTS_KEPT.as_secs_f64(), EVENTS_PER_PRUNE).await {
        Ok(0) => {}
        Ok(n) => info!(
            events = n,
            "forgot the events of tickets ended over a week ago"
        ),
        Err(e) => warn!(error = %e, "could not prune old ticket events"),
    }
    if let Err(e) = workers::purge_silent(pool, SILENT_WORKER.as_secs_f64()).await {
        warn!(error = %e, "could not prune silent workers' heartbeats");
    }
}
