//! A worker's hold on a ticket: the claim (lease and fencing token), the progress writes that
//! extend the lease, and the end of the claim (final state, or the ticket given back).
//!
//! Worker writes are guarded by the fencing token of the claim they hold
//! (`WHERE id = $1 AND fencing_token = $2`), so a worker that lost its ticket cannot
//! overwrite the status written by the one that took it over.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::tickets::{self, Ticket, TicketState};
use super::{attempts, outbox};

/// What a worker holds after a successful claim: the ticket and its fencing token.
#[derive(Debug, Clone)]
pub struct Claim {
    pub ticket: Ticket,
    pub token: i64,
    /// The cloud it uploads to, as the per-cloud limit names it (`publish_tickets.cloud_host`).
    pub cloud_host: String,
}

/// Takes the ticket if it is queued, or running under an expired lease, and starts its
/// attempt row. Bumps the attempt count and the fencing token. A ticket that already had
/// `max_attempts` claims is not taken but ended in `error`, as the rescuer ends it.
/// `None`: someone else has it, or it has ended.
pub async fn claim(
    pool: &PgPool,
    id: i64,
    owner: &str,
    lease_secs: u32,
    max_attempts: i32,
) -> Result<Option<Claim>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query!(
        "UPDATE publish_tickets SET
             state = 'running', attempts = attempts + 1, fencing_token = fencing_token + 1,
             lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
             started_at = COALESCE(started_at, now()), message = 'starting', updated_at = now()
          WHERE id = $1 AND NOT cancel_requested AND attempts < $4
            AND (state = 'queued' OR (state = 'running' AND lease_expires_at < now()))
         RETURNING fencing_token, cloud_host",
        id,
        owner,
        lease_secs as f64,
        max_attempts
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(claimed) = claimed else {
        give_up_in(&mut tx, id, max_attempts).await?;
        tx.commit().await?;
        return Ok(None);
    };
    attempts::start_in(&mut tx, id, claimed.fencing_token, owner).await?;
    let claim = claimed_ticket(&mut tx, id, claimed.fencing_token, claimed.cloud_host).await?;
    tx.commit().await?;
    Ok(Some(claim))
}

/// Read in the claim's own transaction: a claim committed without its ticket read would
/// leave the ticket running with no worker until its lease expired.
async fn claimed_ticket(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    token: i64,
    cloud_host: String,
) -> Result<Claim, sqlx::Error> {
    let ticket = tickets::get(&mut **tx, id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(Claim {
        ticket,
        token,
        cloud_host,
    })
}

/// A cloud with tickets queued for it, and how many uploads run there over the whole pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudLoad {
    pub host: String,
    pub running: i64,
    pub queued: i64,
}

/// Every cloud with uploads running or tickets queued (not cancelled), read now.
pub async fn cloud_loads(pool: &PgPool) -> Result<Vec<CloudLoad>, sqlx::Error> {
    sqlx::query_as!(
        CloudLoad,
        r#"SELECT cloud_host AS "host!", sum(running)::bigint AS "running!", sum(queued)::bigint AS "queued!"
             FROM (SELECT cloud_host, 1 AS running, 0 AS queued FROM publish_tickets WHERE state = 'running'
                   UNION ALL
                   SELECT cloud_host, 0, 1 FROM publish_tickets WHERE state = 'queued' AND NOT cancel_requested) l
            GROUP BY cloud_host ORDER BY cloud_host"#
    )
    .fetch_all(pool)
    .await
}

/// What `claim_next` found.
#[derive(Debug)]
pub struct NextClaim {
    pub claim: Option<Claim>,
    /// The clouds, as read before the claim, with the limit of each.
    pub loads: Vec<(CloudLoad, u32)>,
}

/// Takes the fairest queued ticket whose cloud has a free upload slot: the one of the user
/// with the fewest uploads running, then the oldest. `limit_for` gives the most uploads that
/// may run at once to a cloud (by host) over the whole pool. Tickets others are claiming are
/// skipped (`SKIP LOCKED`); claims of one cloud take turns (an advisory lock per host) and
/// count its running uploads again under that lock, so no two workers both take its last
/// slot. Then as `claim`: lease, fencing token, attempt row.
pub async fn claim_next(
    pool: &PgPool,
    owner: &str,
    lease_secs: u32,
    max_attempts: i32,
    limit_for: impl Fn(&str) -> u32,
) -> Result<NextClaim, sqlx::Error> {
    let loads: Vec<(CloudLoad, u32)> = cloud_loads(pool)
        .await?
        .into_iter()
        .map(|load| {
            let limit = limit_for(&load.host);
            (load, limit)
        })
        .collect();
    let open: Vec<(&str, i32)> = loads
        .iter()
        .filter(|(load, limit)| load.queued > 0 && load.running < i64::from(*limit))
        .map(|(load, limit)| {
            (
                load.host.as_str(),
                i32::try_from(*limit).unwrap_or(i32::MAX),
            )
        })
        .collect();
    let mut claim = None;
    // A cloud found full under its lock is left out of the next try (its count is committed).
    for _ in 0..open.len().min(4) {
        let (hosts, limits): (Vec<&str>, Vec<i32>) = open.iter().copied().unzip();
        let hosts: Vec<String> = hosts.into_iter().map(str::to_string).collect();
        let mut tx = pool.begin().await?;
        let Some(candidate) = sqlx::query!(
            r#"WITH running AS (SELECT user_id, cloud_host FROM publish_tickets WHERE state = 'running'),
                    per_user AS (SELECT user_id, count(*) AS n FROM running GROUP BY user_id),
                    open AS (SELECT l.host, l.max FROM unnest($1::text[], $2::int[]) AS l(host, max)
                              WHERE (SELECT count(*) FROM running r WHERE r.cloud_host = l.host) < l.max)
               SELECT t.id, t.cloud_host, o.max AS "max!" FROM publish_tickets t
                 JOIN open o ON o.host = t.cloud_host
                 LEFT JOIN per_user u ON u.user_id = t.user_id
                WHERE t.state = 'queued' AND NOT t.cancel_requested AND t.attempts < $3
                ORDER BY COALESCE(u.n, 0), t.created_at, t.id
                LIMIT 1
                FOR UPDATE OF t SKIP LOCKED"#,
            &hosts,
            &limits,
            max_attempts
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.commit().await?;
            break;
        };
        // The lock first, then the count in a statement of its own: its snapshot then holds
        // every claim of this cloud committed before the lock was granted.
        sqlx::query!(
            "SELECT 1 AS turn FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 14))) l",
            candidate.cloud_host
        )
        .fetch_one(&mut *tx)
        .await?;
        let running = sqlx::query_scalar!(
            r#"SELECT count(*) AS "running!" FROM publish_tickets
                WHERE state = 'running' AND cloud_host = $1"#,
            candidate.cloud_host
        )
        .fetch_one(&mut *tx)
        .await?;
        if running >= i64::from(candidate.max) {
            tx.rollback().await?;
            continue;
        }
        let token = sqlx::query_scalar!(
            "UPDATE publish_tickets SET
                 state = 'running', attempts = attempts + 1, fencing_token = fencing_token + 1,
                 lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
                 started_at = COALESCE(started_at, now()), message = 'starting', updated_at = now()
              WHERE id = $1 AND state = 'queued'
             RETURNING fencing_token",
            candidate.id,
            owner,
            lease_secs as f64
        )
        .fetch_one(&mut *tx)
        .await?;
        attempts::start_in(&mut tx, candidate.id, token, owner).await?;
        claim = Some(claimed_ticket(&mut tx, candidate.id, token, candidate.cloud_host).await?);
        tx.commit().await?;
        break;
    }
    if claim.is_none() {
        give_up_queued(pool, max_attempts).await?;
    }
    Ok(NextClaim { claim, loads })
}

/// Ends in `error` the queued tickets that already had `max_attempts` claims (possible only
/// after `worker.max_ticket_attempts` was lowered): no claim takes them, as `claim` would not.
async fn give_up_queued(pool: &PgPool, max_attempts: i32) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gave_up = sqlx::query_scalar!(
        "UPDATE publish_tickets SET state = 'error', eta = NULL,
             error_message = 'gave up after ' || attempts || ' attempts: the worker running it stopped each time',
             message = 'failed: gave up after ' || attempts || ' attempts',
             lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
          WHERE state = 'queued' AND NOT cancel_requested AND attempts >= $1
         RETURNING id",
        max_attempts
    )
    .fetch_all(&mut *tx)
    .await?;
    for id in gave_up {
        attempts::end_abandoned_in(&mut tx, id).await?;
    }
    tx.commit().await
}

/// Writes into the status of every queued ticket of a full cloud (of `clouds`: host and
/// limit) that it waits for a slot ("queued: 8 uploads already running to glance.example.com,
/// limit 8"). Rows being claimed are skipped; the next call writes them.
pub async fn mark_waiting(pool: &PgPool, clouds: &[(String, u32)]) -> Result<u64, sqlx::Error> {
    let hosts: Vec<String> = clouds.iter().map(|(host, _)| host.clone()).collect();
    let limits: Vec<i32> = clouds
        .iter()
        .map(|(_, limit)| i32::try_from(*limit).unwrap_or(i32::MAX))
        .collect();
    let marked = sqlx::query!(
        "WITH full_cloud AS (
             SELECT l.host, format('queued: %s uploads already running to %s, limit %s', r.n, l.host, l.max) AS message
               FROM unnest($1::text[], $2::int[]) AS l(host, max)
              CROSS JOIN LATERAL (SELECT count(*) AS n FROM publish_tickets x
                                   WHERE x.state = 'running' AND x.cloud_host = l.host) r
              WHERE r.n >= l.max),
         waiting AS (
             SELECT t.id, f.message FROM publish_tickets t JOIN full_cloud f ON f.host = t.cloud_host
              WHERE t.state = 'queued' AND t.message <> f.message
              FOR UPDATE OF t SKIP LOCKED)
         UPDATE publish_tickets t SET message = w.message, updated_at = now()
           FROM waiting w WHERE t.id = w.id",
        &hosts,
        &limits
    )
    .execute(pool)
    .await?;
    Ok(marked.rows_affected())
}

/// Ends in `error` a claimable ticket that used up its attempts (no-op otherwise).
async fn give_up_in(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    let gave_up = sqlx::query!(
        "UPDATE publish_tickets SET state = 'error', eta = NULL,
             error_message = 'gave up after ' || attempts || ' attempts: the worker running it stopped each time',
             message = 'failed: gave up after ' || attempts || ' attempts',
             lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
          WHERE id = $1 AND NOT cancel_requested AND attempts >= $2
            AND (state = 'queued' OR (state = 'running' AND lease_expires_at < now()))",
        id,
        max_attempts
    )
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if gave_up {
        attempts::end_abandoned_in(tx, id).await?;
    }
    Ok(())
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

impl Heartbeat {
    /// From the `cancel_requested` a lease-extending write returned, if its row matched.
    fn from_cancel_requested(cancel_requested: Option<bool>) -> Heartbeat {
        match cancel_requested {
            None => Heartbeat::Lost,
            Some(true) => Heartbeat::CancelRequested,
            Some(false) => Heartbeat::Held,
        }
    }
}

pub async fn report_progress(
    pool: &PgPool,
    id: i64,
    token: i64,
    progress: &Progress,
    lease_secs: u32,
) -> Result<Heartbeat, sqlx::Error> {
    // GREATEST: the percentage users see never goes down, even across attempts.
    let cancel_requested = sqlx::query_scalar!(
        "UPDATE publish_tickets SET
             message = $3, bytes_loaded = $4, bytes_total = $5,
             percentage = GREATEST(percentage, $6), eta = $7,
             lease_expires_at = now() + make_interval(secs => $8), updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING cancel_requested",
        id,
        token,
        progress.message,
        progress.bytes_loaded,
        progress.bytes_total,
        progress.percentage.clamp(0, 100),
        progress.eta,
        lease_secs as f64
    )
    .fetch_optional(pool)
    .await?;
    Ok(Heartbeat::from_cancel_requested(cancel_requested))
}

/// Extends the lease without touching the status (between progress writes, e.g. while
/// Keystone is slow to answer), and reports a requested cancel or a lost claim.
pub async fn extend_lease(
    pool: &PgPool,
    id: i64,
    token: i64,
    lease_secs: u32,
) -> Result<Heartbeat, sqlx::Error> {
    let cancel_requested = sqlx::query_scalar!(
        "UPDATE publish_tickets SET lease_expires_at = now() + make_interval(secs => $3)
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING cancel_requested",
        id,
        token,
        lease_secs as f64
    )
    .fetch_optional(pool)
    .await?;
    Ok(Heartbeat::from_cancel_requested(cancel_requested))
}

/// Records the Glance image id as soon as it exists, so cleanup can find it.
pub async fn set_cloud_id(
    pool: &PgPool,
    id: i64,
    token: i64,
    cloud_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE publish_tickets SET cloud_id = $3, updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'",
        id,
        token,
        cloud_id
    )
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

/// Writes the final state, and returns it; `None`: the claim was lost and nothing was
/// written. A cancel requested before the end wins over a publication: the ticket ends
/// `cancelled`, and (like every end but `complete`) its image is left to the reconciler
/// (the migration's trigger records the cleanup in this same statement). The attempt ends
/// in the same transaction.
pub async fn finish(
    pool: &PgPool,
    id: i64,
    token: i64,
    outcome: &Outcome,
) -> Result<Option<TicketState>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let state = match outcome {
        Outcome::Published { cloud_id, bytes } => {
            sqlx::query_scalar!(
                r#"UPDATE publish_tickets SET
                     state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'complete' END,
                     cloud_id = $3, eta = NULL,
                     percentage = CASE WHEN cancel_requested THEN percentage ELSE 100 END,
                     bytes_loaded = $4, bytes_total = $4,
                     message = CASE WHEN cancel_requested
                                    THEN 'cancelled as it was published; removing the image from the cloud'
                                    ELSE 'published as Glance image ' || $3 END,
                     lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
                  WHERE id = $1 AND fencing_token = $2 AND state = 'running'
                 RETURNING state AS "state: TicketState""#,
                id,
                token,
                cloud_id,
                bytes
            )
            .fetch_optional(&mut *tx)
            .await?
        }
        Outcome::Failed {
            error_message,
            detail,
        } => {
            sqlx::query_scalar!(
                r#"UPDATE publish_tickets SET state = 'error', error_message = $3, detailed_error_msg = $4,
                     eta = NULL, message = 'failed: ' || $3,
                     lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
                  WHERE id = $1 AND fencing_token = $2 AND state = 'running'
                 RETURNING state AS "state: TicketState""#,
                id,
                token,
                error_message,
                detail.as_deref()
            )
            .fetch_optional(&mut *tx)
            .await?
        }
        Outcome::Cancelled => {
            // cloud_id stays until the reconciler has Glance's word that the image is gone.
            sqlx::query_scalar!(
                r#"UPDATE publish_tickets SET state = 'cancelled', eta = NULL,
                     message = 'cancelled; removing the partial image from the cloud',
                     lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
                  WHERE id = $1 AND fencing_token = $2 AND state = 'running'
                 RETURNING state AS "state: TicketState""#,
                id,
                token
            )
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    if state.is_some() {
        let (how, error) = match outcome {
            Outcome::Published { .. } => (attempts::AttemptEnd::Published, None),
            Outcome::Failed { error_message, .. } => {
                (attempts::AttemptEnd::Failed, Some(error_message.as_str()))
            }
            Outcome::Cancelled => (attempts::AttemptEnd::Cancelled, None),
        };
        attempts::end(&mut *tx, id, token, how, error).await?;
    }
    tx.commit().await?;
    Ok(state)
}

/// Gives a claimed ticket back (graceful shutdown): queued again at once, with an outbox
/// row (its id is returned), and this attempt not counted (ended as `released`, in the same
/// transaction). `None`: the claim was lost.
pub async fn release(pool: &PgPool, id: i64, token: i64) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query!(
        "UPDATE publish_tickets SET state = 'queued', attempts = GREATEST(attempts - 1, 0), eta = NULL,
             message = 'worker stopped, resuming on another worker', cloud_id = NULL,
             lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running' AND NOT cancel_requested",
        id,
        token
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let outbox_id = if released {
        attempts::end(&mut *tx, id, token, attempts::AttemptEnd::Released, None).await?;
        Some(outbox::enqueue_in(&mut tx, id).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(outbox_id)
}
