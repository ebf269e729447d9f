//! The failed-login lock: per login name (known user or not), a window of `window` in which
//! at most `limit` password checks may fail; the check that uses up the last one locks the
//! name for `window`. Attempts are reserved before the password is checked, in one statement,
//! so concurrent requests cannot run more checks than the limit allows; only failed checks
//! keep theirs, so only failures lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The outcome of asking to check a password for a login name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attempt {
    /// One attempt of the window starting then is held: end it with `release_attempt`
    /// (the password was right, or not checked) or `record_failure`.
    Reserved { window_started_at: DateTime<Utc> },
    /// The name is locked (its checks failed), for this long.
    Locked(Duration),
    /// The window's attempts are all taken by checks still running: ask again once one ends
    /// (a right password gives its attempt back).
    InFlight,
}

/// How long `login` stays locked; `None` if it is not locked.
pub async fn lock_left(pool: &PgPool, login: &str) -> Result<Option<Duration>, sqlx::Error> {
    let seconds = sqlx::query_scalar!(
        r#"SELECT EXTRACT(EPOCH FROM locked_until - now())::float8 AS "seconds!"
             FROM login_failures WHERE login = $1 AND locked_until > now()"#,
        login
    )
    .fetch_optional(pool)
    .await?;
    Ok(seconds.map(seconds_to_duration))
}

/// Reserves one attempt in the current window, unless the name is locked or `limit`
/// attempts of the window are already used (failed, or being checked).
pub async fn reserve_attempt(
    pool: &PgPool,
    login: &str,
    limit: i32,
    window: Duration,
) -> Result<Attempt, sqlx::Error> {
    // The row is locked by ON CONFLICT, and the WHERE sees its latest version: concurrent
    // reservations are serialised. A window that ended (and is not locked) starts again.
    let reserved = sqlx::query_scalar!(
        r#"INSERT INTO login_failures AS f (login, failures, window_started_at)
           VALUES ($1, 1, now())
           ON CONFLICT (login) DO UPDATE SET
               failures = CASE WHEN f.window_started_at < now() - make_interval(secs => $3)
                               THEN 1 ELSE f.failures + 1 END,
               window_started_at = CASE WHEN f.window_started_at < now() - make_interval(secs => $3)
                                        THEN now() ELSE f.window_started_at END,
               locked_until = NULL
           WHERE (f.locked_until IS NULL OR f.locked_until <= now())
             AND (f.failures < $2 OR f.window_started_at < now() - make_interval(secs => $3))
           RETURNING window_started_at"#,
        login,
        limit,
        window.as_secs_f64()
    )
    .fetch_optional(pool)
    .await?;
    if let Some(window_started_at) = reserved {
        return Ok(Attempt::Reserved { window_started_at });
    }
    Ok(match lock_left(pool, login).await? {
        Some(left) => Attempt::Locked(left),
        None => Attempt::InFlight,
    })
}

/// Gives back an attempt that did not fail: the password was right, or it was not checked.
/// Other attempts, failed or running, still count: a success does not lift a lock.
pub async fn release_attempt(
    pool: &PgPool,
    login: &str,
    window_started_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE login_failures SET failures = GREATEST(failures - 1, 0)
          WHERE login = $1 AND window_started_at = $2",
        login,
        window_started_at
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps a reserved attempt as a failure; once `limit` attempts of the window are used, the
/// name is locked for `window`. Returns how long it is locked, if it is.
pub async fn record_failure(
    pool: &PgPool,
    login: &str,
    limit: i32,
    window: Duration,
) -> Result<Option<Duration>, sqlx::Error> {
    // A lock is announced like a user change, so that every API process forgets the
    // passwords it remembered for that name: the lock then holds for them too, with no
    // database read per remembered login.
    let seconds = sqlx::query_scalar!(
        r#"WITH locked AS (
               UPDATE login_failures SET locked_until = CASE
                   WHEN locked_until > now() THEN locked_until
                   ELSE now() + make_interval(secs => $3) END
                WHERE login = $1 AND failures >= $2
            RETURNING login, locked_until),
           announced AS (SELECT pg_notify($4, login) FROM locked)
           SELECT EXTRACT(EPOCH FROM locked_until - now())::float8 AS "seconds!"
             FROM locked, announced"#,
        login,
        limit,
        window.as_secs_f64(),
        super::users::USER_CHANGED_CHANNEL
    )
    .fetch_optional(pool)
    .await?;
    Ok(seconds.map(seconds_to_duration))
}

/// Forgets failure windows that ended long ago (logins typed once, never again).
pub async fn purge_stale(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM login_failures
          WHERE window_started_at < now() - make_interval(secs => $1)
            AND (locked_until IS NULL OR locked_until < now())",
        older_than.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

fn seconds_to_duration(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}
