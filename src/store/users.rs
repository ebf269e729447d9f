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

/// Expands to a compile-time checked `query_as!` of `User` rows (with their entitlements):
/// `$clause` (WHERE on `u`, then GROUP BY u.id) and the arguments.
macro_rules! select_users {
    ($clause:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            User,
            r#"SELECT u.id, u.login, u.password_hash, u.is_admin,
                      COALESCE(array_agg(e.entitlement) FILTER (WHERE e.entitlement IS NOT NULL), '{}')
                          AS "entitlements!"
                 FROM users u LEFT JOIN user_entitlements e ON e.user_id = u.id "#
                + $clause
            $(, $arg)*
        )
    };
}

pub async fn find_by_login(pool: &PgPool, login: &str) -> Result<Option<User>, sqlx::Error> {
    select_users!("WHERE u.login = $1 GROUP BY u.id", login)
        .fetch_optional(pool)
        .await
}

/// The users of `logins` that exist (any order).
pub async fn find_by_logins(pool: &PgPool, logins: &[String]) -> Result<Vec<User>, sqlx::Error> {
    select_users!("WHERE u.login = ANY($1) GROUP BY u.id", logins)
        .fetch_all(pool)
        .await
}

/// An API key as the API checks it.
pub struct ApiKey {
    pub id: i64,
    pub owner: User,
    pub secret_enc: Vec<u8>,
    /// The methods it may sign; `None`: every method.
    pub methods: Option<Vec<String>>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An API key with its owner, scope and expiry.
pub async fn find_by_api_key(
    pool: &PgPool,
    public_key: &str,
) -> Result<Option<ApiKey>, sqlx::Error> {
    let Some(key) = sqlx::query!(
        "SELECT id, user_id, secret_enc, methods, expires_at FROM api_keys WHERE public_key = $1",
        public_key
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let owner = select_users!("WHERE u.id = $1 GROUP BY u.id", key.user_id)
        .fetch_one(pool)
        .await?;
    Ok(Some(ApiKey {
        id: key.id,
        owner,
        secret_enc: key.secret_enc,
        methods: key.methods,
        expires_at: key.expires_at,
    }))
}

pub async fn add_api_key(
    pool: &PgPool,
    user_id: i64,
    public_key: &str,
    secret_enc: &[u8],
) -> Result<(), sqlx::Error> {
    add_scoped_api_key(pool, user_id, public_key, secret_enc, None, None).await
}

/// Adds an API key that may sign only `methods` (`None`: all), until `expires_at` (if set).
pub async fn add_scoped_api_key(
    pool: &PgPool,
    user_id: i64,
    public_key: &str,
    secret_enc: &[u8],
    methods: Option<&[String]>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO api_keys (user_id, public_key, secret_enc, methods, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
        user_id,
        public_key,
        secret_enc,
        methods,
        expires_at
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes an API key; false if there was none.
pub async fn revoke_api_key(pool: &PgPool, public_key: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!("DELETE FROM api_keys WHERE public_key = $1", public_key)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The public keys of a user's API keys, oldest first, with their creation, methods (`None`:
/// all) and expiry.
pub async fn list_api_keys(pool: &PgPool, user_id: i64) -> Result<Vec<ApiKeyListed>, sqlx::Error> {
    sqlx::query_as!(
        ApiKeyListed,
        "SELECT public_key, created_at, methods, expires_at FROM api_keys
          WHERE user_id = $1 ORDER BY id",
        user_id
    )
    .fetch_all(pool)
    .await
}

/// What `pimage apikeys list` shows of a key (never its secret).
pub struct ApiKeyListed {
    pub public_key: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub methods: Option<Vec<String>>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Records that a signature (by `digest`) of key `api_key_id` was accepted with `method`;
/// returns the method it is bound to, and whether this call created the binding. A binding
/// never changes method: it lives as long as its key (deleted with it, or once it expired).
pub async fn bind_signature(
    pool: &PgPool,
    api_key_id: i64,
    digest: &[u8],
    method: &str,
) -> Result<SignatureBinding, sqlx::Error> {
    // ON CONFLICT locks the row: concurrent first uses of one signature are serialised, and
    // exactly one of them creates it.
    sqlx::query_as!(
        SignatureBinding,
        r#"INSERT INTO api_key_signatures AS s (digest, method, api_key_id) VALUES ($1, $2, $3)
           ON CONFLICT (digest) DO UPDATE SET reused = true
           RETURNING method, NOT reused AS "created!""#,
        digest,
        method,
        api_key_id
    )
    .fetch_one(pool)
    .await
}

/// The method a signature is bound to, and whether this request created the binding.
pub struct SignatureBinding {
    pub method: String,
    pub created: bool,
}

/// Gives back a write's signature whose request was refused, so that the client may retry
/// it. Only the request that created the binding calls this.
pub async fn release_signature(pool: &PgPool, digest: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM api_key_signatures WHERE digest = $1", digest)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets the signature bindings of expired keys (a revoked key's go with it): no signature
/// of theirs is accepted any more.
pub async fn purge_signatures(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM api_key_signatures s USING api_keys k
          WHERE s.api_key_id = k.id AND k.expires_at <= now()"
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
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
    let id = sqlx::query_scalar!(
        "INSERT INTO users (login, password_hash, is_admin) VALUES ($1, $2, $3)
         ON CONFLICT (login) DO UPDATE SET password_hash = EXCLUDED.password_hash, is_admin = EXCLUDED.is_admin
         RETURNING id",
        login,
        password_hash,
        is_admin
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM user_entitlements WHERE user_id = $1", id)
        .execute(&mut *tx)
        .await?;
    // A new password ends the user's console sessions: a stolen cookie dies with the old one.
    sqlx::query!("DELETE FROM console_sessions WHERE user_id = $1", id)
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "INSERT INTO user_entitlements (user_id, entitlement) SELECT $1, unnest($2::text[])",
        id,
        entitlements
    )
    .execute(&mut *tx)
    .await?;
    // Delivered at commit.
    sqlx::query!(
        r#"SELECT pg_notify($1, $2) AS "notified: ()""#,
        USER_CHANGED_CHANNEL,
        login
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}
