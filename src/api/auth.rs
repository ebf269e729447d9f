//! Who is calling, and what they may reach.
//!
//! Two ways in, as the UForge SDK sends them:
//! - HTTP Basic, checked against argon2id hashes. The check is slow on purpose, so it runs on
//!   the blocking pool, one per core at most, in argon2 memory allocated once and reused
//!   (`PasswordChecker`), so a login flood neither grows the process nor queues without end.
//!   A user whose credential passed is remembered for a short while (keyed by a salted
//!   digest, never the password) so a client polling a status pays neither argon2 nor a user
//!   lookup every time. A change to the user (NOTIFY from `users::upsert`) forgets it at once,
//!   in every API process. Failed logins count per login name, known or not
//!   (`store::login_lock`): each check reserves an attempt first, and past the limit the name
//!   is locked (429), remembered passwords included.
//! - API keys: `?apiKey=<public>&signature=<base64(HMAC-SHA1(secret, relative URL))>`.
//!
//! Unknown user, wrong password, unknown key and bad signature all get the same 401.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::AppState;
use crate::config::ApiSettings;
use crate::metrics_catalog;
use crate::secrets::{PasswordChecker, Secret, SecretBox};
use crate::store::login_lock::{self, Attempt};
use crate::store::{users, User};

/// The entitlement every publish route needs.
pub const PUBLISH_ENTITLEMENT: &str = "migration_publish";

/// Remembered credentials at most; past it the memory is cleared (and refilled by use).
const MAX_REMEMBERED: usize = 10_000;

/// How long a password check may wait for a free slot before the client is asked to retry
/// (429): under a login flood, answers stay prompt instead of queueing without end.
const PASSWORD_CHECK_WAIT: Duration = Duration::from_millis(500);

/// An authenticated caller, and whether the `{uid}` of the path names no user (looked up
/// only when an administrator reaches another user's resources).
pub struct Caller(pub User, bool);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let user = match SignedUrl::parse(parts.uri.path(), parts.uri.query().unwrap_or(""))? {
            Some(signed) => state.auth.by_api_key(&signed).await?,
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
}

impl Caller {
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
            lockout: Duration::from_secs(settings.login_lockout_secs.max(1)),
            remember_for: Duration::from_secs(settings.credential_cache_secs),
            remembered: Mutex::new(HashMap::new()),
            watching: AtomicBool::new(false),
            salt,
            // One core is left to serving (and to Postgres, often on the same machine), so
            // that answers not needing argon2 stay prompt during a login flood.
            passwords: PasswordChecker::new(cores.saturating_sub(1).max(1)),
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
        let window_started_at =
            match login_lock::reserve_attempt(&self.pool, &login, self.max_failures, self.lockout)
                .await?
            {
                Attempt::Reserved { window_started_at } => window_started_at,
                Attempt::Refused(left) => return Err(ApiError::too_many_logins(&login, left)),
            };
        let checked = self.check_password(&login, password).await;
        match checked {
            Ok(Some(user)) => {
                login_lock::release_attempt(&self.pool, &login, window_started_at).await?;
                self.remember(memory_key, user.clone());
                Ok(user)
            }
            Ok(None) => {
                metrics::counter!(metrics_catalog::LOGIN_FAILURES).increment(1);
                if let Some(left) =
                    login_lock::record_failure(&self.pool, &login, self.max_failures, self.lockout)
                        .await?
                {
                    tracing::warn!(login, "too many failed logins: login locked");
                    // This process forgets at once; the others when they hear the notice.
                    self.forget_user(Some(&login));
                    return Err(ApiError::too_many_logins(&login, left));
                }
                Err(ApiError::Unauthorized)
            }
            // Not checked (busy, or no database): the attempt is not a failure.
            Err(e) => {
                login_lock::release_attempt(&self.pool, &login, window_started_at).await?;
                Err(e)
            }
        }
    }

    /// The user `login` names if `password` is theirs; `None` otherwise, after the same work
    /// for unknown users (a dummy hash), so that timing does not reveal them.
    async fn check_password(
        &self,
        login: &str,
        password: Secret,
    ) -> Result<Option<User>, ApiError> {
        let user = users::find_by_login(&self.pool, login).await?;
        let hash = user
            .as_ref()
            .map_or(DUMMY_HASH, |u| u.password_hash.as_str())
            .to_string();
        match self
            .passwords
            .check(password, hash, PASSWORD_CHECK_WAIT)
            .await
            .map_err(ApiError::Internal)?
        {
            Some(true) => Ok(user),
            Some(false) => Ok(None),
            None => {
                metrics::counter!(metrics_catalog::LOGIN_CHECKS_SHED).increment(1);
                Err(ApiError::TooManyRequests {
                    message: "too many logins are being checked at once: retry in a moment".into(),
                    retry_after: Duration::from_secs(1),
                })
            }
        }
    }

    async fn by_api_key(&self, signed: &SignedUrl) -> Result<User, ApiError> {
        let Some((user, secret_enc)) = users::find_by_api_key(&self.pool, &signed.api_key).await?
        else {
            return Err(ApiError::Unauthorized);
        };
        let secret = self
            .secrets
            .open(&secret_enc)
            .map_err(|e| ApiError::Internal(e.into()))?;
        if signed.is_signed_by(&secret) {
            Ok(user)
        } else {
            Err(ApiError::Unauthorized)
        }
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

    /// Hears user changes until `shutdown`, forgetting what was remembered of each changed
    /// user. While not listening (connecting, or after an error: notices may have been
    /// missed), memory is cleared and remembered users are checked against the database.
    pub async fn watch_user_changes(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let heard = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(users::USER_CHANGED_CHANNEL).await?;
                self.forget_user(None);
                self.watching.store(true, Ordering::Release);
                loop {
                    let notice = listener.recv().await?;
                    self.forget_user(Some(notice.payload()));
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                result = heard => {
                    self.watching.store(false, Ordering::Release);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "user-change listener lost Postgres; reconnecting");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        }
        self.watching.store(false, Ordering::Release);
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
