//! The lease keeper: renews a running ticket's lease in Postgres, and stops the job when
//! the claim is lost or a cancel is requested.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics_catalog;
use crate::store::claims::{self, Heartbeat};

/// A spawned task that ends with its owner.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the lease alive for as long as the ticket runs, whatever step it is in: the lease
/// must expire only when the worker is gone. A third of the lease between writes leaves room
/// for two missed ones. Stops the job when the claim is lost or a cancel is requested.
pub(super) async fn keep_lease(
    pool: PgPool,
    id: i64,
    token: i64,
    lease: Duration,
    stop: CancellationToken,
) {
    // At least 1s (checked when the settings load): a write every 333ms at most.
    let every = lease / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match claims::extend_lease(&pool, id, token, lease).await {
            Ok(Heartbeat::Held) => {}
            Ok(Heartbeat::CancelRequested) => stop.cancel(),
            Ok(Heartbeat::Lost) => {
                warn!(ticket_id = id, "lease lost to another worker: stopping");
                metrics::counter!(metrics_catalog::LEASES_LOST).increment(1);
                stop.cancel();
            }
            Err(e) => warn!(ticket_id = id, error = %e, "could not extend the lease"),
        }
    }
}
