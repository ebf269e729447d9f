//! The process's one Postgres listener: ONE connection LISTENs on every channel a part of
//! the process subscribed to (`Listener::subscribe`), and each notice goes to the
//! subscribers of its channel. A subscriber is told when notices may have been missed
//! (`Notice::PossiblyMissed`: the listener (re)connected, the subscriber has just subscribed,
//! or it fell behind), so that it re-reads what they would have told, and when nothing is
//! heard at all (`Notice::Deaf`: Postgres was lost, until the next `PossiblyMissed`).
//!
//! `try_recv`, never `recv`: sqlx's `recv` reconnects silently, and what was announced in
//! the gap would be missed unnoticed. A channel subscribed to while listening makes the
//! listener connect again with it (`LISTEN` on a connection being read is not safe to
//! interleave), so a subscriber relies on a channel only once told it is heard.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

/// Notices held for slow subscribers; one further behind is told `PossiblyMissed`.
const BUFFER: usize = 1024;

/// Reconnecting: at once after a connection that lasted, else with backoff (full jitter)
/// up to 5 s, for as long as the process runs.
const RECONNECT: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5)).with_full_jitter();

/// How long a connection must have lasted for its loss to be reconnected at once: one that
/// opens and dies at once (a full server, a bad LISTEN) is retried with growing waits.
const STABLE: Duration = Duration::from_secs(5);

/// The waits before reconnecting: one backoff across connections, started over only after a
/// connection lasted `STABLE`.
struct Reconnects {
    backoff: Backoff,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Reconnects {
    fn new(backoff: Backoff) -> Reconnects {
        Reconnects {
            backoff,
            delays: Box::new(backoff.delays()),
        }
    }

    /// The wait after a connection that lasted `lasted` was lost.
    fn after_lost(&mut self, lasted: Duration) -> Duration {
        if lasted < STABLE {
            return self.after_failed_connect();
        }
        self.delays = Box::new(self.backoff.delays());
        Duration::ZERO
    }

    /// The wait after a connection could not be opened.
    fn after_failed_connect(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.backoff.cap())
    }
}

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A notification on one of the subscription's channels.
    Payload {
        channel: &'static str,
        payload: Arc<str>,
    },
    /// Notices may have been missed before this one: re-read what they would have told.
    /// From here on, every notice of the subscription's channels is heard.
    PossiblyMissed,
    /// Postgres is lost: notices go unheard until the next `PossiblyMissed`.
    Deaf,
}

/// The handle of the process's listener; clones share it.
#[derive(Clone)]
pub struct Listener {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    sender: broadcast::Sender<Heard>,
    state: Mutex<State>,
    /// A channel was subscribed to that the current connection may not LISTEN on.
    channel_added: Notify,
}

#[derive(Default)]
struct State {
    /// Every channel subscribed to; it only grows.
    channels: BTreeSet<&'static str>,
    /// What the current connection LISTENs on; `None` while not listening.
    listening: Option<Arc<BTreeSet<&'static str>>>,
    stopped: bool,
}

/// What the listener tells every subscription; each keeps what concerns it.
#[derive(Debug, Clone)]
enum Heard {
    Payload {
        channel: &'static str,
        payload: Arc<str>,
    },
    Listening(Arc<BTreeSet<&'static str>>),
    Deaf,
    Stopped,
}

/// Why a connection stopped being read.
enum Ended {
    Lost(Option<sqlx::Error>),
    ChannelAdded,
    Shutdown,
}

impl Listener {
    /// A listener on `pool`'s database; it connects when `run`.
    pub fn new(pool: PgPool) -> Listener {
        Listener {
            shared: Arc::new(Shared {
                pool,
                sender: broadcast::channel(BUFFER).0,
                state: Mutex::default(),
                channel_added: Notify::new(),
            }),
        }
    }

    /// Notices of `channels`, from now on. The first is `PossiblyMissed` when they are
    /// heard already, else `Deaf` (and `PossiblyMissed` follows once they are).
    pub fn subscribe(&self, channels: &[&'static str]) -> Subscription {
        // Before the state is read: nothing told after that read is missed.
        let receiver = self.shared.sender.subscribe();
        let mut state = self.shared.lock();
        let before = state.channels.len();
        state.channels.extend(channels.iter().copied());
        if state.channels.len() > before {
            self.shared.channel_added.notify_one();
        }
        Subscription {
            channels: channels.to_vec(),
            receiver,
            shared: self.shared.clone(),
            started: false,
        }
    }

    /// Listens until `shutdown`, reconnecting with backoff after a lost connection; then
    /// every subscription ends.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut reconnects = Reconnects::new(RECONNECT);
        loop {
            if !self.wait_for_a_channel(&shutdown).await {
                break;
            }
            // A connection attempt waits for the pool; shutdown does not.
            let connected = tokio::select! {
                connected = self.connect() => connected,
                _ = shutdown.cancelled() => break,
            };
            let delay = match connected {
                Ok((mut connection, channels)) => {
                    let opened = Instant::now();
                    let ended = self.hear(&mut connection, channels, &shutdown).await;
                    self.shared.deaf();
                    match ended {
                        Ended::Shutdown => break,
                        Ended::ChannelAdded => Duration::ZERO,
                        Ended::Lost(e) => {
                            let error =
                                e.map_or("connection closed".to_string(), |e| e.to_string());
                            tracing::warn!(%error, "Postgres listener lost Postgres; reconnecting");
                            reconnects.after_lost(opened.elapsed())
                        }
                    }
                }
                Err(error) => {
                    let delay = reconnects.after_failed_connect();
                    tracing::warn!(
                        %error,
                        "Postgres listener not connected; next try in {:.1} s",
                        delay.as_secs_f64()
                    );
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.shared.stop();
    }

    /// Waits until some channel is subscribed to; false on shutdown.
    async fn wait_for_a_channel(&self, shutdown: &CancellationToken) -> bool {
        while self.shared.lock().channels.is_empty() {
            tokio::select! {
                _ = self.shared.channel_added.notified() => {}
                _ = shutdown.cancelled() => return false,
            }
        }
        !shutdown.is_cancelled()
    }

    /// A connection that LISTENs on every channel subscribed to now.
    async fn connect(&self) -> Result<(PgListener, Arc<BTreeSet<&'static str>>), sqlx::Error> {
        let channels = Arc::new(self.shared.lock().channels.clone());
        let mut connection = PgListener::connect_with(&self.shared.pool).await?;
        // A lost connection is reported at once, not after the next connect.
        connection.eager_reconnect(false);
        connection.listen_all(channels.iter().copied()).await?;
        Ok((connection, channels))
    }

    /// Hands out what `connection` hears until it is lost, a channel is added or shutdown.
    async fn hear(
        &self,
        connection: &mut PgListener,
        channels: Arc<BTreeSet<&'static str>>,
        shutdown: &CancellationToken,
    ) -> Ended {
        self.shared.listening(channels.clone());
        loop {
            tokio::select! {
                heard = connection.try_recv() => match heard {
                    Ok(Some(notice)) => {
                        if let Some(channel) = channels.get(notice.channel()) {
                            self.shared.payload(channel, notice.payload());
                        }
                    }
                    Ok(None) => return Ended::Lost(None),
                    Err(e) => return Ended::Lost(Some(e)),
                },
                // Reading is given up only when the channel is new to this connection.
                _ = self.shared.channel_added.notified() => {
                    if self.shared.lock().channels.len() > channels.len() {
                        return Ended::ChannelAdded;
                    }
                }
                _ = shutdown.cancelled() => return Ended::Shutdown,
            }
        }
    }
}

/// Test doubles of what the listening loop tells, for the subscribers' tests.
#[cfg(test)]
impl Listener {
    pub(crate) fn pretend_listening(&self) {
        let channels = Arc::new(self.shared.lock().channels.clone());
        self.shared.listening(channels);
    }

    pub(crate) fn pretend_deaf(&self) {
        self.shared.deaf();
    }

    pub(crate) fn pretend_payload(&self, channel: &'static str, payload: &str) {
        self.shared.payload(channel, payload);
    }

    pub(crate) fn pretend_stopped(&self) {
        self.shared.stop();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // The state changes before it is told: a subscription that reads the state after
    // missing a message (it lagged) finds at least what that message said.
    fn listening(&self, channels: Arc<BTreeSet<&'static str>>) {
        self.lock().listening = Some(channels.clone());
        // No subscriber is not an error.
        let _ = self.sender.send(Heard::Listening(channels));
    }

    fn deaf(&self) {
        self.lock().listening = None;
        let _ = self.sender.send(Heard::Deaf);
    }

    fn payload(&self, channel: &'static str, payload: &str) {
        let _ = self.sender.send(Heard::Payload {
            channel,
            payload: payload.into(),
        });
    }

    fn stop(&self) {
        let mut state = self.lock();
        state.listening = None;
        state.stopped = true;
        drop(state);
        let _ = self.sender.send(Heard::Deaf);
        let _ = self.sender.send(Heard::Stopped);
    }
}

/// One subscriber's notices (see `Listener::subscribe`).
pub struct Subscription {
    channels: Vec<&'static str>,
    receiver: broadcast::Receiver<Heard>,
    shared: Arc<Shared>,
    started: bool,
}

impl Subscription {
    /// The next notice; `None` once the listener stopped.
    pub async fn recv(&mut self) -> Option<Notice> {
        if !self.started {
            self.started = true;
            return self.now();
        }
        loop {
            match self.receiver.recv().await {
                Ok(Heard::Payload { channel, payload }) => {
                    if self.channels.contains(&channel) {
                        return Some(Notice::Payload { channel, payload });
                    }
                }
                Ok(Heard::Listening(channels)) => {
                    if self.heard_on(&channels) {
                        return Some(Notice::PossiblyMissed);
                    }
                }
                Ok(Heard::Deaf) => return Some(Notice::Deaf),
                Ok(Heard::Stopped) | Err(broadcast::error::RecvError::Closed) => return None,
                // Fell behind: what was dropped is unknown.
                Err(broadcast::error::RecvError::Lagged(_)) => return self.now(),
            }
        }
    }

    /// What holds now: heard (`PossiblyMissed`: re-read) or not (`Deaf`).
    fn now(&self) -> Option<Notice> {
        let state = self.shared.lock();
        if state.stopped {
            return None;
        }
        Some(match &state.listening {
            Some(channels) if self.heard_on(channels) => Notice::PossiblyMissed,
            _ => Notice::Deaf,
        })
    }

    fn heard_on(&self, listened: &BTreeSet<&'static str>) -> bool {
        self.channels.iter().all(|c| listened.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> Listener {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        Listener::new(pool)
    }

    fn payload(channel: &'static str, payload: &str) -> Option<Notice> {
        Some(Notice::Payload {
            channel,
            payload: payload.into(),
        })
    }

    #[test]
    fn a_connection_that_dies_at_once_is_reconnected_later_and_later() {
        let mut reconnects = Reconnects::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
        ));
        let short = Duration::from_millis(10);
        // In whole milliseconds: backon's doubling is in floating point.
        let mut waits = vec![
            reconnects.after_lost(short),
            reconnects.after_failed_connect(),
            reconnects.after_lost(short),
            reconnects.after_lost(short),
        ];
        // One that lasted is reconnected at once, and the backoff starts over.
        waits.push(reconnects.after_lost(STABLE));
        waits.push(reconnects.after_lost(short));
        let millis: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [100, 200, 400, 400, 0, 100]);
    }

    #[tokio::test]
    async fn a_new_subscription_first_hears_whether_it_is_heard() {
        let listener = listener();
        let mut deaf = listener.subscribe(&["a"]);
        assert_eq!(deaf.recv().await, Some(Notice::Deaf));
        listener.pretend_listening();
        assert_eq!(deaf.recv().await, Some(Notice::PossiblyMissed));

        let mut late = listener.subscribe(&["a"]);
        assert_eq!(late.recv().await, Some(Notice::PossiblyMissed));
        listener.pretend_payload("a", "1");
        assert_eq!(late.recv().await, payload("a", "1"));
    }

    #[tokio::test]
    async fn a_subscriber_hears_only_its_channels() {
        let listener = listener();
        let mut a = listener.subscribe(&["a"]);
        let mut b = listener.subscribe(&["b"]);
        assert_eq!(a.recv().await, Some(Notice::Deaf));
        assert_eq!(b.recv().await, Some(Notice::Deaf));
        listener.pretend_listening();
        assert_eq!(a.recv().await, Some(Notice::PossiblyMissed));
        assert_eq!(b.recv().await, Some(Notice::PossiblyMissed));
        listener.pretend_payload("a", "for a");
        listener.pretend_payload("b", "for b");
        assert_eq!(a.recv().await, payload("a", "for a"));
        assert_eq!(b.recv().await, payload("b", "for b"));
    }

    #[tokio::test]
    async fn a_lost_connection_is_deaf_and_the_reconnection_possibly_missed() {
        let listener = listener();
        listener.pretend_listening();
        let mut sub = listener.subscribe(&["a"]);
        assert_eq!(sub.recv().await, Some(Notice::Deaf));
        listener.pretend_listening();
        assert_eq!(sub.recv().await, Some(Notice::PossiblyMissed));
        listener.pretend_deaf();
        listener.pretend_listening();
        assert_eq!(sub.recv().await, Some(Notice::Deaf));
        assert_eq!(sub.recv().await, Some(Notice::PossiblyMissed));
    }

    #[tokio::test]
    async fn a_connection_without_the_new_channel_does_not_count() {
        let listener = listener();
        listener.subscribe(&["a"]);
        listener.pretend_listening();
        // Subscribed while listening on "a" only: not heard until the listener reconnects.
        let mut ab = listener.subscribe(&["a", "b"]);
        assert_eq!(ab.recv().await, Some(Notice::Deaf));
        listener.pretend_payload("a", "1");
        assert_eq!(ab.recv().await, payload("a", "1"));
        listener.pretend_deaf();
        listener.pretend_listening();
        assert_eq!(ab.recv().await, Some(Notice::Deaf));
        assert_eq!(ab.recv().await, Some(Notice::PossiblyMissed));
    }

    #[tokio::test]
    async fn a_subscriber_that_fell_behind_possibly_missed_notices() {
        let listener = listener();
        let mut sub = listener.subscribe(&["a"]);
        listener.pretend_listening();
        assert_eq!(sub.recv().await, Some(Notice::PossiblyMissed));
        for n in 0..BUFFER + 10 {
            listener.pretend_payload("a", &n.to_string());
        }
        assert_eq!(sub.recv().await, Some(Notice::PossiblyMissed));
        // Fell behind while Postgres was lost: deaf, not told it may re-read.
        for n in 0..BUFFER + 10 {
            listener.pretend_payload("a", &n.to_string());
        }
        listener.pretend_deaf();
        for _ in 0..BUFFER {
            listener.pretend_payload("a", "x");
        }
        assert_eq!(sub.recv().await, Some(Notice::Deaf));
    }

    #[tokio::test]
    async fn subscriptions_end_when_the_listener_stops() {
        let listener = listener();
        let mut sub = listener.subscribe(&["a"]);
        assert_eq!(sub.recv().await, Some(Notice::Deaf));
        listener.pretend_listening();
        listener.pretend_stopped();
        assert_eq!(sub.recv().await, Some(Notice::PossiblyMissed));
        assert_eq!(sub.recv().await, Some(Notice::Deaf));
        assert_eq!(sub.recv().await, None);
        assert_eq!(listener.subscribe(&["a"]).recv().await, None);
    }
}
