//! Users and their entitlements.

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

pub async fn find_by_login(pool: &PgPool, login: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(
        "SELECT u.id, u.login, u.password_hash, u.is_admin,
                COALESCE(array_agg(e.entitlement) FILTER (WHERE e.entitlement IS NOT NULL), '{}') AS entitlements
           FROM users u LEFT JOIN user_entitlements e ON e.user_id = u.id
          WHERE u.login = $1
          GROUP BY u.id",
    )
    .bind(login)
    .fetch_optional(pool)
    .await
}

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
    tx.commit().await?;
    Ok(id)
}
