//! Cancels by Postgres LISTEN/NOTIFY: the tickets this worker runs, and the subscriber (of
//! the process's listener) that fires their cancel tokens.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::live::{Listener, Notice};
use crate::store::cancel::CANCEL_CHANNEL;
use crate::store::tickets;

/// Tickets this worker runs, by id, with the token that cancels each; fed by Postgres NOTIFY.
#[derive(Clone, Default)]
pub struct CancelWatch {
    running: Arc<Mutex<HashMap<i64, CancellationToken>>>,
}

impl CancelWatch {
    /// The ticket's cancel token; it also fires with `parent` (the worker's abort).
    pub fn register(&self, ticket_id: i64, parent: &CancellationToken) -> CancellationToken {
        let token = parent.child_token();
        self.lock().insert(ticket_id, token.clone());
        token
    }

    pub(super) fn unregister(&self, ticket_id: i64) {
        self.lock().remove(&ticket_id);
    }

    fn cancel(&self, ticket_id: i64) {
        if let Some(token) = self.lock().get(&ticket_id) {
            info!(ticket_id, "cancel requested");
            token.cancel();
        }
    }

    /// Cancels the tickets the process's listener announces, until it stops. When notices
    /// may have been missed, the cancels of the running tickets are read from Postgres;
    /// while nothing is heard, the progress writes (which report cancels) cover the gap.
    pub fn run(self, listener: &Listener, pool: PgPool) -> impl Future<Output = ()> {
        let mut notices = listener.subscribe(&[CANCEL_CHANNEL]);
        async move {
            while let Some(notice) = notices.recv().await {
                match notice {
                    Notice::Payload { payload, .. } => {
                        if let Ok(id) = payload.parse::<i64>() {
                            self.cancel(id);
                        }
                    }
                    Notice::PossiblyMissed => self.read_cancels(&pool).await,
                    Notice::Deaf => {}
                }
            }
        }
    }

    /// Cancels each running ticket whose cancel Postgres holds.
    async fn read_cancels(&self, pool: &PgPool) {
        let running: Vec<i64> = self.lock().keys().copied().collect();
        for id in running {
            match tickets::get(pool, id).await {
                Ok(Some(ticket)) if ticket.cancel_requested => self.cancel(id),
                Ok(_) => {}
                Err(e) => warn!(ticket_id = id, error = %e, "could not read a cancel"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}
