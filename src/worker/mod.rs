//! The worker: takes tickets from RabbitMQ, claims them in Postgres, and publishes the
//! image to Glance while writing progress, retrying transient failures.
//!
//! A delivery is taken only while an upload slot is free; it says that a ticket waits, and
//! the claim in Postgres takes the fairest one whose cloud has a free slot (`slots`). It is
//! acknowledged as soon as that ticket is claimed (a lease with a fencing token); from then
//! on Postgres, not RabbitMQ, tracks the job. Keystone sessions are kept per account
//! (`cloud::Sessions`), so tickets of one account share a token. Progress writes extend the lease; if the worker dies, the
//! rescuer re-queues the ticket once the lease expires.
//! Cancels arrive by Postgres NOTIFY (`CancelWatch`); the progress writes, which report a
//! requested cancel too, are the fallback.
//!
//! This file: the pool of upload slots and the consume loop that fills them.

mod attempt;
mod cancel;
mod convert;
mod heartbeat;
mod job;
mod lease;
mod progress;
mod slots;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Consumer;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::cloud::{AddressPolicy, Sessions};
use crate::config::{AmqpSettings, CloudSettings, WorkerSettings};
use crate::queue::{self, Publisher, TicketMessage};
use crate::reconciler::Reconciler;
use crate::secrets::SecretBox;
use crate::{outbox, rescuer};

use cancel::CancelWatch;
use slots::{Found, SlotWatch};

/// The longest a delivery is held while every queued ticket waits for a slot: below
/// RabbitMQ's default `consumer_timeout` (30 min), which would close the channel.
const MAX_HOLD: Duration = Duration::from_secs(20 * 60);

#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    settings: WorkerSettings,
    amqp: AmqpSettings,
    cloud_policy: AddressPolicy,
    /// Per-cloud upload limits (`cloud::upload_limit_for`).
    cloud: CloudSettings,
    /// Keystone sessions kept per cloud account.
    sessions: Sessions,
    slots: SlotWatch,
    secrets: SecretBox,
    cancels: CancelWatch,
    /// Hands released and rescued tickets back to the queue.
    publisher: Arc<Publisher>,
    /// host:pid, shown as lease owner and RabbitMQ consumer tag.
    id: String,
    /// Names this deployment on the images it creates (`cloud.deployment`).
    deployment: String,
    /// Deletes what ended tickets left in the cloud; run beside the rescuer.
    reconciler: Reconciler,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        settings: WorkerSettings,
        amqp: AmqpSettings,
        cloud: CloudSettings,
        secrets: SecretBox,
    ) -> Worker {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        let id = format!("{host}:{}", std::process::id());
        let publisher = Arc::new(Publisher::new(
            amqp.clone(),
            format!("pimage-worker-publisher@{id}"),
        ));
        let reconciler = Reconciler::new(pool.clone(), secrets.clone(), &cloud);
        Worker {
            sessions: reconciler.sessions(),
            reconciler,
            deployment: cloud.deployment.clone(),
            pool,
            settings,
            amqp,
            cloud_policy: AddressPolicy::from(cloud.clone()),
            cloud,
            slots: SlotWatch::default(),
            secrets,
            cancels: CancelWatch::default(),
            publisher,
            id,
        }
    }

    /// What the worker's `/readyz` checks.
    pub fn probes(&self) -> crate::health::Probes {
        crate::health::Probes {
            pool: self.pool.clone(),
            publisher: self.publisher.clone(),
            // A worker without RabbitMQ gets no work.
            queue_required: true,
        }
    }

    /// Consumes until `shutdown` fires, reconnecting to RabbitMQ with backoff when the
    /// connection drops. Then running uploads get `shutdown_grace_secs` to finish; after
    /// that they are aborted and handed back to the queue without counting an attempt.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let uploads = TaskTracker::new();
        let abort = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1) as usize));
        let background = TaskTracker::new();
        background.spawn(
            self.cancels
                .clone()
                .run(self.pool.clone(), shutdown.clone()),
        );
        background.spawn(self.slots.clone().run(self.pool.clone(), shutdown.clone()));
        background.spawn(outbox::run_relay(
            self.pool.clone(),
            self.publisher.clone(),
            shutdown.clone(),
        ));
        let rescue_interval = Duration::from_secs(self.settings.rescue_interval_secs.max(1));
        background.spawn(rescuer::run(
            self.pool.clone(),
            self.publisher.clone(),
            self.settings.max_ticket_attempts,
            rescue_interval,
            shutdown.clone(),
        ));
        background.spawn(
            self.reconciler
                .clone()
                .run(rescue_interval, shutdown.clone()),
        );
        // The heartbeat outlives the consume loop: the worker is there until its uploads end.
        let heartbeat_stop = CancellationToken::new();
        background.spawn(heartbeat::run(
            self.pool.clone(),
            self.id.clone(),
            self.settings.concurrency.max(1) as usize,
            uploads.clone(),
            heartbeat_stop.clone(),
        ));
        let mut delay = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self
                .consume_until_lost(&shutdown, &uploads, &slots, &abort)
                .await
            {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => {
                    warn!(
                        "waiting for RabbitMQ at {}: {e}; next try in {} s",
                        queue::address(&self.amqp),
                        delay.as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        uploads.close();
        let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
        if !uploads.is_empty() {
            info!(
                running = uploads.len(),
                ?grace,
                "waiting for running uploads to finish"
            );
        }
        if tokio::time::timeout(grace, uploads.wait()).await.is_err() {
            warn!(
                running = uploads.len(),
                "grace period over: handing running uploads back to the queue"
            );
            abort.cancel();
            uploads.wait().await;
        }
        heartbeat_stop.cancel();
        background.close();
        background.wait().await;
        info!("worker stopped");
        Ok(())
    }

    /// Takes deliveries only while an upload slot is free, and acknowledges each as soon as
    /// the ticket is claimed in Postgres: no delivery is held for the length of an upload.
    async fn consume_until_lost(
        &self,
        shutdown: &CancellationToken,
        uploads: &TaskTracker,
        slots: &Arc<Semaphore>,
        abort: &CancellationToken,
    ) -> anyhow::Result<()> {
        let tag = format!("pimage-worker@{}", self.id);
        let conn = queue::connect(&self.amqp, &tag).await?;
        let channel = queue::channel(&conn, &self.amqp.queue, 1).await?;
        info!(queue = %self.amqp.queue, concurrency = self.settings.concurrency, "worker connected");
        let mut consumer: Option<Consumer> = None;
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the slot semaphore is never closed"),
                _ = shutdown.cancelled() => {
                    queue::stop_consuming(&channel, &tag, consumer.take()).await;
                    return Ok(());
                }
            };
            if consumer.is_none() {
                consumer = Some(queue::start_consuming(&channel, &self.amqp.queue, &tag).await?);
            }
            let next = consumer.as_mut().expect("consumer started above").next();
            let delivery = tokio::select! {
                d = next => d,
                _ = shutdown.cancelled() => {
                    queue::stop_consuming(&channel, &tag, consumer.take()).await;
                    return Ok(());
                }
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("consumer closed"),
            };
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
            // The message says a ticket waits; the claim takes the fairest one that may start.
            let signalled_by = message.ticket_id;
            let held_since = tokio::time::Instant::now();
            let mut handed_back = false;
            let claim = loop {
                match self.claim_fairest().await {
                    Ok(Found::Claimed(claim)) => break Some(*claim),
                    Ok(Found::Nothing) => break None,
                    // Held past MAX_HOLD, RabbitMQ's consumer_timeout (30 min by default) would
                    // close the channel: hand the delivery back (one count of its 20) instead.
                    Ok(Found::Waiting) if held_since.elapsed() > MAX_HOLD => {
                        info!(
                            signalled_by,
                            "still waiting for a slot; handing the message back to RabbitMQ"
                        );
                        let _ = delivery
                            .acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await;
                        handed_back = true;
                        break None;
                    }
                    // Every queued ticket waits for a slot of its cloud: keep the delivery (one
                    // of them needs it) until a slot frees.
                    Ok(Found::Waiting) => tokio::select! {
                        _ = self.slots.wait() => {}
                        _ = shutdown.cancelled() => {
                            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                            queue::stop_consuming(&channel, &tag, consumer.take()).await;
                            return Ok(());
                        }
                    },
                    // Keep the delivery (bouncing it would count towards the delivery limit)
                    // and try again once Postgres is back.
                    Err(e) => {
                        error!(signalled_by, error = %e, "cannot claim: Postgres unavailable; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            _ = shutdown.cancelled() => {
                                let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                                queue::stop_consuming(&channel, &tag, consumer.take()).await;
                                return Ok(());
                            }
                        }
                    }
                }
            };
            let Some(claim) = claim else {
                drop(permit);
                if !handed_back {
                    info!(signalled_by, "no ticket queued (ended, cancelled or taken by another worker); dropping the message");
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
                continue;
            };
            if slots.available_permits() == 0 {
                // That was the last free slot: stop consuming while this delivery is still
                // unacknowledged (prefetch 1), so RabbitMQ has nothing to push that we would
                // have to bounce.
                queue::stop_consuming(&channel, &tag, consumer.take()).await;
            }
            let worker = self.clone();
            let abort = abort.clone();
            let span = info_span!(
                "ticket",
                ticket_id = claim.ticket.id,
                attempt = claim.ticket.attempts
            );
            uploads.spawn(
                async move {
                    let _slot = permit;
                    if let Err(e) = worker.run_claim(claim, &abort).await {
                        // The lease runs out and the rescuer re-queues the ticket.
                        error!(error = %e, "lost Postgres while running the ticket");
                    }
                }
                .instrument(span),
            );
            // Acknowledged once the ticket is ours in Postgres and its task runs; a failed
            // ack only means a redelivery, which the claim then refuses.
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    }
}
