//! The background duties every process (API and worker) runs beside its own work: the
//! outbox relay, the rescuer (with retention) and the reconciler. Started in one place, joined in one place.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::queue::Publisher;
use crate::reconciler::Reconciler;
use crate::{outbox, rescuer};

use crate::config::RetentionSettings;
pub use crate::rescuer::Retention;

/// What the rescuer's retention keeps, from `[retention]` (API and worker alike).
pub fn retention_of(settings: &RetentionSettings) -> Retention {
    Retention {
        finished_tickets: settings.finished_tickets,
        events: settings.events,
        batch: settings.batch,
        batches_per_round: settings.batches_per_round,
        every: settings.every,
    }
}

/// What the duties need: the database, the publisher, and the rescuer's settings.
pub struct MaintenanceContext {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    /// Built by the process: the worker shares its Keystone sessions with its tickets.
    pub reconciler: Reconciler,
    /// Claims a ticket may use up before the rescuer ends it in error.
    pub max_ticket_attempts: i32,
    /// How often the rescuer and the reconciler run.
    pub interval: Duration,
    /// What the rescuer forgets, and when (`[retention]`).
    pub retention: Retention,
}

/// The running duties; `join` waits for them to end after the shutdown token fires.
pub struct Maintenance {
    tasks: Vec<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the relay, the rescuer (with retention) and the reconciler; each stops at
    /// `shutdown`.
    pub fn start(ctx: MaintenanceContext, shutdown: &CancellationToken) -> Maintenance {
        let relay = tokio::spawn(outbox::run_relay(
            ctx.pool.clone(),
            ctx.publisher.clone(),
            shutdown.clone(),
        ));
        let rescuer = tokio::spawn(rescuer::run(
            ctx.pool,
            ctx.publisher,
            ctx.max_ticket_attempts,
            ctx.interval,
            ctx.retention,
            shutdown.clone(),
        ));
        let reconciler = tokio::spawn(ctx.reconciler.run(ctx.interval, shutdown.clone()));
        Maintenance {
            tasks: vec![relay, rescuer, reconciler],
        }
    }

    /// Waits for every duty to end, all of them even when one panicked; the first one that
    /// panicked is reported as the error.
    pub async fn join(self) -> Result<(), tokio::task::JoinError> {
        let mut first_error = None;
        for task in self.tasks {
            if let Err(e) = task.await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn join_awaits_every_duty_and_reports_the_one_that_panicked() {
        let ended = Arc::new(AtomicBool::new(false));
        let slow = {
            let ended = ended.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                ended.store(true, Ordering::SeqCst);
            })
        };
        let panicking = tokio::spawn(async { panic!("a duty failed") });
        let maintenance = Maintenance {
            tasks: vec![panicking, slow],
        };
        let joined = maintenance.join().await;
        assert!(joined.is_err_and(|e| e.is_panic()));
        assert!(
            ended.load(Ordering::SeqCst),
            "join returned before the other duty ended"
        );
    }
}
