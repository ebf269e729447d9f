//! Live events, fanned out: ONE Postgres listener per process (`Hub::run`) hears ticket
//! events and worker heartbeats and hands each to every subscriber (console pages, client
//! event streams) through a broadcast channel, so the number of viewers never changes the
//! number of database queries. A subscriber that falls behind, or a listener that lost
//! Postgres (notices may have been missed), is told to catch up from the event log
//! (`store::events::after`) by its last event id.
//!
//! The same listener keeps the status cache (`statuses`) true: it drops the entry of each
//! ticket whose change is announced, and switches the cache off while it is not listening.

pub mod statuses;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::events::{
    TicketEvent, WorkerEvent, TICKET_EVENTS_CHANNEL, WORKER_EVENTS_CHANNEL,
};
use crate::store::tickets::TICKET_CHANGED_CHANNEL;

use statuses::Statuses;

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
    statuses: Arc<Statuses>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            sender: broadcast::channel(BUFFER).0,
            stopped: CancellationToken::new(),
            statuses: Arc::default(),
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

    /// The status cache this hub keeps true.
    pub fn statuses(&self) -> &Statuses {
        &self.statuses
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
                    .listen_all([
                        TICKET_EVENTS_CHANNEL,
                        WORKER_EVENTS_CHANNEL,
                        TICKET_CHANGED_CHANNEL,
                    ])
                    .await?;
                self.statuses.listening();
                // Whatever happened while not listening is in the log.
                let _ = self.sender.send(Live::CatchUp);
                // `try_recv`, not `recv`: `recv` reconnects silently, and what was announced
                // in between would be missed unnoticed.
                while let Some(notice) = listener.try_recv().await? {
                    if notice.channel() == TICKET_CHANGED_CHANNEL {
                        match notice.payload().parse() {
                            Ok(id) => self.statuses.changed(id),
                            // Which ticket is unknown: forget them all.
                            Err(_) => self.statuses.forget_all(),
                        }
                        continue;
                    }
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
                Err::<(), _>(sqlx::Error::Protocol("the connection was closed".into()))
            };
            tokio::select! {
                result = heard => {
                    self.statuses.deaf();
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
        // Requests still being answered read Postgres.
        self.statuses.deaf();
        self.stopped.cancel();
    }
}
