//! What one user may take of the API: publishes per minute (a token bucket per login, in
//! this process) and open event streams (a count per login, in this process), and the
//! re-check that ends open streams whose session or user lost access. The cap on queued
//! tickets holds over every process: it is counted in Postgres (`tickets::create_within_quota`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::auth::PUBLISH_ENTITLEMENT;
use super::error::ApiError;
use crate::config::LimitSettings;
use crate::store::{console, users};

/// Buckets kept at most; past it, the full ones (users idle for a while) are dropped.
const MAX_BUCKETS: usize = 10_000;

/// What a client refused for too many open streams is told to wait.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Publishes per user: `burst` at once, then `per_minute`.
pub struct PublishRate {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl PublishRate {
    pub fn new(limits: &LimitSettings) -> PublishRate {
        PublishRate {
            burst: f64::from(limits.publish_burst.max(1)),
            per_second: f64::from(limits.publishes_per_minute.max(1)) / 60.0,
            buckets: Mutex::default(),
        }
    }

    /// Takes one publish from `login`'s bucket, or says how long until one is there.
    pub fn take(&self, login: &str) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(login) {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets
            .entry(login.to_string())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - *tokens) / self.per_second);
        Err(ApiError::TooManyRequests {
            message: format!(
                "user '{login}' is publishing too fast (at most {} at once, then {} a minute): \
                 retry in {} seconds",
                self.burst,
                (self.per_second * 60.0).round(),
                wait.as_secs().max(1)
            ),
            retry_after: wait,
        })
    }
}

/// Who an open stream was opened for, checked again while it is open.
#[derive(Clone)]
pub(super) enum Access {
    /// A console feed: its session stays open and its user an administrator.
    Session(Vec<u8>),
    /// A ticket's stream: its user keeps its password and the publish entitlement, and stays
    /// the ticket's owner or an administrator; the API key that signed it (its public key),
    /// if one did, is not revoked and has not expired.
    User {
        login: String,
        password_hash: String,
        owner: String,
        api_key: Option<String>,
    },
}

/// The open event streams of this process.
pub struct Streams {
    per_user: usize,
    recheck: Duration,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    streams: HashMap<u64, (Access, CancellationToken)>,
    per_user: HashMap<String, usize>,
}

/// Held by an open stream: `revoked` fires when its access is gone; dropping it forgets
/// the stream.
pub(super) struct StreamPass {
    id: u64,
    counted_as: Option<String>,
    streams: Arc<Streams>,
    pub revoked: CancellationToken,
}

impl Drop for StreamPass {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        open.streams.remove(&self.id);
        if let Some(login) = &self.counted_as {
            if let Some(n) = open.per_user.get_mut(login) {
                *n -= 1;
                if *n == 0 {
                    open.per_user.remove(login);
                }
            }
        }
    }
}

impl Streams {
    pub fn new(limits: &LimitSettings) -> Arc<Streams> {
        Arc::new(Streams {
            per_user: limits.event_streams_per_user.max(1),
            recheck: limits.stream_recheck,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream, counted against `counted_as` (a user past the cap gets 429).
    pub(super) fn open(
        self: &Arc<Self>,
        access: Access,
        counted_as: Option<&str>,
    ) -> Result<StreamPass, ApiError> {
        let mut open = self.lock();
        if let Some(login) = counted_as {
            let held = open.per_user.entry(login.to_string()).or_default();
            if *held >= self.per_user {
                return Err(ApiError::TooManyRequests {
                    message: format!(
                        "user '{login}' has {} event streams open, the most allowed: close one \
                         (or poll the status) and retry",
                        self.per_user
                    ),
                    retry_after: STREAM_RETRY_AFTER,
                });
            }
            *held += 1;
        }
        open.next_id += 1;
        let id = open.next_id;
        let revoked = CancellationToken::new();
        open.streams.insert(id, (access, revoked.clone()));
        Ok(StreamPass {
            id,
            counted_as: counted_as.map(str::to_string),
            streams: self.clone(),
            revoked,
        })
    }

    /// Until `shutdown`, every `recheck`: ends the streams whose access is gone, with one
    /// query per kind of access however many streams are open.
    pub async fn run(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.recheck);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            self.recheck_all(&pool).await;
        }
    }

    async fn recheck_all(&self, pool: &PgPool) {
        let open: Vec<(Access, CancellationToken)> =
            self.lock().streams.values().cloned().collect();
        if open.is_empty() {
            return;
        }
        match Granted::read(pool, &open).await {
            Ok(granted) => {
                for (access, revoked) in &open {
                    if !granted.allows(access) {
                        revoked.cancel();
                    }
                }
            }
            // Unchecked is not allowed: the clients reconnect, and are checked anew.
            Err(e) => {
                tracing::warn!(error = %e, "event streams' access could not be checked: ended");
                open.iter().for_each(|(_, revoked)| revoked.cancel());
            }
        }
    }
}

/// Sessions, users and API keys as they are now.
struct Granted {
    sessions: HashSet<Vec<u8>>,
    users: HashMap<String, users::User>,
    api_keys: HashSet<String>,
}

impl Granted {
    async fn read(
        pool: &PgPool,
        open: &[(Access, CancellationToken)],
    ) -> Result<Granted, sqlx::Error> {
        let mut hashes = HashSet::new();
        let mut logins = HashSet::new();
        let mut keys = HashSet::new();
        for (access, _) in open {
            match access {
                Access::Session(hash) => hashes.insert(hash.clone()),
                Access::User { login, api_key, .. } => {
                    keys.extend(api_key.clone());
                    logins.insert(login.clone())
                }
            };
        }
        let hashes: Vec<Vec<u8>> = hashes.into_iter().collect();
        let logins: Vec<String> = logins.into_iter().collect();
        let keys: Vec<String> = keys.into_iter().collect();
        let sessions = match hashes.is_empty() {
            true => vec![],
            false => console::admin_sessions(pool, &hashes).await?,
        };
        let users = match logins.is_empty() {
            true => vec![],
            false => users::find_by_logins(pool, &logins).await?,
        };
        let api_keys = match keys.is_empty() {
            true => vec![],
            false => console::live_api_keys(pool, &keys).await?,
        };
        Ok(Granted {
            sessions: sessions.into_iter().collect(),
            users: users.into_iter().map(|u| (u.login.clone(), u)).collect(),
            api_keys: api_keys.into_iter().collect(),
        })
    }

    fn allows(&self, access: &Access) -> bool {
        match access {
            Access::Session(hash) => self.sessions.contains(hash),
            Access::User {
                login,
                password_hash,
                owner,
                api_key,
            } => self.users.get(login).is_some_and(|user| {
                api_key
                    .as_ref()
                    .is_none_or(|key| self.api_keys.contains(key))
                    && user.password_hash == *password_hash
                    && user.has_entitlement(PUBLISH_ENTITLEMENT)
                    && (user.login == *owner || user.is_admin)
            }),
        }
    }
}
