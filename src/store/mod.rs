//! Postgres: the source of truth for users, images and tickets. Every SQL statement of the
//! project lives in this module's files.

pub mod attempts;
pub mod cancel;
pub mod claims;
pub mod cleanups;
pub mod console;
pub mod events;
pub mod images;
pub mod login_lock;
pub mod outbox;
pub mod rescue;
pub mod sealed;
pub mod tickets;
pub mod users;
pub mod workers;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

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
        .connect_lazy_with(options))
}

/// Connects and applies pending migrations.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = connect_lazy(settings)?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// `connect_and_migrate` for the long-running processes: while PostgreSQL cannot be
/// reached (down, starting, not yet listening) waits with backoff, saying what it waits
/// for. Other errors (wrong password, unknown database) fail at once.
pub async fn connect_waiting(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings.url.expose().parse()?;
    let address = format!("{}:{}", options.get_host(), options.get_port());
    let pool = connect_lazy(settings)?;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build();
    loop {
        let error = match pool.acquire().await {
            Ok(_) => break,
            Err(sqlx::Error::Io(e)) => e.to_string(),
            Err(sqlx::Error::PoolTimedOut) => "no answer".to_string(),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(CANNOT_CONNECT_NOW) => {
                e.message().to_string()
            }
            Err(e) => return Err(e.into()),
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tracing::warn!(
            "waiting for PostgreSQL at {address}: {error}; next try in {} s",
            delay.as_secs_f64().ceil()
        );
        tokio::time::sleep(delay).await;
    }
    tracing::info!("connected to PostgreSQL at {address}");
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// SQLSTATE of a server still starting up or shutting down.
const CANNOT_CONNECT_NOW: &str = "57P03";
