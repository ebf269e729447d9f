//! One attempt at publishing a ticket (log in, settle earlier images, create, upload,
//! verify), and `AttemptError`: why an attempt failed, as the retry loop sees it.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cloud::{Cause, CloudError, Glance, OpenStackAccount};
use crate::config::ImportMethod;
use crate::retry::Retryable;
use crate::store::claims::{self, Claim, Heartbeat};
use crate::store::tickets;
use crate::store::Image;

use super::convert::Payload;
use super::upload::{holds_file, Transfer};
use super::Worker;

/// One ticket's publication, shared by its attempts.
pub(super) struct Job<'a> {
    pub(super) worker: &'a Worker,
    pub(super) claim: &'a Claim,
    pub(super) image: &'a Image,
    pub(super) cancel: &'a CancellationToken,
    pub(super) account: OpenStackAccount,
    /// A checksum mismatch earns one re-upload, not more.
    pub(super) checksum_retried: std::sync::atomic::AtomicBool,
}

/// Why an attempt ended without publishing.
#[derive(Debug)]
pub(super) enum AttemptError {
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
    pub(super) fn cause_label(&self) -> String {
        match self {
            AttemptError::Cloud(e) => match &e.cause {
                crate::cloud::Cause::Http { status, .. } => format!("http_{status}"),
                crate::cloud::Cause::Transport => "connection".into(),
                crate::cloud::Cause::Bound => "bound".into(),
                _ => "other".into(),
            },
            AttemptError::ChecksumMismatch { .. } => "checksum".into(),
            _ => "other".into(),
        }
    }

    pub(super) fn reason(&self) -> String {
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

/// How long past the attempt deadline the removal of a cut upload's image may take.
const REMOVAL_GRACE: Duration = Duration::from_secs(60);

/// The error of an attempt that reached `worker.attempt_deadline_secs`.
pub(super) fn past_deadline(limit: Duration) -> AttemptError {
    AttemptError::Cloud(CloudError {
        summary: format!(
            "the attempt ran past worker.attempt_deadline_secs ({} s)",
            limit.as_secs()
        ),
        detail: None,
        cause: crate::cloud::Cause::Bound,
    })
}

impl Job<'_> {
    /// One attempt, ended (transient) at `worker.attempt_deadline_secs`: the upload stops
    /// at the deadline (and its image is removed as after any failure); the other steps are
    /// each bounded by the call timeout, and the whole by the deadline plus a grace for that
    /// removal.
    pub(super) async fn attempt(&self, attempt: u32, max: u32) -> Result<String, AttemptError> {
        let limit = Duration::from_secs(self.worker.settings.attempt_deadline_secs.max(1));
        let deadline = tokio::time::Instant::now() + limit;
        tokio::time::timeout_at(
            deadline + REMOVAL_GRACE,
            self.attempt_steps(attempt, max, deadline),
        )
        .await
        .unwrap_or_else(|_| Err(past_deadline(limit)))
    }

    /// Log in, settle images left by earlier attempts, create, upload, verify.
    async fn attempt_steps(
        &self,
        attempt: u32,
        max: u32,
        deadline: tokio::time::Instant,
    ) -> Result<String, AttemptError> {
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
        let registered = self.open_file(Path::new(&self.image.file_path)).await?;
        let glance = self
            .unless_cancelled(
                (self.worker.sessions).glance(&self.account, &self.worker.cloud_policy),
            )
            .await?;
        let key = self.claim.ticket.ticket_key.to_string();
        // The file as registered, or converted for this cloud (removed when this ends).
        let payload = self.payload(&glance).await?;
        let file = if payload.path == Path::new(&self.image.file_path) {
            registered
        } else {
            self.open_file(&payload.path).await?
        };

        // Never two images for one ticket: reuse a finished one, remove unfinished ones. The
        // first attempt of the first claim ever (fencing token 1: never reset) has no
        // predecessor, and skips the search (one Glance call less per ticket).
        let first_ever = self.claim.token == 1 && attempt == 1;
        let earlier = if first_ever {
            vec![]
        } else {
            self.unless_cancelled(glance.images_of_ticket(&key)).await?
        };
        for existing in earlier {
            if holds_file(&payload, &existing) {
                info!(image = %existing.id, "an earlier attempt already published it");
                return Ok(existing.id);
            }
            self.unless_cancelled(glance.delete_image(&existing.id))
                .await?;
        }

        let transfer = match glance.profile().and_then(|p| p.import_method) {
            Some(ImportMethod::GlanceDirect) => Transfer::Stage,
            // Glance fetches the registered file from the API, which cannot see a converted copy.
            Some(ImportMethod::WebDownload) if payload.path != Path::new(&self.image.file_path) => {
                return Err(AttemptError::Permanent {
                    summary: "the cloud's profile asks for web-download and a disk_format \
                              conversion: Glance can fetch only the registered file"
                        .into(),
                    detail: None,
                })
            }
            Some(ImportMethod::WebDownload) => Transfer::WebDownload,
            Some(ImportMethod::Direct) | None => Transfer::Upload,
        };
        // Refused at once when it cannot fit, rather than after the bytes went up.
        self.unless_cancelled(
            glance.check_quota(payload.size as u64, transfer != Transfer::Upload),
        )
        .await?;
        self.report(&self.step(format!("creating the image in Glance{of}")))
            .await?;
        let no_properties = Default::default();
        // Cut by a cancel, a create may leave an image whose id we never learned: the
        // reconciler's orphan sweep finds it by this ticket's key and deletes it, the ticket
        // having ended (cancelled), as after any cut call.
        let created = self
            .unless_cancelled(glance.create_image(
                &self.claim.ticket.display_name,
                &payload.format,
                self.claim.ticket.public_image,
                (&key, &self.worker.deployment),
                glance.profile().map_or(&no_properties, |p| &p.properties),
            ))
            .await?;
        let result = match claims::set_cloud_id(
            &self.worker.pool,
            self.claim.ticket.id,
            self.claim.token,
            &created.id,
        )
        .await
        {
            Ok(true) => {
                self.transfer(
                    &glance,
                    &created.id,
                    (file, &payload),
                    (&of, transfer),
                    deadline,
                )
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
        if result.is_err() && self.may_delete_own_image().await {
            // Leave nothing behind: the next attempt (if any) starts from a new image. Should
            // this fail, the reconciler deletes it once the ticket has ended.
            if let Err(e) = glance.delete_image(&created.id).await {
                warn!(image = %created.id, error = %e, "could not delete the partial Glance image");
            }
        }
        result.map(|()| created.id)
    }

    /// `call`, or `Cancelled` as soon as the ticket's cancel fires: a cloud that never
    /// answers cannot keep a cancelled ticket's slot (each call is bounded by the call
    /// timeout; this leaves before it). The upload watches the cancel itself; what a cut call
    /// leaves, the reconciler removes once the ticket ended.
    pub(super) async fn unless_cancelled<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, CloudError>>,
    ) -> Result<T, AttemptError> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(AttemptError::Cancelled),
            result = call => Ok(result?),
        }
    }

    async fn open_file(&self, path: &Path) -> Result<tokio::fs::File, AttemptError> {
        tokio::fs::File::open(path)
            .await
            .map_err(|e| AttemptError::Permanent {
                summary: format!(
                    "the file of image {} ('{}') is missing or unreadable on the server",
                    self.image.id, self.image.name
                ),
                detail: Some(e.to_string()),
            })
    }

    /// Uploads (or stages) and verifies; a direct upload that Glance forbids (403, the
    /// `upload_image` policy) goes again through glance-direct when Glance offers it.
    async fn transfer(
        &self,
        glance: &Glance,
        image_id: &str,
        (file, payload): (tokio::fs::File, &Payload),
        (of, transfer): (&str, Transfer),
        deadline: tokio::time::Instant,
    ) -> Result<(), AttemptError> {
        let result = self
            .upload_and_verify(glance, image_id, (file, payload), (of, transfer), deadline)
            .await;
        let forbidden = matches!(
            &result,
            Err(AttemptError::Cloud(CloudError {
                cause: Cause::Http { status: 403, .. },
                ..
            }))
        );
        if !(forbidden && transfer == Transfer::Upload) {
            return result;
        }
        if !glance
            .import_methods()
            .await?
            .iter()
            .any(|m| m == "glance-direct")
        {
            return result;
        }
        info!("Glance forbids the direct upload; staging the image for glance-direct");
        let file = self.open_file(&payload.path).await?;
        self.upload_and_verify(
            glance,
            image_id,
            (file, payload),
            (of, Transfer::Stage),
            deadline,
        )
        .await
    }

    /// Whether this worker may delete the image it created: only while its fencing token
    /// still holds the ticket (a successor may have adopted the image as complete), or once
    /// the ticket record is gone (no one can adopt it then).
    async fn may_delete_own_image(&self) -> bool {
        let (pool, id) = (&self.worker.pool, self.claim.ticket.id);
        let lease = self.worker.settings.lease_seconds;
        match claims::extend_lease(pool, id, self.claim.token, lease).await {
            Ok(Heartbeat::Held | Heartbeat::CancelRequested) => true,
            Ok(Heartbeat::Lost) => matches!(tickets::get(pool, id).await, Ok(None)),
            // Unsure: the reconciler deletes it once the ticket has ended.
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
