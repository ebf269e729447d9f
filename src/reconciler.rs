//! The reconciler: deletes the images tickets left in the cloud. It works the
//! `image_cleanups` rows (recorded whenever a ticket ends in anything but `complete`) until
//! Glance confirms each delete, retrying with backoff, and it sweeps every known cloud
//! account for images of this deployment whose ticket is unknown or ended without them.
//!
//! It checks the ticket's state under the ticket's row lock before deleting anything, so a
//! complete ticket's image is never touched, and a ticket cannot be re-queued meanwhile.
//! Every process may run it at once: rows are taken `FOR UPDATE SKIP LOCKED`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::cloud::{AddressPolicy, CloudError, Glance, OpenStackAccount, Sessions, StoreDelete};
use crate::config::CloudSettings;
use crate::metrics_catalog;
use crate::retry::Backoff;
use crate::secrets::SecretBox;
use crate::store::cleanups::{self, AccountKey, Cleanup, ImageOwner, StoredAccount, TakenCleanup};
use crate::store::TicketState;

/// Cleanups worked per pass at most: a pass stays short, the next one goes on.
const CLEANUPS_PER_PASS: usize = 100;
/// Accounts the orphan sweep reads at once: each page is one bounded query.
const ACCOUNTS_PER_PAGE: i64 = 100;
/// An account as the sweep tells it apart: its key and its opened password.
type SweptAccount = (AccountKey, String);
/// Backoff between two tries of one cleanup: 5 s, doubling, at most an hour.
const CLEANUP_BACKOFF: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(3600));

#[derive(Clone)]
pub struct Reconciler {
    pool: PgPool,
    secrets: SecretBox,
    policy: AddressPolicy,
    /// Keystone sessions by account; a worker shares them with its tickets.
    sessions: Sessions,
    deployment: String,
    sweep_every: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Cleanups confirmed by Glance (or found needless).
    pub cleaned: usize,
    /// Cleanups that failed this time (tried again later).
    pub failed: usize,
    /// Leftover images the orphan sweep deleted.
    pub orphans_deleted: usize,
}

impl Reconciler {
    pub fn new(pool: PgPool, secrets: SecretBox, cloud: &CloudSettings) -> Reconciler {
        Reconciler {
            pool,
            secrets,
            policy: AddressPolicy::from(cloud.clone()),
            sessions: Sessions::default(),
            deployment: cloud.deployment.clone(),
            sweep_every: cloud.orphan_sweep,
        }
    }

    /// The Keystone sessions this reconciler keeps, to share with the process's tickets.
    pub fn sessions(&self) -> Sessions {
        self.sessions.clone()
    }

    /// Works the due cleanups, then (when `sweep`) sweeps the known accounts for orphans.
    pub async fn pass(&self, sweep: bool) -> Result<Reconciled, sqlx::Error> {
        let mut done = Reconciled::default();
        for _ in 0..CLEANUPS_PER_PASS {
            let Some(taken) = cleanups::take_due(&self.pool).await? else {
                break;
            };
            if self.clean(taken).await? {
                done.cleaned += 1;
            } else {
                done.failed += 1;
            }
        }
        if sweep {
            done.orphans_deleted = self.sweep_orphans().await?;
        }
        let (pending, failing) = cleanups::count_pending(&self.pool).await?;
        metrics::gauge!(metrics_catalog::CLEANUPS_PENDING).set(pending as f64);
        metrics::gauge!(metrics_catalog::CLEANUPS_FAILING).set(failing as f64);
        Ok(done)
    }

    /// Runs a pass every `interval` (sweeping every `cloud.orphan_sweep`) until `shutdown`.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut last_sweep: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let sweep = last_sweep.is_none_or(|at| at.elapsed() >= self.sweep_every);
            if sweep {
                last_sweep = Some(Instant::now());
            }
            // A pass cut short by shutdown rolls back: its rows are taken again next time.
            tokio::select! {
                result = self.pass(sweep) => {
                    if let Err(e) = result {
                        warn!(error = %e, "reconciler pass failed");
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One cleanup, under its locks; `false` when it failed and waits for its next try.
    async fn clean(&self, taken: TakenCleanup) -> Result<bool, sqlx::Error> {
        let cleanup = taken.cleanup.clone();
        let ticket_id = cleanup.ticket_id;
        match taken.ticket_state {
            // Re-queued (or published) since it ended: its new run settles earlier images
            // itself, and a complete ticket's image is never deleted here.
            Some(state @ (TicketState::Queued | TicketState::Running | TicketState::Complete)) => {
                info!(
                    ticket_id,
                    state = state.as_str(),
                    "cleanup not needed: the ticket runs again or was published"
                );
                metrics::counter!(metrics_catalog::CLEANUPS, "result" => "superseded").increment(1);
                taken.done(false).await?;
                Ok(true)
            }
            _ => match self.delete_images_of(&cleanup).await {
                Ok(deleted) => {
                    info!(ticket_id, ticket_key = %cleanup.ticket_key, ?deleted, "cleanup done: Glance confirmed");
                    metrics::counter!(metrics_catalog::CLEANUPS, "result" => "deleted")
                        .increment(1);
                    taken.done(!deleted.is_empty()).await?;
                    Ok(true)
                }
                Err(error) => {
                    let tries = u32::try_from(cleanup.attempts).unwrap_or(0);
                    let retry_in = CLEANUP_BACKOFF.delay_for_attempt(tries).as_secs_f64();
                    warn!(
                        ticket_id,
                        ticket_key = %cleanup.ticket_key,
                        attempts = cleanup.attempts + 1,
                        retry_in_secs = retry_in,
                        error,
                        "cleanup failed; the image may still be in the cloud"
                    );
                    metrics::counter!(metrics_catalog::CLEANUPS, "result" => "failed").increment(1);
                    taken.failed(&error, retry_in).await?;
                    Ok(false)
                }
            },
        }
    }

    /// Deletes the ticket's images (its known one, and any carrying its ticket property);
    /// returns their ids. Err: what stopped it, as shown to operators.
    async fn delete_images_of(&self, cleanup: &Cleanup) -> Result<Vec<String>, String> {
        let glance = self.login(&cleanup.account).await?;
        let mut ids: Vec<String> = glance
            .images_of_ticket(&cleanup.ticket_key.to_string())
            .await
            .map_err(|e| described(&e))?
            .into_iter()
            .map(|image| image.id)
            .collect();
        if let Some(known) = &cleanup.cloud_id {
            if !ids.contains(known) {
                ids.push(known.clone());
            }
        }
        // A later run may have published the ticket and its user kept that image.
        let kept = cleanups::kept_image(&self.pool, cleanup.ticket_key)
            .await
            .map_err(|e| format!("could not read the kept images: {e}"))?;
        ids.retain(|id| Some(id) != kept.as_ref());
        for id in &ids {
            match (&cleanup.glance_store, &cleanup.cloud_id) {
                (Some(store), Some(shared)) if id == shared => {
                    remove_copy(&glance, id, store).await?
                }
                _ => glance.delete_image(id).await.map_err(|e| described(&e))?,
            }
        }
        Ok(ids)
    }

    /// Images of this deployment, in every account tickets (or pending cleanups) name, whose
    /// ticket is unknown or ended without them: deleted. Returns how many. The accounts are
    /// read a page at a time (keyset), so a pass holds no list of every ticket.
    async fn sweep_orphans(&self) -> Result<usize, sqlx::Error> {
        let mut seen = HashSet::new();
        let mut deleted = 0;
        let mut after = cleanups::FIRST_ACCOUNT;
        loop {
            let page = cleanups::accounts_after(&self.pool, after, ACCOUNTS_PER_PAGE).await?;
            for (_, stored) in &page {
                deleted += self.sweep_account(stored, &mut seen).await?;
            }
            match page.last() {
                Some((hash, _)) if page.len() as i64 == ACCOUNTS_PER_PAGE => after = *hash,
                _ => break,
            }
        }
        let mut after_id = 0;
        loop {
            let page =
                cleanups::cleanup_accounts_after(&self.pool, after_id, ACCOUNTS_PER_PAGE).await?;
            for (_, stored) in &page {
                deleted += self.sweep_account(stored, &mut seen).await?;
            }
            match page.last() {
                Some((id, _)) if page.len() as i64 == ACCOUNTS_PER_PAGE => after_id = *id,
                _ => break,
            }
        }
        Ok(deleted)
    }

    /// One account's leftovers, unless an account logging in as the same was swept already
    /// (`seen`). Returns how many images were deleted.
    async fn sweep_account(
        &self,
        stored: &StoredAccount,
        seen: &mut HashSet<SweptAccount>,
    ) -> Result<usize, sqlx::Error> {
        let Ok(password) = self.secrets.open(&stored.cloud_password_enc) else {
            return Ok(0);
        };
        // Each ticket seals its password anew: tell accounts apart by what they log in as.
        let who = (stored.key(), password.expose().to_string());
        if !seen.insert(who) {
            return Ok(0);
        }
        let listed = match self.login(stored).await {
            Ok(glance) => glance
                .images_of_deployment(&self.deployment)
                .await
                .map(|images| (glance, images))
                .map_err(|e| described(&e)),
            Err(e) => Err(e),
        };
        let (glance, images) = match listed {
            Ok(found) => found,
            Err(error) => {
                warn!(account = %stored.cloud_login, project = %stored.keystone_project, error, "orphan sweep could not list this account's images");
                metrics::counter!(metrics_catalog::ORPHAN_SWEEP_FAILURES).increment(1);
                return Ok(0);
            }
        };
        let mut deleted = 0;
        for image in images {
            let Some(key) = image
                .ticket_key
                .as_deref()
                .and_then(|k| Uuid::parse_str(k).ok())
            else {
                continue;
            };
            let mut tx = self.pool.begin().await?;
            if cleanups::judge_image(&mut tx, key, &image.id).await? == ImageOwner::Leftover {
                match glance.delete_image(&image.id).await {
                    Ok(()) => {
                        info!(image = %image.id, ticket_key = %key, "orphan sweep deleted a leftover image");
                        metrics::counter!(metrics_catalog::ORPHANS_DELETED).increment(1);
                        deleted += 1;
                    }
                    Err(e) => {
                        warn!(image = %image.id, error = %described(&e), "orphan sweep could not delete a leftover image");
                        metrics::counter!(metrics_catalog::ORPHAN_SWEEP_FAILURES).increment(1);
                    }
                }
            }
            tx.commit().await?;
        }
        Ok(deleted)
    }

    async fn login(&self, stored: &StoredAccount) -> Result<Glance, String> {
        let password = self
            .secrets
            .open(&stored.cloud_password_enc)
            .map_err(|e| e.to_string())?;
        let account = OpenStackAccount {
            keystone_url: stored.keystone_url.clone(),
            glance_url: stored.glance_url.clone(),
            // A ticket that named a region recorded its Glance as glance_url.
            region: None,
            user: stored.cloud_login.clone(),
            password,
            domain: stored.keystone_domain.clone(),
            project: stored.keystone_project.clone(),
        };
        self.sessions
            .glance(&account, &self.policy)
            .await
            .map_err(|e| described(&e))
    }
}

/// The error as operators read it: the summary only (the cloud's detail could echo what
/// was sent, the password included).
/// A sibling's image holding this ticket's copy in `store` (copy-image): that copy goes;
/// the image itself only when the copy was its last location.
async fn remove_copy(glance: &Glance, id: &str, store: &str) -> Result<(), String> {
    match glance
        .delete_from_store(id, store)
        .await
        .map_err(|e| described(&e))?
    {
        StoreDelete::LastLocation => glance.delete_image(id).await.map_err(|e| described(&e)),
        StoreDelete::Deleted | StoreDelete::Gone => Ok(()),
    }
}

fn described(e: &CloudError) -> String {
    e.summary.clone()
}
