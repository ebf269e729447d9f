//! Scanned instances, scans and the generated images users publish.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// An image, addressed as users/{owner}/scannedinstances/{siid}/scans/{sid}/images/{id}.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Image {
    pub id: i64,
    pub scan_id: i64,
    pub scanned_instance_id: i64,
    pub owner_login: String,
    pub name: String,
    pub file_path: String,
    pub file_name: String,
    pub format: String,
    pub size_bytes: i64,
    pub md5sum: String,
    pub sha256sum: String,
    /// None for images registered before sha512 was computed.
    pub sha512sum: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Image {
    pub fn uri(&self) -> String {
        format!(
            "users/{}/scannedinstances/{}/scans/{}/images/{}",
            self.owner_login, self.scanned_instance_id, self.scan_id, self.id
        )
    }
}

pub struct NewImage<'a> {
    pub owner_id: i64,
    pub name: &'a str,
    pub file_path: &'a str,
    pub file_name: &'a str,
    pub format: &'a str,
    pub size_bytes: i64,
    pub md5sum: &'a str,
    pub sha256sum: &'a str,
    pub sha512sum: &'a str,
}

/// Expands to a compile-time checked `query_as!` of `Image` rows: the image columns, with the
/// ids and owner of its path, then `$clause` (WHERE, ORDER BY ...) and the arguments.
macro_rules! select_images {
    ($clause:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Image,
            "SELECT i.id, i.scan_id, s.scanned_instance_id, u.login AS owner_login, i.name,
                    i.file_path, i.file_name, i.format, i.size_bytes, i.md5sum, i.sha256sum,
                    i.sha512sum, i.created_at, i.updated_at
               FROM images i
               JOIN scans s ON s.id = i.scan_id
               JOIN scanned_instances si ON si.id = s.scanned_instance_id
               JOIN users u ON u.id = si.user_id "
                + $clause
            $(, $arg)*
        )
    };
}

/// Creates a scanned instance and a scan holding one new image, in one transaction.
pub async fn register(pool: &PgPool, new: &NewImage<'_>) -> Result<Image, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let siid = sqlx::query_scalar!(
        "INSERT INTO scanned_instances (user_id, name) VALUES ($1, $2) RETURNING id",
        new.owner_id,
        new.name
    )
    .fetch_one(&mut *tx)
    .await?;
    let sid = sqlx::query_scalar!(
        "INSERT INTO scans (scanned_instance_id, name) VALUES ($1, $2) RETURNING id",
        siid,
        new.name
    )
    .fetch_one(&mut *tx)
    .await?;
    let id = sqlx::query_scalar!(
        "INSERT INTO images (scan_id, name, file_path, file_name, format, size_bytes, md5sum, sha256sum, sha512sum)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        sid,
        new.name,
        new.file_path,
        new.file_name,
        new.format,
        new.size_bytes,
        new.md5sum,
        new.sha256sum,
        new.sha512sum
    )
    .fetch_one(&mut *tx)
    .await?;
    let image = select_images!("WHERE i.id = $1", id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(image)
}

/// The image at that path, if the whole chain of ids exists and belongs to `owner_login`.
pub async fn find(
    pool: &PgPool,
    owner_login: &str,
    siid: i64,
    sid: i64,
    itid: i64,
) -> Result<Option<Image>, sqlx::Error> {
    select_images!(
        "WHERE u.login = $1 AND s.scanned_instance_id = $2 AND i.scan_id = $3 AND i.id = $4",
        owner_login,
        siid,
        sid,
        itid,
    )
    .fetch_optional(pool)
    .await
}

/// All images of a scan; `None` when the scan does not exist under that owner.
pub async fn list_in_scan(
    pool: &PgPool,
    owner_login: &str,
    siid: i64,
    sid: i64,
) -> Result<Option<Vec<Image>>, sqlx::Error> {
    let scan_exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM scans s JOIN scanned_instances si ON si.id = s.scanned_instance_id
                          JOIN users u ON u.id = si.user_id
                         WHERE u.login = $1 AND si.id = $2 AND s.id = $3) AS "exists!""#,
        owner_login,
        siid,
        sid
    )
    .fetch_one(pool)
    .await?;
    if !scan_exists {
        return Ok(None);
    }
    let images = select_images!(
        "WHERE u.login = $1 AND s.scanned_instance_id = $2 AND i.scan_id = $3 ORDER BY i.id",
        owner_login,
        siid,
        sid,
    )
    .fetch_all(pool)
    .await?;
    Ok(Some(images))
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Image>, sqlx::Error> {
    select_images!("WHERE i.id = $1", id)
        .fetch_optional(pool)
        .await
}
