//! The worker's own heartbeat: every `EVERY` it writes who it is (host, pid, version) and
//! its slots used out of its total; the console's Workers page shows it (with the tickets
//! it holds leases on). On stopping it removes its row, so the page drops it at once; a
//! killed worker's row simply goes stale.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::workers::{self, Beat};

/// How often a worker reports itself (the Workers page counts a silent one as gone).
pub const EVERY: Duration = Duration::from_secs(5);

/// Beats until `stop`, then says the worker is gone. Slots used are the tickets running
/// (`uploads`' tasks), not the slot permits: the consume loop holds one while it waits for
/// a delivery, and an idle worker uses no slot.
pub async fn run(
    pool: PgPool,
    id: String,
    slots_total: usize,
    uploads: TaskTracker,
    stop: CancellationToken,
) {
    let (host, pid) = id
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(0)))
        .unwrap_or_else(|| (id.clone(), 0));
    let mut ticks = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => break,
        }
        let beat = Beat {
            worker: &id,
            host: &host,
            pid,
            version: crate::health::VERSION,
            slots_total: slots_total as i32,
            slots_used: uploads.len().min(slots_total) as i32,
        };
        if let Err(e) = workers::beat(&pool, &beat).await {
            tracing::warn!(error = %e, "worker heartbeat not written");
        }
    }
    if let Err(e) = workers::gone(&pool, &id).await {
        tracing::warn!(error = %e, "worker heartbeat not removed; it goes stale instead");
    }
}
