//! Publish tickets: their request, their life (state, lease, fencing token) and their status.
//!
//! Worker writes are guarded by the fencing token of the claim they hold
//! (`WHERE id = $1 AND fencing_token = $2`), so a worker that lost its ticket cannot
//! overwrite the status written by the one that took it over.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

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

const SELECT_TICKET: &str =
    "SELECT t.id, t.ticket_key, t.image_id, i.scan_id, s.scanned_instance_id,
        u.login AS owner_login, t.display_name, t.public_image, t.account_name, t.keystone_url,
        t.keystone_version, t.keystone_domain, t.keystone_project, t.glance_url, t.cloud_login,
        t.cloud_password_enc, t.state, t.attempts, t.fencing_token, t.cancel_requested, t.message,
        t.percentage, t.bytes_loaded, t.bytes_total, t.eta, t.error_message, t.detailed_error_msg,
        t.cloud_id, t.created_at, t.updated_at, t.started_at, t.finished_at
   FROM publish_tickets t
   JOIN images i ON i.id = t.image_id
   JOIN scans s ON s.id = i.scan_id
   JOIN users u ON u.id = t.user_id";

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
}

/// Stores a ticket and its outbox row in one transaction. Returns the ticket and the
/// outbox row id, which the caller deletes once RabbitMQ confirmed the message.
pub async fn create(pool: &PgPool, new: &NewTicket<'_>) -> Result<(Ticket, i64), sqlx::Error> {
    // One statement (one round trip, atomic by itself): the ticket, its outbox row, and the
    // ticket read back as the API shows it.
    #[derive(sqlx::FromRow)]
    struct Created {
        #[sqlx(flatten)]
        ticket: Ticket,
        outbox_id: i64,
    }
    let select = SELECT_TICKET
        .replace(
            "FROM publish_tickets t",
            "FROM new_ticket t CROSS JOIN outbox o",
        )
        .replace("t.finished_at", "t.finished_at, o.id AS outbox_id");
    let created = sqlx::query_as::<_, Created>(&format!(
        "WITH new_ticket AS (
             INSERT INTO publish_tickets (image_id, user_id, display_name, public_image, account_name,
                 keystone_url, keystone_version, keystone_domain, keystone_project, glance_url,
                 cloud_login, cloud_password_enc, bytes_total, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'queued, waiting for a worker')
             RETURNING *),
         outbox AS (INSERT INTO ticket_outbox (ticket_id) SELECT id FROM new_ticket RETURNING id)
         {select}"
    ))
    .bind(new.image_id)
    .bind(new.user_id)
    .bind(new.display_name)
    .bind(new.public_image)
    .bind(new.account_name)
    .bind(new.keystone_url)
    .bind(new.keystone_version)
    .bind(new.keystone_domain)
    .bind(new.keystone_project)
    .bind(new.glance_url)
    .bind(new.cloud_login)
    .bind(new.cloud_password_enc)
    .bind(new.bytes_total)
    .fetch_one(pool)
    .await?;
    Ok((created.ticket, created.outbox_id))
}

/// Adds the ticket's outbox row: the promise, in the caller's transaction, that it will be
/// handed to RabbitMQ. Returns the row's id.
async fn enqueue_in(
    tx: &mut Transaction<'_, Postgres>,
    ticket_id: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO ticket_outbox (ticket_id) VALUES ($1) RETURNING id")
        .bind(ticket_id)
        .fetch_one(&mut **tx)
        .await
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Ticket>, sqlx::Error> {
    sqlx::query_as::<_, Ticket>(&format!("{SELECT_TICKET} WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The ticket at its full path (owner, scanned instance, scan, image, ticket), in one query:
/// the path of every status poll. `None` when any part does not match.
pub async fn find_at(
    pool: &PgPool,
    owner_login: &str,
    (siid, sid, itid, pitid): (i64, i64, i64, i64),
) -> Result<Option<Ticket>, sqlx::Error> {
    sqlx::query_as::<_, Ticket>(&format!(
        "{SELECT_TICKET} WHERE u.login = $1 AND s.scanned_instance_id = $2 AND i.scan_id = $3
                           AND t.image_id = $4 AND t.id = $5"
    ))
    .bind(owner_login)
    .bind(siid)
    .bind(sid)
    .bind(itid)
    .bind(pitid)
    .fetch_optional(pool)
    .await
}

pub async fn list_of_image(pool: &PgPool, itid: i64) -> Result<Vec<Ticket>, sqlx::Error> {
    sqlx::query_as::<_, Ticket>(&format!(
        "{SELECT_TICKET} WHERE t.image_id = $1 ORDER BY t.id"
    ))
    .bind(itid)
    .fetch_all(pool)
    .await
}

/// All tickets of a user, optionally of one image only.
pub async fn list_of_user(
    pool: &PgPool,
    owner_login: &str,
    image_id: Option<i64>,
) -> Result<Vec<Ticket>, sqlx::Error> {
    sqlx::query_as::<_, Ticket>(&format!(
        "{SELECT_TICKET} WHERE u.login = $1 AND ($2::bigint IS NULL OR t.image_id = $2) ORDER BY t.id"
    ))
    .bind(owner_login)
    .bind(image_id)
    .fetch_all(pool)
    .await
}

#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was still queued: it is cancelled now and will never start.
    Cancelled,
    /// A worker runs it: the worker stops the upload and cleans up.
    Requested,
    /// It had already ended (complete, error or cancelled).
    AlreadyFinished(TicketState),
    NotFound,
}

/// Postgres NOTIFY channel carrying the ids of tickets whose cancel was requested.
pub const CANCEL_CHANNEL: &str = "pimage_ticket_cancel";

pub async fn request_cancel(pool: &PgPool, id: i64) -> Result<CancelOutcome, sqlx::Error> {
    // One statement, so a worker's concurrent claim sees either the cancel or nothing.
    let row: Option<(TicketState, TicketState)> = sqlx::query_as(
        "WITH before AS (SELECT state FROM publish_tickets WHERE id = $1 FOR UPDATE)
         UPDATE publish_tickets t SET
             cancel_requested = true,
             state = CASE WHEN t.state = 'queued' THEN 'cancelled' ELSE t.state END,
             message = CASE WHEN t.state = 'queued' THEN 'cancelled before it started'
                            ELSE 'cancel requested, stopping the upload' END,
             finished_at = CASE WHEN t.state = 'queued' THEN now() ELSE t.finished_at END,
             updated_at = now()
           FROM before
          WHERE t.id = $1 AND t.state IN ('queued', 'running')
         RETURNING before.state, t.state",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((TicketState::Queued, _)) => CancelOutcome::Cancelled,
        Some(_) => {
            // Wakes the worker that runs it at once; its progress writes are the fallback.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CANCEL_CHANNEL)
                .bind(id.to_string())
                .execute(pool)
                .await?;
            CancelOutcome::Requested
        }
        None => match get(pool, id).await? {
            Some(t) => CancelOutcome::AlreadyFinished(t.state),
            None => CancelOutcome::NotFound,
        },
    })
}

pub async fn delete(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM publish_tickets WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

// ---- outbox -------------------------------------------------------------------------

pub async fn outbox_done(pool: &PgPool, outbox_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ticket_outbox WHERE id = $1")
        .bind(outbox_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Outbox rows older than `min_age_secs`, locked for this transaction (other relays skip them).
pub async fn outbox_claim_stale(
    tx: &mut Transaction<'_, Postgres>,
    min_age_secs: f64,
    limit: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, ticket_id FROM ticket_outbox
          WHERE created_at < now() - make_interval(secs => $1)
          ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(min_age_secs)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

pub async fn outbox_delete_in(
    tx: &mut Transaction<'_, Postgres>,
    outbox_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ticket_outbox WHERE id = $1")
        .bind(outbox_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// ---- worker side ----------------------------------------------------------------------

/// What a worker holds after a successful claim: the ticket and its fencing token.
#[derive(Debug, Clone)]
pub struct Claim {
    pub ticket: Ticket,
    pub token: i64,
}

/// Takes the ticket if it is queued, or running under an expired lease. Bumps the attempt
/// count and the fencing token. `None`: someone else has it, or it has ended.
pub async fn claim(
    pool: &PgPool,
    id: i64,
    owner: &str,
    lease_secs: u32,
) -> Result<Option<Claim>, sqlx::Error> {
    let token: Option<i64> = sqlx::query_scalar(
        "UPDATE publish_tickets SET
             state = 'running', attempts = attempts + 1, fencing_token = fencing_token + 1,
             lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
             started_at = COALESCE(started_at, now()), message = 'starting', updated_at = now()
          WHERE id = $1 AND NOT cancel_requested
            AND (state = 'queued' OR (state = 'running' AND lease_expires_at < now()))
         RETURNING fencing_token",
    )
    .bind(id)
    .bind(owner)
    .bind(lease_secs as f64)
    .fetch_optional(pool)
    .await?;
    let Some(token) = token else { return Ok(None) };
    let ticket = get(pool, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(Some(Claim { ticket, token }))
}

/// A progress write: also a heartbeat that extends the lease.
#[derive(Debug, Clone)]
pub struct Progress {
    pub message: String,
    pub bytes_loaded: i64,
    pub bytes_total: i64,
    pub percentage: i32,
    pub eta: Option<DateTime<Utc>>,
}

/// What the worker learns from a progress write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Held,
    CancelRequested,
    /// No row matched the fencing token: another worker owns the ticket now.
    Lost,
}

pub async fn report_progress(
    pool: &PgPool,
    id: i64,
    token: i64,
    progress: &Progress,
    lease_secs: u32,
) -> Result<Heartbeat, sqlx::Error> {
    // GREATEST: the percentage users see never goes down, even across attempts.
    let cancel: Option<bool> = sqlx::query_scalar(
        "UPDATE publish_tickets SET
             message = $3, bytes_loaded = $4, bytes_total = $5,
             percentage = GREATEST(percentage, $6), eta = $7,
             lease_expires_at = now() + make_interval(secs => $8), updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING cancel_requested",
    )
    .bind(id)
    .bind(token)
    .bind(&progress.message)
    .bind(progress.bytes_loaded)
    .bind(progress.bytes_total)
    .bind(progress.percentage.clamp(0, 100))
    .bind(progress.eta)
    .bind(lease_secs as f64)
    .fetch_optional(pool)
    .await?;
    Ok(match cancel {
        None => Heartbeat::Lost,
        Some(true) => Heartbeat::CancelRequested,
        Some(false) => Heartbeat::Held,
    })
}

/// Extends the lease without touching the status (between progress writes, e.g. while
/// Keystone is slow to answer), and reports a requested cancel or a lost claim.
pub async fn extend_lease(
    pool: &PgPool,
    id: i64,
    token: i64,
    lease_secs: u32,
) -> Result<Heartbeat, sqlx::Error> {
    let cancel: Option<bool> = sqlx::query_scalar(
        "UPDATE publish_tickets SET lease_expires_at = now() + make_interval(secs => $3)
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING cancel_requested",
    )
    .bind(id)
    .bind(token)
    .bind(lease_secs as f64)
    .fetch_optional(pool)
    .await?;
    Ok(match cancel {
        None => Heartbeat::Lost,
        Some(true) => Heartbeat::CancelRequested,
        Some(false) => Heartbeat::Held,
    })
}

/// Records the Glance image id as soon as it exists, so cleanup can find it.
pub async fn set_cloud_id(
    pool: &PgPool,
    id: i64,
    token: i64,
    cloud_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE publish_tickets SET cloud_id = $3, updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(cloud_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How a claimed ticket ends.
#[derive(Debug, Clone)]
pub enum Outcome {
    Published {
        cloud_id: String,
        bytes: i64,
    },
    Failed {
        error_message: String,
        detail: Option<String>,
    },
    Cancelled,
}

/// Writes the final state. `false`: the claim was lost and nothing was written.
pub async fn finish(
    pool: &PgPool,
    id: i64,
    token: i64,
    outcome: &Outcome,
) -> Result<bool, sqlx::Error> {
    let query = match outcome {
        Outcome::Published { cloud_id, bytes } => sqlx::query(
            "UPDATE publish_tickets SET state = 'complete', cloud_id = $3, percentage = 100,
                 bytes_loaded = $4, bytes_total = $4, eta = NULL,
                 message = 'published as Glance image ' || $3,
                 lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
              WHERE id = $1 AND fencing_token = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(cloud_id)
        .bind(bytes),
        Outcome::Failed { error_message, detail } => sqlx::query(
            "UPDATE publish_tickets SET state = 'error', error_message = $3, detailed_error_msg = $4,
                 eta = NULL, message = 'failed: ' || $3,
                 lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
              WHERE id = $1 AND fencing_token = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(error_message)
        .bind(detail),
        Outcome::Cancelled => sqlx::query(
            "UPDATE publish_tickets SET state = 'cancelled', eta = NULL, cloud_id = NULL,
                 message = 'cancelled; the partial image was removed from the cloud',
                 lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
              WHERE id = $1 AND fencing_token = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(token),
    };
    Ok(query.execute(pool).await?.rows_affected() == 1)
}

/// A queued ticket untouched this long is handed to RabbitMQ again (see `rescue_expired`).
const STALE_QUEUED_SECS: f64 = 600.0;

/// What one rescuer pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// Tickets re-queued, with the outbox row each got: (ticket id, outbox id).
    pub requeued: Vec<(i64, i64)>,
    /// Tickets ended in `error` because they used up their attempts.
    pub gave_up: Vec<i64>,
}

/// Re-queues running tickets whose lease expired (their worker stopped writing progress),
/// and ends in `error` those that already had `max_attempts` claims. One statement each,
/// under row locks: two rescuers running at once never both take the same ticket.
pub async fn rescue_expired(pool: &PgPool, max_attempts: i32) -> Result<Rescued, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gave_up: Vec<i64> = sqlx::query_scalar(
        "UPDATE publish_tickets SET state = 'error', eta = NULL,
             error_message = 'gave up after ' || attempts || ' attempts: the worker running it stopped each time',
             message = 'failed: gave up after ' || attempts || ' attempts',
             lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
          WHERE state = 'running' AND lease_expires_at < now() AND attempts >= $1
         RETURNING id",
    )
    .bind(max_attempts)
    .fetch_all(&mut *tx)
    .await?;
    // A cancel requested while the worker was lost is honoured now, not re-queued.
    sqlx::query(
        "UPDATE publish_tickets SET state = 'cancelled', eta = NULL,
             message = 'cancelled (its worker was lost before it could stop)',
             lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
          WHERE state = 'running' AND lease_expires_at < now() AND cancel_requested",
    )
    .execute(&mut *tx)
    .await?;
    let mut requeued: Vec<(i64, i64)> = sqlx::query_as(
        "WITH lost AS (
             UPDATE publish_tickets SET state = 'queued', eta = NULL,
                 message = 'worker lost, resuming on another worker',
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
              WHERE state = 'running' AND lease_expires_at < now()
             RETURNING id)
         INSERT INTO ticket_outbox (ticket_id) SELECT id FROM lost RETURNING ticket_id, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    // Safety net for a message lost on the way (dead-lettered, purged queue): a ticket
    // queued for long with no outbox row gets a new one. Duplicates are harmless: the
    // claim takes a ticket once.
    let stale: Vec<(i64, i64)> = sqlx::query_as(
        "WITH stale AS (
             UPDATE publish_tickets t SET updated_at = now()
              WHERE t.state = 'queued' AND NOT t.cancel_requested
                AND t.updated_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM ticket_outbox o WHERE o.ticket_id = t.id)
             RETURNING t.id)
         INSERT INTO ticket_outbox (ticket_id) SELECT id FROM stale RETURNING ticket_id, id",
    )
    .bind(STALE_QUEUED_SECS)
    .fetch_all(&mut *tx)
    .await?;
    requeued.extend(stale);
    tx.commit().await?;
    Ok(Rescued { requeued, gave_up })
}

/// Gives a claimed ticket back (graceful shutdown): queued again at once, with an outbox
/// row (its id is returned), and this attempt not counted. `None`: the claim was lost.
pub async fn release(pool: &PgPool, id: i64, token: i64) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query(
        "UPDATE publish_tickets SET state = 'queued', attempts = GREATEST(attempts - 1, 0), eta = NULL,
             message = 'worker stopped, resuming on another worker', cloud_id = NULL,
             lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running' AND NOT cancel_requested",
    )
    .bind(id)
    .bind(token)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let outbox_id = if released {
        Some(enqueue_in(&mut tx, id).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(outbox_id)
}

// ---- operators -----------------------------------------------------------------------

/// The newest tickets, optionally of one state, for `pimage tickets list`.
pub async fn list_recent(
    pool: &PgPool,
    state: Option<TicketState>,
    limit: i64,
) -> Result<Vec<Ticket>, sqlx::Error> {
    sqlx::query_as::<_, Ticket>(&format!(
        "{SELECT_TICKET} WHERE ($1::text IS NULL OR t.state = $1) ORDER BY t.id DESC LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Runs a failed or cancelled ticket again: queued, status reset, with an outbox row (its id
/// is returned). `None`: no such ticket, or it has not failed or been cancelled.
pub async fn retry(pool: &PgPool, id: i64) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let reset = sqlx::query(
        "UPDATE publish_tickets SET state = 'queued', attempts = 0, cancel_requested = false,
             message = 'queued again by an operator, waiting for a worker', percentage = 0,
             bytes_loaded = 0, eta = NULL, error_message = NULL, detailed_error_msg = NULL,
             cloud_id = NULL, lease_owner = NULL, lease_expires_at = NULL, started_at = NULL,
             finished_at = NULL, updated_at = now()
          WHERE id = $1 AND state IN ('error', 'cancelled')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let outbox_id = if reset {
        Some(enqueue_in(&mut tx, id).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(outbox_id)
}

// ---- metrics -------------------------------------------------------------------------

pub async fn count_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT state, count(*) FROM publish_tickets GROUP BY state")
        .fetch_all(pool)
        .await
}

/// Outbox rows waiting, and the age in seconds of the oldest.
pub async fn outbox_lag(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) FROM ticket_outbox",
    )
    .fetch_one(pool)
    .await
}
