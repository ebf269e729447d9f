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
                   t.keystone_project AS "keystone_project!", t.glance_url,
                   t.cloud_login AS "cloud_login!", t.cloud_password_enc AS "cloud_password_enc!",
                   t.state AS "state!: TicketState", t.attempts AS "attempts!",
                   t.fencing_token AS "fencing_token!", t.cancel_requested AS "cancel_requested!",
                   t.message AS "message!", t.percentage AS "percentage!",
                   t.bytes_loaded AS "bytes_loaded!", t.bytes_total AS "bytes_total!", t.eta,
                   t.error_message, t.detailed_error_msg, t.cloud_id,
                   t.created_at AS "created_at!", t.updated_at AS "updated_at!", t.started_at,
                   t.finished_at"#
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

/// `Ticket` rows of the tickets table matching `$clause` (WHERE, ORDER BY ...).
macro_rules! select_tickets {
    ($clause:tt $(, $arg:expr)* $(,)?) => {
        ticket_query!(query_as!(Ticket,) "", "", "publish_tickets", $clause $(, $arg)*)
    };
}

pub struct NewTicket<'a> {
    pub image_id: i64,
    pub user_id: i64,
    pub display_name: &'a str,
    pub public_image: bool,
    pub account_name: Option<&'a str>,
    pub keystone_url: &'a str,
    pub keystone_version: &'a str,
    pub keystone_domain: &'a str,
    pub keystone_project: &'a str,
    pub glance_url: Option<&'a str>,
    pub cloud_login: &'a str,
    pub cloud_password_enc: &'a [u8],
    pub bytes_total: i64,
    /// The stored account it publishes with (`store::accounts`), if it names one.
    pub cloud_account_id: Option<i64>,
}

/// Stores a ticket, its outbox row and its `created` event in one transaction (the event is
/// not announced here: `events::announce_created` announces a batch of them in one commit).
/// Returns the ticket and the outbox row id, which the caller deletes once RabbitMQ
/// confirmed the message.
pub async fn create<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    new: &NewTicket<'_>,
) -> Result<(Ticket, i64), sqlx::Error> {
    // One statement (one round trip, atomic by itself, as fast as the insert alone): the
    // ticket, its outbox row, its event (the one event not written by `events`), and the
    // ticket read back as the API shows it. Its row has one column more than `Ticket`, so it
    // is a record, moved into a `Ticket` field by field.
    let row = ticket_query!(
        query!()
        "WITH new_ticket AS (
             INSERT INTO publish_tickets (image_id, user_id, display_name, public_image, account_name,
                 keystone_url, keystone_version, keystone_domain, keystone_project, glance_url,
                 cloud_login, cloud_password_enc, bytes_total, cloud_account_id, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'queued, waiting for a worker')
             RETURNING *),
         outbox AS (INSERT INTO ticket_outbox (ticket_id) SELECT id FROM new_ticket RETURNING id),
         created AS (INSERT INTO ticket_events (ticket_id, kind, state, percentage, bytes_loaded,
                         bytes_total, message)
                     SELECT id, 'created', state, percentage, bytes_loaded, bytes_total, message
                       FROM new_ticket) ",
        ", o.id AS outbox_id",
        "new_ticket",
        "CROSS JOIN outbox o",
        new.image_id,
        new.user_id,
        new.display_name,
        new.public_image,
        new.account_name,
        new.keystone_url,
        new.keystone_version,
        new.keystone_domain,
        new.keystone_project,
        new.glance_url,
        new.cloud_login,
        new.cloud_password_enc,
        new.bytes_total,
        new.cloud_account_id,
    )
    .fetch_one(executor)
    .await?;
    let ticket = Ticket {
        id: row.id,
        ticket_key: row.ticket_key,
        image_id: row.image_id,
        scan_id: row.scan_id,
        scanned_instance_id: row.scanned_instance_id,
        owner_login: row.owner_login,
        display_name: row.display_name,
        public_image: row.public_image,
        account_name: row.account_name,
        keystone_url: row.keystone_url,
        keystone_version: row.keystone_version,
        keystone_domain: row.keystone_domain,
        keystone_project: row.keystone_project,
        glance_url: row.glance_url,
        cloud_login: row.cloud_login,
        cloud_password_enc: row.cloud_password_enc,
        state: row.state,
        attempts: row.attempts,
        fencing_token: row.fencing_token,
        cancel_requested: row.cancel_requested,
        message: row.message,
        percentage: row.percentage,
        bytes_loaded: row.bytes_loaded,
        bytes_total: row.bytes_total,
        eta: row.eta,
        error_message: row.error_message,
        detailed_error_msg: row.detailed_error_msg,
        cloud_id: row.cloud_id,
        created_at: row.created_at,
        updated_at: row.updated_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
    };
    Ok((ticket, row.outbox_id))
}

/// What `create_within_quota` did.
pub enum Filed {
    /// The ticket, and its outbox row's id (as `create` returns them).
    Created(Box<Ticket>, i64),
    /// The owner already has this many tickets queued or running: nothing was stored.
    OverQuota(i64),
}

/// `create`, unless the owner already has `max_unfinished` tickets queued or running. The
/// owner's row is locked first, so concurrent publishes of one user (through any API
/// process) count one after another and cannot overshoot together.
pub async fn create_within_quota(
    pool: &PgPool,
    new: &NewTicket<'_>,
    max_unfinished: i64,
) -> Result<Filed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // NO KEY UPDATE: other inserts' foreign-key checks on the row are not held up.
    sqlx::query!(
        "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE",
        new.user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    // A statement of its own: its snapshot, taken after the lock, sees what the previous
    // holder committed.
    let unfinished = unfinished_of_user(&mut *tx, new.user_id).await?;
    if unfinished >= max_unfinished {
        return Ok(Filed::OverQuota(unfinished));
    }
    let (ticket, outbox_id) = create(&mut *tx, new).await?;
    tx.commit().await?;
    Ok(Filed::Created(Box::new(ticket), outbox_id))
}

/// The user's tickets queued or running.
pub async fn unfinished_of_user<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user_id: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM publish_tickets
            WHERE user_id = $1 AND state IN ('queued', 'running')"#,
        user_id
    )
    .fetch_one(executor)
    .await
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
    events::record_deleted(&mut tx, id).await?;
    let done = sqlx::query!("DELETE FROM publish_tickets WHERE id = $1", id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Tickets per state, for the `pimage_tickets` gauge.
pub async fn count_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows =
        sqlx::query!(r#"SELECT state, count(*) AS "count!" FROM publish_tickets GROUP BY state"#)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
}
