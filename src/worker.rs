//! The worker: takes tickets from RabbitMQ, claims them in Postgres, and publishes the
//! image to Glance while writing progress.
//!
//! A delivery is acknowledged only after the ticket reached a final state (or turned out
//! not to be ours), so prefetch = `concurrency` bounds the uploads one process runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicRejectOptions};
use md5::{Digest, Md5};
use sqlx::PgPool;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::cloud::{CloudError, Glance, OpenStackAccount};
use crate::config::{AmqpSettings, WorkerSettings};
use crate::queue::{self, TicketMessage};
use crate::secrets::{Secret, SecretBox};
use crate::store::images;
use crate::store::tickets::{self, Claim, Heartbeat, Outcome, Progress};

/// Read size for the upload stream: large enough for full-speed loopback, small enough that
/// memory stays flat whatever the file size.
const UPLOAD_CHUNK: usize = 256 * 1024;

#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    settings: WorkerSettings,
    amqp: AmqpSettings,
    secrets: SecretBox,
    /// host:pid, shown as lease owner and RabbitMQ consumer tag.
    id: String,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        settings: WorkerSettings,
        amqp: AmqpSettings,
        secrets: SecretBox,
    ) -> Worker {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        let id = format!("{host}:{}", std::process::id());
        Worker {
            pool,
            settings,
            amqp,
            secrets,
            id,
        }
    }

    /// Consumes until `shutdown` fires, reconnecting to RabbitMQ with backoff when the
    /// connection drops; then waits for running uploads to finish.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let mut delay = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.consume_until_lost(&shutdown, &tracker).await {
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
        tracker.close();
        tracker.wait().await;
        info!("worker stopped");
        Ok(())
    }

    async fn consume_until_lost(
        &self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        let conn = queue::connect(&self.amqp, &format!("pimage-worker@{}", self.id)).await?;
        let tag = format!("pimage-worker@{}", self.id);
        let (channel, mut consumer) = queue::consume(
            &conn,
            &self.amqp.queue,
            self.settings.concurrency.max(1),
            &tag,
        )
        .await?;
        info!(queue = %self.amqp.queue, concurrency = self.settings.concurrency, "worker consuming");
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = shutdown.cancelled() => {
                    // Stop taking new work; running uploads finish on their own.
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
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
                    let _ = delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await;
                    continue;
                }
            };
            let worker = self.clone();
            tracker.spawn(async move {
                let span = info_span!("ticket", ticket_id = message.ticket_id);
                match worker.process(message.ticket_id).instrument(span).await {
                    Ok(()) => {
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                    Err(e) => {
                        // Postgres is unreachable: leave the message to be redelivered.
                        error!(ticket_id = message.ticket_id, error = %e, "could not process ticket");
                        let _ = delivery.acker.reject(BasicRejectOptions { requeue: true }).await;
                    }
                }
            });
        }
    }

    /// Claims and runs one ticket. `Err` only for store failures; cloud failures end the
    /// ticket in `error` and return `Ok`.
    pub async fn process(&self, ticket_id: i64) -> Result<(), sqlx::Error> {
        let Some(claim) =
            tickets::claim(&self.pool, ticket_id, &self.id, self.settings.lease_seconds).await?
        else {
            info!("ticket not claimable (ended, cancelled, or owned by a live worker); skipping");
            return Ok(());
        };
        info!(attempt = claim.ticket.attempts, "claimed");
        let outcome = self.publish(&claim).await?;
        match &outcome {
            Outcome::Published { cloud_id, .. } => info!(cloud_id, "published"),
            Outcome::Failed { error_message, .. } => warn!(error_message, "failed"),
            Outcome::Cancelled => info!("cancelled"),
        }
        if !tickets::finish(&self.pool, claim.ticket.id, claim.token, &outcome).await? {
            warn!("lost the ticket before finishing; another worker owns it");
        }
        Ok(())
    }

    async fn publish(&self, claim: &Claim) -> Result<Outcome, sqlx::Error> {
        let ticket = &claim.ticket;
        let Some(image) = images::get(&self.pool, ticket.image_id).await? else {
            return Ok(failed(
                format!("image {} no longer exists", ticket.image_id),
                None,
            ));
        };
        let password = match self.secrets.open(&ticket.cloud_password_enc) {
            Ok(p) => p,
            Err(e) => return Ok(failed(e.to_string(), None)),
        };
        let file = match tokio::fs::File::open(&image.file_path).await {
            Ok(f) => f,
            Err(e) => {
                return Ok(failed(
                    format!(
                        "the file of image {} ('{}') is missing or unreadable on the server",
                        image.id, image.name
                    ),
                    Some(e.to_string()),
                ))
            }
        };
        let account = OpenStackAccount {
            keystone_url: ticket.keystone_url.clone(),
            glance_url: ticket.glance_url.clone(),
            user: ticket.cloud_login.clone(),
            password: password.clone(),
            domain: ticket.keystone_domain.clone(),
            project: ticket.keystone_project.clone(),
        };
        let total = image.size_bytes;
        let step = |message: String| Progress {
            message,
            bytes_loaded: 0,
            bytes_total: total,
            percentage: 0,
            eta: None,
        };

        if self
            .heartbeat(
                claim,
                &step(format!("logging in to Keystone as '{}'", account.user)),
            )
            .await?
            != Heartbeat::Held
        {
            return Ok(Outcome::Cancelled);
        }
        let glance = match Glance::login(&account).await {
            Ok(g) => g,
            Err(e) => return Ok(cloud_failure(e, &password)),
        };

        self.heartbeat(claim, &step("creating the image in Glance".into()))
            .await?;
        let created = match glance
            .create_image(
                &ticket.display_name,
                &image.format,
                ticket.public_image,
                &ticket.ticket_key.to_string(),
            )
            .await
        {
            Ok(i) => i,
            Err(e) => return Ok(cloud_failure(e, &password)),
        };
        tickets::set_cloud_id(&self.pool, ticket.id, claim.token, &created.id).await?;

        let result = self.upload(claim, &glance, &created.id, file, total).await;
        let outcome = match result {
            Ok(UploadEnd::Done { md5 }) => match glance.image(&created.id).await {
                Ok(img)
                    if img.status == "active" && img.checksum.as_deref() == Some(md5.as_str()) =>
                {
                    if md5 != image.md5sum {
                        Some(failed(
                            format!("the file of image {} changed on disk since it was registered (checksum differs)", image.id),
                            Some(format!("registered md5 {}, uploaded md5 {md5}", image.md5sum)),
                        ))
                    } else {
                        return Ok(Outcome::Published {
                            cloud_id: created.id,
                            bytes: total,
                        });
                    }
                }
                Ok(img) => Some(failed(
                    "Glance did not store the image intact (status or checksum differs)".into(),
                    Some(format!(
                        "Glance status {}, checksum {:?}; uploaded md5 {md5}",
                        img.status, img.checksum
                    )),
                )),
                Err(e) => Some(cloud_failure(e, &password)),
            },
            Ok(UploadEnd::Cancelled) => None,
            Ok(UploadEnd::Lost) => return Ok(Outcome::Cancelled),
            Err(UploadError::Cloud(e)) => Some(cloud_failure(e, &password)),
            Err(UploadError::Store(e)) => return Err(e),
        };
        // Failed or cancelled: leave nothing behind in the cloud.
        if let Err(e) = glance.delete_image(&created.id).await {
            warn!(image = %created.id, error = %e, "could not delete the partial Glance image");
        }
        Ok(outcome.unwrap_or(Outcome::Cancelled))
    }

    async fn heartbeat(
        &self,
        claim: &Claim,
        progress: &Progress,
    ) -> Result<Heartbeat, sqlx::Error> {
        tickets::report_progress(
            &self.pool,
            claim.ticket.id,
            claim.token,
            progress,
            self.settings.lease_seconds,
        )
        .await
    }

    /// Streams the file while a reporter writes progress every `progress_interval_ms`.
    async fn upload(
        &self,
        claim: &Claim,
        glance: &Glance,
        image_id: &str,
        file: tokio::fs::File,
        total: i64,
    ) -> Result<UploadEnd, UploadError> {
        let sent = Arc::new(AtomicU64::new(0));
        let hasher = Arc::new(Mutex::new(Md5::new()));
        let body = {
            let (sent, hasher) = (sent.clone(), hasher.clone());
            ReaderStream::with_capacity(file, UPLOAD_CHUNK).map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    hasher.lock().expect("md5 lock").update(bytes);
                    sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                chunk
            })
        };
        let upload = glance.upload(image_id, reqwest::Body::wrap_stream(body), total as u64);
        tokio::pin!(upload);

        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.settings.progress_interval_ms.max(100),
        ));
        tick.tick().await;
        loop {
            tokio::select! {
                result = &mut upload => {
                    result.map_err(UploadError::Cloud)?;
                    let md5 = hex::encode(hasher.lock().expect("md5 lock").clone().finalize());
                    return Ok(UploadEnd::Done { md5 });
                }
                _ = tick.tick() => {
                    let progress = upload_progress(sent.load(Ordering::Relaxed) as i64, total, started.elapsed());
                    match self.heartbeat(claim, &progress).await.map_err(UploadError::Store)? {
                        Heartbeat::Held => {}
                        // Dropping `upload` closes the connection: Glance puts the image back to queued.
                        Heartbeat::CancelRequested => return Ok(UploadEnd::Cancelled),
                        Heartbeat::Lost => return Ok(UploadEnd::Lost),
                    }
                }
            }
        }
    }
}

enum UploadEnd {
    Done { md5: String },
    Cancelled,
    Lost,
}

enum UploadError {
    Cloud(CloudError),
    Store(sqlx::Error),
}

fn failed(error_message: String, detail: Option<String>) -> Outcome {
    Outcome::Failed {
        error_message,
        detail,
    }
}

/// The user-facing failure, with the cloud's answer scrubbed of the password.
fn cloud_failure(e: CloudError, password: &Secret) -> Outcome {
    let detail = e.detail.map(|d| {
        if password.is_empty() {
            d
        } else {
            d.replace(password.expose(), "***")
        }
    });
    failed(e.summary, detail)
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
            kind: None,
        };
        match cloud_failure(e, &Secret::new("s3cr3t!")) {
            Outcome::Failed { detail, .. } => assert_eq!(detail.as_deref(), Some("bad pw ***")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
