//! Postgres: the source of truth for users, images and tickets. Every SQL statement of the
//! project lives in this module's files.

pub mod cancel;
pub mod claims;
pub mod cleanups;
pub mod images;
pub mod login_lock;
pub mod outbox;
pub mod rescue;
pub mod sealed;
pub mod tickets;
pub mod users;

use std::time::Duration;

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
