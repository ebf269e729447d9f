//! The consume loop: a delivery taken only while an upload slot is free, the fairest ticket
//! claimed for it, the ticket's job spawned, the delivery acknowledged. Shutdown is watched
//! in one place (`until`), and what it leaves (a delivery held, the consumer) is handed
//! back in one place (`Feed::close`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Channel, Consumer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, Instrument};

use crate::queue::{self, TicketMessage};
use crate::store::claims::Claim;

use super::job::Job;
use super::slots::Found;
use super::Worker;

/// The longest a delivery is held while every queued ticket waits for a slot: below
/// RabbitMQ's default `consumer_timeout` (30 min), which would close the channel.
const MAX_HOLD: Duration = Duration::from_secs(20 * 60);

/// `work`, or `None` once `shutdown` fires: the consume loop's one watch on shutdown.
async fn until<T>(
    shutdown: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        value = work => Some(value),
        _ = shutdown.cancelled() => None,
    }
}

/// The RabbitMQ side of the loop: the consumer (only while a slot is free) and the delivery
/// held while its claim waits.
struct Feed {
    channel: Channel,
    tag: String,
    queue: String,
    consumer: Option<Consumer>,
    held: Option<Delivery>,
}

impl Feed {
    /// The next delivery, consuming again if paused.
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        if self.consumer.is_none() {
            self.consumer =
                Some(queue::start_consuming(&self.channel, &self.queue, &self.tag).await?);
        }
        match self
            .consumer
            .as_mut()
            .expect("consumer started above")
            .next()
            .await
        {
            Some(Ok(d)) => Ok(d),
            Some(Err(e)) => Err(e.into()),
            None => anyhow::bail!("consumer closed"),
        }
    }

    /// Stops consuming (prefetch 1: what RabbitMQ pushed meanwhile goes back).
    async fn pause(&mut self) {
        queue::stop_consuming(&self.channel, &self.tag, self.consumer.take()).await;
    }

    /// Hands back the delivery held, if any, and stops consuming.
    async fn close(mut self) {
        if let Some(delivery) = self.held.take() {
            let _ = delivery.acker.nack(requeue()).await;
        }
        self.pause().await;
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..Default::default()
    }
}

/// What a held delivery's claim came to.
enum Claimed {
    Ticket(Box<Claim>),
    /// No ticket for it: acknowledge it (dropped), unless it went back to RabbitMQ.
    None {
        handed_back: bool,
    },
}

/// What the loop shares with the jobs it spawns.
pub(super) struct Slots<'a> {
    pub(super) uploads: &'a TaskTracker,
    pub(super) free: &'a Arc<Semaphore>,
    /// Fired when the shutdown grace ends: running jobs hand their tickets back.
    pub(super) abort: &'a CancellationToken,
}

impl Worker {
    /// Takes deliveries only while an upload slot is free, and acknowledges each as soon as
    /// the ticket is claimed in Postgres: no delivery is held for the length of an upload.
    /// `Ok` when `shutdown` fired, `Err` when RabbitMQ was lost.
    pub(super) async fn consume_until_lost(
        &self,
        shutdown: &CancellationToken,
        slots: Slots<'_>,
    ) -> anyhow::Result<()> {
        let tag = format!("pimage-worker@{}", self.id);
        let link = queue::open(&self.amqp, &tag).await?;
        let channel = match queue::channel(&link, &self.amqp, 1).await {
            Ok(channel) => channel,
            Err(e) => {
                link.lost();
                return Err(e.into());
            }
        };
        info!(queue = %self.amqp.queue, node = %link.node, concurrency = self.settings.concurrency, "worker connected");
        let mut feed = Feed {
            channel,
            tag,
            queue: self.amqp.queue.clone(),
            consumer: None,
            held: None,
        };
        let ended = self.consume(&mut feed, shutdown, &slots).await;
        feed.close().await;
        // Lost: the next connection starts at the next node, and the error names this one.
        ended.map_err(|e| {
            link.lost();
            anyhow::anyhow!("lost RabbitMQ at {}: {e}", link.node)
        })
    }

    /// The loop; returns at shutdown (`Ok`) or when RabbitMQ is lost.
    async fn consume(
        &self,
        feed: &mut Feed,
        shutdown: &CancellationToken,
        slots: &Slots<'_>,
    ) -> anyhow::Result<()> {
        loop {
            let Some(permit) = until(shutdown, slots.free.clone().acquire_owned()).await else {
                return Ok(());
            };
            let permit = permit.expect("the slot semaphore is never closed");
            let Some(delivery) = until(shutdown, feed.next()).await else {
                return Ok(());
            };
            let delivery = delivery?;
            let message: TicketMessage = match serde_json::from_slice(&delivery.data) {
                Ok(m) => m,
                Err(e) => {
                    error!(error = %e, "unreadable message, dead-lettering it");
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                    continue;
                }
            };
            feed.held = Some(delivery);
            let Some(claimed) = self.claim_for(message.ticket_id, feed, shutdown).await else {
                return Ok(());
            };
            let delivery = feed.held.take().expect("held above");
            let claim = match claimed {
                Claimed::Ticket(claim) => *claim,
                Claimed::None { handed_back } => {
                    drop(permit);
                    if !handed_back {
                        info!(signalled_by = message.ticket_id, "no ticket queued (ended, cancelled or taken by another worker); dropping the message");
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                    continue;
                }
            };
            if slots.free.available_permits() == 0 {
                // That was the last free slot: stop consuming while this delivery is still
                // unacknowledged (prefetch 1), so RabbitMQ has nothing to push that we would
                // have to bounce.
                feed.pause().await;
            }
            self.spawn_job(claim, permit, slots);
            // Acknowledged once the ticket is ours in Postgres and its task runs; a failed
            // ack only means a redelivery, which the claim then refuses.
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    }

    /// The claim for the held delivery (the message says a ticket waits; the claim takes the
    /// fairest one that may start); `None` at shutdown. A claim under way is never cut.
    async fn claim_for(
        &self,
        signalled_by: i64,
        feed: &mut Feed,
        shutdown: &CancellationToken,
    ) -> Option<Claimed> {
        let held_since = tokio::time::Instant::now();
        loop {
            match self.claim_fairest().await {
                Ok(Found::Claimed(claim)) => return Some(Claimed::Ticket(claim)),
                Ok(Found::Nothing) => return Some(Claimed::None { handed_back: false }),
                // Held past MAX_HOLD, RabbitMQ's consumer_timeout (30 min by default) would
                // close the channel: hand the delivery back (one count of its 20) instead.
                Ok(Found::Waiting) if held_since.elapsed() > MAX_HOLD => {
                    info!(
                        signalled_by,
                        "still waiting for a slot; handing the message back to RabbitMQ"
                    );
                    if let Some(delivery) = &feed.held {
                        let _ = delivery.acker.nack(requeue()).await;
                    }
                    return Some(Claimed::None { handed_back: true });
                }
                // Every queued ticket waits for a slot of its cloud: keep the delivery (one
                // of them needs it) until a slot frees.
                Ok(Found::Waiting) => until(shutdown, self.slots.wait()).await?,
                // Keep the delivery (bouncing it would count towards the delivery limit)
                // and try again once Postgres is back.
                Err(e) => {
                    error!(signalled_by, error = %e, "cannot claim: Postgres unavailable; retrying");
                    until(shutdown, tokio::time::sleep(Duration::from_secs(2))).await?
                }
            }
        }
    }

    /// Runs the claimed ticket's job in its slot.
    fn spawn_job(&self, claim: Claim, permit: OwnedSemaphorePermit, slots: &Slots<'_>) {
        let worker = self.clone();
        let abort = slots.abort.clone();
        let span = info_span!(
            "ticket",
            ticket_id = claim.ticket.id,
            attempt = claim.ticket.attempts
        );
        slots.uploads.spawn(
            async move {
                let _slot = permit;
                if let Err(e) = Job::new(claim).run(&worker.context(), &abort).await {
                    // The lease runs out and the rescuer re-queues the ticket.
                    error!(error = %e, "lost Postgres while running the ticket");
                }
            }
            .instrument(span),
        );
    }
}
