//! Postgres: the source of truth for users, images and tickets. Every SQL statement of the
//! project lives in this module's files.

pub mod accounts;
pub mod attempts;
pub mod cancel;
pub mod claims;
pub mod cleanups;
pub mod console;
pub mod events;
pub mod groups;
pub mod idempotency;
pub mod images;
pub mod login_lock;
pub mod outbox;
pub mod rescue;
pub mod retention;
pub mod sealed;
pub mod tickets;
pub mod users;
pub mod workers;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::DatabaseSettings;
use crate::retry::Backoff;

pub use images::{Image, NewImage};
pub use tickets::{NewTicket, Ticket, TicketState};
pub use users::User;

/// Embedded migrations from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool without connecting yet: callers fail on first use, not at start-up.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it hands out by default: a round trip before each
        // query. Only a connection idle for a while is checked, where a restart of PostgreSQL
        // leaves dead ones unnoticed; a busy one that died fails its query like any other.
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_AFTER {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// A pooled connection idle this long is pinged before it is handed out.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Connects and applies pending migrations.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = connect_lazy(settings)?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Connects for an admin command, which never migrates: a command run with another
/// database in its environment must not change that database's schema. Refuses a database
/// whose schema is not this pimage's, saying which database and what to run.
pub async fn connect_current(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings.url.expose().parse()?;
    let database = format!(
        "'{}' at {}:{}",
        options.get_database().unwrap_or("postgres"),
        options.get_host(),
        options.get_port()
    );
    let pool = connect_lazy(settings)?;
    match migrations_missing(&pool).await? {
        None => anyhow::bail!(
            "the database {database} has no pimage schema: is PIMAGE__DATABASE__URL the right \
             database? If it is, run `pimage migrate` first"
        ),
        Some(0) => Ok(pool),
        Some(n) => anyhow::bail!(
            "the database {database} lacks {n} of this pimage's migrations: run `pimage migrate` \
             (the API and workers also apply them as they start)"
        ),
    }
}

/// How many of this binary's migrations the database lacks; `None` when it has no
/// migrations table at all (not a pimage database, or a new one).
pub async fn migrations_missing(pool: &PgPool) -> Result<Option<usize>, sqlx::Error> {
    let exists =
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(None);
    }
    let applied = sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await?;
    Ok(Some(
        MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count(),
    ))
}

/// `connect_and_migrate` for the long-running processes: while PostgreSQL cannot be
/// reached (down, not yet listening), is starting up, or has no connection slot free (too
/// many clients), waits with backoff, saying what it waits for (`worth_waiting_for`). Other
/// errors (wrong password, unknown database) fail at once.
pub async fn connect_waiting(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings.url.expose().parse()?;
    let address = format!("{}:{}", options.get_host(), options.get_port());
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut delays = backoff.delays();
    let mut connection = loop {
        // A connection of its own, not the pool's: the pool retries "too many clients" and
        // "starting up" itself and then says only that it timed out.
        let error =
            match tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect_with(&options)).await {
                Ok(Ok(connection)) => break connection,
                Ok(Err(e)) => e,
                Err(_) => sqlx::Error::PoolTimedOut,
            };
        let Some(reason) = worth_waiting_for(&error) else {
            return Err(error.into());
        };
        let delay = delays.next().unwrap_or(backoff.cap());
        tracing::warn!(
            "waiting for PostgreSQL at {address}: {reason}; next try in {} s",
            delay.as_secs_f64().ceil()
        );
        tokio::time::sleep(delay).await;
    };
    tracing::info!("connected to PostgreSQL at {address}");
    // On the connection just won: a new pool's first connection could find every slot taken
    // again in between, and fail the start after only the pool's acquire timeout.
    MIGRATOR.run_direct(&mut connection).await?;
    // Closing politely is a courtesy; the server copes if it fails.
    let _ = connection.close().await;
    Ok(connect_lazy(settings)?)
}

/// How long one connection try may take before it counts as "no answer".
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLSTATE of a server with no connection slot free.
const TOO_MANY_CONNECTIONS: &str = "53300";
/// SQLSTATE of a server still starting up or shutting down.
const CANNOT_CONNECT_NOW: &str = "57P03";

/// What a failed connection waits for, or `None` when waiting cannot help (wrong password,
/// unknown database, bad TLS).
fn worth_waiting_for(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Io(e) => Some(format!("not reachable ({e})")),
        sqlx::Error::PoolTimedOut => Some("no answer".to_string()),
        sqlx::Error::Database(e) => match e.code().as_deref() {
            Some(TOO_MANY_CONNECTIONS) => Some(format!("a free connection slot ({})", e.message())),
            Some(CANNOT_CONNECT_NOW) => Some(format!(
                "the server to accept connections ({})",
                e.message()
            )),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A server's error as sqlx reports it: a message and a SQLSTATE.
    #[derive(Debug)]
    struct ServerSaid(&'static str, &'static str);

    impl std::fmt::Display for ServerSaid {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl std::error::Error for ServerSaid {}

    impl sqlx::error::DatabaseError for ServerSaid {
        fn message(&self) -> &str {
            self.1
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str, message: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ServerSaid(code, message)))
    }

    #[test]
    fn waits_while_the_server_is_unreachable_busy_or_starting() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let reason = |e| worth_waiting_for(&e).expect("waits");
        assert!(reason(sqlx::Error::Io(refused)).starts_with("not reachable ("));
        assert_eq!(reason(sqlx::Error::PoolTimedOut), "no answer");
        assert_eq!(
            reason(server("53300", "sorry, too many clients already")),
            "a free connection slot (sorry, too many clients already)"
        );
        assert_eq!(
            reason(server("57P03", "the database system is starting up")),
            "the server to accept connections (the database system is starting up)"
        );
    }

    #[test]
    fn fails_at_once_when_waiting_cannot_help() {
        let wrong_password = server("28P01", "password authentication failed for user \"x\"");
        assert_eq!(worth_waiting_for(&wrong_password), None);
        assert_eq!(
            worth_waiting_for(&server("3D000", "database \"x\" does not exist")),
            None
        );
        assert_eq!(worth_waiting_for(&sqlx::Error::RowNotFound), None);
    }
}
