//! Live events, fanned out: ONE Postgres listener per process (`Hub::run`) hears ticket
//! events and worker heartbeats and hands each to every subscriber (console pages, client
//! event streams) through a broadcast channel, so the number of viewers never changes the
//! number of database queries. A subscriber that falls behind, or a listener that lost
//! Postgres (notices may have been missed), is told to catch up from the event log
//! (`store::events::after`) by its last event id.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::events::{
    TicketEvent, WorkerEvent, TICKET_EVENTS_CHANNEL, WORKER_EVENTS_CHANNEL,
};

/// Events held for slow subscribers; one further behind catches up from the log.
const BUFFER: usize = 1024;

#[derive(Debug, Clone)]
pub enum Live {
    Ticket(Arc<TicketEvent>),
    Worker(Arc<WorkerEvent>),
    /// Events may have been missed (the listener reconnected): catch up from the log.
    CatchUp,
}

#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Live>,
    /// Fired when the process stops: open streams end (clients resume elsewhere), so
    /// they do not hold up the shutdown.
    stopped: CancellationToken,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            sender: broadcast::channel(BUFFER).0,
            stopped: CancellationToken::new(),
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.sender.subscribe()
    }

    /// Fires when the hub stops.
    pub fn stopped(&self) -> CancellationToken {
        self.stopped.clone()
    }

    /// Subscribers now (for tests and the load check).
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Listens until `shutdown`, reconnecting after a lost connection.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let heard = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener
                    .listen_all([TICKET_EVENTS_CHANNEL, WORKER_EVENTS_CHANNEL])
                    .await?;
                // Whatever happened while not listening is in the log.
                let _ = self.sender.send(Live::CatchUp);
                loop {
                    let notice = listener.recv().await?;
                    let event = if notice.channel() == TICKET_EVENTS_CHANNEL {
                        serde_json::from_str(notice.payload()).map(|e| Live::Ticket(Arc::new(e)))
                    } else {
                        serde_json::from_str(notice.payload()).map(|e| Live::Worker(Arc::new(e)))
                    };
                    match event {
                        // No subscriber is not an error.
                        Ok(event) => drop(self.sender.send(event)),
                        Err(e) => tracing::warn!(error = %e, "unreadable live event ignored"),
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                result = heard => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "live event listener lost Postgres; reconnecting");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        }
        self.stopped.cancel();
    }
}
