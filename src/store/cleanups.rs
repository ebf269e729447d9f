//! Images a ticket may have left in the cloud: the `image_cleanups` rows (recorded by
//! `record_for_ended` and `record_for_deleted`, in the transaction of every store function
//! that ends a ticket in anything but `complete` or deletes one), taken one at a time under
//! row locks by the reconciler, and what the orphan sweep asks about an image.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::events::{self, Before};
use super::tickets::TicketState;

/// Records the image cleanup of each ticket of `before` that this change ended in `error` or
/// `cancelled` (it was not before): call it in the change's transaction, after its
/// statement. A ticket never claimed (`started_at` NULL) owns no image. The row carries its
/// own copy of the account, so the image is removed even if the ticket is deleted.
pub(crate) async fn record_for_ended(
    tx: &mut Transaction<'_, Postgres>,
    before: &[Before],
) -> Result<u64, sqlx::Error> {
    if before.is_empty() {
        return Ok(0);
    }
    let recorded = sqlx::query!(
        "INSERT INTO image_cleanups (ticket_id, ticket_key, cloud_id, keystone_url, keystone_domain,
             keystone_project, glance_url, cloud_login, cloud_password_enc, glance_store)
         SELECT t.id, t.ticket_key, t.cloud_id, t.keystone_url, t.keystone_domain, t.keystone_project,
                t.glance_url, t.cloud_login, t.cloud_password_enc,
                CASE WHEN t.cloud_id = s.cloud_id THEN t.glance_store END
           FROM jsonb_to_recordset($1::jsonb) AS o(id bigint, state text)
           JOIN publish_tickets t ON t.id = o.id
           LEFT JOIN publish_tickets s ON s.id = t.copies_from
          WHERE t.state IN ('error', 'cancelled') AND o.state IS DISTINCT FROM t.state
            AND t.started_at IS NOT NULL
          ORDER BY t.id",
        Json(before) as _,
    )
    .execute(&mut **tx)
    .await?;
    Ok(recorded.rows_affected())
}

/// What deleting a ticket leaves to do with its image: a published one is the user's to keep
/// (`kept_images`, so the orphan sweep spares it); one of a ticket claimed but not ended is
/// to be deleted (an ended one's cleanup was recorded when it ended). Call it in the
/// deleting transaction, before the delete.
pub(crate) async fn record_for_deleted(
    tx: &mut Transaction<'_, Postgres>,
    ticket_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH t AS (SELECT * FROM publish_tickets
                     WHERE id = $1 AND state NOT IN ('error', 'cancelled')),
              kept AS (INSERT INTO kept_images (ticket_key, cloud_id)
                       SELECT ticket_key, cloud_id FROM t
                        WHERE state = 'complete' AND cloud_id IS NOT NULL
                       ON CONFLICT (ticket_key) DO NOTHING)
         INSERT INTO image_cleanups (ticket_id, ticket_key, cloud_id, keystone_url, keystone_domain,
             keystone_project, glance_url, cloud_login, cloud_password_enc, glance_store)
         SELECT NULL, t.ticket_key, t.cloud_id, t.keystone_url, t.keystone_domain, t.keystone_project,
                t.glance_url, t.cloud_login, t.cloud_password_enc,
                CASE WHEN t.cloud_id = s.cloud_id THEN t.glance_store END
           FROM t LEFT JOIN publish_tickets s ON s.id = t.copies_from
          WHERE t.state <> 'complete' AND t.started_at IS NOT NULL",
        ticket_id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A cloud account as stored with a ticket (the password still sealed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredAccount {
    pub keystone_url: String,
    pub keystone_domain: String,
    pub keystone_project: String,
    pub glance_url: Option<String>,
    pub cloud_login: String,
    pub cloud_password_enc: Vec<u8>,
}

/// One pending cleanup: the images of `ticket_key` (and `cloud_id`) must go.
#[derive(Debug, Clone)]
pub struct Cleanup {
    pub id: i64,
    /// `None` once the ticket record was deleted.
    pub ticket_id: Option<i64>,
    pub ticket_key: Uuid,
    pub cloud_id: Option<String>,
    /// Set when the image is a sibling's, copied into this store (copy-image): only this
    /// store's copy goes, unless it is the image's last.
    pub glance_store: Option<String>,
    pub attempts: i32,
    pub account: StoredAccount,
}

/// A cleanup as `pimage tickets list --state cleanup` shows it.
#[derive(Debug, Clone)]
pub struct PendingCleanup {
    pub id: i64,
    pub ticket_id: Option<i64>,
    pub ticket_key: Uuid,
    pub cloud_id: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_try_at: DateTime<Utc>,
}

/// A due cleanup, locked (with its ticket, if any) until the transaction ends.
pub struct TakenCleanup {
    pub tx: Transaction<'static, Postgres>,
    pub cleanup: Cleanup,
    /// The ticket's state now; `None` when its record was deleted.
    pub ticket_state: Option<TicketState>,
}

/// Takes the next due cleanup no other reconciler holds (`SKIP LOCKED`), and locks its
/// ticket so that nobody re-queues it while the image is being deleted.
pub async fn take_due(pool: &PgPool) -> Result<Option<TakenCleanup>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        "SELECT id, ticket_id, ticket_key, cloud_id, glance_store, attempts, keystone_url,
                keystone_domain, keystone_project, glance_url, cloud_login, cloud_password_enc
           FROM image_cleanups
          WHERE done_at IS NULL AND next_try_at <= now()
          ORDER BY next_try_at
          LIMIT 1
            FOR UPDATE SKIP LOCKED"
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let ticket_state = match row.ticket_id {
        Some(ticket_id) => sqlx::query_scalar!(
            r#"SELECT state AS "state: TicketState" FROM publish_tickets WHERE id = $1 FOR UPDATE"#,
            ticket_id
        )
        .fetch_optional(&mut *tx)
        .await?,
        None => None,
    };
    Ok(Some(TakenCleanup {
        tx,
        ticket_state,
        cleanup: Cleanup {
            id: row.id,
            ticket_id: row.ticket_id,
            ticket_key: row.ticket_key,
            cloud_id: row.cloud_id,
            glance_store: row.glance_store,
            attempts: row.attempts,
            account: StoredAccount {
                keystone_url: row.keystone_url,
                keystone_domain: row.keystone_domain,
                keystone_project: row.keystone_project,
                glance_url: row.glance_url,
                cloud_login: row.cloud_login,
                cloud_password_enc: row.cloud_password_enc,
            },
        },
    }))
}

impl TakenCleanup {
    /// Glance confirmed (or nothing is to be deleted): the cleanup is done, and an ended
    /// ticket stops naming the image. Its message says an image was removed only when
    /// `removed_an_image` (a cancel before any image existed must not claim one).
    pub async fn done(mut self, removed_an_image: bool) -> Result<(), sqlx::Error> {
        sqlx::query!(
            // The password is wiped with it: it is needed no more, and must not outlive its
            // ticket.
            "UPDATE image_cleanups SET done_at = now(), attempts = attempts + 1,
                 cloud_password_enc = ''::bytea
              WHERE id = $1",
            self.cleanup.id
        )
        .execute(&mut *self.tx)
        .await?;
        if let Some(ticket_id) = self.cleanup.ticket_id {
            let before = sqlx::query_scalar!(
                r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                                  FROM publish_tickets
                                 WHERE id = $1 AND state IN ('error', 'cancelled') FOR UPDATE)
                   UPDATE publish_tickets t SET cloud_id = NULL, updated_at = now(),
                       message = CASE WHEN t.state <> 'cancelled' THEN t.message
                                      WHEN $2 THEN 'cancelled; the partial image was removed from the cloud'
                                      WHEN old.cloud_id IS NOT NULL
                                      THEN 'cancelled; its image was already gone from the cloud'
                                      ELSE t.message END
                     FROM old WHERE t.id = old.id
                   RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
                ticket_id,
                removed_an_image
            )
            .fetch_all(&mut *self.tx)
            .await?;
            events::record_changes(&mut self.tx, &events::unwrap_before(before)).await?;
        }
        self.tx.commit().await
    }

    /// The delete failed: tried again after `retry_in`, the error shown until then.
    pub async fn failed(mut self, error: &str, retry_in_secs: f64) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE image_cleanups SET attempts = attempts + 1, last_error = $2,
                 next_try_at = now() + make_interval(secs => $3)
              WHERE id = $1",
            self.cleanup.id,
            error,
            retry_in_secs
        )
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await
    }
}

/// Cleanups not yet confirmed, oldest first.
pub async fn pending(pool: &PgPool, limit: i64) -> Result<Vec<PendingCleanup>, sqlx::Error> {
    sqlx::query_as!(
        PendingCleanup,
        "SELECT id, ticket_id, ticket_key, cloud_id, attempts, last_error, next_try_at
           FROM image_cleanups WHERE done_at IS NULL ORDER BY id LIMIT $1",
        limit
    )
    .fetch_all(pool)
    .await
}

/// How many cleanups wait, and how many of them have failed at least once.
pub async fn count_pending(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "pending!", count(*) FILTER (WHERE last_error IS NOT NULL) AS "failing!"
             FROM image_cleanups WHERE done_at IS NULL"#
    )
    .fetch_one(pool)
    .await?;
    Ok((row.pending, row.failing))
}

/// An account as `publish_tickets_account` orders them (what it logs in as, hashed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AccountKey {
    pub keystone_url: String,
    pub keystone_domain: String,
    pub keystone_project: String,
    pub cloud_login: String,
    pub glance_url: String,
}

impl StoredAccount {
    /// What tells it from another account (its password aside).
    pub fn key(&self) -> AccountKey {
        AccountKey {
            keystone_url: self.keystone_url.clone(),
            keystone_domain: self.keystone_domain.clone(),
            keystone_project: self.keystone_project.clone(),
            cloud_login: self.cloud_login.clone(),
            glance_url: self.glance_url.clone().unwrap_or_default(),
        }
    }
}

/// The first page of `accounts_after`.
pub const FIRST_ACCOUNT: i64 = i64::MIN;

/// The next `limit` cloud accounts tickets name, in the order of their hash, after the hash
/// `after` (`FIRST_ACCOUNT` to start), each with its hash (the next page's `after`) and its
/// newest ticket's sealed password: where the orphan sweep looks. A skip scan of
/// `publish_tickets_account`: one index probe per account, however many tickets each has.
pub async fn accounts_after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, StoredAccount)>, sqlx::Error> {
    let rows = sqlx::query!(
        // Each step reads the account's newest ticket row itself: no join back to the table.
        r#"WITH RECURSIVE acc AS (
             (SELECT 1 AS n, hashtextextended(t.keystone_url || E'\x1f' || t.keystone_domain || E'\x1f' || t.keystone_project
                         || E'\x1f' || t.cloud_login || E'\x1f' || COALESCE(t.glance_url, ''), 0) AS h, t.keystone_url, t.keystone_domain,
                     t.keystone_project, t.cloud_login, t.glance_url, t.cloud_password_enc
                FROM publish_tickets t
               WHERE hashtextextended(t.keystone_url || E'\x1f' || t.keystone_domain || E'\x1f' || t.keystone_project
                         || E'\x1f' || t.cloud_login || E'\x1f' || COALESCE(t.glance_url, ''), 0) > $1
               ORDER BY hashtextextended(t.keystone_url || E'\x1f' || t.keystone_domain || E'\x1f' || t.keystone_project
                         || E'\x1f' || t.cloud_login || E'\x1f' || COALESCE(t.glance_url, ''), 0), t.id DESC
               LIMIT 1)
             UNION ALL
             SELECT nxt.* FROM acc a CROSS JOIN LATERAL
                 (SELECT a.n + 1, hashtextextended(t.keystone_url || E'\x1f' || t.keystone_domain || E'\x1f' || t.keystone_project
                         || E'\x1f' || t.cloud_login || E'\x1f' || COALESCE(t.glance_url, ''), 0), t.keystone_url, t.keystone_domain,
                         t.keystone_project, t.cloud_login, t.glance_url, t.cloud_password_enc
                    FROM publish_tickets t
                   WHERE hashtextextended(t.keystone_url || E'\x1f' || t.keystone_domain || E'\x1f' || t.keystone_project
                         || E'\x1f' || t.cloud_login || E'\x1f' || COALESCE(t.glance_url, ''), 0) > a.h
                   ORDER BY hashtextextended(t.keystone_url || E'\x1f' || t.keystone_domain || E'\x1f' || t.keystone_project
                         || E'\x1f' || t.cloud_login || E'\x1f' || COALESCE(t.glance_url, ''), 0), t.id DESC
                   LIMIT 1) nxt
              WHERE a.n < $2::bigint)
           SELECT h AS "h!", keystone_url AS "keystone_url!", keystone_domain AS "keystone_domain!",
                  keystone_project AS "keystone_project!", glance_url,
                  cloud_login AS "cloud_login!", cloud_password_enc AS "cloud_password_enc!"
             FROM acc ORDER BY n"#,
        after,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let account = StoredAccount {
                keystone_url: r.keystone_url,
                keystone_domain: r.keystone_domain,
                keystone_project: r.keystone_project,
                glance_url: r.glance_url,
                cloud_login: r.cloud_login,
                cloud_password_enc: r.cloud_password_enc,
            };
            (r.h, account)
        })
        .collect())
}

/// The accounts of pending cleanups with an id above `after_id` (`limit` of them, by id,
/// with that id): a deleted ticket's account is known only there.
pub async fn cleanup_accounts_after(
    pool: &PgPool,
    after_id: i64,
    limit: i64,
) -> Result<Vec<(i64, StoredAccount)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT id, keystone_url, keystone_domain, keystone_project, glance_url, cloud_login,
                cloud_password_enc
           FROM image_cleanups WHERE done_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
        after_id,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let account = StoredAccount {
                keystone_url: r.keystone_url,
                keystone_domain: r.keystone_domain,
                keystone_project: r.keystone_project,
                glance_url: r.glance_url,
                cloud_login: r.cloud_login,
                cloud_password_enc: r.cloud_password_enc,
            };
            (r.id, account)
        })
        .collect())
}

/// What pimage knows of an image found in the cloud by its properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOwner {
    /// Its ticket is complete and names it, or its ticket record was deleted with the image
    /// kept: the user's image.
    Kept,
    /// Its ticket is queued or running (its worker settles it), or a cleanup is pending.
    Busy,
    /// Its ticket ended without it, or is unknown: a leftover to delete.
    Leftover,
}

/// Judges an image found in the cloud, holding its ticket's row lock in `tx` (so the
/// verdict holds until the transaction ends: nobody re-queues the ticket meanwhile).
pub async fn judge_image(
    tx: &mut Transaction<'static, Postgres>,
    ticket_key: Uuid,
    cloud_id: &str,
) -> Result<ImageOwner, sqlx::Error> {
    let ticket = sqlx::query!(
        r#"SELECT state AS "state: TicketState", cloud_id FROM publish_tickets
            WHERE ticket_key = $1 FOR UPDATE"#,
        ticket_key
    )
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(t) = ticket {
        return Ok(match t.state {
            TicketState::Complete if t.cloud_id.as_deref() == Some(cloud_id) => ImageOwner::Kept,
            TicketState::Queued | TicketState::Running => ImageOwner::Busy,
            _ => ImageOwner::Leftover,
        });
    }
    let known = sqlx::query!(
        r#"SELECT EXISTS (SELECT 1 FROM kept_images WHERE ticket_key = $1 AND cloud_id = $2)
                      AS "kept!",
                  EXISTS (SELECT 1 FROM image_cleanups WHERE ticket_key = $1 AND done_at IS NULL)
                      AS "pending!""#,
        ticket_key,
        cloud_id
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(if known.kept {
        ImageOwner::Kept
    } else if known.pending {
        ImageOwner::Busy
    } else {
        ImageOwner::Leftover
    })
}

/// The image a user kept when deleting this ticket's record, if any: a cleanup of an older
/// run of the same ticket must spare it.
pub async fn kept_image(pool: &PgPool, ticket_key: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT cloud_id FROM kept_images WHERE ticket_key = $1",
        ticket_key
    )
    .fetch_optional(pool)
    .await
}
