//! Postgres LISTEN/NOTIFY for the whole process: ONE listener (`listener`) that every user
//! of LISTEN subscribes to, and the live events it carries, fanned out (`Hub`).
//!
//! `Hub::run` hands each ticket event and worker heartbeat to every viewer (console pages,
//! client event streams) through a broadcast channel, so the number of viewers never changes
//! the number of database queries. A viewer that falls behind, or a hub whose notices may
//! have been missed, is told to catch up from the event log (`store::events::after`) by its
//! last event id.
//!
//! The hub also keeps the status cache (`statuses`) true: it drops the entry of each ticket
//! whose change is announced, and switches the cache off while nothing is heard.

pub mod listener;
pub mod statuses;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::events::{
    TicketEvent, WorkerEvent, TICKET_EVENTS_CHANNEL, WORKER_EVENTS_CHANNEL,
};
use crate::store::tickets::TICKET_CHANGED_CHANNEL;

pub use listener::{Listener, Notice, Subscription};
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

    /// Hands on what the process's listener hears of ticket events, worker heartbeats
    /// and ticket changes, until it stops. Subscribes at once, so that nothing announced
    /// after the call is missed.
    pub fn run(self, listener: &Listener) -> impl Future<Output = ()> {
        let mut notices = listener.subscribe(&[
            TICKET_EVENTS_CHANNEL,
            WORKER_EVENTS_CHANNEL,
            TICKET_CHANGED_CHANNEL,
        ]);
        async move {
            while let Some(notice) = notices.recv().await {
                match notice {
                    Notice::PossiblyMissed => {
                        self.statuses.listening();
                        // Whatever was missed is in the log.
                        let _ = self.sender.send(Live::CatchUp);
                    }
                    Notice::Deaf => self.statuses.deaf(),
                    Notice::Payload { channel, payload } => self.heard(channel, &payload),
                }
            }
            // Requests still being answered read Postgres.
            self.statuses.deaf();
            self.stopped.cancel();
        }
    }

    fn heard(&self, channel: &str, payload: &str) {
        if channel == TICKET_CHANGED_CHANNEL {
            match payload.parse() {
                Ok(id) => self.statuses.changed(id),
                // Which ticket is unknown: forget them all.
                Err(_) => self.statuses.forget_all(),
            }
            return;
        }
        let event = if channel == TICKET_EVENTS_CHANNEL {
            serde_json::from_str(payload).map(|e| Live::Ticket(Arc::new(e)))
        } else {
            serde_json::from_str(payload).map(|e| Live::Worker(Arc::new(e)))
        };
        match event {
            // No subscriber is not an error.
            Ok(event) => drop(self.sender.send(event)),
            Err(e) => tracing::warn!(error = %e, "unreadable live event ignored"),
        }
    }
}
