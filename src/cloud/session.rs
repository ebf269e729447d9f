//! Keystone sessions: one token per cloud account, renewed shortly before it expires or once
//! after Glance refused it, and `Sessions`, the cache that lets one worker process's tickets
//! share them instead of each logging in with the password.
//!
//! An account is keyed by its Keystone URL, domain, project, user, glanceUrl and a salted
//! digest of its password (the salt is random per process, the password is never a key). A
//! changed password is thus a new session; a refused login is never kept. Tokens live in
//! memory only, as `Secret`s (never printed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::Instant;

use super::error::{Cause, CloudError};
use super::keystone::{log_in, Login};
use super::{AddressPolicy, Glance, OpenStackAccount};
use crate::metrics_catalog;
use crate::secrets::Secret;

/// A token is renewed this long before it expires (a fifth of its lifetime when that is
/// shorter): a call started with it must still be accepted.
const RENEW_BEFORE: Duration = Duration::from_secs(120);

/// A logged-in session on one project: the client, Glance's v2 base URL and the token.
pub(super) struct Session {
    pub(super) client: reqwest::Client,
    pub(super) base: url::Url,
    /// The catalog region of `base`, when the catalog gave it.
    pub(super) region: Option<String>,
    /// Shared with the renewal under way, which records the token it gets.
    token: Arc<Mutex<TokenState>>,
    account: OpenStackAccount,
    pub(super) policy: AddressPolicy,
}

/// The current token, and its renewal under way: tickets that meet an expired token wait
/// for the same login.
struct TokenState {
    current: Token,
    renewal: Option<Pending<Secret>>,
}

#[derive(Clone)]
struct Token {
    value: Secret,
    renew_at: Instant,
}

impl Token {
    fn from(login: &Login) -> Token {
        let margin = RENEW_BEFORE.min(login.lifetime / 5);
        Token {
            value: login.token.clone(),
            renew_at: Instant::now() + login.lifetime.saturating_sub(margin),
        }
    }
}

impl Session {
    /// Logs in (counted in the logins metric, by outcome).
    pub(super) async fn start(
        account: &OpenStackAccount,
        policy: &AddressPolicy,
    ) -> Result<Session, CloudError> {
        let login = counted(log_in(account, policy).await)?;
        Ok(Session::from_login(login, account, policy))
    }

    fn from_login(login: Login, account: &OpenStackAccount, policy: &AddressPolicy) -> Session {
        Session {
            token: Arc::new(Mutex::new(TokenState {
                current: Token::from(&login),
                renewal: None,
            })),
            client: login.client,
            base: login.glance,
            region: login.glance_region,
            account: account.clone(),
            policy: policy.clone(),
        }
    }

    fn current(&self) -> Token {
        lock(&self.token).current.clone()
    }

    fn fresh(&self) -> bool {
        Instant::now() < self.current().renew_at
    }

    /// A token to send now: the current one, or a new one if it is about to expire.
    pub(super) async fn token(&self) -> Result<Secret, CloudError> {
        let token = self.current();
        if Instant::now() < token.renew_at {
            return Ok(token.value);
        }
        self.renew(&token.value).await
    }

    /// A new token in place of `refused` (expired or revoked); when another call already
    /// renewed it, that token, without a second login. Like a first login, the renewal is
    /// shared and no lock is held while waiting: a caller that drops this future (its ticket
    /// was cancelled) leaves at once, and the renewal goes on for the others.
    pub(super) async fn renew(&self, refused: &Secret) -> Result<Secret, CloudError> {
        let renewal = {
            let mut state = lock(&self.token);
            let token = &state.current;
            if token.value != *refused && Instant::now() < token.renew_at {
                return Ok(token.value.clone());
            }
            let start = || self.start_renewal();
            state.renewal.get_or_insert_with(start).clone()
        };
        renewal.await
    }

    /// A login that records its token, or only ends when it failed (the next call tries
    /// again); either way it is no longer under way.
    fn start_renewal(&self) -> Pending<Secret> {
        let (account, policy) = (self.account.clone(), self.policy.clone());
        let state = self.token.clone();
        shared_task(async move {
            let login = counted(log_in(&account, &policy).await);
            let mut state = lock(&state);
            state.renewal = None;
            state.current = Token::from(&login?);
            Ok(state.current.value.clone())
        })
    }
}

/// Work awaited by any number of tickets, as they come and go.
type Pending<T> = Shared<BoxFuture<'static, Result<T, CloudError>>>;

/// `work` (a login: bounded by the call timeout) in a task of its own, so that no waiter's
/// cancel stops it for the others.
fn shared_task<T: Clone + Send + Sync + 'static>(
    work: impl std::future::Future<Output = Result<T, CloudError>> + Send + 'static,
) -> Pending<T> {
    let task = tokio::spawn(work);
    async move {
        task.await.unwrap_or_else(|e| {
            Err(CloudError {
                summary: "the Keystone login stopped before it ended".into(),
                detail: Some(e.to_string()),
                cause: Cause::Transport,
            })
        })
    }
    .boxed()
    .shared()
}

fn counted(login: Result<Login, CloudError>) -> Result<Login, CloudError> {
    let outcome = match &login {
        Ok(_) => "ok",
        Err(e) if e.cause == Cause::LoginRefused => "refused",
        Err(_) => "failed",
    };
    metrics::counter!(metrics_catalog::KEYSTONE_LOGINS, "outcome" => outcome).increment(1);
    login
}

/// What identifies an account's session (the password only as a salted digest).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    keystone_url: String,
    domain: String,
    project: String,
    user: String,
    glance_url: Option<String>,
    region: Option<String>,
    password_digest: [u8; 32],
}

/// What an account has: a session, or a login that tickets wait for.
enum Held {
    Ready(Arc<Session>),
    LoggingIn(Pending<Arc<Session>>),
}

type Accounts = Arc<Mutex<HashMap<Key, Held>>>;

/// The sessions of one process, by account.
#[derive(Clone)]
pub struct Sessions {
    salt: Arc<[u8; 32]>,
    accounts: Accounts,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions {
            salt: Arc::new(rand::random()),
            accounts: Arc::default(),
        }
    }
}

impl Sessions {
    fn key(&self, account: &OpenStackAccount) -> Key {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.salt[..]).expect("HMAC takes a key of any length");
        mac.update(account.password.expose().as_bytes());
        Key {
            keystone_url: account.keystone_url.clone(),
            domain: account.domain.clone(),
            project: account.project.clone(),
            user: account.user.clone(),
            glance_url: account.glance_url.clone(),
            region: account.region.clone(),
            password_digest: mac.finalize().into_bytes().into(),
        }
    }

    /// Glance as `account`: with the account's session while its token is fresh, else
    /// after a new login, shared by the account's concurrent tickets. A refused or failed
    /// login is not kept.
    ///
    /// No lock is held while waiting: a caller that drops this future (its ticket was
    /// cancelled) leaves at once, and the login, bounded by the call timeout, goes on for
    /// the others.
    pub async fn glance(
        &self,
        account: &OpenStackAccount,
        policy: &AddressPolicy,
    ) -> Result<Glance, CloudError> {
        let key = self.key(account);
        let login = {
            let mut accounts = lock(&self.accounts);
            match accounts.get(&key) {
                Some(Held::Ready(session)) if session.fresh() => {
                    metrics::counter!(metrics_catalog::KEYSTONE_SESSION_HITS).increment(1);
                    return Ok(Glance {
                        session: session.clone(),
                    });
                }
                Some(Held::LoggingIn(login)) => login.clone(),
                _ => {
                    let login = self.start_login(key.clone(), account, policy);
                    accounts.insert(key, Held::LoggingIn(login.clone()));
                    login
                }
            }
        };
        login.await.map(|session| Glance { session })
    }

    /// A shared login, which records its session, or forgets the account when it failed.
    fn start_login(
        &self,
        key: Key,
        account: &OpenStackAccount,
        policy: &AddressPolicy,
    ) -> Pending<Arc<Session>> {
        let (account, policy, accounts) = (account.clone(), policy.clone(), self.accounts.clone());
        shared_task(async move {
            let started = Session::start(&account, &policy).await.map(Arc::new);
            let mut held = lock(&accounts);
            match &started {
                Ok(session) => held.insert(key, Held::Ready(session.clone())),
                Err(_) => held.remove(&key),
            };
            forget_stale(&mut held);
            started
        })
    }

    /// Accounts with a session kept or a login under way (tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.accounts).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the sessions due for renewal (a call that still holds one renews it itself).
fn forget_stale(accounts: &mut HashMap<Key, Held>) {
    accounts.retain(|_, held| match held {
        Held::Ready(session) => session.fresh(),
        Held::LoggingIn(_) => true,
    });
}

impl From<Session> for Glance {
    fn from(session: Session) -> Glance {
        Glance {
            session: Arc::new(session),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(password: &str) -> OpenStackAccount {
        OpenStackAccount {
            keystone_url: "http://k:5000/v3".into(),
            glance_url: None,
            region: None,
            user: "u".into(),
            password: Secret::new(password),
            domain: "Default".into(),
            project: "p".into(),
        }
    }

    #[test]
    fn a_changed_password_is_another_account_and_no_key_holds_the_password() {
        let sessions = Sessions::default();
        let (a, b) = (sessions.key(&account("one")), sessions.key(&account("two")));
        assert!(a == sessions.key(&account("one")));
        assert!(a != b);
        assert!(!a.password_digest.windows(3).any(|w| w == b"one"));
        // Another process (another salt) derives another digest from the same password.
        assert!(Sessions::default().key(&account("one")).password_digest != a.password_digest);
    }

    #[test]
    fn a_token_is_renewed_a_fifth_of_its_lifetime_early_at_most_two_minutes() {
        let login = |secs| Login {
            client: reqwest::Client::new(),
            token: Secret::new("t"),
            glance: url::Url::parse("http://g/v2/").unwrap(),
            glance_region: None,
            lifetime: Duration::from_secs(secs),
        };
        let early = |secs| {
            // Built first: a client's TLS setup took over 0.5 s on a loaded machine.
            let login = login(secs);
            let now = Instant::now();
            (now + Duration::from_secs(secs)) - Token::from(&login).renew_at
        };
        let close = |d: Duration, want: u64| d.as_secs_f64().round() as u64 == want;
        assert!(close(early(3600), 120));
        assert!(close(early(20), 4));
    }

    /// A HOSTILE Keystone of the test's own (no real one does this): it accepts every
    /// connection and never answers. Returns its URL and the count of connections.
    async fn silent_keystone() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn tickets_of_one_account_share_one_login_bounded_by_the_call_timeout() {
        let (url, accepted) = silent_keystone().await;
        let policy = AddressPolicy::from(crate::config::CloudSettings {
            allow_loopback: true,
            call_timeout: std::time::Duration::from_millis(1000),
            ..Default::default()
        });
        let mut silent = account("pw");
        silent.keystone_url = url;
        let sessions = Sessions::default();
        let started = Instant::now();
        // One waiter leaves early (its ticket was cancelled): the login goes on for the rest.
        let leaving = tokio::time::timeout(
            Duration::from_millis(100),
            sessions.glance(&silent, &policy),
        );
        let staying = futures::future::join_all((0..3).map(|_| sessions.glance(&silent, &policy)));
        let (left, results) = tokio::join!(leaving, staying);
        assert!(
            left.is_err(),
            "the cancelled waiter left before the login ended"
        );
        for result in results {
            let e = result.err().expect("a silent Keystone gives no session");
            assert_eq!(e.cause, Cause::Bound, "{}", e.summary);
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one login"
        );
        // One call timeout (and a client's setup), not one per waiter.
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2500), "{took:?}");
        assert!(sessions.is_empty(), "a failed login is not kept");
    }

    #[tokio::test]
    async fn tickets_renewing_one_token_share_one_login_and_a_cancelled_one_leaves_at_once() {
        let (url, accepted) = silent_keystone().await;
        let policy = AddressPolicy::from(crate::config::CloudSettings {
            allow_loopback: true,
            call_timeout: std::time::Duration::from_millis(1000),
            ..Default::default()
        });
        let mut silent = account("pw");
        silent.keystone_url = url;
        // A session whose token is due for renewal now (a lifetime of zero).
        let expired = Login {
            client: reqwest::Client::new(),
            token: Secret::new("expired"),
            glance: url::Url::parse("http://g/v2/").unwrap(),
            glance_region: None,
            lifetime: Duration::ZERO,
        };
        let session = Session::from_login(expired, &silent, &policy);
        let cancel = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        // The first waiter starts the renewal, then its ticket is cancelled (as
        // `unless_cancelled` races it): it leaves, and the renewal goes on for the rest.
        let leaving = async {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Instant::now(),
                _ = session.token() => panic!("a silent Keystone gave a token"),
            }
        };
        let cancelling = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
            Instant::now()
        };
        let staying = futures::future::join_all((0..3).map(|_| session.token()));
        let ((left_at, cancelled_at), results) =
            tokio::join!(futures::future::join(leaving, cancelling), staying);
        let late = left_at - cancelled_at;
        assert!(
            late < Duration::from_millis(50),
            "left {late:?} after its cancel"
        );
        for result in results {
            let e = result.expect_err("a silent Keystone gives no token");
            assert_eq!(e.cause, Cause::Bound, "{}", e.summary);
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one login"
        );
        // One call timeout, not one per waiter.
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2500), "{took:?}");
        assert!(
            lock(&session.token).renewal.is_none(),
            "a failed renewal is not kept"
        );
    }
}
