//! A worker's hold on a ticket: the claim (lease and fencing token), the progress writes that
//! extend the lease, and the end of the claim (final state, or the ticket given back).
//!
//! Worker writes are guarded by the fencing token of the claim they hold
//! (`WHERE id = $1 AND fencing_token = $2`), so a worker that lost its ticket cannot
//! overwrite the status written by the one that took it over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use super::events::{self, Before};
use super::tickets::{self, Ticket, TicketState};
use super::{attempts, cleanups, groups, outbox};

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
/// `None`: someone else has it, or it has ended. Writes the claim's event (`events`).
pub async fn claim(
    pool: &PgPool,
    id: i64,
    owner: &str,
    lease: Duration,
    max_attempts: i32,
) -> Result<Option<Claim>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE id = $1 AND NOT cancel_requested AND attempts < $4
                           AND (state = 'queued' OR (state = 'running' AND lease_expires_at < now()))
                           FOR UPDATE)
           UPDATE publish_tickets t SET
               state = 'running', attempts = t.attempts + 1, fencing_token = t.fencing_token + 1,
               lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
               started_at = COALESCE(t.started_at, now()), message = 'starting', updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING t.fencing_token, t.cloud_host, to_jsonb(old) AS "before!: Json<Before>""#,
        id,
        owner,
        lease.as_secs_f64(),
        max_attempts
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(claimed) = claimed else {
        give_up_in(&mut tx, id, max_attempts).await?;
        tx.commit().await?;
        return Ok(None);
    };
    events::record_changes(&mut tx, &[claimed.before.0]).await?;
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
/// slot. Then as `claim`: lease, fencing token, attempt row, event.
pub async fn claim_next(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
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
    let open: Vec<(String, i32)> = loads
        .iter()
        .filter(|(load, limit)| load.queued > 0 && load.running < i64::from(*limit))
        .map(|(load, limit)| (load.host.clone(), i32::try_from(*limit).unwrap_or(i32::MAX)))
        .collect();
    let (hosts, limits): (Vec<String>, Vec<i32>) = open.into_iter().unzip();
    let take = Take {
        owner,
        lease,
        max_attempts,
    };
    let mut claim = None;
    // A cloud found full under its lock is left out of the next try (its count is committed).
    for _ in 0..hosts.len().min(4) {
        match take.fairest(pool, &hosts, &limits).await? {
            Tried::Claimed(claimed) => {
                claim = Some(*claimed);
                break;
            }
            Tried::NoneQueued => break,
            Tried::CloudFull => continue,
        }
    }
    if claim.is_none() {
        give_up_queued(pool, max_attempts).await?;
    }
    Ok(NextClaim { claim, loads })
}

/// One try of `claim_next`.
enum Tried {
    Claimed(Box<Claim>),
    /// No claimable ticket is queued for an open cloud.
    NoneQueued,
    /// The candidate's cloud filled up before its turn came.
    CloudFull,
}

/// Who claims, and for how long (`claim_next`'s arguments).
struct Take<'a> {
    owner: &'a str,
    lease: Duration,
    max_attempts: i32,
}

impl Take<'_> {
    /// Picks the fairest candidate of the open clouds (`hosts`, with their `limits`), takes
    /// its cloud's turn, and claims it if a slot is still free there.
    async fn fairest(
        &self,
        pool: &PgPool,
        hosts: &[String],
        limits: &[i32],
    ) -> Result<Tried, sqlx::Error> {
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
            hosts,
            limits,
            self.max_attempts
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.commit().await?;
            return Ok(Tried::NoneQueued);
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
            return Ok(Tried::CloudFull);
        }
        let claim = self
            .queued(&mut tx, candidate.id, candidate.cloud_host)
            .await?;
        tx.commit().await?;
        Ok(Tried::Claimed(Box::new(claim)))
    }

    /// Claims the queued ticket `id` (locked by the caller): lease, token, attempt, event.
    async fn queued(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
        cloud_host: String,
    ) -> Result<Claim, sqlx::Error> {
        let claimed = sqlx::query!(
            r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                              FROM publish_tickets WHERE id = $1 AND state = 'queued' FOR UPDATE)
               UPDATE publish_tickets t SET
                   state = 'running', attempts = t.attempts + 1, fencing_token = t.fencing_token + 1,
                   lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
                   started_at = COALESCE(t.started_at, now()), message = 'starting', updated_at = now()
                 FROM old WHERE t.id = old.id
               RETURNING t.fencing_token, to_jsonb(old) AS "before!: Json<Before>""#,
            id,
            self.owner,
            self.lease.as_secs_f64()
        )
        .fetch_one(&mut **tx)
        .await?;
        events::record_changes(tx, &[claimed.before.0]).await?;
        attempts::start_in(tx, id, claimed.fencing_token, self.owner).await?;
        claimed_ticket(tx, id, claimed.fencing_token, cloud_host).await
    }
}

/// Ends in `error` the queued tickets that already had `max_attempts` claims (possible only
/// after `worker.max_ticket_attempts` was lowered): no claim takes them, as `claim` would not.
async fn give_up_queued(pool: &PgPool, max_attempts: i32) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gave_up = sqlx::query_scalar!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE state = 'queued' AND NOT cancel_requested AND attempts >= $1
                           FOR UPDATE)
           UPDATE publish_tickets t SET state = 'error', eta = NULL,
               error_message = 'gave up after ' || t.attempts || ' attempts: the worker running it stopped each time',
               message = 'failed: gave up after ' || t.attempts || ' attempts',
               lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
        max_attempts
    )
    .fetch_all(&mut *tx)
    .await?;
    let gave_up = events::unwrap_before(gave_up);
    events::record_changes(&mut tx, &gave_up).await?;
    cleanups::record_for_ended(&mut tx, &gave_up).await?;
    groups::on_ended(&mut tx, &gave_up).await?;
    for before in &gave_up {
        attempts::end_abandoned_in(&mut tx, before.id).await?;
    }
    tx.commit().await
}

/// Writes into the status of every queued ticket of a full cloud (of `clouds`: host and
/// limit) that it waits for a slot ("queued: 8 uploads already running to glance.example.com,
/// limit 8"), with its event. Rows being claimed are skipped; the next call writes them.
pub async fn mark_waiting(pool: &PgPool, clouds: &[(String, u32)]) -> Result<u64, sqlx::Error> {
    let hosts: Vec<String> = clouds.iter().map(|(host, _)| host.clone()).collect();
    let limits: Vec<i32> = clouds
        .iter()
        .map(|(_, limit)| i32::try_from(*limit).unwrap_or(i32::MAX))
        .collect();
    let mut tx = pool.begin().await?;
    let marked = sqlx::query_scalar!(
        r#"WITH full_cloud AS (
             SELECT l.host, format('queued: %s uploads already running to %s, limit %s', r.n, l.host, l.max) AS message
               FROM unnest($1::text[], $2::int[]) AS l(host, max)
              CROSS JOIN LATERAL (SELECT count(*) AS n FROM publish_tickets x
                                   WHERE x.state = 'running' AND x.cloud_host = l.host) r
              WHERE r.n >= l.max),
         old AS (
             SELECT t.id, t.state, t.percentage, t.bytes_loaded, t.message, t.cloud_id,
                    f.message AS waiting
               FROM publish_tickets t JOIN full_cloud f ON f.host = t.cloud_host
              WHERE t.state = 'queued' AND t.message <> f.message
              FOR UPDATE OF t SKIP LOCKED)
         UPDATE publish_tickets t SET message = old.waiting, updated_at = now()
           FROM old WHERE t.id = old.id
         RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
        &hosts,
        &limits
    )
    .fetch_all(&mut *tx)
    .await?;
    let marked = events::unwrap_before(marked);
    events::record_changes(&mut tx, &marked).await?;
    tx.commit().await?;
    Ok(marked.len() as u64)
}

/// Ends in `error` a claimable ticket that used up its attempts (no-op otherwise), with its
/// event, its image cleanup and the end of its attempt.
async fn give_up_in(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    let gave_up = sqlx::query_scalar!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE id = $1 AND NOT cancel_requested AND attempts >= $2
                           AND (state = 'queued' OR (state = 'running' AND lease_expires_at < now()))
                           FOR UPDATE)
           UPDATE publish_tickets t SET state = 'error', eta = NULL,
               error_message = 'gave up after ' || t.attempts || ' attempts: the worker running it stopped each time',
               message = 'failed: gave up after ' || t.attempts || ' attempts',
               lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
        id,
        max_attempts
    )
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(Json(before)) = gave_up {
        let gave_up = [before];
        events::record_changes(tx, &gave_up).await?;
        cleanups::record_for_ended(tx, &gave_up).await?;
        groups::on_ended(tx, &gave_up).await?;
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

/// Writes the status (and its event, when a viewer sees a change) and extends the lease.
pub async fn report_progress(
    pool: &PgPool,
    id: i64,
    token: i64,
    progress: &Progress,
    lease: Duration,
) -> Result<Heartbeat, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // GREATEST: the percentage users see never goes down, even across attempts.
    let written = sqlx::query!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE id = $1 AND fencing_token = $2 AND state = 'running' FOR UPDATE)
           UPDATE publish_tickets t SET
               message = $3, bytes_loaded = $4, bytes_total = $5,
               percentage = GREATEST(t.percentage, $6), eta = $7,
               lease_expires_at = now() + make_interval(secs => $8), updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING t.cancel_requested, to_jsonb(old) AS "before!: Json<Before>""#,
        id,
        token,
        progress.message,
        progress.bytes_loaded,
        progress.bytes_total,
        progress.percentage.clamp(0, 100),
        progress.eta,
        lease.as_secs_f64()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let cancel_requested = match written {
        Some(written) => {
            events::record_changes(&mut tx, &[written.before.0]).await?;
            Some(written.cancel_requested)
        }
        None => None,
    };
    tx.commit().await?;
    Ok(Heartbeat::from_cancel_requested(cancel_requested))
}

/// Extends the lease without touching the status (between progress writes, e.g. while
/// Keystone is slow to answer), and reports a requested cancel or a lost claim.
pub async fn extend_lease(
    pool: &PgPool,
    id: i64,
    token: i64,
    lease: Duration,
) -> Result<Heartbeat, sqlx::Error> {
    let cancel_requested = sqlx::query_scalar!(
        "UPDATE publish_tickets SET lease_expires_at = now() + make_interval(secs => $3)
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING cancel_requested",
        id,
        token,
        lease.as_secs_f64()
    )
    .fetch_optional(pool)
    .await?;
    Ok(Heartbeat::from_cancel_requested(cancel_requested))
}

/// Records the Glance image id as soon as it exists, so cleanup can find it (an event).
/// Records the Glance a ticket's region resolved to (from the catalog, at its first login),
/// while this claim holds it: its image's cleanup, the orphan sweep and a later attempt then
/// all call that Glance, whatever the configured region. Once set, it stays.
pub async fn record_glance(
    pool: &PgPool,
    id: i64,
    token: i64,
    glance_url: &str,
    region: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE publish_tickets SET glance_url = $3, glance_region = $4, updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running' AND glance_url IS NULL",
        id,
        token,
        glance_url,
        region
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the Glance store a copying ticket writes to (its own, or the Glance's default it
/// resolved), before the copy: its cleanup then removes that store's copy only.
pub async fn record_store(
    pool: &PgPool,
    id: i64,
    token: i64,
    store: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE publish_tickets SET glance_store = $3, updated_at = now()
          WHERE id = $1 AND fencing_token = $2 AND state = 'running'",
        id,
        token,
        store
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn set_cloud_id(
    pool: &PgPool,
    id: i64,
    token: i64,
    cloud_id: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before = sqlx::query_scalar!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE id = $1 AND fencing_token = $2 AND state = 'running' FOR UPDATE)
           UPDATE publish_tickets t SET cloud_id = $3, updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
        id,
        token,
        cloud_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let done = before.is_some();
    events::record_changes(&mut tx, &events::unwrap_before(before)).await?;
    tx.commit().await?;
    Ok(done)
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

/// How `finish` ended a ticket.
#[derive(Debug)]
pub struct Finished {
    pub state: TicketState,
    /// Tickets held until this one ended (`groups`), now queued: (ticket id, outbox id),
    /// for the caller to hand to RabbitMQ (the relay does, should it not).
    pub released: Vec<(i64, i64)>,
}

/// Writes the final state, and returns it; `None`: the claim was lost and nothing was
/// written. A cancel requested before the end wins over a publication: the ticket ends
/// `cancelled`, and (like every end but `complete`) its image is left to the reconciler. In
/// one transaction: the final state, its event (`events::record_changes`), the image
/// cleanup of an end in `error` or `cancelled` (`cleanups::record_for_ended`), what it means
/// for its group's other tickets (`groups::on_ended`), and the end of the attempt.
pub async fn finish(
    pool: &PgPool,
    id: i64,
    token: i64,
    outcome: &Outcome,
) -> Result<Option<Finished>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some((state, before)) = write_outcome(&mut tx, id, token, outcome).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    let ended = [before];
    events::record_changes(&mut tx, &ended).await?;
    cleanups::record_for_ended(&mut tx, &ended).await?;
    let released = groups::on_ended(&mut tx, &ended).await?;
    let (how, error) = match outcome {
        Outcome::Published { .. } => (attempts::AttemptEnd::Published, None),
        Outcome::Failed { error_message, .. } => {
            (attempts::AttemptEnd::Failed, Some(error_message.as_str()))
        }
        Outcome::Cancelled => (attempts::AttemptEnd::Cancelled, None),
    };
    attempts::end(&mut *tx, id, token, how, error).await?;
    tx.commit().await?;
    Ok(Some(Finished { state, released }))
}

/// `finish`'s statement: the final state of a ticket still held under `token`, and the
/// ticket as it was.
async fn write_outcome(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    token: i64,
    outcome: &Outcome,
) -> Result<Option<(TicketState, Before)>, sqlx::Error> {
    Ok(match outcome {
        Outcome::Published { cloud_id, bytes } => sqlx::query!(
            r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                              FROM publish_tickets
                             WHERE id = $1 AND fencing_token = $2 AND state = 'running' FOR UPDATE)
               UPDATE publish_tickets t SET
                   state = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'complete' END,
                   cloud_id = $3, eta = NULL,
                   percentage = CASE WHEN t.cancel_requested THEN t.percentage ELSE 100 END,
                   bytes_loaded = $4, bytes_total = $4,
                   message = CASE WHEN t.cancel_requested
                                  THEN 'cancelled as it was published; removing the image from the cloud'
                                  ELSE 'published as Glance image ' || $3 END,
                   lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
                 FROM old WHERE t.id = old.id
               RETURNING t.state AS "state: TicketState", to_jsonb(old) AS "before!: Json<Before>""#,
            id,
            token,
            cloud_id,
            bytes
        )
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| (r.state, r.before.0)),
        Outcome::Failed {
            error_message,
            detail,
        } => sqlx::query!(
            r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                              FROM publish_tickets
                             WHERE id = $1 AND fencing_token = $2 AND state = 'running' FOR UPDATE)
               UPDATE publish_tickets t SET state = 'error', error_message = $3, detailed_error_msg = $4,
                   eta = NULL, message = 'failed: ' || $3,
                   lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
                 FROM old WHERE t.id = old.id
               RETURNING t.state AS "state: TicketState", to_jsonb(old) AS "before!: Json<Before>""#,
            id,
            token,
            error_message,
            detail.as_deref()
        )
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| (r.state, r.before.0)),
        // cloud_id stays until the reconciler has Glance's word that the image is gone.
        Outcome::Cancelled => sqlx::query!(
            r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                              FROM publish_tickets
                             WHERE id = $1 AND fencing_token = $2 AND state = 'running' FOR UPDATE)
               UPDATE publish_tickets t SET state = 'cancelled', eta = NULL,
                   message = CASE WHEN old.cloud_id IS NULL
                                  THEN 'cancelled before an image was created in the cloud'
                                  ELSE 'cancelled; removing the partial image from the cloud' END,
                   lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
                 FROM old WHERE t.id = old.id
               RETURNING t.state AS "state: TicketState", to_jsonb(old) AS "before!: Json<Before>""#,
            id,
            token
        )
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| (r.state, r.before.0)),
    })
}

/// Gives a claimed ticket back (graceful shutdown): queued again at once, with an outbox
/// row (its id is returned), and this attempt not counted (ended as `released`, in the same
/// transaction, with its event). `None`: the claim was lost.
pub async fn release(pool: &PgPool, id: i64, token: i64) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query_scalar!(
        r#"WITH old AS (SELECT id, state, percentage, bytes_loaded, message, cloud_id
                          FROM publish_tickets
                         WHERE id = $1 AND fencing_token = $2 AND state = 'running'
                           AND NOT cancel_requested FOR UPDATE)
           UPDATE publish_tickets t SET state = 'queued', attempts = GREATEST(t.attempts - 1, 0),
               eta = NULL, message = 'worker stopped, resuming on another worker', cloud_id = NULL,
               lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             FROM old WHERE t.id = old.id
           RETURNING to_jsonb(old) AS "before!: Json<Before>""#,
        id,
        token
    )
    .fetch_optional(&mut *tx)
    .await?;
    let released = events::unwrap_before(released);
    events::record_changes(&mut tx, &released).await?;
    let outbox_id = if !released.is_empty() {
        attempts::end(&mut *tx, id, token, attempts::AttemptEnd::Released, None).await?;
        Some(outbox::enqueue_in(&mut tx, id).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(outbox_id)
}
