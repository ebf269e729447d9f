//! Re-sealing stored secrets under the current key (`pimage secrets rotate`): every sealed
//! column, walked by id in batches; each value is replaced only if it did not change since
//! it was read, so the walk can run while the service runs, stop, and start again.

use sqlx::PgPool;

use crate::secrets::SecretBox;

/// A column holding sealed secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedColumn {
    /// `publish_tickets.cloud_password_enc`
    TicketCloudPasswords,
    /// `api_keys.secret_enc`
    ApiKeySecrets,
    /// `image_cleanups.cloud_password_enc` of pending cleanups (done ones are wiped)
    CleanupCloudPasswords,
    /// `cloud_accounts.cloud_password_enc`
    AccountCloudPasswords,
}

impl SealedColumn {
    pub const ALL: [SealedColumn; 4] = [
        SealedColumn::TicketCloudPasswords,
        SealedColumn::ApiKeySecrets,
        SealedColumn::CleanupCloudPasswords,
        SealedColumn::AccountCloudPasswords,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            SealedColumn::TicketCloudPasswords => "ticket cloud passwords",
            SealedColumn::ApiKeySecrets => "API-key secrets",
            SealedColumn::CleanupCloudPasswords => "cloud passwords of pending cleanups",
            SealedColumn::AccountCloudPasswords => "stored cloud account passwords",
        }
    }
}

/// What a rotation did to one column.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resealed {
    /// Values now sealed under the current key.
    pub resealed: u64,
    /// Ids of rows no configured key opens (left as they are).
    pub undecryptable: Vec<i64>,
    /// Values still not under the current key after the walk (written meanwhile by a process
    /// that does not have the current key yet): run the rotation again.
    pub left: i64,
}

/// Re-seals every value of `column` not sealed under the current key, `batch` rows at a time.
pub async fn reseal_column(
    pool: &PgPool,
    secrets: &SecretBox,
    column: SealedColumn,
    batch: i64,
) -> Result<Resealed, sqlx::Error> {
    let header = secrets.current_header();
    let mut report = Resealed::default();
    let mut after = 0;
    loop {
        let rows = not_under(pool, column, &header, after, batch.max(1)).await?;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        after = last;
        let (mut ids, mut old, mut new) = (vec![], vec![], vec![]);
        for (id, sealed) in rows {
            match secrets.reseal(&sealed) {
                Ok(Some(resealed)) => {
                    ids.push(id);
                    old.push(sealed);
                    new.push(resealed);
                }
                Ok(None) => {}
                Err(_) => report.undecryptable.push(id),
            }
        }
        report.resealed += replace(pool, column, &ids, &old, &new).await?;
    }
    report.left = count_not_under(pool, column, &header).await? - report.undecryptable.len() as i64;
    Ok(report)
}

/// Up to `limit` (id, sealed value) with an id above `after` whose value does not start
/// with `header`, by id.
async fn not_under(
    pool: &PgPool,
    column: SealedColumn,
    header: &[u8],
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
    Ok(match column {
        SealedColumn::TicketCloudPasswords => sqlx::query!(
            "SELECT id, cloud_password_enc FROM publish_tickets
              WHERE id > $2
                AND substring(cloud_password_enc FROM 1 FOR octet_length($1::bytea)) <> $1
              ORDER BY id LIMIT $3",
            header,
            after,
            limit
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| (r.id, r.cloud_password_enc))
        .collect(),
        SealedColumn::ApiKeySecrets => sqlx::query!(
            "SELECT id, secret_enc FROM api_keys
              WHERE id > $2
                AND substring(secret_enc FROM 1 FOR octet_length($1::bytea)) <> $1
              ORDER BY id LIMIT $3",
            header,
            after,
            limit
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| (r.id, r.secret_enc))
        .collect(),
        SealedColumn::CleanupCloudPasswords => sqlx::query!(
            "SELECT id, cloud_password_enc FROM image_cleanups
              WHERE done_at IS NULL AND id > $2
                AND substring(cloud_password_enc FROM 1 FOR octet_length($1::bytea)) <> $1
              ORDER BY id LIMIT $3",
            header,
            after,
            limit
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| (r.id, r.cloud_password_enc))
        .collect(),
        SealedColumn::AccountCloudPasswords => sqlx::query!(
            "SELECT id, cloud_password_enc FROM cloud_accounts
              WHERE id > $2
                AND substring(cloud_password_enc FROM 1 FOR octet_length($1::bytea)) <> $1
              ORDER BY id LIMIT $3",
            header,
            after,
            limit
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| (r.id, r.cloud_password_enc))
        .collect(),
    })
}

/// Writes `new[i]` into row `ids[i]` if it still holds `old[i]`; returns the rows written.
async fn replace(
    pool: &PgPool,
    column: SealedColumn,
    ids: &[i64],
    old: &[Vec<u8>],
    new: &[Vec<u8>],
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = match column {
        SealedColumn::TicketCloudPasswords => {
            sqlx::query!(
                "UPDATE publish_tickets t SET cloud_password_enc = v.new
                   FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS v(id, old, new)
                  WHERE t.id = v.id AND t.cloud_password_enc = v.old",
                ids,
                old,
                new
            )
            .execute(pool)
            .await?
        }
        SealedColumn::ApiKeySecrets => {
            sqlx::query!(
                "UPDATE api_keys k SET secret_enc = v.new
                   FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS v(id, old, new)
                  WHERE k.id = v.id AND k.secret_enc = v.old",
                ids,
                old,
                new
            )
            .execute(pool)
            .await?
        }
        SealedColumn::CleanupCloudPasswords => {
            sqlx::query!(
                "UPDATE image_cleanups c SET cloud_password_enc = v.new
                   FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS v(id, old, new)
                  WHERE c.id = v.id AND c.cloud_password_enc = v.old AND c.done_at IS NULL",
                ids,
                old,
                new
            )
            .execute(pool)
            .await?
        }
        SealedColumn::AccountCloudPasswords => {
            sqlx::query!(
                "UPDATE cloud_accounts a SET cloud_password_enc = v.new
                   FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS v(id, old, new)
                  WHERE a.id = v.id AND a.cloud_password_enc = v.old",
                ids,
                old,
                new
            )
            .execute(pool)
            .await?
        }
    };
    Ok(done.rows_affected())
}

async fn count_not_under(
    pool: &PgPool,
    column: SealedColumn,
    header: &[u8],
) -> Result<i64, sqlx::Error> {
    let count = match column {
        SealedColumn::TicketCloudPasswords => {
            sqlx::query_scalar!(
                r#"SELECT count(*) AS "count!" FROM publish_tickets
                WHERE substring(cloud_password_enc FROM 1 FOR octet_length($1::bytea)) <> $1"#,
                header
            )
            .fetch_one(pool)
            .await?
        }
        SealedColumn::ApiKeySecrets => {
            sqlx::query_scalar!(
                r#"SELECT count(*) AS "count!" FROM api_keys
                WHERE substring(secret_enc FROM 1 FOR octet_length($1::bytea)) <> $1"#,
                header
            )
            .fetch_one(pool)
            .await?
        }
        SealedColumn::CleanupCloudPasswords => {
            sqlx::query_scalar!(
                r#"SELECT count(*) AS "count!" FROM image_cleanups WHERE done_at IS NULL
                AND substring(cloud_password_enc FROM 1 FOR octet_length($1::bytea)) <> $1"#,
                header
            )
            .fetch_one(pool)
            .await?
        }
        SealedColumn::AccountCloudPasswords => {
            sqlx::query_scalar!(
                r#"SELECT count(*) AS "count!" FROM cloud_accounts
                WHERE substring(cloud_password_enc FROM 1 FOR octet_length($1::bytea)) <> $1"#,
                header
            )
            .fetch_one(pool)
            .await?
        }
    };
    Ok(count)
}
