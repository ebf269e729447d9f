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
//! A claimed ticket is a `Job` (a value), run with a `WorkerContext`: what its steps may use,
//! passed by reference.
//!
//! This file: the worker, its context, and its life: background tasks started, the consume
//! loop (`consume`) kept connected, running uploads drained at shutdown.

mod app;
mod attempt;
pub mod cancel;
mod consume;
mod convert;
mod copy;
mod heartbeat;
mod job;
mod lease;
mod progress;
mod slots;
mod upload;

pub use app::WorkerApp;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cloud::{AddressPolicy, Sessions};
use crate::config::{AmqpSettings, CloudSettings, WorkerSettings};
use crate::image_store::ImageStore;
use crate::maintenance::{Maintenance, MaintenanceContext, Retention};
use crate::queue::{self, Publisher};
use crate::reconciler::Reconciler;
use crate::retry::Backoff;
use crate::secrets::SecretBox;

use cancel::CancelWatch;
use slots::SlotWatch;

/// Waits between tries to reach RabbitMQ: 200 ms, doubling, at most 10 s.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// The worker's parts, shared by its tasks (cloned into each job's task).
#[derive(Clone)]
struct Worker {
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
    /// What the rescuer forgets, and when (`[retention]`).
    retention: Retention,
    /// Where the image files are read from (`storage.url`).
    store: ImageStore,
}

impl Worker {
    fn new(
        pool: PgPool,
        settings: WorkerSettings,
        amqp: AmqpSettings,
        cloud: CloudSettings,
        secrets: SecretBox,
        retention: Retention,
        store: ImageStore,
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
            retention,
            store,
        }
    }

    /// What the worker's `/readyz` checks.
    fn probes(&self) -> crate::health::Probes {
        crate::health::Probes {
            pool: self.pool.clone(),
            publisher: self.publisher.clone(),
            // A worker without RabbitMQ gets no work.
            queue_required: true,
        }
    }

    /// What a job's steps may use: borrowed from the worker, passed by reference.
    fn context(&self) -> WorkerContext<'_> {
        WorkerContext {
            pool: &self.pool,
            settings: &self.settings,
            sessions: &self.sessions,
            cloud_policy: &self.cloud_policy,
            secrets: &self.secrets,
            publisher: &self.publisher,
            cancels: &self.cancels,
            worker_id: &self.id,
            deployment: &self.deployment,
            store: &self.store,
        }
    }

    /// Consumes until `shutdown` fires, reconnecting to RabbitMQ with backoff when the
    /// connection drops. Then running uploads get `shutdown_grace` to finish; after
    /// that they are aborted and handed back to the queue without counting an attempt.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let uploads = TaskTracker::new();
        let abort = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1) as usize));
        let background = self.start_listeners(&shutdown);
        let maintenance = Maintenance::start(
            MaintenanceContext {
                pool: self.pool.clone(),
                publisher: self.publisher.clone(),
                reconciler: self.reconciler.clone(),
                max_ticket_attempts: self.settings.max_ticket_attempts,
                interval: self.settings.rescue_interval,
                retention: self.retention.clone(),
            },
            &shutdown,
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
        let mut delays = RECONNECT.delays();
        while !shutdown.is_cancelled() {
            let slots = consume::Slots {
                uploads: &uploads,
                free: &slots,
                abort: &abort,
            };
            match self.consume_until_lost(&shutdown, slots).await {
                Ok(()) => delays = RECONNECT.delays(),
                Err(e) => {
                    let delay = delays.next().unwrap_or(RECONNECT.cap());
                    warn!(
                        "waiting for RabbitMQ at {}: {e}; next try in {} s",
                        queue::address(&self.amqp),
                        delay.as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        self.drain(&uploads, &abort).await;
        heartbeat_stop.cancel();
        background.close();
        background.wait().await;
        maintenance.join().await?;
        info!("worker stopped");
        Ok(())
    }

    /// The process's one Postgres listener, and what it feeds (cancels, freed slots), until
    /// `shutdown`.
    fn start_listeners(&self, shutdown: &CancellationToken) -> TaskTracker {
        let background = TaskTracker::new();
        let listener = crate::live::Listener::new(self.pool.clone());
        background.spawn(self.cancels.clone().run(&listener, self.pool.clone()));
        background.spawn(self.slots.clone().run(&listener));
        background.spawn(listener.run(shutdown.clone()));
        background
    }

    /// Gives running uploads `shutdown_grace` to finish, then aborts the rest (their
    /// tickets go back to the queue).
    async fn drain(&self, uploads: &TaskTracker, abort: &CancellationToken) {
        uploads.close();
        let grace = self.settings.shutdown_grace;
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
    }
}

/// What a job's steps may use (crates.io's worker context): the worker's shared parts,
/// borrowed; each step takes only the parts it needs.
#[derive(Clone, Copy)]
struct WorkerContext<'a> {
    pool: &'a PgPool,
    settings: &'a WorkerSettings,
    /// Keystone sessions kept per cloud account.
    sessions: &'a Sessions,
    cloud_policy: &'a AddressPolicy,
    secrets: &'a SecretBox,
    /// Hands released tickets back to the queue.
    publisher: &'a Arc<Publisher>,
    cancels: &'a CancelWatch,
    /// host:pid, the lease owner.
    worker_id: &'a str,
    /// Names this deployment on the images it creates (`cloud.deployment`).
    deployment: &'a str,
    /// Where the image files are read from.
    store: &'a ImageStore,
}
