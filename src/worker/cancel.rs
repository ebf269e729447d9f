//! Cancels by Postgres LISTEN/NOTIFY: the tickets this worker runs, and the listener that
//! fires their cancel tokens.

use crate::store::cancel::CANCEL_CHANNEL;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Tickets this worker runs, by id, with the token that cancels each; fed by Postgres NOTIFY.
#[derive(Clone, Default)]
pub(super) struct CancelWatch {
    running: Arc<Mutex<HashMap<i64, CancellationToken>>>,
}

impl CancelWatch {
    /// The ticket's cancel token; it also fires with `parent` (the worker's abort).
    pub(super) fn register(&self, ticket_id: i64, parent: &CancellationToken) -> CancellationToken {
        let token = parent.child_token();
        self.running
            .lock()
            .expect("cancel map")
            .insert(ticket_id, token.clone());
        token
    }

    pub(super) fn unregister(&self, ticket_id: i64) {
        self.running.lock().expect("cancel map").remove(&ticket_id);
    }

    fn cancel(&self, ticket_id: i64) {
        if let Some(token) = self.running.lock().expect("cancel map").get(&ticket_id) {
            info!(ticket_id, "cancel requested");
            token.cancel();
        }
    }

    /// Listens until `shutdown`, reconnecting after errors (progress writes cover the gap).
    pub(super) async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let listened = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CANCEL_CHANNEL).await?;
                loop {
                    let note = listener.recv().await?;
                    if let Ok(id) = note.payload().parse::<i64>() {
                        self.cancel(id);
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                result = listened => {
                    if let Err(e) = result {
                        warn!(error = %e, "cancel listener lost Postgres; reconnecting");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        }
    }
}
