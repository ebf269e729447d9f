//! One attempt at publishing a ticket (log in, settle earlier images, create, upload,
//! verify), and `AttemptError`: why an attempt failed, as the retry loop sees it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cloud::{Cause, CloudError, Glance, OpenStackAccount};
use crate::config::{ImportMethod, WorkerSettings};
use crate::image_store::{Chunks, ImageStore, StoreError};
use crate::retry::Retryable;
use crate::store::claims::{self, Claim, Heartbeat};
use crate::store::tickets;
use crate::store::Image;

use super::convert::{self, Payload};
use super::copy;
use super::progress::Reporter;
use super::upload::{self, holds_file, Transfer, Upload};
use super::WorkerContext;

/// What a ticket's attempts work on: the claimed ticket, its image and account, its cancel.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) claim: &'a Claim,
    pub(super) image: &'a Image,
    pub(super) account: &'a OpenStackAccount,
    pub(super) cancel: &'a CancellationToken,
}

/// Which attempt this is, and what the earlier ones left it to know.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttemptState {
    /// From 1.
    pub(super) number: u32,
    pub(super) max: u32,
    /// An earlier attempt's upload already differed from the file: a checksum mismatch
    /// earns one re-upload, not more.
    pub(super) checksum_retried: bool,
}

impl AttemptState {
    pub(super) fn first(max: u32) -> AttemptState {
        AttemptState {
            number: 1,
            max,
            checksum_retried: false,
        }
    }

    /// The state attempt `number` starts from, the one before having ended with `result`.
    pub(super) fn next<T>(self, number: u32, result: &Result<T, AttemptError>) -> AttemptState {
        AttemptState {
            number,
            max: self.max,
            checksum_retried: self.checksum_retried
                || matches!(result, Err(AttemptError::ChecksumMismatch { .. })),
        }
    }

    /// " (attempt n of max)" after the first attempt, for progress messages.
    fn of(&self) -> String {
        if self.number > 1 {
            format!(" (attempt {} of {})", self.number, self.max)
        } else {
            String::new()
        }
    }
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
    /// The image store did not answer (transient: it may be back at the next attempt).
    ImageStoreDown {
        summary: String,
        detail: String,
    },
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
            AttemptError::ImageStoreDown { summary, .. } => summary.clone(),
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
            AttemptError::ChecksumMismatch { .. } | AttemptError::ImageStoreDown { .. } => true,
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

/// The error of an attempt that reached `worker.attempt_deadline`.
pub(super) fn past_deadline(limit: Duration) -> AttemptError {
    AttemptError::Cloud(CloudError {
        summary: format!(
            "the attempt ran past worker.attempt_deadline ({} s)",
            limit.as_secs()
        ),
        detail: None,
        cause: crate::cloud::Cause::Bound,
    })
}

/// One attempt, ended (transient) at `worker.attempt_deadline`: the upload stops at the
/// deadline (and its image is removed as after any failure); the other steps are each
/// bounded by the call timeout, and the whole by the deadline plus a grace for that removal.
pub(super) async fn attempt(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
    state: AttemptState,
) -> Result<String, AttemptError> {
    let limit = ctx.settings.attempt_deadline;
    let deadline = tokio::time::Instant::now() + limit;
    tokio::time::timeout_at(
        deadline + REMOVAL_GRACE,
        attempt_steps(ctx, target, state, deadline),
    )
    .await
    .unwrap_or_else(|_| Err(past_deadline(limit)))
}

/// Log in, prepare the bytes, settle images left by earlier attempts, create, upload, verify.
async fn attempt_steps(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
    state: AttemptState,
    deadline: tokio::time::Instant,
) -> Result<String, AttemptError> {
    let progress = Reporter::new(ctx, target);
    let of = state.of();
    progress
        .say(format!(
            "logging in to Keystone as '{}'{of}",
            target.account.user
        ))
        .await?;
    let registered = open_bytes(ctx.store, target.image, &target.image.file_path).await?;
    let glance = unless_cancelled(
        target.cancel,
        ctx.sessions.glance(target.account, ctx.cloud_policy),
    )
    .await?;
    keep_glance(ctx, target, &glance).await?;
    // The file as registered, or converted for this cloud (removed when this ends).
    let wanted = glance.profile().and_then(|p| p.disk_format.as_deref());
    let payload = convert::payload(ctx, target.image, wanted, &progress).await?;
    let file = if payload.is_registered_file(target.image) {
        registered
    } else {
        drop(registered);
        open_bytes(ctx.store, target.image, &payload.location).await?
    };
    if let Some(copied) = copy::server_side(ctx, target, &glance, &payload, &progress).await? {
        return Ok(copied);
    }
    if let Some(published) = settle_earlier(&glance, target, state, &payload).await? {
        return Ok(published);
    }
    let transfer = transfer_for(&glance, target.image, &payload)?;
    // Refused at once when it cannot fit, rather than after the bytes went up.
    unless_cancelled(
        target.cancel,
        glance.check_quota(payload.size as u64, transfer != Transfer::Upload),
    )
    .await?;
    progress
        .say(format!("creating the image in Glance{of}"))
        .await?;
    let created = create_image(ctx, &glance, target, &payload).await?;
    let upload = Upload {
        glance: &glance,
        image_id: &created,
        payload: &payload,
        transfer,
        of: &of,
        deadline,
        progress: &progress,
        settings: ctx.settings,
        secrets: ctx.secrets,
        ticket_id: target.claim.ticket.id,
        checksum_retried: state.checksum_retried,
        registered_image: target.image.id,
        store: ctx.store,
        glance_store: target.claim.ticket.glance_store.as_deref(),
    };
    let result = upload_created(ctx, target, &upload, file).await;
    if result.is_err() && may_delete_own_image(ctx, target.claim).await {
        // Leave nothing behind: the next attempt (if any) starts from a new image. Should
        // this fail, the reconciler deletes it once the ticket has ended.
        if let Err(e) = glance.delete_image(&created).await {
            warn!(image = %created, error = %e, "could not delete the partial Glance image");
        }
    }
    result.map(|()| created)
}

/// A ticket that named a region (`publishLocation`), or a group's, keeps the Glance the
/// catalog gave it (and its region) before it creates anything there: its cleanup and the
/// orphan sweep then find that Glance, and a sibling copying its image knows where it is.
async fn keep_glance(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
    glance: &Glance,
) -> Result<(), AttemptError> {
    let (claim, account) = (target.claim, target.account);
    let wanted = account.region.is_some() || claim.ticket.group_id.is_some();
    if !wanted || account.glance_url.is_some() {
        return Ok(());
    }
    let (url, region) = (glance.endpoint().as_str(), glance.region());
    Ok(claims::record_glance(ctx.pool, claim.ticket.id, claim.token, url, region).await?)
}

/// Never two images for one ticket: reuses a finished one (its id), removes unfinished ones.
/// The first attempt of the first claim ever (fencing token 1: never reset) has no
/// predecessor, and skips the search (one Glance call less per ticket).
async fn settle_earlier(
    glance: &Glance,
    target: &Target<'_>,
    state: AttemptState,
    payload: &Payload,
) -> Result<Option<String>, AttemptError> {
    if target.claim.token == 1 && state.number == 1 {
        return Ok(None);
    }
    let key = target.claim.ticket.ticket_key.to_string();
    let earlier = unless_cancelled(target.cancel, glance.images_of_ticket(&key)).await?;
    for existing in earlier {
        if holds_file(payload, &existing) {
            info!(image = %existing.id, "an earlier attempt already published it");
            return Ok(Some(existing.id));
        }
        unless_cancelled(target.cancel, glance.delete_image(&existing.id)).await?;
    }
    Ok(None)
}

/// How the bytes go, from the cloud's profile.
fn transfer_for(
    glance: &Glance,
    image: &Image,
    payload: &Payload,
) -> Result<Transfer, AttemptError> {
    Ok(match glance.profile().and_then(|p| p.import_method) {
        Some(ImportMethod::GlanceDirect) => Transfer::Stage,
        // Glance fetches the registered file from the API, which cannot see a converted copy.
        Some(ImportMethod::WebDownload) if !payload.is_registered_file(image) => {
            return Err(AttemptError::Permanent {
                summary: "the cloud's profile asks for web-download and a disk_format \
                          conversion: Glance can fetch only the registered file"
                    .into(),
                detail: None,
            })
        }
        Some(ImportMethod::WebDownload) => Transfer::WebDownload,
        Some(ImportMethod::Direct) | None => Transfer::Upload,
    })
}

/// Creates the ticket's image in Glance; its id.
pub(super) async fn create_image(
    ctx: &WorkerContext<'_>,
    glance: &Glance,
    target: &Target<'_>,
    payload: &Payload,
) -> Result<String, AttemptError> {
    let ticket = &target.claim.ticket;
    let key = ticket.ticket_key.to_string();
    let no_properties = Default::default();
    // Cut by a cancel, a create may leave an image whose id we never learned: the
    // reconciler's orphan sweep finds it by this ticket's key and deletes it, the ticket
    // having ended (cancelled), as after any cut call.
    let created = unless_cancelled(
        target.cancel,
        glance.create_image(
            &ticket.display_name,
            &payload.format,
            ticket.public_image,
            &key,
            ctx.deployment,
            glance.profile().map_or(&no_properties, |p| &p.properties),
        ),
    )
    .await?;
    Ok(created.id)
}

/// Records the created image as the ticket's, uploads into it and, still ours after the
/// upload, says so: only then may this image become the ticket's.
async fn upload_created(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
    upload: &Upload<'_>,
    file: Chunks,
) -> Result<(), AttemptError> {
    let claim = target.claim;
    if !claims::set_cloud_id(ctx.pool, claim.ticket.id, claim.token, upload.image_id).await? {
        return Err(AttemptError::Lost);
    }
    transfer(upload, file, target.image).await?;
    upload
        .progress
        .say(format!("checking the image in Glance{}", upload.of))
        .await
}

/// `call`, or `Cancelled` as soon as the ticket's cancel fires: a cloud that never answers
/// cannot keep a cancelled ticket's slot (each call is bounded by the call timeout; this
/// leaves before it). The upload watches the cancel itself; what a cut call leaves, the
/// reconciler removes once the ticket ended.
pub(super) async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    call: impl std::future::Future<Output = Result<T, CloudError>>,
) -> Result<T, AttemptError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(AttemptError::Cancelled),
        result = call => Ok(result?),
    }
}

/// The bytes at `location` (the image's file, or its converted copy), ready to stream.
async fn open_bytes(
    store: &ImageStore,
    image: &Image,
    location: &str,
) -> Result<Chunks, AttemptError> {
    store
        .chunks(location)
        .await
        .map(|(_, chunks)| chunks)
        .map_err(|e| unreadable(image, &e))
}

/// A store error as the ticket tells it: a missing file is permanent, a store that did not
/// answer transient.
pub(super) fn unreadable(image: &Image, e: &StoreError) -> AttemptError {
    let named = format!("image {} ('{}')", image.id, image.name);
    if e.is_missing() {
        return AttemptError::Permanent {
            summary: format!("the file of {named} is missing from the image store"),
            detail: Some(e.to_string()),
        };
    }
    match e {
        StoreError::Object { .. } => AttemptError::ImageStoreDown {
            summary: format!("the image store could not be read for {named}"),
            detail: e.to_string(),
        },
        _ => AttemptError::Permanent {
            summary: format!("the file of {named} is unreadable on the server"),
            detail: Some(e.to_string()),
        },
    }
}

/// Uploads (or stages) and verifies; a direct upload that Glance forbids (403, the
/// `upload_image` policy) goes again through glance-direct when Glance offers it.
async fn transfer(upload: &Upload<'_>, file: Chunks, image: &Image) -> Result<(), AttemptError> {
    let result = upload::upload_and_verify(upload, file).await;
    let forbidden = matches!(
        &result,
        Err(AttemptError::Cloud(CloudError {
            cause: Cause::Http { status: 403, .. },
            ..
        }))
    );
    if !(forbidden && upload.transfer == Transfer::Upload) {
        return result;
    }
    if !upload
        .glance
        .import_methods()
        .await?
        .iter()
        .any(|m| m == "glance-direct")
    {
        return result;
    }
    info!("Glance forbids the direct upload; staging the image for glance-direct");
    let file = open_bytes(upload.store, image, &upload.payload.location).await?;
    let staged = Upload {
        transfer: Transfer::Stage,
        ..upload.clone()
    };
    upload::upload_and_verify(&staged, file).await
}

/// Whether this worker may delete the image it created: only while its fencing token still
/// holds the ticket (a successor may have adopted the image as complete), or once the ticket
/// record is gone (no one can adopt it then).
async fn may_delete_own_image(ctx: &WorkerContext<'_>, claim: &Claim) -> bool {
    let (pool, id) = (ctx.pool, claim.ticket.id);
    match claims::extend_lease(pool, id, claim.token, ctx.settings.lease).await {
        Ok(Heartbeat::Held | Heartbeat::CancelRequested) => true,
        Ok(Heartbeat::Lost) => matches!(tickets::get(pool, id).await, Ok(None)),
        // Unsure: the reconciler deletes it once the ticket has ended.
        Err(_) => false,
    }
}

/// The attempt's deadline setting, for the error of an upload cut by it.
pub(super) fn deadline_error(settings: &WorkerSettings) -> AttemptError {
    past_deadline(settings.attempt_deadline)
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
