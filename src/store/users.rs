//! Users, their entitlements and credentials (API keys).

use sqlx::PgPool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub login: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub entitlements: Vec<String>,
}

impl User {
    pub fn has_entitlement(&self, name: &str) -> bool {
        self.entitlements.iter().any(|e| e == name)
    }
}

/// Columns of `User`; callers add their joins and WHERE clause.
const USER_SELECT: &str = "SELECT u.id, u.login, u.password_hash, u.is_admin,
        COALESCE(array_agg(e.entitlement) FILTER (WHERE e.entitlement IS NOT NULL), '{}') AS entitlements
   FROM users u LEFT JOIN user_entitlements e ON e.user_id = u.id";

pub async fn find_by_login(pool: &PgPool, login: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(&format!("{USER_SELECT} WHERE u.login = $1 GROUP BY u.id"))
        .bind(login)
        .fetch_optional(pool)
        .await
}

/// The owner of an API key, and the key's sealed secret.
pub async fn find_by_api_key(
    pool: &PgPool,
    public_key: &str,
) -> Result<Option<(User, Vec<u8>)>, sqlx::Error> {
    let Some((user_id, secret_enc)) = sqlx::query_as::<_, (i64, Vec<u8>)>(
        "SELECT user_id, secret_enc FROM api_keys WHERE public_key = $1",
    )
    .bind(public_key)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let user = sqlx::query_as::<_, User>(&format!("{USER_SELECT} WHERE u.id = $1 GROUP BY u.id"))
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok(Some((user, secret_enc)))
}

pub async fn add_api_key(
    pool: &PgPool,
    user_id: i64,
    public_key: &str,
    secret_enc: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO api_keys (user_id, public_key, secret_enc) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(public_key)
        .bind(secret_enc)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes an API key; false if there was none.
pub async fn revoke_api_key(pool: &PgPool, public_key: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM api_keys WHERE public_key = $1")
        .bind(public_key)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The public keys of a user's API keys, oldest first.
pub async fn list_api_keys(
    pool: &PgPool,
    user_id: i64,
) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT public_key, created_at FROM api_keys WHERE user_id = $1 ORDER BY id")
        .bind(user_id)
        .fetch_all(pool)
        .await
}

/// Postgres NOTIFY channel naming a user whose password, flag or entitlements changed: API
/// processes forget what they remembered of it.
pub const USER_CHANGED_CHANNEL: &str = "pimage_user_changed";

/// Creates a user, or replaces the password, flag and entitlements of an existing one.
pub async fn upsert(
    pool: &PgPool,
    login: &str,
    password_hash: &str,
    is_admin: bool,
    entitlements: &[String],
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (login, password_hash, is_admin) VALUES ($1, $2, $3)
         ON CONFLICT (login) DO UPDATE SET password_hash = EXCLUDED.password_hash, is_admin = EXCLUDED.is_admin
         RETURNING id",
    )
    .bind(login)
    .bind(password_hash)
    .bind(is_admin)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM user_entitlements WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO user_entitlements (user_id, entitlement) SELECT $1, unnest($2::text[])",
    )
    .bind(id)
    .bind(entitlements)
    .execute(&mut *tx)
    .await?;
    // Delivered at commit.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(USER_CHANGED_CHANNEL)
        .bind(login)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}
