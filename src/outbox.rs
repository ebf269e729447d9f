//! The hand-off of stored tickets to RabbitMQ. A ticket's outbox row is written in the same
//! transaction as the ticket; it is deleted only once RabbitMQ confirmed the message. Rows
//! left behind (RabbitMQ down, process killed) are published by the relay.

use std::time::{Duration, Instant};

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

/// Tickets handed off together at most: one confirm wait and one outbox delete for them all.
const BATCH: usize = 256;

/// Publishes one freshly stored ticket. On failure the row stays for the relay, and the
/// ticket is still safe in Postgres.
pub async fn hand_off(pool: &PgPool, publisher: &Publisher, ticket_id: i64, outbox_id: i64) {
    hand_off_all(pool, publisher, &[(ticket_id, outbox_id)]).await;
}

/// Publishes stored tickets (`(ticket_id, outbox_id)`) at once, awaits their confirms
/// together, and clears the confirmed ones' outbox rows in one statement.
async fn hand_off_all(pool: &PgPool, publisher: &Publisher, tickets: &[(i64, i64)]) {
    // Bounded: with RabbitMQ down or stuck, the hand-off gives up and the relay retries.
    let confirms = tickets.iter().map(|&(ticket_id, _)| async move {
        tokio::time::timeout(
            HAND_OFF_TIMEOUT,
            publisher.publish(TicketMessage { ticket_id }),
        )
        .await
        .unwrap_or(Err(QueueError::Timeout))
    });
    let results = futures::future::join_all(confirms).await;
    let mut confirmed = Vec::with_capacity(tickets.len());
    for (&(ticket_id, outbox_id), result) in tickets.iter().zip(results) {
        match result {
            Ok(()) => confirmed.push(outbox_id),
            Err(e) => {
                warn!(ticket_id, error = %e, "RabbitMQ did not take the ticket; the outbox relay will retry")
            }
        }
    }
    if confirmed.is_empty() {
        return;
    }
    let cleared = tokio::time::timeout(HAND_OFF_TIMEOUT, store::outbox::done(pool, &confirmed));
    if let Err(e) = flatten(cleared.await) {
        // The relay will publish them again; the worker's claim makes that harmless.
        warn!(tickets = confirmed.len(), error = %e, "could not clear outbox rows");
    }
}

/// Announces the creation of tickets to live viewers. The API announces its own batches
/// before it publishes them (a worker's claim must not be announced first); the relay those
/// of an API that died or fell behind. A creation already announced is not sent twice to a
/// feed (feeds skip what they sent), and one changed since is not announced at all.
async fn announce_created(pool: &PgPool, ticket_ids: &[i64]) {
    let announced = tokio::time::timeout(
        HAND_OFF_TIMEOUT,
        store::events::announce_created(pool, ticket_ids),
    );
    if let Err(e) = flatten(announced.await) {
        // Live pages show these tickets at their first change (their claim).
        warn!(tickets = ticket_ids.len(), error = %e, "could not announce new tickets");
    }
}

/// A bounded store call's result: its own error, or the bound's.
fn flatten<T>(
    result: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
) -> Result<T, String> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", HAND_OFF_TIMEOUT.as_secs())),
    }
}

/// A stored ticket on its way to RabbitMQ.
struct Queued {
    ticket_id: i64,
    outbox_id: i64,
    /// Just created: its creation is announced to live viewers with the batch.
    created: bool,
    queued_at: Instant,
}

/// How long `HandOffs::finish` waits for what is still queued; the relay takes the rest.
const FINISH_LIMIT: Duration = Duration::from_secs(5);

/// The API's hand-offs: requests queue their stored tickets here and answer at once; one
/// task publishes whatever has queued up meanwhile as one batch, so that under load many
/// tickets share one announcement of their creation, a confirm wait (RabbitMQ's fsync) and
/// one outbox delete.
#[derive(Clone)]
pub struct HandOffs {
    sender: tokio::sync::mpsc::UnboundedSender<Queued>,
    stop: CancellationToken,
    task: std::sync::Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl HandOffs {
    pub fn start(pool: PgPool, publisher: std::sync::Arc<Publisher>) -> HandOffs {
        let (sender, mut queued) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let first: Option<Queued> = tokio::select! {
                    first = queued.recv() => first,
                    // Then hand off what is still queued, and end.
                    _ = stopping.cancelled() => { queued.close(); queued.recv().await }
                };
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match queued.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                // A backlog (RabbitMQ slow or down) is the relay's once its rows are old
                // enough for it: publishing them here too would only send them twice.
                batch.retain(|q| q.queued_at.elapsed().as_secs_f64() < RELAY_MIN_AGE_SECS);
                if batch.is_empty() {
                    continue;
                }
                let created: Vec<i64> = batch
                    .iter()
                    .filter(|q| q.created)
                    .map(|q| q.ticket_id)
                    .collect();
                if !created.is_empty() {
                    announce_created(&pool, &created).await;
                }
                let tickets: Vec<(i64, i64)> =
                    batch.iter().map(|q| (q.ticket_id, q.outbox_id)).collect();
                hand_off_all(&pool, &publisher, &tickets).await;
            }
        });
        HandOffs {
            sender,
            stop,
            task: std::sync::Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    /// Queues a ticket the request just created, for RabbitMQ and for live viewers.
    pub fn created(&self, ticket_id: i64, outbox_id: i64) {
        self.queue(ticket_id, outbox_id, true);
    }

    /// Queues a ticket queued again (a retry) for RabbitMQ.
    pub fn requeued(&self, ticket_id: i64, outbox_id: i64) {
        self.queue(ticket_id, outbox_id, false);
    }

    fn queue(&self, ticket_id: i64, outbox_id: i64, created: bool) {
        // Refused only once finished: the outbox row stays, for the relay.
        let _ = self.sender.send(Queued {
            ticket_id,
            outbox_id,
            created,
            queued_at: Instant::now(),
        });
    }

    /// Hands off what is queued, for `FINISH_LIMIT` at most, then stops; what is left keeps
    /// its outbox row, for the relay of any process.
    pub async fn finish(&self) {
        self.stop.cancel();
        let Some(mut task) = self.task.lock().await.take() else {
            return;
        };
        match tokio::time::timeout(FINISH_LIMIT, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the hand-off task failed"),
            Err(_) => {
                task.abort();
                warn!("hand-offs still queued at shutdown are left to the outbox relay");
            }
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
    for &(outbox_id, ticket_id) in &rows {
        tokio::time::timeout(
            HAND_OFF_TIMEOUT,
            publisher.publish(TicketMessage { ticket_id }),
        )
        .await
        .unwrap_or(Err(QueueError::Timeout))?;
        store::outbox::delete_in(&mut tx, outbox_id).await?;
        published += 1;
    }
    // After the publishes: a pass that fails (RabbitMQ down), retried every 2 s, announces
    // nothing until it succeeds. A worker may have claimed one already: its creation is then
    // not its latest event, and it is not announced (its claim was).
    if !rows.is_empty() {
        announce_created(pool, &rows.iter().map(|&(_, t)| t).collect::<Vec<_>>()).await;
    }
    tx.commit().await?;
    Ok(published)
}
