//! One claimed ticket, from its claim to its recorded end: the lease keeper and cancel
//! watch around it, the retried attempts, and the outcome written to Postgres (or the
//! ticket handed back to the queue on shutdown).

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cloud::{CloudError, OpenStackAccount};
use crate::metrics_catalog;
use crate::outbox;
use crate::retry::retry_with_state;
use crate::secrets::Secret;
use crate::store::attempts::{self, AttemptEnd};
use crate::store::claims::{self, Claim, Outcome};
use crate::store::images;
use crate::store::tickets::TicketState;

use super::attempt::{attempt, AttemptError, AttemptState, Target};
use super::lease::{keep_lease, AbortOnDrop};
use super::progress::Reporter;
use super::slots::Running;
use super::WorkerContext;

/// A claimed ticket: the job a worker runs (crates.io's `BackgroundJob::run(&self, ctx)`).
pub(super) struct Job {
    claim: Claim,
}

impl Job {
    pub(super) fn new(claim: Claim) -> Job {
        Job { claim }
    }

    /// Runs the ticket to its end, or hands it back when `abort` fires.
    pub(super) async fn run(
        self,
        ctx: &WorkerContext<'_>,
        abort: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let claim = &self.claim;
        let ticket_id = claim.ticket.id;
        info!(cloud = %claim.cloud_host, "claimed");
        let running = Running::start(&claim.cloud_host);
        let cancel = ctx.cancels.register(ticket_id, abort);
        // Aborted on drop too: a panicking upload must not keep renewing the lease.
        let keeper = AbortOnDrop(tokio::spawn(keep_lease(
            ctx.pool.clone(),
            ticket_id,
            claim.token,
            ctx.settings.lease,
            cancel.clone(),
        )));
        let outcome = self.outcome(ctx, &cancel).await;
        // Before the end is written: the gauge never counts more than the leases held.
        drop(running);
        drop(keeper);
        ctx.cancels.unregister(ticket_id);
        let outcome = match outcome? {
            None => {
                warn!("lost the ticket to another worker; stopped");
                attempts::end(ctx.pool, ticket_id, claim.token, AttemptEnd::Lost, None).await?;
                return Ok(());
            }
            Some(Outcome::Cancelled) if abort.is_cancelled() => {
                if let Some(outbox_id) = claims::release(ctx.pool, ticket_id, claim.token).await? {
                    info!("handed the ticket back to the queue");
                    outbox::hand_off(ctx.pool, ctx.publisher, ticket_id, outbox_id).await;
                    return Ok(());
                }
                // Not handed back: its user cancelled it meanwhile (or the claim is lost).
                Outcome::Cancelled
            }
            Some(outcome) => outcome,
        };
        finish(ctx, claim, outcome).await
    }

    /// The ticket's outcome; `None` when the claim was lost (someone else finishes it).
    async fn outcome(
        &self,
        ctx: &WorkerContext<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<Outcome>, sqlx::Error> {
        let ticket = &self.claim.ticket;
        let Some(image) = images::get(ctx.pool, ticket.image_id).await? else {
            return Ok(Some(failed(
                format!("image {} no longer exists", ticket.image_id),
                None,
            )));
        };
        let password = match ctx.secrets.open(&ticket.cloud_password_enc) {
            Ok(p) => p,
            Err(e) => return Ok(Some(failed(e.to_string(), None))),
        };
        let account = OpenStackAccount {
            keystone_url: ticket.keystone_url.clone(),
            glance_url: ticket.glance_url.clone(),
            region: ticket.publish_location.clone(),
            user: ticket.cloud_login.clone(),
            password: password.clone(),
            domain: ticket.keystone_domain.clone(),
            project: ticket.keystone_project.clone(),
        };
        let target = Target {
            claim: &self.claim,
            image: &image,
            account: &account,
            cancel,
        };
        let result = attempts_until_done(ctx, &target).await;
        Ok(Some(match result {
            Ok(cloud_id) => Outcome::Published {
                cloud_id,
                bytes: image.size_bytes,
            },
            Err(AttemptError::Cloud(e)) => cloud_failure(e, &password),
            Err(AttemptError::Permanent { summary, detail }) => failed(summary, detail),
            Err(AttemptError::ChecksumMismatch { detail }) => failed(
                "Glance's checksum of the uploaded image still differed from the file's after a re-upload".into(),
                Some(detail),
            ),
            Err(AttemptError::ImageStoreDown { summary, detail }) => failed(
                format!("{summary} (it still failed after the retries)"),
                Some(detail),
            ),
            Err(AttemptError::Cancelled) => Outcome::Cancelled,
            Err(AttemptError::Lost) => return Ok(None),
            Err(AttemptError::Store(e)) => return Err(e),
        }))
    }
}

/// The attempts, retried while their failures are transient; each attempt gets the state
/// the one before left (`AttemptState::next`).
async fn attempts_until_done(
    ctx: &WorkerContext<'_>,
    target: &Target<'_>,
) -> Result<String, AttemptError> {
    let claim = target.claim;
    let progress = Reporter::new(ctx, target);
    retry_with_state(
        &ctx.settings.retry,
        target.cancel,
        AttemptState::first(ctx.settings.retry.max_attempts),
        |number, state: AttemptState| async move {
            if number > 1 {
                if let Err(e) =
                    attempts::start_next(ctx.pool, claim.ticket.id, claim.token, ctx.worker_id)
                        .await
                {
                    return (Err(AttemptError::Store(e)), state);
                }
            }
            let result = attempt(ctx, target, state).await;
            let next = state.next(number + 1, &result);
            (result, next)
        },
        |notice| {
            let reason = notice.error.reason();
            let message = notice.message(&reason);
            warn!(attempt = notice.next_attempt, delay = ?notice.delay, reason, "transient failure, retrying");
            metrics::counter!(metrics_catalog::RETRIES, "cause" => notice.error.cause_label()).increment(1);
            async move {
                attempts::end(ctx.pool, claim.ticket.id, claim.token, AttemptEnd::Retried, Some(&reason))
                    .await
                    .map_err(AttemptError::Store)?;
                progress.say(message).await
            }
        },
    )
    .await
}

/// Writes the outcome; says and counts how the ticket ended.
async fn finish(
    ctx: &WorkerContext<'_>,
    claim: &Claim,
    outcome: Outcome,
) -> Result<(), sqlx::Error> {
    let Some(finished) = claims::finish(ctx.pool, claim.ticket.id, claim.token, &outcome).await?
    else {
        // Nothing deleted here: the image may be the one its new owner adopted.
        warn!("lost the ticket before finishing; another worker owns it (or it was deleted)");
        return Ok(());
    };
    for (ticket_id, outbox_id) in finished.released {
        outbox::hand_off(ctx.pool, ctx.publisher, ticket_id, outbox_id).await;
    }
    let state = finished.state;
    match (&outcome, state) {
        (Outcome::Published { cloud_id, .. }, TicketState::Complete) => {
            info!(cloud_id, "published")
        }
        (Outcome::Published { cloud_id, .. }, _) => {
            info!(
                cloud_id,
                "published, but its cancel came first: cancelled; the reconciler removes the image"
            )
        }
        (Outcome::Failed { error_message, .. }, _) => warn!(error_message, "failed"),
        (Outcome::Cancelled, _) => info!("cancelled"),
    }
    metrics::counter!(metrics_catalog::TICKETS_FINISHED, "outcome" => state.as_str()).increment(1);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Cause;

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
}
