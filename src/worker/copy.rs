//! A group's target that copies a sibling's image server-side, once that sibling is
//! complete (`copies_from`): within the same Glance, `copy-image` into this target's store;
//! from another region of the same Keystone, `glance-download` into an image of its own.
//! The file's bytes then cross the worker's link once per cloud. Where the cloud offers
//! neither method, or the source did not complete, the target uploads the file itself.

use std::time::Duration;

use tracing::info;

use crate::cloud::{Cause, CloudError, Glance, DEFAULT_IMPORT_TIMEOUT};
use crate::store::claims;
use crate::store::groups::{self, CopySource};
use crate::store::TicketState;

use super::attempt::{create_image, unless_cancelled, AttemptError, Target};
use super::convert::Payload;
use super::progress::Reporter;
use super::upload::{holds_file, imported};
use super::WorkerContext;

/// How often a running copy is read back (also the heartbeat that notices a cancel).
const POLL: Duration = Duration::from_millis(500);

/// The image id once a server-side copy holds the file; `None`: no copy applies, upload.
pub(super) async fn server_side(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
    glance: &Glance,
    payload: &Payload,
    progress: &Reporter<'_>,
) -> Result<Option<String>, AttemptError> {
    let Some(source) = complete_source(ctx, target).await? else {
        return Ok(None);
    };
    let Some(image_id) = source.cloud_id.as_deref() else {
        return Ok(None);
    };
    let methods = unless_cancelled(target.cancel, glance.import_methods()).await?;
    let offers = |m: &str| methods.iter().any(|o| o == m);
    if same_glance(source.glance_url.as_deref(), glance) {
        if !offers("copy-image") {
            return Ok(None);
        }
        let copied = into_store(ctx, target, glance, image_id, payload, progress).await?;
        return Ok(Some(copied));
    }
    match source.glance_region.as_deref() {
        Some(region) if offers("glance-download") => {
            let from = Origin { region, image_id };
            Ok(Some(
                from_region(ctx, target, glance, from, payload, progress).await?,
            ))
        }
        _ => Ok(None),
    }
}

/// The ticket's source, when it has one and it completed.
async fn complete_source(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
) -> Result<Option<CopySource>, AttemptError> {
    let Some(source_id) = target.claim.ticket.copies_from else {
        return Ok(None);
    };
    let source = groups::copy_source(ctx.pool, source_id).await?;
    Ok(source.filter(|s| s.state == TicketState::Complete))
}

/// Whether the source's recorded Glance is this one (both as their v2 endpoint).
fn same_glance(source: Option<&str>, glance: &Glance) -> bool {
    let trimmed = |u: &str| u.trim_end_matches('/').trim_end_matches("/v2").to_string();
    source.is_some_and(|s| trimmed(s) == trimmed(glance.endpoint().as_str()))
}

/// `copy-image` of the source's image into this target's store (the ticket's, else the
/// Glance's default), recorded first so that a cleanup removes that store's copy only. A
/// copy already under way (an earlier attempt's) is waited for, not started again.
async fn into_store(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
    glance: &Glance,
    image_id: &str,
    payload: &Payload,
    progress: &Reporter<'_>,
) -> Result<String, AttemptError> {
    let claim = target.claim;
    let store = match claim.ticket.glance_store.clone() {
        Some(store) => store,
        None => default_store(glance, target).await?,
    };
    claims::record_store(ctx.pool, claim.ticket.id, claim.token, &store).await?;
    if !claims::set_cloud_id(ctx.pool, claim.ticket.id, claim.token, image_id).await? {
        return Err(AttemptError::Lost);
    }
    let image = unless_cancelled(target.cancel, glance.image(image_id)).await?;
    if !holds_file(payload, &image) {
        return Err(differs(image_id));
    }
    let underway = listed(image.os_glance_importing_to_stores.as_deref(), &store);
    if !image.in_store(&store) && !underway {
        info!(
            image = image_id,
            store, "copying the source target's image (copy-image)"
        );
        unless_cancelled(
            target.cancel,
            glance.copy_to_stores(image_id, &[&store], true),
        )
        .await?;
    }
    let message = format!("copying image {image_id} into Glance store '{store}' (copy-image)");
    wait(glance, progress, payload, message, || async {
        let image = glance.image(image_id).await?;
        if listed(image.os_glance_failed_import.as_deref(), &store) {
            return Err(AttemptError::Permanent {
                summary: format!("Glance failed to copy image {image_id} into store '{store}'"),
                detail: image.os_glance_failed_import.clone(),
            });
        }
        Ok(image.in_store(&store))
    })
    .await?;
    Ok(image_id.to_string())
}

/// Where a glance-download fetches from.
struct Origin<'a> {
    region: &'a str,
    image_id: &'a str,
}

/// `glance-download` of the source's image (in `from.region`) into an image of this ticket,
/// created here; an earlier attempt's image is kept when it holds the file, or waited for
/// while its import runs on.
async fn from_region(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
    glance: &Glance,
    from: Origin<'_>,
    payload: &Payload,
    progress: &Reporter<'_>,
) -> Result<String, AttemptError> {
    let earlier = earlier_image(glance, target, payload).await?;
    let image_id = match &earlier {
        Earlier::Holds(id) => return Ok(id.clone()),
        Earlier::Importing(id) => id.clone(),
        Earlier::None => create_image(ctx, glance, target, payload).await?,
    };
    let claim = target.claim;
    if !claims::set_cloud_id(ctx.pool, claim.ticket.id, claim.token, &image_id).await? {
        return Err(AttemptError::Lost);
    }
    if matches!(earlier, Earlier::None) {
        let store = claim.ticket.glance_store.as_deref();
        let call = glance.import_from_region(&image_id, from.region, from.image_id, store);
        unless_cancelled(target.cancel, call).await?;
    }
    let message = format!(
        "importing image {} from region {} (glance-download)",
        from.image_id, from.region
    );
    wait(glance, progress, payload, message, || {
        imported(glance, &image_id)
    })
    .await?;
    let stored = unless_cancelled(target.cancel, glance.image(&image_id)).await?;
    if !holds_file(payload, &stored) {
        return Err(differs(from.image_id));
    }
    Ok(image_id)
}

/// What an earlier attempt left of this ticket's image.
enum Earlier {
    None,
    /// Active, holding the file.
    Holds(String),
    /// Its import still runs.
    Importing(String),
}

/// This ticket's image left by an earlier attempt, when it holds the file or its import
/// runs on; others are deleted.
async fn earlier_image(
    glance: &Glance,
    target: &Target<'_>,
    payload: &Payload,
) -> Result<Earlier, AttemptError> {
    let key = target.claim.ticket.ticket_key.to_string();
    let earlier = unless_cancelled(target.cancel, glance.images_of_ticket(&key)).await?;
    let mut kept = Earlier::None;
    for image in earlier {
        let importing = image.os_glance_import_task.is_some() && image.status != "active";
        match kept {
            Earlier::None if holds_file(payload, &image) => kept = Earlier::Holds(image.id),
            Earlier::None if importing => kept = Earlier::Importing(image.id),
            _ => unless_cancelled(target.cancel, glance.delete_image(&image.id)).await?,
        }
    }
    Ok(kept)
}

/// The store an upload naming none goes to.
async fn default_store(glance: &Glance, target: &Target<'_>) -> Result<String, AttemptError> {
    let stores = unless_cancelled(target.cancel, glance.stores()).await?;
    stores
        .into_iter()
        .find(|s| s.is_default)
        .map(|s| s.id)
        .ok_or_else(|| AttemptError::Permanent {
            summary: "Glance names no default store to copy the image into: give the target \
                      a store"
                .into(),
            detail: None,
        })
}

/// Whether a comma-separated store list of Glance's names `store`.
fn listed(stores: Option<&str>, store: &str) -> bool {
    stores.is_some_and(|s| s.split(',').any(|one| one.trim() == store))
}

fn differs(source_image: &str) -> AttemptError {
    AttemptError::Permanent {
        summary: format!(
            "the source target's image {source_image} does not hold this file as this cloud \
             takes it (another disk format?): publish this target on its own"
        ),
        detail: None,
    }
}

/// Polls `done` until it holds, saying `message` at 99 % meanwhile; bounded by the profile's
/// `import_timeout` (transient) and cut at once by a cancel (the report notices it).
async fn wait<F, Fut>(
    glance: &Glance,
    progress: &Reporter<'_>,
    payload: &Payload,
    message: String,
    done: F,
) -> Result<(), AttemptError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, AttemptError>>,
{
    let limit = glance
        .profile()
        .and_then(|p| p.import_timeout)
        .unwrap_or(DEFAULT_IMPORT_TIMEOUT);
    let mut step = progress.step(message);
    (step.bytes_loaded, step.bytes_total, step.percentage) = (payload.size, payload.size, 99);
    let polling = async {
        loop {
            progress.report(&step).await?;
            if done().await? {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        result = tokio::time::timeout(limit, polling) => result.unwrap_or_else(|_| {
            Err(AttemptError::Cloud(CloudError {
                summary: format!(
                    "Glance did not finish the server-side copy within {} s (import_timeout)",
                    limit.as_secs()
                ),
                detail: None,
                cause: Cause::Bound,
            }))
        }),
        _ = progress.cancel.cancelled() => Err(AttemptError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_listed_only_by_its_whole_name() {
        assert!(listed(Some("fast, cold"), "cold"));
        assert!(!listed(Some("fast,cold"), "col"));
        assert!(!listed(None, "cold"));
    }
}
