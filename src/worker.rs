//! The worker: takes tickets from RabbitMQ, claims them in Postgres, and publishes the
//! image to Glance while writing progress, retrying transient failures.
//!
//! A delivery is taken only while an upload slot is free, and acknowledged as soon as the
//! ticket is claimed in Postgres (a lease with a fencing token); from then on Postgres, not
//! RabbitMQ, tracks the job. Progress writes extend the lease; if the worker dies, the
//! rescuer re-queues the ticket once the lease expires.
//! Cancels arrive by Postgres NOTIFY (`CancelWatch`); the progress writes, which report a
//! requested cancel too, are the fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Consumer;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::cloud::{AddressPolicy, CloudError, Glance, OpenStackAccount};
use crate::config::{AmqpSettings, WorkerSettings};
use crate::queue::{self, Publisher, TicketMessage};
use crate::retry::{retry, Retryable};
use crate::secrets::{Secret, SecretBox};
use crate::store::tickets::{self, Claim, Heartbeat, Outcome, Progress, CANCEL_CHANNEL};
use crate::store::{images, Image};
use crate::{outbox, rescuer};

/// Read size for the upload stream: large enough for full-speed loopback, small enough that
/// memory stays flat whatever the file size.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// An upload that moves no byte for this long is cut and retried.
const STALL_LIMIT: Duration = Duration::from_secs(120);
/// How long Glance may take to answer once it has every byte (it hashes the whole file).
const ANSWER_LIMIT: Duration = Duration::from_secs(900);

#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    settings: WorkerSettings,
    amqp: AmqpSettings,
    cloud_policy: AddressPolicy,
    secrets: SecretBox,
    cancels: CancelWatch,
    /// Hands released and rescued tickets back to the queue.
    publisher: Arc<Publisher>,
    /// host:pid, shown as lease owner and RabbitMQ consumer tag.
    id: String,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        settings: WorkerSettings,
        amqp: AmqpSettings,
        cloud_policy: AddressPolicy,
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
        Worker {
            pool,
            settings,
            amqp,
            cloud_policy,
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
        background.spawn(outbox::run_relay(
            self.pool.clone(),
            self.publisher.clone(),
            shutdown.clone(),
        ));
        background.spawn(rescuer::run(
            self.pool.clone(),
            self.publisher.clone(),
            self.settings.max_ticket_attempts,
            Duration::from_secs(self.settings.rescue_interval_secs.max(1)),
            shutdown.clone(),
        ));
        let mut delay = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self
                .consume_until_lost(&shutdown, &uploads, &slots, &abort)
                .await
            {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => {
                    warn!(error = %e, retry_in = ?delay, "lost RabbitMQ, reconnecting");
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
            let ticket_id = message.ticket_id;
            let claim = loop {
                match tickets::claim(&self.pool, ticket_id, &self.id, self.settings.lease_seconds)
                    .await
                {
                    Ok(claim) => break claim,
                    // Keep the delivery (bouncing it would count towards the delivery limit)
                    // and try again once Postgres is back.
                    Err(e) => {
                        error!(ticket_id, error = %e, "cannot claim: Postgres unavailable; retrying");
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
                info!(ticket_id, "ticket not claimable (ended, cancelled, or owned by a live worker); dropping the message");
                drop(permit);
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
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
            let span = info_span!("ticket", ticket_id, attempt = claim.ticket.attempts);
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

    /// Runs a claimed ticket to its end, or hands it back when `abort` fires.
    async fn run_claim(&self, claim: Claim, abort: &CancellationToken) -> Result<(), sqlx::Error> {
        let ticket_id = claim.ticket.id;
        info!("claimed");
        let cancel = self.cancels.register(ticket_id, abort);
        // Aborted on drop too: a panicking upload must not keep renewing the lease.
        let keeper = AbortOnDrop(tokio::spawn(keep_lease(
            self.pool.clone(),
            ticket_id,
            claim.token,
            self.settings.lease_seconds,
            cancel.clone(),
        )));
        let outcome = self.publish(&claim, &cancel).await;
        drop(keeper);
        self.cancels.unregister(ticket_id);
        let outcome = match outcome? {
            None => {
                warn!("lost the ticket to another worker; stopped");
                return Ok(());
            }
            Some(Outcome::Cancelled) if abort.is_cancelled() => {
                if let Some(outbox_id) =
                    tickets::release(&self.pool, ticket_id, claim.token).await?
                {
                    info!("handed the ticket back to the queue");
                    outbox::hand_off(&self.pool, &self.publisher, ticket_id, outbox_id).await;
                    return Ok(());
                }
                // Not handed back: its user cancelled it meanwhile (or the claim is lost).
                Outcome::Cancelled
            }
            Some(outcome) => outcome,
        };
        let label = match &outcome {
            Outcome::Published { cloud_id, .. } => {
                info!(cloud_id, "published");
                "complete"
            }
            Outcome::Failed { error_message, .. } => {
                warn!(error_message, "failed");
                "error"
            }
            Outcome::Cancelled => {
                info!("cancelled");
                "cancelled"
            }
        };
        metrics::counter!("pimage_tickets_finished_total", "outcome" => label).increment(1);
        if !tickets::finish(&self.pool, ticket_id, claim.token, &outcome).await? {
            warn!("lost the ticket before finishing; another worker owns it");
        }
        Ok(())
    }

    /// The ticket's outcome; `None` when the claim was lost (someone else finishes it).
    async fn publish(
        &self,
        claim: &Claim,
        cancel: &CancellationToken,
    ) -> Result<Option<Outcome>, sqlx::Error> {
        let ticket = &claim.ticket;
        let Some(image) = images::get(&self.pool, ticket.image_id).await? else {
            return Ok(Some(failed(
                format!("image {} no longer exists", ticket.image_id),
                None,
            )));
        };
        let password = match self.secrets.open(&ticket.cloud_password_enc) {
            Ok(p) => p,
            Err(e) => return Ok(Some(failed(e.to_string(), None))),
        };
        let job = Job {
            worker: self,
            claim,
            image: &image,
            cancel,
            account: OpenStackAccount {
                keystone_url: ticket.keystone_url.clone(),
                glance_url: ticket.glance_url.clone(),
                user: ticket.cloud_login.clone(),
                password: password.clone(),
                domain: ticket.keystone_domain.clone(),
                project: ticket.keystone_project.clone(),
            },
            checksum_retried: std::sync::atomic::AtomicBool::new(false),
        };
        let max = self.settings.retry.max_attempts;
        let job = &job;
        let result = retry(
            &self.settings.retry,
            cancel,
            |attempt| job.attempt(attempt, max),
            |notice| {
                let reason = notice.error.reason();
                let message = notice.message(&reason);
                warn!(attempt = notice.next_attempt, delay = ?notice.delay, reason, "transient failure, retrying");
                metrics::counter!("pimage_retries_total", "cause" => notice.error.cause_label()).increment(1);
                async move { job.report(&job.step(message)).await }
            },
        )
        .await;
        Ok(Some(match result {
            Ok(cloud_id) => Outcome::Published { cloud_id, bytes: image.size_bytes },
            Err(AttemptError::Cloud(e)) => cloud_failure(e, &password),
            Err(AttemptError::Permanent { summary, detail }) => failed(summary, detail),
            Err(AttemptError::ChecksumMismatch { detail }) => failed(
                "Glance's checksum of the uploaded image still differed from the file's after a re-upload".into(),
                Some(detail),
            ),
            Err(AttemptError::Cancelled) => Outcome::Cancelled,
            Err(AttemptError::Lost) => return Ok(None),
            Err(AttemptError::Store(e)) => return Err(e),
        }))
    }
}

/// One ticket's publication, shared by its attempts.
struct Job<'a> {
    worker: &'a Worker,
    claim: &'a Claim,
    image: &'a Image,
    cancel: &'a CancellationToken,
    account: OpenStackAccount,
    /// A checksum mismatch earns one re-upload, not more.
    checksum_retried: std::sync::atomic::AtomicBool,
}

/// Why an attempt ended without publishing.
#[derive(Debug)]
enum AttemptError {
    Cloud(CloudError),
    /// A failure no retry can fix (missing file, …).
    Permanent {
        summary: String,
        detail: Option<String>,
    },
    /// Glance stored bytes whose checksum differs from the file's.
    ChecksumMismatch {
        detail: String,
    },
    Cancelled,
    /// Another worker holds the ticket now.
    Lost,
    Store(sqlx::Error),
}

impl AttemptError {
    /// The `cause` label of the retry metric.
    fn cause_label(&self) -> String {
        match self {
            AttemptError::Cloud(e) => match &e.cause {
                crate::cloud::Cause::Http { status, .. } => format!("http_{status}"),
                crate::cloud::Cause::Transport => "connection".into(),
                _ => "other".into(),
            },
            AttemptError::ChecksumMismatch { .. } => "checksum".into(),
            _ => "other".into(),
        }
    }

    fn reason(&self) -> String {
        match self {
            AttemptError::Cloud(e) => e.short_reason(),
            AttemptError::ChecksumMismatch { .. } => {
                "Glance's checksum differed, uploading again".into()
            }
            other => format!("{other:?}"),
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

impl Retryable for AttemptError {
    fn is_transient(&self) -> bool {
        match self {
            AttemptError::Cloud(e) => e.is_transient(),
            AttemptError::ChecksumMismatch { .. } => true,
            _ => false,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Cloud(e) => e.retry_after(),
            _ => None,
        }
    }
    fn cancelled() -> Self {
        AttemptError::Cancelled
    }
}

impl From<CloudError> for AttemptError {
    fn from(e: CloudError) -> Self {
        AttemptError::Cloud(e)
    }
}

impl From<sqlx::Error> for AttemptError {
    fn from(e: sqlx::Error) -> Self {
        AttemptError::Store(e)
    }
}

impl Job<'_> {
    fn step(&self, message: String) -> Progress {
        Progress {
            message,
            bytes_loaded: 0,
            bytes_total: self.image.size_bytes,
            percentage: 0,
            eta: None,
        }
    }

    /// Writes progress (a heartbeat); a requested cancel or a lost claim ends the attempt.
    async fn report(&self, progress: &Progress) -> Result<(), AttemptError> {
        let w = self.worker;
        let written = tickets::report_progress(
            &w.pool,
            self.claim.ticket.id,
            self.claim.token,
            progress,
            w.settings.lease_seconds,
        )
        .await;
        // A Postgres blip must not kill a long upload: the lease keeper owns the lease, and
        // the next write tells whether the ticket is still ours.
        let heartbeat = match written {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "could not write progress; going on");
                return Ok(());
            }
        };
        match heartbeat {
            Heartbeat::Held if self.cancel.is_cancelled() => Err(AttemptError::Cancelled),
            Heartbeat::Held => Ok(()),
            Heartbeat::CancelRequested => Err(AttemptError::Cancelled),
            Heartbeat::Lost => Err(AttemptError::Lost),
        }
    }

    /// One attempt: log in, settle images left by earlier attempts, create, upload, verify.
    async fn attempt(&self, attempt: u32, max: u32) -> Result<String, AttemptError> {
        let of = if attempt > 1 {
            format!(" (attempt {attempt} of {max})")
        } else {
            String::new()
        };
        self.report(&self.step(format!(
            "logging in to Keystone as '{}'{of}",
            self.account.user
        )))
        .await?;
        let file = tokio::fs::File::open(&self.image.file_path)
            .await
            .map_err(|e| AttemptError::Permanent {
                summary: format!(
                    "the file of image {} ('{}') is missing or unreadable on the server",
                    self.image.id, self.image.name
                ),
                detail: Some(e.to_string()),
            })?;
        let glance = Glance::login(&self.account, &self.worker.cloud_policy).await?;
        let key = self.claim.ticket.ticket_key.to_string();

        // Never two images for one ticket: reuse a finished one, remove unfinished ones. The
        // first attempt of the first claim ever (fencing token 1: never reset) has no
        // predecessor, and skips the search (one Glance call less per ticket).
        let first_ever = self.claim.token == 1 && attempt == 1;
        let earlier = if first_ever {
            vec![]
        } else {
            glance.images_of_ticket(&key).await?
        };
        for existing in earlier {
            if existing.status == "active"
                && existing.checksum.as_deref() == Some(self.image.md5sum.as_str())
            {
                info!(image = %existing.id, "an earlier attempt already published it");
                return Ok(existing.id);
            }
            glance.delete_image(&existing.id).await?;
        }

        self.report(&self.step(format!("creating the image in Glance{of}")))
            .await?;
        let created = glance
            .create_image(
                &self.claim.ticket.display_name,
                &self.image.format,
                self.claim.ticket.public_image,
                &key,
            )
            .await?;
        let result = match tickets::set_cloud_id(
            &self.worker.pool,
            self.claim.ticket.id,
            self.claim.token,
            &created.id,
        )
        .await
        {
            Ok(true) => {
                self.upload_and_verify(&glance, &created.id, file, &of)
                    .await
            }
            Ok(false) => Err(AttemptError::Lost),
            Err(e) => Err(AttemptError::Store(e)),
        };
        // Still ours after the upload? Only then may this image become the ticket's.
        let result = match result {
            Ok(()) => {
                self.report(&self.step(format!("checking the image in Glance{of}")))
                    .await
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Leave nothing behind: the next attempt (if any) starts from a new image.
            if let Err(e) = glance.delete_image(&created.id).await {
                warn!(image = %created.id, error = %e, "could not delete the partial Glance image");
            }
        }
        result.map(|()| created.id)
    }

    async fn upload_and_verify(
        &self,
        glance: &Glance,
        image_id: &str,
        file: tokio::fs::File,
        of: &str,
    ) -> Result<(), AttemptError> {
        let total = self.image.size_bytes;
        let sent = Arc::new(AtomicU64::new(0));
        // No checksum here: Glance computes one as it stores, and it is compared with the
        // file's registered md5 below. Hashing in the stream too cost ~15% of the upload speed
        // on a 2-core machine (docs/BENCHMARKS.md).
        let body = {
            let sent = sent.clone();
            ReaderStream::with_capacity(file, UPLOAD_CHUNK).map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    metrics::counter!("pimage_upload_bytes_total").increment(bytes.len() as u64);
                }
                chunk
            })
        };
        let upload = glance.upload(image_id, reqwest::Body::wrap_stream(body), total as u64);
        tokio::pin!(upload);

        let started = Instant::now();
        let (mut last_sent, mut last_move) = (0u64, Instant::now());
        let mut last_percentage = -1;
        let interval = Duration::from_millis(self.worker.settings.progress_interval_ms.max(100));
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                result = &mut upload => { result?; break; }
                // Dropping `upload` closes the connection: Glance puts the image back to queued.
                _ = self.cancel.cancelled() => return Err(AttemptError::Cancelled),
                _ = tick.tick() => {
                    let now_sent = sent.load(Ordering::Relaxed);
                    if now_sent != last_sent {
                        (last_sent, last_move) = (now_sent, Instant::now());
                    }
                    // Glance takes no more bytes, or never answers once it has them all.
                    let limit = if (now_sent as i64) < total { STALL_LIMIT } else { ANSWER_LIMIT };
                    if last_move.elapsed() > limit {
                        return Err(AttemptError::Cloud(CloudError {
                            summary: format!("the upload to Glance stalled for {} s", limit.as_secs()),
                            detail: Some(format!("{now_sent} of {total} bytes sent")),
                            cause: crate::cloud::Cause::Transport,
                        }));
                    }
                    // One write per percent at most (and per interval): a ticket costs a
                    // bounded number of writes whatever its size. The lease keeper
                    // heartbeats in between.
                    let mut progress = upload_progress(now_sent as i64, total, started.elapsed());
                    if progress.percentage != last_percentage {
                        last_percentage = progress.percentage;
                        progress.message.push_str(of);
                        self.report(&progress).await?;
                    }
                }
            }
        }
        metrics::histogram!("pimage_upload_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let registered = self.image.md5sum.as_str();
        let stored = glance.image(image_id).await?;
        if stored.status == "active" && stored.checksum.as_deref() == Some(registered) {
            return Ok(());
        }
        // Rare: tell a file changed since registration (permanent) from bytes damaged on
        // the way (one more upload).
        let path = self.image.file_path.clone();
        let unreadable = |e: String| AttemptError::Permanent {
            summary: format!("the file of image {} could not be read back", self.image.id),
            detail: Some(e),
        };
        let read = tokio::task::spawn_blocking(move || {
            crate::image_files::checksums(std::path::Path::new(&path))
        })
        .await
        .map_err(|e| unreadable(e.to_string()))?
        .map_err(|e| unreadable(e.to_string()))?
        .1;
        if read != registered {
            return Err(AttemptError::Permanent {
                summary: format!(
                    "the file of image {} changed on disk since it was registered (checksum differs)",
                    self.image.id
                ),
                detail: Some(format!("registered md5 {registered}, file md5 now {read}")),
            });
        }
        let detail = format!(
            "Glance status {}, checksum {:?}; file md5 {registered}",
            stored.status, stored.checksum
        );
        if self.checksum_retried.swap(true, Ordering::Relaxed) {
            Err(AttemptError::Permanent {
                summary: "Glance's checksum of the uploaded image still differed from the file's after a re-upload"
                    .into(),
                detail: Some(detail),
            })
        } else {
            Err(AttemptError::ChecksumMismatch { detail })
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the lease alive for as long as the ticket runs, whatever step it is in: the lease
/// must expire only when the worker is gone. A third of the lease between writes leaves room
/// for two missed ones. Stops the job when the claim is lost or a cancel is requested.
async fn keep_lease(pool: PgPool, id: i64, token: i64, lease_secs: u32, stop: CancellationToken) {
    let every = Duration::from_millis((lease_secs as u64 * 1000 / 3).max(200));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match tickets::extend_lease(&pool, id, token, lease_secs).await {
            Ok(Heartbeat::Held) => {}
            Ok(Heartbeat::CancelRequested) => stop.cancel(),
            Ok(Heartbeat::Lost) => {
                warn!(ticket_id = id, "lease lost to another worker: stopping");
                metrics::counter!("pimage_leases_lost_total").increment(1);
                stop.cancel();
            }
            Err(e) => warn!(ticket_id = id, error = %e, "could not extend the lease"),
        }
    }
}

/// Tickets this worker runs, by id, with the token that cancels each; fed by Postgres NOTIFY.
#[derive(Clone, Default)]
struct CancelWatch {
    running: Arc<Mutex<HashMap<i64, CancellationToken>>>,
}

impl CancelWatch {
    /// The ticket's cancel token; it also fires with `parent` (the worker's abort).
    fn register(&self, ticket_id: i64, parent: &CancellationToken) -> CancellationToken {
        let token = parent.child_token();
        self.running
            .lock()
            .expect("cancel map")
            .insert(ticket_id, token.clone());
        token
    }

    fn unregister(&self, ticket_id: i64) {
        self.running.lock().expect("cancel map").remove(&ticket_id);
    }

    fn cancel(&self, ticket_id: i64) {
        if let Some(token) = self.running.lock().expect("cancel map").get(&ticket_id) {
            info!(ticket_id, "cancel requested");
            token.cancel();
        }
    }

    /// Listens until `shutdown`, reconnecting after errors (progress writes cover the gap).
    async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let listened = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CANCEL_CHANNEL).await?;
                loop {
                    let note = listener.recv().await?;
                    if let Ok(id) = note.payload().parse::<i64>() {
                        self.cancel(id);
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                result = listened => {
                    if let Err(e) = result {
                        warn!(error = %e, "cancel listener lost Postgres; reconnecting");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        }
    }
}

fn failed(error_message: String, detail: Option<String>) -> Outcome {
    Outcome::Failed {
        error_message,
        detail,
    }
}

/// The user-facing failure, with the cloud's answer scrubbed of the password.
fn cloud_failure(e: CloudError, password: &Secret) -> Outcome {
    let summary = if e.is_transient() {
        format!("gave up retrying: {}", e.summary)
    } else {
        e.summary
    };
    let detail = e.detail.map(|d| {
        if password.is_empty() {
            d
        } else {
            d.replace(password.expose(), "***")
        }
    });
    failed(summary, detail)
}

fn upload_progress(sent: i64, total: i64, elapsed: Duration) -> Progress {
    // 99 at most until Glance has confirmed the checksum: 100 means published.
    let percentage = if total > 0 {
        (sent * 100 / total).min(99) as i32
    } else {
        0
    };
    let rate = sent as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = (rate > 0.0 && sent < total).then(|| {
        let remaining = Duration::from_secs_f64((total - sent) as f64 / rate);
        chrono::Utc::now() + chrono::Duration::from_std(remaining).unwrap_or_default()
    });
    Progress {
        message: format!(
            "uploading to Glance: {:.1} of {:.1} MiB ({percentage}%)",
            sent as f64 / 1048576.0,
            total as f64 / 1048576.0
        ),
        bytes_loaded: sent,
        bytes_total: total,
        percentage,
        eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Cause;

    #[test]
    fn progress_stays_below_100_until_published() {
        let p = upload_progress(100, 100, Duration::from_secs(1));
        assert_eq!(p.percentage, 99);
        assert!(p.eta.is_none());
        let p = upload_progress(25, 100, Duration::from_secs(1));
        assert_eq!(p.percentage, 25);
        let eta = p.eta.expect("eta while uploading");
        let secs = (eta - chrono::Utc::now()).num_milliseconds();
        assert!(
            (2500..=3100).contains(&secs),
            "75 bytes left at 25 B/s is ~3 s, got {secs} ms"
        );
    }

    #[test]
    fn cloud_detail_never_carries_the_password() {
        let e = CloudError {
            summary: "x".into(),
            detail: Some("bad pw s3cr3t!".into()),
            cause: Cause::LoginRefused,
        };
        match cloud_failure(e, &Secret::new("s3cr3t!")) {
            Outcome::Failed {
                detail,
                error_message,
            } => {
                assert_eq!(detail.as_deref(), Some("bad pw ***"));
                assert_eq!(error_message, "x");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_checksum_mismatch_earns_a_retry_and_missing_files_do_not() {
        assert!(AttemptError::ChecksumMismatch {
            detail: String::new()
        }
        .is_transient());
        assert!(!AttemptError::Permanent {
            summary: String::new(),
            detail: None
        }
        .is_transient());
        assert!(!AttemptError::Cancelled.is_transient());
    }
}
