//! The claim of the fairest ticket with a free slot in its cloud (`store::claims::claim_next`),
//! its metrics, the status of tickets waiting for a slot, and the wait for one: Postgres
//! NOTIFY `pimage_slot_freed` (sent when a running ticket stops running) or a short poll.
//!
//! A RabbitMQ message says that one ticket waits; it no longer decides which. A delivery is
//! acknowledged once it got a claim, dropped only when no ticket is queued at all, and held
//! (unacknowledged) while every queued ticket waits for a slot of its cloud.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::live::{Listener, Notice};
use crate::metrics_catalog;
use crate::store::claims::{self, Claim};

use super::Worker;

/// Postgres channel of freed upload slots (payload: the cloud's host); see the migration.
const SLOT_FREED_CHANNEL: &str = "pimage_slot_freed";

/// How often a held delivery tries its claim again without a notification (a new ticket of
/// another cloud, a lost NOTIFY).
const POLL: Duration = Duration::from_secs(1);

/// What a delivery found.
pub(super) enum Found {
    Claimed(Box<Claim>),
    /// Queued tickets exist, but none can start now (their clouds are full, or another worker
    /// is claiming them): keep the delivery and try again.
    Waiting,
    /// Nothing queued: the message was a surplus one.
    Nothing,
}

/// Wakes held deliveries when a slot frees; fed by Postgres NOTIFY.
#[derive(Clone, Default)]
pub(super) struct SlotWatch {
    freed: Arc<Notify>,
    /// Clouds whose waiting gauge this process set, so it can set them back to 0.
    gauged: Arc<Mutex<HashSet<String>>>,
}

impl SlotWatch {
    /// Wakes the held deliveries when the process's listener announces a freed slot, or
    /// when such notices may have been missed, until it stops. While nothing is heard, the
    /// poll covers the gap.
    pub(super) fn run(self, listener: &Listener) -> impl Future<Output = ()> {
        let mut notices = listener.subscribe(&[SLOT_FREED_CHANNEL]);
        async move {
            while let Some(notice) = notices.recv().await {
                match notice {
                    Notice::Payload { .. } | Notice::PossiblyMissed => self.freed.notify_waiters(),
                    Notice::Deaf => {}
                }
            }
        }
    }

    /// Returns when a slot freed somewhere in the pool, or after `POLL`.
    pub(super) async fn wait(&self) {
        let _ = tokio::time::timeout(POLL, self.freed.notified()).await;
    }
}

impl Worker {
    /// One claim try for a delivery (see the module's note).
    pub(super) async fn claim_fairest(&self) -> Result<Found, sqlx::Error> {
        let cloud = &self.cloud;
        let next = claims::claim_next(
            &self.pool,
            &self.id,
            self.settings.lease,
            self.settings.max_ticket_attempts,
            |host| crate::cloud::upload_limit_for(cloud, host),
        )
        .await?;
        let claimed_host = next.claim.as_ref().map(|c| c.cloud_host.as_str());
        let full: Vec<(String, u32, i64)> = next
            .loads
            .iter()
            .filter_map(|(load, limit)| {
                let running = load.running + i64::from(claimed_host == Some(&load.host));
                let waiting = load.queued - i64::from(claimed_host == Some(&load.host));
                (waiting > 0 && running >= i64::from(*limit))
                    .then(|| (load.host.clone(), *limit, waiting))
            })
            .collect();
        self.gauge_waiting(&full);
        if !full.is_empty() {
            let clouds: Vec<(String, u32)> = full.iter().map(|(h, l, _)| (h.clone(), *l)).collect();
            if let Err(e) = claims::mark_waiting(&self.pool, &clouds).await {
                warn!(error = %e, "could not write the status of tickets waiting for a slot");
            }
        }
        if let Some(claim) = next.claim {
            if claim.ticket.attempts == 1 {
                let waited = (chrono::Utc::now() - claim.ticket.created_at)
                    .to_std()
                    .unwrap_or_default();
                metrics::histogram!(metrics_catalog::TICKET_WAIT).record(waited.as_secs_f64());
            }
            return Ok(Found::Claimed(Box::new(claim)));
        }
        // Read again: the loads above predate the claim, and a delivery dropped while a
        // ticket still waits would leave that ticket without its message.
        let queued = claims::cloud_loads(&self.pool)
            .await?
            .iter()
            .any(|load| load.queued > 0);
        Ok(if queued {
            Found::Waiting
        } else {
            Found::Nothing
        })
    }

    fn gauge_waiting(&self, full: &[(String, u32, i64)]) {
        let mut gauged = self.slots.gauged.lock().unwrap_or_else(|e| e.into_inner());
        for host in gauged.iter() {
            if !full.iter().any(|(h, _, _)| h == host) {
                metrics::gauge!(metrics_catalog::TICKETS_WAITING_FOR_SLOT, "cloud" => host.clone())
                    .set(0.0);
            }
        }
        let before = std::mem::take(&mut *gauged);
        for (host, limit, waiting) in full {
            metrics::gauge!(metrics_catalog::TICKETS_WAITING_FOR_SLOT, "cloud" => host.clone())
                .set(*waiting as f64);
            if !before.contains(host) {
                info!(cloud = %host, limit, waiting, "tickets wait for an upload slot of their cloud");
            }
            gauged.insert(host.clone());
        }
    }
}

/// Counts a running upload in `pimage_uploads_running{cloud}` while it lives.
pub(super) struct Running(String);

impl Running {
    pub(super) fn start(cloud: &str) -> Running {
        metrics::gauge!(metrics_catalog::UPLOADS_RUNNING, "cloud" => cloud.to_string())
            .increment(1.0);
        Running(cloud.to_string())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!(metrics_catalog::UPLOADS_RUNNING, "cloud" => self.0.clone()).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notices_possibly_missed_wake_every_held_delivery() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        let listener = Listener::new(pool);
        let slots = SlotWatch::default();
        tokio::spawn(slots.clone().run(&listener));
        let held: Vec<_> = (0..3)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    slots.wait().await;
                    started.elapsed()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A (re)connection: a freed slot may have gone unheard.
        listener.pretend_listening();
        for waited in held {
            let waited = waited.await.expect("the waiter ends");
            assert!(
                waited < POLL / 2,
                "woken by the poll, not the notice: {waited:?}"
            );
        }
    }
}
