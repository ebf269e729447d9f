//! Cloud accounts stored per user (`…/users/{uid}/accounts`): created once checked, read
//! without their sealed password by the API, named by a publish, deleted unless a queued or
//! running ticket uses one.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A stored account. `cloud_password_enc` is sealed (`SecretBox`); answers never carry it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CloudAccount {
    pub id: i64,
    pub owner_login: String,
    pub name: String,
    pub platform: String,
    pub keystone_url: String,
    pub keystone_version: String,
    pub glance_url: Option<String>,
    pub cloud_login: String,
    pub cloud_password_enc: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CloudAccount {
    pub fn uri(&self) -> String {
        format!("users/{}/accounts/{}", self.owner_login, self.id)
    }
}

/// Expands to a compile-time checked `query_as!` of `CloudAccount` rows: `$clause` (WHERE …
/// ORDER BY … on `a` and its owner `u`) and the arguments.
macro_rules! select_accounts {
    ($clause:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            CloudAccount,
            r#"SELECT a.id, u.login AS owner_login, a.name, a.platform, a.keystone_url,
                      a.keystone_version, a.glance_url, a.cloud_login, a.cloud_password_enc,
                      a.created_at, a.updated_at
                 FROM cloud_accounts a JOIN users u ON u.id = a.user_id "#
                + $clause
            $(, $arg)*
        )
    };
}

pub struct NewAccount<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub keystone_url: &'a str,
    pub keystone_version: &'a str,
    pub glance_url: Option<&'a str>,
    pub cloud_login: &'a str,
    pub cloud_password_enc: &'a [u8],
}

/// What `create` did.
pub enum Created {
    Created(Box<CloudAccount>),
    /// The user already has an account of that name: nothing was stored.
    NameTaken,
}

/// Stores an account, unless its owner has one of that name already. One transaction: the
/// account read back is the one stored, even if it is deleted the next moment.
pub async fn create(pool: &PgPool, new: &NewAccount<'_>) -> Result<Created, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = sqlx::query_scalar!(
        "INSERT INTO cloud_accounts (user_id, name, keystone_url, keystone_version, glance_url,
                                     cloud_login, cloud_password_enc)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (user_id, name) DO NOTHING
         RETURNING id",
        new.user_id,
        new.name,
        new.keystone_url,
        new.keystone_version,
        new.glance_url,
        new.cloud_login,
        new.cloud_password_enc,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Ok(Created::NameTaken);
    };
    let account = select_accounts!("WHERE a.id = $1", id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Created::Created(Box::new(account)))
}

/// The accounts of the user `owner_login`, by name.
pub async fn list_of_user(
    pool: &PgPool,
    owner_login: &str,
) -> Result<Vec<CloudAccount>, sqlx::Error> {
    select_accounts!("WHERE u.login = $1 ORDER BY a.name, a.id", owner_login)
        .fetch_all(pool)
        .await
}

/// Every account, or one user's, by owner then name (`pimage accounts list`, the console).
pub async fn list_all(
    pool: &PgPool,
    owner_login: Option<&str>,
) -> Result<Vec<CloudAccount>, sqlx::Error> {
    select_accounts!(
        "WHERE ($1::text IS NULL OR u.login = $1) ORDER BY u.login, a.name, a.id",
        owner_login
    )
    .fetch_all(pool)
    .await
}

/// The account `id` if `owner_login` owns it.
pub async fn find_of_user(
    pool: &PgPool,
    owner_login: &str,
    id: i64,
) -> Result<Option<CloudAccount>, sqlx::Error> {
    select_accounts!("WHERE u.login = $1 AND a.id = $2", owner_login, id)
        .fetch_optional(pool)
        .await
}

/// The account of `owner_login` named `name`.
pub async fn find_by_name(
    pool: &PgPool,
    owner_login: &str,
    name: &str,
) -> Result<Option<CloudAccount>, sqlx::Error> {
    select_accounts!("WHERE u.login = $1 AND a.name = $2", owner_login, name)
        .fetch_optional(pool)
        .await
}

/// What `delete` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    NotFound,
    /// Kept: this many queued or running tickets publish with it.
    InUse(i64),
}

/// Deletes the account `id` of `owner_login`, unless a queued or running ticket uses it. The
/// row is locked first: a ticket filed meanwhile waits on it (its foreign key), then fails.
pub async fn delete(pool: &PgPool, owner_login: &str, id: i64) -> Result<Deleted, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query_scalar!(
        "SELECT a.id FROM cloud_accounts a JOIN users u ON u.id = a.user_id
          WHERE u.login = $1 AND a.id = $2 FOR UPDATE OF a",
        owner_login,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Ok(Deleted::NotFound);
    }
    let in_use = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM publish_tickets
            WHERE cloud_account_id = $1 AND state IN ('queued', 'running')"#,
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    if in_use > 0 {
        return Ok(Deleted::InUse(in_use));
    }
    sqlx::query!("DELETE FROM cloud_accounts WHERE id = $1", id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Deleted::Deleted)
}
