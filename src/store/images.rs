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
    /// Its place among its scan's images, oldest first (1 for a registered image).
    pub revision: i64,
}

impl Image {
    pub fn uri(&self) -> String {
        format!(
            "users/{}/scannedinstances/{}/scans/{}/images/{}",
            self.owner_login, self.scanned_instance_id, self.scan_id, self.id
        )
    }
}

/// The operating system of a scanned instance, as UForge names it: a name and architecture
/// of the schema's enumerations, and a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// `Distribution::name` values (UForge's schema).
pub const OS_NAMES: [&str; 10] = [
    "CentOS",
    "Debian",
    "Fedora Core",
    "OpenSUSE",
    "Oracle Linux",
    "RedHat Enterprise Linux",
    "Scientific Linux",
    "SUSE Linux Enterprise Server",
    "Ubuntu",
    "Windows",
];

/// `Distribution::arch` values (UForge's schema).
pub const OS_ARCHES: [&str; 5] = ["i386", "i586", "i686", "noarch", "x86_64"];

impl Distribution {
    /// "NAME VERSION ARCH", as hammr prints it (`CentOS 7 x86_64`, `RedHat Enterprise Linux
    /// 8.4 x86_64`); the message of a refusal lists what is accepted.
    pub fn parse(text: &str) -> Result<Distribution, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let refused = |why: String| {
            Err(format!(
                "{why}: give \"NAME VERSION ARCH\", NAME one of {}, ARCH one of {}",
                OS_NAMES.join(", "),
                OS_ARCHES.join(", ")
            ))
        };
        let [name @ .., version, arch] = words.as_slice() else {
            return refused(format!("'{text}' is not an operating system"));
        };
        let name = name.join(" ");
        if !OS_NAMES.contains(&name.as_str()) {
            return refused(format!("unknown operating system '{name}'"));
        }
        if !OS_ARCHES.contains(arch) {
            return refused(format!("unknown architecture '{arch}'"));
        }
        let version_ok = version.len() <= 32
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !version_ok {
            return refused(format!("'{version}' is not a version"));
        }
        Ok(Distribution {
            name,
            version: (*version).to_string(),
            arch: (*arch).to_string(),
        })
    }
}

pub struct NewImage<'a> {
    pub owner_id: i64,
    /// Its scanned instance's operating system, when known.
    pub distribution: Option<&'a Distribution>,
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
                    i.sha512sum, i.created_at, i.updated_at,
                    (SELECT count(*) FROM images j WHERE j.scan_id = i.scan_id AND j.id <= i.id)
                        AS \"revision!\"
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
    let os = new.distribution;
    let siid = sqlx::query_scalar!(
        "INSERT INTO scanned_instances (user_id, name, os_name, os_version, os_arch)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
        new.owner_id,
        new.name,
        os.map(|d| d.name.as_str()),
        os.map(|d| d.version.as_str()),
        os.map(|d| d.arch.as_str()),
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

/// All images of a user, oldest first; only image `only` when given.
pub async fn list_of_user(
    pool: &PgPool,
    owner_login: &str,
    only: Option<i64>,
) -> Result<Vec<Image>, sqlx::Error> {
    select_images!(
        "WHERE u.login = $1 AND ($2::bigint IS NULL OR i.id = $2) ORDER BY i.id",
        owner_login,
        only,
    )
    .fetch_all(pool)
    .await
}

/// A scan, addressed as users/{owner}/scannedinstances/{siid}/scans/{id}.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Scan {
    pub id: i64,
    pub scanned_instance_id: i64,
    pub owner_login: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl Scan {
    pub fn uri(&self) -> String {
        format!(
            "users/{}/scannedinstances/{}/scans/{}",
            self.owner_login, self.scanned_instance_id, self.id
        )
    }
}

/// A scanned instance, addressed as users/{owner}/scannedinstances/{id}.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScannedInstance {
    pub id: i64,
    pub owner_login: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub os_arch: Option<String>,
}

impl ScannedInstance {
    /// Its operating system, when known (the columns are all set or none).
    pub fn distribution(&self) -> Option<Distribution> {
        Some(Distribution {
            name: self.os_name.clone()?,
            version: self.os_version.clone()?,
            arch: self.os_arch.clone()?,
        })
    }

    pub fn uri(&self) -> String {
        format!("users/{}/scannedinstances/{}", self.owner_login, self.id)
    }
}

/// The scan at that path, if it exists and belongs to `owner_login`.
pub async fn find_scan(
    pool: &PgPool,
    owner_login: &str,
    siid: i64,
    sid: i64,
) -> Result<Option<Scan>, sqlx::Error> {
    sqlx::query_as!(
        Scan,
        "SELECT s.id, s.scanned_instance_id, u.login AS owner_login, s.name, s.created_at
           FROM scans s
           JOIN scanned_instances si ON si.id = s.scanned_instance_id
           JOIN users u ON u.id = si.user_id
          WHERE u.login = $1 AND si.id = $2 AND s.id = $3",
        owner_login,
        siid,
        sid
    )
    .fetch_optional(pool)
    .await
}

/// The scans of these scanned instances of `owner_login`, by instance then id.
pub async fn scans_of(
    pool: &PgPool,
    owner_login: &str,
    siids: &[i64],
) -> Result<Vec<Scan>, sqlx::Error> {
    sqlx::query_as!(
        Scan,
        "SELECT s.id, s.scanned_instance_id, u.login AS owner_login, s.name, s.created_at
           FROM scans s
           JOIN scanned_instances si ON si.id = s.scanned_instance_id
           JOIN users u ON u.id = si.user_id
          WHERE u.login = $1 AND si.id = ANY($2)
          ORDER BY s.scanned_instance_id, s.id",
        owner_login,
        siids
    )
    .fetch_all(pool)
    .await
}

/// The scanned instances of `owner_login`, oldest first: only `only` (an id) or those named
/// `name`, when given.
pub async fn scanned_instances_of(
    pool: &PgPool,
    owner_login: &str,
    only: Option<i64>,
    name: Option<&str>,
) -> Result<Vec<ScannedInstance>, sqlx::Error> {
    sqlx::query_as!(
        ScannedInstance,
        "SELECT si.id, u.login AS owner_login, si.name, si.created_at, si.os_name, si.os_version,
                si.os_arch
           FROM scanned_instances si
           JOIN users u ON u.id = si.user_id
          WHERE u.login = $1 AND ($2::bigint IS NULL OR si.id = $2)
            AND ($3::text IS NULL OR si.name = $3)
          ORDER BY si.id",
        owner_login,
        only,
        name
    )
    .fetch_all(pool)
    .await
}

/// What deleting an image came to.
#[derive(Debug, PartialEq, Eq)]
pub enum ImageDeletion {
    Deleted,
    NotFound,
    /// Kept: these tickets of it are queued or running.
    Busy(Vec<i64>),
}

/// Deletes an image of `owner_login` with its ended tickets, unless a ticket of it is queued
/// or running. One transaction, the image row locked first (a publish's insert of a ticket
/// waits on it); each ended ticket goes as `tickets::delete` removes one (its `deleted`
/// event; a published cloud image is kept). The scan and the file stay.
pub async fn delete(
    pool: &PgPool,
    owner_login: &str,
    (siid, sid, itid): (i64, i64, i64),
) -> Result<ImageDeletion, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query_scalar!(
        "SELECT i.id FROM images i
           JOIN scans s ON s.id = i.scan_id
           JOIN scanned_instances si ON si.id = s.scanned_instance_id
           JOIN users u ON u.id = si.user_id
          WHERE u.login = $1 AND si.id = $2 AND s.id = $3 AND i.id = $4
            FOR UPDATE OF i",
        owner_login,
        siid,
        sid,
        itid
    )
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Ok(ImageDeletion::NotFound);
    }
    let tickets = sqlx::query!(
        "SELECT id, state FROM publish_tickets WHERE image_id = $1 ORDER BY id FOR UPDATE",
        itid
    )
    .fetch_all(&mut *tx)
    .await?;
    let busy: Vec<i64> = tickets
        .iter()
        .filter(|t| t.state == "queued" || t.state == "running")
        .map(|t| t.id)
        .collect();
    if !busy.is_empty() {
        return Ok(ImageDeletion::Busy(busy));
    }
    for ticket in &tickets {
        super::cleanups::record_for_deleted(&mut tx, ticket.id).await?;
        super::events::record_deleted(&mut tx, ticket.id).await?;
    }
    sqlx::query!("DELETE FROM images WHERE id = $1", itid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ImageDeletion::Deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operating_system_is_name_version_arch_of_the_schemas_values() {
        let os = Distribution::parse(" RedHat  Enterprise Linux 8.4 x86_64 ").unwrap();
        assert_eq!(
            (os.name.as_str(), os.version.as_str(), os.arch.as_str()),
            ("RedHat Enterprise Linux", "8.4", "x86_64")
        );
        assert_eq!(
            Distribution::parse("CentOS 7 x86_64").unwrap().name,
            "CentOS"
        );
        for (text, why) in [
            ("CentOS", "is not an operating system"),
            ("Gentoo 1 x86_64", "unknown operating system 'Gentoo'"),
            ("Ubuntu 22.04 arm64", "unknown architecture 'arm64'"),
            ("Ubuntu 22/04 x86_64", "'22/04' is not a version"),
        ] {
            let refused = Distribution::parse(text).unwrap_err();
            assert!(
                refused.contains(why) && refused.contains("Ubuntu"),
                "{refused}"
            );
        }
    }
}
