//! The hand-off of stored tickets to RabbitMQ. A ticket's outbox row is written in the same
//! transaction as the ticket; it is deleted only once RabbitMQ confirmed the message. Rows
//! left behind (RabbitMQ down, process killed) are published by the relay.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::queue::{Publisher, QueueError, TicketMessage};
use crate::store;

/// Rows younger than this are left to the request that wrote them.
const RELAY_MIN_AGE_SECS: f64 = 5.0;
const RELAY_INTERVAL: Duration = Duration::from_secs(2);
const RELAY_BATCH: i64 = 200;
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(3);

/// Publishes one freshly stored ticket. On failure the row stays for the relay, and the
/// ticket is still safe in Postgres.
pub async fn hand_off(pool: &PgPool, publisher: &Publisher, ticket_id: i64, outbox_id: i64) {
    // Bounded: with RabbitMQ down or stuck, the caller (often an API request) goes on at once.
    let published = tokio::time::timeout(
        HAND_OFF_TIMEOUT,
        publisher.publish(TicketMessage { ticket_id }),
    )
    .await;
    match published.unwrap_or_else(|_| Err(QueueError::Timeout)) {
        Ok(()) => {
            if let Err(e) = store::outbox::done(pool, outbox_id).await {
                // The relay will publish it again; the worker's claim makes that harmless.
                warn!(ticket_id, error = %e, "could not clear the outbox row");
            }
        }
        Err(e) => {
            warn!(ticket_id, error = %e, "RabbitMQ did not take the ticket; the outbox relay will retry")
        }
    }
}

/// Publishes outbox rows older than a few seconds, until `shutdown`. Safe to run in many
/// processes at once: rows are locked with SKIP LOCKED.
pub async fn run_relay(
    pool: PgPool,
    publisher: std::sync::Arc<Publisher>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELAY_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        match relay_once(&pool, &publisher).await {
            Ok(0) => {}
            Ok(n) => info!(published = n, "outbox relay published stored tickets"),
            Err(e) => warn!(error = %e, "outbox relay pass failed"),
        }
    }
}

/// One relay pass; returns how many tickets it published.
pub async fn relay_once(pool: &PgPool, publisher: &Publisher) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = store::outbox::claim_stale(&mut tx, RELAY_MIN_AGE_SECS, RELAY_BATCH).await?;
    let mut published = 0;
    for (outbox_id, ticket_id) in rows {
        tokio::time::timeout(
            HAND_OFF_TIMEOUT,
            publisher.publish(TicketMessage { ticket_id }),
        )
        .await
        .unwrap_or(Err(QueueError::Timeout))?;
        store::outbox::delete_in(&mut tx, outbox_id).await?;
        published += 1;
    }
    tx.commit().await?;
    Ok(published)
}
