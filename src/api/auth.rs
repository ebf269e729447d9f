//! Who is calling, and what they may reach.
//!
//! Two ways in, as the UForge SDK sends them:
//! - HTTP Basic, checked against argon2id hashes. The check is slow on purpose, so it runs on
//!   the blocking pool, one per core at most, in argon2 memory allocated once and reused
//!   (`PasswordChecker`), so a login flood neither grows the process nor queues without end.
//!   A user whose credential passed is remembered for a short while (keyed by a salted
//!   digest, never the password) so a client polling a status pays neither argon2 nor a user
//!   lookup every time. A change to the user (NOTIFY from `users::upsert`) forgets it at once,
//!   in every API process. Concurrent requests with one credential share one check (single
//!   flight). Failed logins count per login name, known or not (`store::login_lock`): each
//!   check reserves an attempt first (waiting, bounded, while the name's attempts are all in
//!   flight); only failed checks keep theirs, and past the limit the name is locked (429),
//!   remembered passwords included.
//! - API keys: `?apiKey=<public>&signature=<base64(HMAC-SHA1(secret, relative URL))>`. The
//!   signature covers only the URL, so each accepted one is bound (in Postgres, shared by every
//!   API process) to the method it was first used with, for as long as its key lives, and a
//!   write's to one successful use. A key may be scoped to methods and may expire.
//!
//! Unknown user, wrong password, unknown key and bad signature all get the same 401.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::{Notify, OnceCell};

use super::error::ApiError;
use super::AppState;
use crate::config::ApiSettings;
use crate::live::{Listener, Notice};
use crate::metrics_catalog;
use crate::retry::Backoff;
use crate::secrets::{PasswordChecker, Secret, SecretBox};
use crate::store::login_lock::{self, Attempt};
use crate::store::users::ApiKey;
use crate::store::{users, User};

/// The entitlement every publish route needs.
pub const PUBLISH_ENTITLEMENT: &str = "migration_publish";

/// Remembered credentials at most; past it the memory is cleared (and refilled by use).
const MAX_REMEMBERED: usize = 10_000;

/// How long a login may wait for its check (an attempt of its name, then a checker slot)
/// before the client is asked to retry (429): long enough to ride out a burst, bounded so
/// that a login flood does not queue without end.
const LOGIN_CHECK_WAIT: Duration = Duration::from_secs(5);

/// While a name's attempts are all in flight, how soon to look again for one given back by
/// another API process (this process's own are heard at once): 100 ms, doubled after each
/// look up to 1 s, so that waiting logins do not poll Postgres at a steady 10/s.
const ATTEMPT_RECHECK: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

/// Checks in flight at most before finished entries are swept from the single-flight map.
const MAX_SHARED_CHECKS: usize = 1_000;

/// Read signatures remembered per process at most; past it the set is cleared (and refilled
/// by use, one Postgres write per signature).
const MAX_READ_SIGNATURES: usize = 100_000;

/// How often a process forgets the signature bindings of expired keys.
const SIGNATURE_PURGE_EVERY: Duration = Duration::from_secs(3600);

/// An authenticated caller, and whether the `{uid}` of the path names no user (looked up
/// only when an administrator reaches another user's resources). Authenticated once per
/// request: the first extraction keeps it in the request's extensions and later ones
/// (a handler's `Caller` and its `UserScope`, say) reuse it, so a single-use signature is
/// spent once.
#[derive(Clone)]
pub struct Caller(pub User, bool);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let caller = Self::authenticate(parts, state).await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

impl Caller {
    async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let user = match SignedUrl::parse(parts.uri.path(), parts.uri.query().unwrap_or(""))? {
            Some(signed) => {
                let (user, created_write) = state.auth.by_api_key(&signed, &parts.method).await?;
                if let (Some(digest), Some(slot)) =
                    (created_write, parts.extensions.get::<CreatedWriteBinding>())
                {
                    slot.set(digest);
                }
                user
            }
            None => {
                let (login, password) = basic_credentials(parts).ok_or(ApiError::Unauthorized)?;
                state.auth.by_password(login, password).await?
            }
        };
        let uid = RawPathParams::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(name, _)| *name == "uid")
                    .map(|(_, uid)| uid.to_string())
            });
        let uid_unknown = match uid {
            Some(uid)
                if user.is_admin
                    && user.has_entitlement(PUBLISH_ENTITLEMENT)
                    && uid != user.login
                    && valid_login(&uid) =>
            {
                users::find_by_login(&state.pool, &uid).await?.is_none()
            }
            _ => false,
        };
        Ok(Caller(user, uid_unknown))
    }

    /// May this caller publish as `uid`? Another user's resources look absent (404), and so
    /// do those of a user that does not exist, for administrators too.
    pub fn authorize(&self, uid: &str) -> Result<(), ApiError> {
        let Caller(user, uid_unknown) = self;
        if !user.has_entitlement(PUBLISH_ENTITLEMENT) {
            return Err(ApiError::Forbidden(format!(
                "user '{}' lacks the entitlement {PUBLISH_ENTITLEMENT}",
                user.login
            )));
        }
        if (user.login != uid && !user.is_admin) || !valid_login(uid) || *uid_unknown {
            return Err(ApiError::NotFound(format!("no user '{uid}'")));
        }
        Ok(())
    }
}

/// Checks credentials; shared by every request of one API process.
pub struct Authenticator {
    pool: PgPool,
    secrets: SecretBox,
    max_failures: i32,
    lockout: Duration,
    remember_for: Duration,
    /// Salted digest of login + password → the user they verified as.
    remembered: Mutex<HashMap<[u8; 32], (User, Instant)>>,
    /// Whether changes to users are being heard (`watch_user_changes`). Without that, a
    /// remembered user is checked against the database on each use instead.
    watching: AtomicBool,
    salt: [u8; 32],
    passwords: Arc<PasswordChecker>,
    /// Password checks in flight, by credential digest: concurrent requests share one.
    checking: Mutex<HashMap<[u8; 32], SharedCheck>>,
    /// Woken when this process gives back or spends a login attempt.
    attempt_ended: Notify,
    /// Digests of signatures known to be bound to GET: repeated polls write nothing.
    read_signatures: Mutex<HashSet<[u8; 32]>>,
    signatures_purged_at: Mutex<Option<Instant>>,
}

/// The outcome of one password check, shared by every request that waited for it.
type SharedCheck = Arc<OnceCell<Checked>>;

#[derive(Clone)]
enum Checked {
    Verified(User),
    Refused(Arc<ApiError>),
}

impl Checked {
    fn into_result(self) -> Result<User, ApiError> {
        match self {
            Checked::Verified(user) => Ok(user),
            Checked::Refused(error) => Err(match &*error {
                ApiError::Unauthorized => ApiError::Unauthorized,
                ApiError::TooManyRequests {
                    message,
                    retry_after,
                } => ApiError::TooManyRequests {
                    message: message.clone(),
                    retry_after: *retry_after,
                },
                ApiError::Unavailable(message) => ApiError::Unavailable(message.clone()),
                other => ApiError::Internal(anyhow::anyhow!("{other:#}")),
            }),
        }
    }
}

impl Authenticator {
    pub fn new(pool: PgPool, secrets: SecretBox, settings: &ApiSettings) -> Arc<Authenticator> {
        let mut salt = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut salt);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Authenticator {
            pool,
            secrets,
            max_failures: settings.login_max_failures.max(1),
            lockout: settings.login_lockout,
            remember_for: settings.credential_cache,
            remembered: Mutex::new(HashMap::new()),
            watching: AtomicBool::new(false),
            salt,
            // One core is left to serving (and to Postgres, often on the same machine), so
            // that answers not needing argon2 stay prompt during a login flood.
            passwords: PasswordChecker::new(cores.saturating_sub(1).max(1)),
            checking: Mutex::new(HashMap::new()),
            attempt_ended: Notify::new(),
            read_signatures: Mutex::new(HashSet::new()),
            signatures_purged_at: Mutex::new(None),
        })
    }

    pub(super) async fn by_password(
        &self,
        login: String,
        password: Secret,
    ) -> Result<User, ApiError> {
        // A name no user can have is refused at once, and not counted.
        if !valid_login(&login) {
            return Err(ApiError::Unauthorized);
        }
        let memory_key = self.memory_key(&login, &password);
        if let Some(known) = self.recall(&memory_key) {
            // While listening, a lock is heard (login_lock::record_failure announces it) and
            // forgets the name's remembered passwords, so a remembered one is not locked.
            if self.watching.load(Ordering::Acquire) {
                return Ok(known);
            }
            // Not listening: notices may be missed, so ask the database.
            if let Some(left) = login_lock::lock_left(&self.pool, &login).await? {
                return Err(ApiError::too_many_logins(&login, left));
            }
            match users::find_by_login(&self.pool, &login).await? {
                Some(user) if user.password_hash == known.password_hash => return Ok(user),
                _ => self.forget(&memory_key),
            }
        }
        // One check for every request with this credential; if the request running it is
        // dropped, a waiting one takes over.
        let shared = self.shared_check(memory_key);
        let checked = shared
            .get_or_init(|| async {
                match self.check_and_count(&login, password, memory_key).await {
                    Ok(user) => Checked::Verified(user),
                    Err(error) => Checked::Refused(Arc::new(error)),
                }
            })
            .await
            .clone();
        self.end_shared_check(&memory_key, &shared);
        checked.into_result()
    }

    /// The check in flight for `key`, or a new one.
    fn shared_check(&self, key: [u8; 32]) -> SharedCheck {
        let mut checking = self.checking.lock().unwrap_or_else(|e| e.into_inner());
        if checking.len() >= MAX_SHARED_CHECKS {
            // Entries whose requests were all dropped before the end.
            checking.retain(|_, check| Arc::strong_count(check) > 1);
        }
        checking.entry(key).or_default().clone()
    }

    /// Forgets a finished check, so that a later request (after the credential's memory
    /// expired) checks afresh.
    fn end_shared_check(&self, key: &[u8; 32], shared: &SharedCheck) {
        let mut checking = self.checking.lock().unwrap_or_else(|e| e.into_inner());
        if checking.get(key).is_some_and(|c| Arc::ptr_eq(c, shared)) {
            checking.remove(key);
        }
    }

    /// Reserves an attempt for `login`, checks its password and counts a failure; a right
    /// password is remembered.
    async fn check_and_count(
        &self,
        login: &str,
        password: Secret,
        memory_key: [u8; 32],
    ) -> Result<User, ApiError> {
        let deadline = Instant::now() + LOGIN_CHECK_WAIT;
        let window_started_at = self.reserve_attempt(login, deadline).await?;
        let reserved = ReservedAttempt::new(&self.pool, login, window_started_at);
        let checked = self.check_password(login, password, deadline).await;
        // From here this function ends the attempt itself.
        reserved.disarm();
        let failed = matches!(checked, Ok(None));
        let outcome = match checked {
            Ok(Some(user)) => {
                login_lock::release_attempt(&self.pool, login, window_started_at).await?;
                self.remember(memory_key, user.clone());
                Ok(user)
            }
            Ok(None) => self.record_failure(login).await,
            // Not checked (busy, or no database): the attempt is not a failure.
            Err(e) => {
                login_lock::release_attempt(&self.pool, login, window_started_at).await?;
                Err(e)
            }
        };
        if !failed {
            self.attempt_ended.notify_waiters();
        }
        outcome
    }

    /// Reserves one attempt of `login`'s window. While they are all taken by checks in
    /// flight, waits (until `deadline`) for one to be given back; refused at once only when
    /// the name is locked.
    async fn reserve_attempt(
        &self,
        login: &str,
        deadline: Instant,
    ) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
        let mut rechecks = ATTEMPT_RECHECK.delays();
        loop {
            // Listening before asking: an attempt given back meanwhile is not missed.
            let given_back = self.attempt_ended.notified();
            tokio::pin!(given_back);
            given_back.as_mut().enable();
            match login_lock::reserve_attempt(&self.pool, login, self.max_failures, self.lockout)
                .await?
            {
                Attempt::Reserved { window_started_at } => return Ok(window_started_at),
                Attempt::Locked(left) => return Err(ApiError::too_many_logins(login, left)),
                Attempt::InFlight => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(logins_busy());
            }
            let recheck = rechecks.next().unwrap_or(ATTEMPT_RECHECK.cap());
            let _ = tokio::time::timeout(left.min(recheck), given_back).await;
        }
    }

    /// Keeps the failed attempt; a failure that uses up the window locks the name.
    async fn record_failure(&self, login: &str) -> Result<User, ApiError> {
        metrics::counter!(metrics_catalog::LOGIN_FAILURES).increment(1);
        let locked =
            login_lock::record_failure(&self.pool, login, self.max_failures, self.lockout).await;
        // Waiters look again: the name may be locked now.
        self.attempt_ended.notify_waiters();
        if let Some(left) = locked? {
            tracing::warn!(login, "too many failed logins: login locked");
            // This process forgets at once; the others when they hear the notice.
            self.forget_user(Some(login));
            return Err(ApiError::too_many_logins(login, left));
        }
        Err(ApiError::Unauthorized)
    }

    /// The user `login` names if `password` is theirs; `None` otherwise, after the same work
    /// for unknown users (a dummy hash), so that timing does not reveal them.
    async fn check_password(
        &self,
        login: &str,
        password: Secret,
        deadline: Instant,
    ) -> Result<Option<User>, ApiError> {
        let user = users::find_by_login(&self.pool, login).await?;
        let hash = user
            .as_ref()
            .map_or(DUMMY_HASH, |u| u.password_hash.as_str())
            .to_string();
        let wait = deadline.saturating_duration_since(Instant::now());
        let valid = self
            .passwords
            .check(password, hash, wait)
            .await
            .map_err(ApiError::Internal)?;
        if valid.is_some() {
            metrics::counter!(metrics_catalog::PASSWORD_CHECKS).increment(1);
        }
        match valid {
            Some(true) => Ok(user),
            Some(false) => Ok(None),
            None => Err(logins_busy()),
        }
    }

    /// The key's owner, and the signature's digest if this request bound it to a write (to
    /// be given back if the write is refused).
    async fn by_api_key(
        &self,
        signed: &SignedUrl,
        method: &Method,
    ) -> Result<(User, Option<[u8; 32]>), ApiError> {
        let Some(key) = users::find_by_api_key(&self.pool, &signed.api_key).await? else {
            return Err(ApiError::Unauthorized);
        };
        let secret = self
            .secrets
            .open(&key.secret_enc)
            .map_err(|e| ApiError::Internal(e.into()))?;
        if !signed.is_signed_by(&secret) {
            return Err(ApiError::Unauthorized);
        }
        // HEAD is a GET without its body.
        let method = if method == Method::HEAD {
            "GET"
        } else {
            method.as_str()
        };
        check_key_scope(&key, &signed.api_key, method)?;
        let created_write = self.bind_signature(key.id, signed, method).await?;
        Ok((key.owner, created_write))
    }

    /// Binds the signature to `method` on first use; refuses it with another method, and a
    /// write's second use. Reads may repeat: a read signature is written to Postgres once
    /// per process, then known here. Returns the digest of a write's binding this request
    /// created.
    async fn bind_signature(
        &self,
        api_key_id: i64,
        signed: &SignedUrl,
        method: &str,
    ) -> Result<Option<[u8; 32]>, ApiError> {
        let digest = signed.digest();
        let read = method == "GET";
        if read && self.lock_read_signatures().contains(&digest) {
            return Ok(None);
        }
        self.purge_expired_signatures();
        let binding = users::bind_signature(&self.pool, api_key_id, &digest, method).await?;
        if binding.method != method || (!read && !binding.created) {
            metrics::counter!(metrics_catalog::LOGIN_FAILURES).increment(1);
            tracing::warn!(
                method,
                first_used_with = binding.method,
                "an API-key signature was replayed: refused"
            );
            if binding.method != method {
                return Err(ApiError::Unauthorized);
            }
            // The caller holds a valid signature: telling them it is spent reveals nothing,
            // and tells an SDK user it is not a wrong key.
            return Err(ApiError::Conflict(format!(
                "this signed URL was already used for a {method}; a signed write serves once: \
                 sign a unique URL (add any query parameter) or use Basic authentication"
            )));
        }
        if !read {
            return Ok(Some(digest));
        }
        let mut known = self.lock_read_signatures();
        if known.len() >= MAX_READ_SIGNATURES {
            known.clear();
        }
        known.insert(digest);
        Ok(None)
    }

    fn lock_read_signatures(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.read_signatures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// At most once per `SIGNATURE_PURGE_EVERY`, in the background: the bindings of expired
    /// keys are deleted (a revoked key's are deleted with it).
    fn purge_expired_signatures(&self) {
        let mut purged_at = self
            .signatures_purged_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if purged_at.is_some_and(|at| at.elapsed() < SIGNATURE_PURGE_EVERY) {
            return;
        }
        *purged_at = Some(Instant::now());
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = users::purge_signatures(&pool).await {
                tracing::warn!(error = %e, "could not purge expired API-key signatures");
            }
        });
    }

    fn memory_key(&self, login: &str, password: &Secret) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.salt);
        digest.update(login.as_bytes());
        digest.update([0]);
        digest.update(password.expose().as_bytes());
        digest.finalize().into()
    }

    fn recall(&self, key: &[u8; 32]) -> Option<User> {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        remembered
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.remember_for)
            .map(|(user, _)| user.clone())
    }

    fn remember(&self, key: [u8; 32], user: User) {
        if self.remember_for.is_zero() {
            return;
        }
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, (_, at)| at.elapsed() < self.remember_for);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(key, (user, Instant::now()));
    }

    fn forget(&self, key: &[u8; 32]) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        remembered.remove(key);
    }

    fn forget_user(&self, login: Option<&str>) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        match login {
            Some(login) => remembered.retain(|_, (user, _)| user.login != login),
            None => remembered.clear(),
        }
    }

    /// Hears user changes from the process's listener until it stops, forgetting what was
    /// remembered of each changed user. When notices may have been missed (the listener
    /// (re)connected, or this subscriber fell behind), every remembered login is forgotten;
    /// while nothing is heard, remembered users are checked against the database.
    pub fn watch_user_changes(self: Arc<Self>, listener: &Listener) -> impl Future<Output = ()> {
        let mut notices = listener.subscribe(&[users::USER_CHANGED_CHANNEL]);
        async move {
            while let Some(notice) = notices.recv().await {
                match notice {
                    Notice::PossiblyMissed => {
                        self.forget_user(None);
                        self.watching.store(true, Ordering::Release);
                    }
                    Notice::Deaf => self.watching.store(false, Ordering::Release),
                    Notice::Payload { payload, .. } => self.forget_user(Some(&payload)),
                }
            }
            self.watching.store(false, Ordering::Release);
        }
    }
}

/// An attempt reserved while its password is checked. If the request is dropped then (its
/// client left), the attempt is given back in the background: the result was never told, so
/// it is not a failure, and it must not stay reserved for the window.
struct ReservedAttempt {
    armed: Option<(PgPool, String, chrono::DateTime<chrono::Utc>)>,
}

impl ReservedAttempt {
    fn new(pool: &PgPool, login: &str, window_started_at: chrono::DateTime<chrono::Utc>) -> Self {
        ReservedAttempt {
            armed: Some((pool.clone(), login.to_string(), window_started_at)),
        }
    }

    fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for ReservedAttempt {
    fn drop(&mut self) {
        let Some((pool, login, window_started_at)) = self.armed.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = login_lock::release_attempt(&pool, &login, window_started_at).await
                {
                    tracing::warn!(error = %e, "could not give back a dropped login's attempt");
                }
            });
        }
    }
}

/// Where the `Caller` extractor leaves the digest of a write binding its request created.
#[derive(Clone, Default)]
struct CreatedWriteBinding(Arc<Mutex<Option<[u8; 32]>>>);

impl CreatedWriteBinding {
    fn set(&self, digest: [u8; 32]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(digest);
    }

    fn take(&self) -> Option<[u8; 32]> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A signed write is bound before its handler runs; when its answer is not a success (a
/// 400, a 429 with Retry-After, a 503), the binding is given back before the answer leaves,
/// so the client can retry the same signed URL. Only the request that created it does so.
pub async fn release_refused_writes(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let slot = CreatedWriteBinding::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    if response.status().as_u16() >= 400 {
        if let Some(digest) = slot.take() {
            if let Err(e) = users::release_signature(&state.pool, &digest).await {
                tracing::warn!(error = %e, "could not give back a refused write's signature");
            }
        }
    }
    response
}

/// Refuses a key past its expiry or used for a method outside its scope (after its
/// signature verified: the caller holds the secret, so the answer may say why).
fn check_key_scope(key: &ApiKey, public_key: &str, method: &str) -> Result<(), ApiError> {
    if key.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return Err(ApiError::Forbidden(format!(
            "API key {public_key} has expired: create another with `pimage apikeys create`"
        )));
    }
    match &key.methods {
        Some(methods) if !methods.iter().any(|m| m == method) => Err(ApiError::Forbidden(format!(
            "API key {public_key} may sign only {} requests, not {method}",
            methods.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// The answer to a login whose check found no free slot in time.
fn logins_busy() -> ApiError {
    metrics::counter!(metrics_catalog::LOGIN_CHECKS_SHED).increment(1);
    ApiError::TooManyRequests {
        message: "too many logins are being checked at once: retry in a moment".into(),
        retry_after: Duration::from_secs(1),
    }
}

/// The syntax of a user login (as the `users` table enforces it).
pub fn valid_login(login: &str) -> bool {
    (1..=64).contains(&login.len())
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checked for unknown users: an argon2id hash (default parameters, like every stored one)
/// of a random password nobody kept. A constant, so that no hashing happens at start-up.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$GvRhIVe1gvIqIUm8c6gZMw$bLNXUhbuHtuLc6jCbBGBvpLEcD77Mp4WikCUO6y0RcI";

fn basic_credentials(parts: &Parts) -> Option<(String, Secret)> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (login, password) = decoded.split_once(':')?;
    Some((login.to_string(), Secret::new(password)))
}

/// The API base; the signed relative URL is what follows it.
const API_BASE: &str = "/api/";

/// A request URL signed with an API key.
#[derive(Debug, PartialEq)]
pub struct SignedUrl {
    api_key: String,
    signature: Vec<u8>,
    /// Path and query after the API base, with `apiKey`, without `signature`.
    relative_url: String,
}

impl SignedUrl {
    /// `None` when the URL carries no `apiKey` (the caller may use Basic instead).
    pub fn parse(path: &str, query: &str) -> Result<Option<SignedUrl>, ApiError> {
        let mut api_key = None;
        let mut signature = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "signature" => signature = Some(value),
                "apiKey" => {
                    api_key = Some(value);
                    kept.push(pair);
                }
                _ => kept.push(pair),
            }
        }
        let Some(api_key) = api_key else {
            return Ok(None);
        };
        let signature = signature
            .map(percent_decode)
            // A `+` sent unencoded arrives as a space in form encoding.
            .map(|s| s.replace(' ', "+"))
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or(ApiError::Unauthorized)?;
        let relative_path = path.strip_prefix(API_BASE).unwrap_or(path);
        Ok(Some(SignedUrl {
            api_key: percent_decode(api_key),
            signature,
            relative_url: format!("{relative_path}?{}", kept.join("&")),
        }))
    }

    /// What the server keeps of an accepted signature: a digest of key and signature.
    fn digest(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(b"pimage api-key signature\0")
            .chain_update(self.api_key.as_bytes())
            .chain_update([0])
            .chain_update(&self.signature)
            .finalize()
            .into()
    }

    /// Constant-time check of the signature.
    pub fn is_signed_by(&self, secret: &Secret) -> bool {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(self.relative_url.as_bytes());
        mac.verify_slice(&self.signature).is_ok()
    }
}

/// What the SDK computes: base64(HMAC-SHA1(secret key, relative URL)).
pub fn sign(secret: &str, relative_url: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(relative_url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A new API key: (public key, secret key). The secret is shown once, then kept sealed.
pub fn new_api_key() -> (String, Secret) {
    let mut public = [0u8; 16];
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut public);
    rand::thread_rng().fill_bytes(&mut secret);
    (
        hex::encode(public),
        Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_url_is_the_relative_url_with_api_key_without_signature() {
        let secret = Secret::new("s3cret");
        let relative = "users/u/pimages?img=3&apiKey=abc";
        let signature = sign(secret.expose(), relative);
        let query = format!(
            "img=3&apiKey=abc&signature={}",
            url::form_urlencoded::byte_serialize(signature.as_bytes()).collect::<String>()
        );
        let signed = SignedUrl::parse("/api/users/u/pimages", &query)
            .unwrap()
            .unwrap();
        assert_eq!(signed.relative_url, relative);
        assert_eq!(signed.api_key, "abc");
        assert!(signed.is_signed_by(&secret));
        assert!(!signed.is_signed_by(&Secret::new("other")));
        // The same signature on another URL fails.
        let moved = SignedUrl::parse("/api/users/v/pimages", &query)
            .unwrap()
            .unwrap();
        assert!(!moved.is_signed_by(&secret));
    }

    #[test]
    fn an_unencoded_plus_in_the_signature_still_verifies() {
        let secret = Secret::new("k");
        let relative = "users/a/pimages?apiKey=p";
        // Find a relative URL whose signature holds a '+'.
        let (relative, signature) = (0..200)
            .map(|i| format!("{relative}&n={i}"))
            .map(|r| {
                let s = sign(secret.expose(), &r);
                (r, s)
            })
            .find(|(_, s)| s.contains('+'))
            .expect("some signature has a +");
        let query = format!(
            "{}&signature={signature}",
            &relative["users/a/pimages?".len()..]
        );
        let signed = SignedUrl::parse("/api/users/a/pimages", &query)
            .unwrap()
            .unwrap();
        assert!(signed.is_signed_by(&secret));
    }

    #[test]
    fn no_api_key_means_basic_and_a_garbled_signature_is_refused() {
        assert_eq!(SignedUrl::parse("/api/x", "img=1").unwrap(), None);
        assert!(matches!(
            SignedUrl::parse("/api/x", "apiKey=a&signature=%%%"),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            SignedUrl::parse("/api/x", "apiKey=a"),
            Err(ApiError::Unauthorized)
        ));
    }

    #[test]
    fn the_dummy_hash_costs_what_a_stored_hash_costs() {
        let dummy = argon2::PasswordHash::new(DUMMY_HASH).unwrap();
        let stored = crate::secrets::hash_password(&Secret::new("x"));
        let stored = argon2::PasswordHash::new(&stored).unwrap();
        assert_eq!(dummy.algorithm, stored.algorithm);
        assert_eq!(dummy.params, stored.params);
        assert!(!crate::secrets::verify_password(
            &Secret::new(""),
            DUMMY_HASH
        ));
    }

    #[test]
    fn logins_follow_the_users_table_syntax() {
        assert!(valid_login("demo.user-1_x"));
        assert!(!valid_login(""));
        assert!(!valid_login("a b"));
        assert!(!valid_login("' OR 1=1 --"));
        assert!(!valid_login(&"a".repeat(65)));
    }
}
