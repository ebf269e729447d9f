//! Publish tickets: the row (request, state, status), creating, reading and deleting it.
//! What happens to a ticket afterwards lives beside this file: `cancel` (a user's cancel),
//! `claims` (a worker's claim, lease, progress and end), `rescue` (tickets put back in the
//! queue) and `outbox` (tickets waiting to be handed to RabbitMQ).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{cleanups, events};

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum TicketState {
    Queued,
    Running,
    Complete,
    Error,
    Cancelled,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Queued => "queued",
            TicketState::Running => "running",
            TicketState::Complete => "complete",
            TicketState::Error => "error",
            TicketState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<TicketState> {
        [
            TicketState::Queued,
            TicketState::Running,
            TicketState::Complete,
            TicketState::Error,
            TicketState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TicketState::Complete | TicketState::Error | TicketState::Cancelled
        )
    }
}

/// NOTIFY channel of every change of a ticket's row or of its attempts;
/// payload: the ticket's id (the status cache, `live::statuses`).
pub const TICKET_CHANGED_CHANNEL: &str = "pimage_ticket_changed";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ticket {
    pub id: i64,
    pub ticket_key: Uuid,
    pub image_id: i64,
    pub scan_id: i64,
    pub scanned_instance_id: i64,
    pub owner_login: String,

    pub display_name: String,
    pub public_image: bool,
    pub account_name: Option<String>,
    pub keystone_url: String,
    pub keystone_version: String,
    pub keystone_domain: String,
    pub keystone_project: String,
    pub glance_url: Option<String>,
    /// The catalog region asked for (`publishLocation`), if any.
    pub publish_location: Option<String>,
    pub cloud_login: String,
    pub cloud_password_enc: Vec<u8>,

    pub state: TicketState,
    pub attempts: i32,
    pub fencing_token: i64,
    pub cancel_requested: bool,

    pub message: String,
    pub percentage: i32,
    pub bytes_loaded: i64,
    pub bytes_total: i64,
    pub eta: Option<DateTime<Utc>>,
    pub error_message: Option<String>,
    pub detailed_error_msg: Option<String>,
    pub cloud_id: Option<String>,

    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,

    /// The publication group it is a target of (`store::groups`), if any.
    pub group_id: Option<i64>,
    /// The Glance store it publishes to (None: the Glance's default store).
    pub glance_store: Option<String>,
    /// The sibling whose image it copies server-side once that one is complete.
    pub copies_from: Option<i64>,
    /// The catalog region of the Glance the worker resolved, once it did.
    pub glance_region: Option<String>,
}

impl Ticket {
    pub fn image_uri(&self) -> String {
        format!(
            "users/{}/scannedinstances/{}/scans/{}/images/{}",
            self.owner_login, self.scanned_instance_id, self.scan_id, self.image_id
        )
    }
    pub fn uri(&self) -> String {
        format!("{}/pimages/{}", self.image_uri(), self.id)
    }
}

/// Expands to a compile-time checked `sqlx::$macro!` call reading tickets as the API shows
/// them: `$with` (a CTE prefix, or ""), the ticket columns and `$extra`, read from `$from`
/// (the tickets table, or a CTE of its rows) joined to the image, scan and owner, then
/// `$clause` and the arguments. Columns that may not be NULL are marked `!`: when `$from` is
/// a CTE, Postgres does not say they are NOT NULL.
macro_rules! ticket_query {
    ($macro:ident!($($record:ident,)?) $with:tt, $extra:tt, $from:tt, $clause:tt $(, $arg:expr)* $(,)?) => {
        sqlx::$macro!(
            $($record,)?
            $with
            + r#"SELECT t.id AS "id!", t.ticket_key AS "ticket_key!", t.image_id AS "image_id!",
                   i.scan_id, s.scanned_instance_id, u.login AS owner_login,
                   t.display_name AS "display_name!", t.public_image AS "public_image!",
                   t.account_name, t.keystone_url AS "keystone_url!",
                   t.keystone_version AS "keystone_version!", t.keystone_domain AS "keystone_domain!",
                   t.keystone_project AS "keystone_project!", t.glance_url, t.publish_location,
                   t.cloud_login AS "cloud_login!", t.cloud_password_enc AS "cloud_password_enc!",
                   t.state AS "state!: TicketState", t.attempts AS "attempts!",
                   t.fencing_token AS "fencing_token!", t.cancel_requested AS "cancel_requested!",
                   t.message AS "message!", t.percentage AS "percentage!",
                   t.bytes_loaded AS "bytes_loaded!", t.bytes_total AS "bytes_total!", t.eta,
                   t.error_message, t.detailed_error_msg, t.cloud_id,
                   t.created_at AS "created_at!", t.updated_at AS "updated_at!", t.started_at,
                   t.finished_at, t.group_id, t.glance_store, t.copies_from, t.glance_region"#
            + $extra
            + " FROM " + $from + " t
               JOIN images i ON i.id = t.image_id
               JOIN scans s ON s.id = i.scan_id
               JOIN users u ON u.id = t.user_id "
            + $clause
            $(, $arg)*
        )
    };
}

/// A `Ticket` from a record of `ticket_query!` with columns beyond the ticket's (which
/// `query_as!` cannot read into `Ticket`), field by field.
macro_rules! ticket_of_row {
    ($row:ident) => {
        Ticket {
            id: $row.id,
            ticket_key: $row.ticket_key,
            image_id: $row.image_id,
            scan_id: $row.scan_id,
            scanned_instance_id: $row.scanned_instance_id,
            owner_login: $row.owner_login,
            display_name: $row.display_name,
            public_image: $row.public_image,
            account_name: $row.account_name,
            keystone_url: $row.keystone_url,
            keystone_version: $row.keystone_version,
            keystone_domain: $row.keystone_domain,
            keystone_project: $row.keystone_project,
            glance_url: $row.glance_url,
            publish_location: $row.publish_location,
            cloud_login: $row.cloud_login,
            cloud_password_enc: $row.cloud_password_enc,
            state: $row.state,
            attempts: $row.attempts,
            fencing_token: $row.fencing_token,
            cancel_requested: $row.cancel_requested,
            message: $row.message,
            percentage: $row.percentage,
            bytes_loaded: $row.bytes_loaded,
            bytes_total: $row.bytes_total,
            eta: $row.eta,
            error_message: $row.error_message,
            detailed_error_msg: $row.detailed_error_msg,
            cloud_id: $row.cloud_id,
            created_at: $row.created_at,
            updated_at: $row.updated_at,
            started_at: $row.started_at,
            finished_at: $row.finished_at,
            group_id: $row.group_id,
            glance_store: $row.glance_store,
            copies_from: $row.copies_from,
            glance_region: $row.glance_region,
        }
    };
}

/// `Ticket` rows of the tickets table matching `$clause` (WHERE, ORDER BY ...).
macro_rules! select_tickets {
    ($clause:tt $(, $arg:expr)* $(,)?) => {
        ticket_query!(query_as!(Ticket,) "", "", "publish_tickets", $clause $(, $arg)*)
    };
}

/// A ticket to store: what the request gives, checked. Owned, because it waits in the API's
/// filing queue (`api::filing`) until its batch is stored.
#[derive(Debug, Clone)]
pub struct NewTicket {
    pub image_id: i64,
    pub user_id: i64,
    pub display_name: String,
    pub public_image: bool,
    pub account_name: Option<String>,
    pub keystone_url: String,
    pub keystone_version: String,
    pub keystone_domain: String,
    pub keystone_project: String,
    pub glance_url: Option<String>,
    pub publish_location: Option<String>,
    pub cloud_login: String,
    pub cloud_password_enc: Vec<u8>,
    pub bytes_total: i64,
    /// The stored account it publishes with (`store::accounts`), if it names one.
    pub cloud_account_id: Option<i64>,
}

/// Stores one ticket (`create_many` of one).
pub async fn create<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    new: &NewTicket,
) -> Result<(Ticket, i64), sqlx::Error> {
    let mut created = create_many(executor, &[new]).await?;
    created.pop().ok_or(sqlx::Error::RowNotFound)
}

/// The arrays one `create_many` statement reads its rows from: a column each.
#[derive(Default)]
struct Columns {
    keys: Vec<Uuid>,
    image_ids: Vec<i64>,
    user_ids: Vec<i64>,
    display_names: Vec<String>,
    public_images: Vec<bool>,
    account_names: Vec<Option<String>>,
    keystone_urls: Vec<String>,
    keystone_versions: Vec<String>,
    keystone_domains: Vec<String>,
    keystone_projects: Vec<String>,
    glance_urls: Vec<Option<String>>,
    cloud_logins: Vec<String>,
    cloud_passwords_enc: Vec<Vec<u8>>,
    bytes_totals: Vec<i64>,
    cloud_account_ids: Vec<Option<i64>>,
    publish_locations: Vec<Option<String>>,
}

impl Columns {
    fn of(news: &[&NewTicket]) -> Columns {
        let mut c = Columns::default();
        for new in news {
            // Made here, not by the column's default: the rows come back matched by it.
            c.keys.push(Uuid::new_v4());
            c.image_ids.push(new.image_id);
            c.user_ids.push(new.user_id);
            c.display_names.push(new.display_name.clone());
            c.public_images.push(new.public_image);
            c.account_names.push(new.account_name.clone());
            c.keystone_urls.push(new.keystone_url.clone());
            c.keystone_versions.push(new.keystone_version.clone());
            c.keystone_domains.push(new.keystone_domain.clone());
            c.keystone_projects.push(new.keystone_project.clone());
            c.glance_urls.push(new.glance_url.clone());
            c.cloud_logins.push(new.cloud_login.clone());
            c.cloud_passwords_enc.push(new.cloud_password_enc.clone());
            c.bytes_totals.push(new.bytes_total);
            c.cloud_account_ids.push(new.cloud_account_id);
            c.publish_locations.push(new.publish_location.clone());
        }
        c
    }
}

/// Stores tickets, each with its outbox row and its `created` event, in one statement (one
/// round trip, atomic by itself; the events are not announced here:
/// `events::announce_created` announces a batch of them in one commit). Returns each ticket
/// as the API shows it with its outbox row's id (deleted once RabbitMQ confirmed the
/// message), in the order given.
pub async fn create_many<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    news: &[&NewTicket],
) -> Result<Vec<(Ticket, i64)>, sqlx::Error> {
    let c = Columns::of(news);
    // The ticket's row has one column more than `Ticket`, so it is a record, moved into a
    // `Ticket` field by field.
    let rows = ticket_query!(
        query!()
        "WITH new_ticket AS (
             INSERT INTO publish_tickets (ticket_key, image_id, user_id, display_name, public_image,
                 account_name, keystone_url, keystone_version, keystone_domain, keystone_project,
                 glance_url, cloud_login, cloud_password_enc, bytes_total, cloud_account_id,
                 publish_location, message)
             SELECT *, 'queued, waiting for a worker'
               FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::bool[],
                           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                           $11::text[], $12::text[], $13::bytea[], $14::bigint[], $15::bigint[],
                           $16::text[])
             RETURNING *),
         outbox AS (INSERT INTO ticket_outbox (ticket_id) SELECT id FROM new_ticket
                    RETURNING id, ticket_id),
         created AS (INSERT INTO ticket_events (ticket_id, kind, state, percentage, bytes_loaded,
                         bytes_total, message)
                     SELECT id, 'created', state, percentage, bytes_loaded, bytes_total, message
                       FROM new_ticket) ",
        ", o.id AS outbox_id",
        "new_ticket",
        "JOIN outbox o ON o.ticket_id = t.id",
        &c.keys,
        &c.image_ids,
        &c.user_ids,
        &c.display_names,
        &c.public_images,
        &c.account_names as &[Option<String>],
        &c.keystone_urls,
        &c.keystone_versions,
        &c.keystone_domains,
        &c.keystone_projects,
        &c.glance_urls as &[Option<String>],
        &c.cloud_logins,
        &c.cloud_passwords_enc,
        &c.bytes_totals,
        &c.cloud_account_ids as &[Option<i64>],
        &c.publish_locations as &[Option<String>],
    )
    .fetch_all(executor)
    .await?;
    let mut created: Vec<Option<(Ticket, i64)>> = news.iter().map(|_| None).collect();
    for row in rows {
        let at = c.keys.iter().position(|k| *k == row.ticket_key);
        let ticket = ticket_of_row!(row);
        if let Some(slot) = at.and_then(|i| created.get_mut(i)) {
            *slot = Some((ticket, row.outbox_id));
        }
    }
    // Every row came back (the statement is atomic): a gap would be a bug of this function.
    created
        .into_iter()
        .map(|c| c.ok_or(sqlx::Error::RowNotFound))
        .collect()
}

/// What `file_batch` did with one ticket.
#[derive(Debug)]
pub enum Filed {
    /// The ticket, and its outbox row's id (as `create` returns them).
    Created(Box<Ticket>, i64),
    /// The owner already has this many tickets queued or running: nothing was stored.
    OverQuota(i64),
}

/// Files tickets, one outcome per ticket, in the order given: all in one transaction (one
/// commit, `file_together`); when that fails, one by one, so that one bad ticket (its image
/// or account deleted meanwhile) fails alone, with the error it would have had alone.
pub async fn file_batch(
    pool: &PgPool,
    news: &[NewTicket],
    max_unfinished: i64,
) -> Vec<Result<Filed, sqlx::Error>> {
    match file_together(pool, news, max_unfinished).await {
        Ok(filed) => filed.into_iter().map(Ok).collect(),
        Err(e) if news.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::warn!(tickets = news.len(), error = %e, "a batch of publishes failed: filing them one by one");
            let mut outcomes = Vec::with_capacity(news.len());
            for new in news {
                let alone = file_together(pool, std::slice::from_ref(new), max_unfinished);
                outcomes.push(
                    alone
                        .await
                        .and_then(|mut f| f.pop().ok_or(sqlx::Error::RowNotFound)),
                );
            }
            outcomes
        }
    }
}

/// Files tickets in one transaction (one commit for them all): each is created unless its
/// owner already has `max_unfinished` tickets queued or running, counting those created
/// before it in the batch. The owners' rows are locked first (in id order: batches of other
/// API processes wait, never deadlock), so concurrent publishes of one user count one after
/// another and cannot overshoot together. Any error fails them all.
async fn file_together(
    pool: &PgPool,
    news: &[NewTicket],
    max_unfinished: i64,
) -> Result<Vec<Filed>, sqlx::Error> {
    let mut owners: Vec<i64> = news.iter().map(|n| n.user_id).collect();
    owners.sort_unstable();
    owners.dedup();
    let mut tx = pool.begin().await?;
    // NO KEY UPDATE: other inserts' foreign-key checks on the rows are not held up.
    sqlx::query!(
        "SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        &owners
    )
    .fetch_all(&mut *tx)
    .await?;
    // A statement of its own: its snapshot, taken after the locks, sees what the previous
    // holders committed.
    let mut unfinished = unfinished_of_users(&mut *tx, &owners, max_unfinished).await?;
    let mut accepted = Vec::with_capacity(news.len());
    // Per ticket: `Some(count)` over quota, `None` accepted.
    let mut refused = Vec::with_capacity(news.len());
    for new in news {
        let count = unfinished.entry(new.user_id).or_insert(0);
        if *count >= max_unfinished {
            refused.push(Some(*count));
        } else {
            *count += 1;
            accepted.push(new);
            refused.push(None);
        }
    }
    let mut created = create_many(&mut *tx, &accepted).await?.into_iter();
    tx.commit().await?;
    // `create_many` returns one row per ticket given, so every accepted ticket finds its own.
    refused
        .into_iter()
        .map(|over| match over {
            Some(count) => Some(Filed::OverQuota(count)),
            None => created.next().map(|(t, o)| Filed::Created(Box::new(t), o)),
        })
        .collect::<Option<Vec<Filed>>>()
        .ok_or(sqlx::Error::RowNotFound)
}

/// Tickets queued or running per user, of the users given, counted up to `limit` (the
/// quota): a user's backlog costs the count no more than the quota allows it to hold.
pub(super) async fn unfinished_of_users<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user_ids: &[i64],
    limit: i64,
) -> Result<std::collections::HashMap<i64, i64>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT u.id AS "user_id!",
                  (SELECT count(*) FROM (SELECT 1 FROM publish_tickets t
                                          WHERE t.user_id = u.id AND t.state IN ('queued', 'running')
                                          LIMIT $2) AS held) AS "count!"
             FROM UNNEST($1::bigint[]) AS u(id)"#,
        user_ids,
        limit
    )
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user_id, r.count)).collect())
}

pub async fn get<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: i64,
) -> Result<Option<Ticket>, sqlx::Error> {
    select_tickets!("WHERE t.id = $1", id)
        .fetch_optional(executor)
        .await
}

/// The ticket at its full path (owner, scanned instance, scan, image, ticket), in one query:
/// the path of every status poll. `None` when any part does not match.
pub async fn find_at(
    pool: &PgPool,
    owner_login: &str,
    (siid, sid, itid, pitid): (i64, i64, i64, i64),
) -> Result<Option<Ticket>, sqlx::Error> {
    select_tickets!(
        "WHERE u.login = $1 AND s.scanned_instance_id = $2 AND i.scan_id = $3
           AND t.image_id = $4 AND t.id = $5",
        owner_login,
        siid,
        sid,
        itid,
        pitid,
    )
    .fetch_optional(pool)
    .await
}

pub async fn list_of_image(pool: &PgPool, itid: i64) -> Result<Vec<Ticket>, sqlx::Error> {
    select_tickets!("WHERE t.image_id = $1 ORDER BY t.id", itid)
        .fetch_all(pool)
        .await
}

/// All tickets of a user, optionally of one image only.
pub async fn list_of_user(
    pool: &PgPool,
    owner_login: &str,
    image_id: Option<i64>,
) -> Result<Vec<Ticket>, sqlx::Error> {
    select_tickets!(
        "WHERE u.login = $1 AND ($2::bigint IS NULL OR t.image_id = $2) ORDER BY t.id",
        owner_login,
        image_id,
    )
    .fetch_all(pool)
    .await
}

/// A publication group's tickets, in the order they were filed.
pub async fn of_group(pool: &PgPool, group_id: i64) -> Result<Vec<Ticket>, sqlx::Error> {
    select_tickets!("WHERE t.group_id = $1 ORDER BY t.id", group_id)
        .fetch_all(pool)
        .await
}

/// Deletes a ticket record. In one transaction, before the row goes: what becomes of its
/// image (`cleanups::record_for_deleted`) and its `deleted` event, announced
/// (`events::record_deleted`). `false`: no such ticket.
pub async fn delete(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query_scalar!(
        "SELECT id FROM publish_tickets WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Ok(false);
    }
    cleanups::record_for_deleted(&mut tx, id).await?;
    super::groups::release_held_by(&mut tx, id).await?;
    events::record_deleted(&mut tx, id).await?;
    let done = sqlx::query!("DELETE FROM publish_tickets WHERE id = $1", id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}
