//! Publication groups (a fan-out publish): the group row and its children, which are
//! ordinary tickets. Filed in one transaction; a child that copies a sibling's image
//! server-side (`copies_from`) is held without an outbox row until that sibling ends
//! (`on_ended` releases it); under the `all` policy a child ending in `error` or
//! `cancelled` takes its siblings with it, completed ones included, so nothing stays in
//! any cloud.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use super::cancel::CANCEL_CHANNEL;
use super::cleanups;
use super::events::{self, Before};
use super::tickets::{self, NewTicket, Ticket};

/// Whether a group's targets stand or fall together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize, serde::Deserialize)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum GroupPolicy {
    /// The group completes only when every target does; one failing for good ends them all.
    All,
    /// Each target stands alone.
    Each,
}

impl GroupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupPolicy::All => "all",
            GroupPolicy::Each => "each",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: i64,
    pub user_id: i64,
    pub owner_login: String,
    pub image_id: i64,
    pub policy: GroupPolicy,
    pub created_at: DateTime<Utc>,
}

/// One target of a group to file: its ticket, its Glance store, and which earlier target
/// of the same request (an index) or existing sibling (a ticket id) it copies from.
#[derive(Debug, Clone)]
pub struct NewTarget {
    pub ticket: NewTicket,
    pub store: Option<String>,
    pub copies_from: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// It uploads the file itself.
    None,
    /// The target at this index of the same request.
    Filed(usize),
    /// A ticket of the group already stored.
    Ticket(i64),
}

/// What filing a group (or a target added to one) did.
#[derive(Debug)]
pub enum FiledGroup {
    /// The group, and its new tickets with the outbox row of each one not held.
    Created(Group, Vec<(Ticket, Option<i64>)>),
    /// The owner has this many tickets queued or running: the whole request would exceed
    /// the quota, and nothing was stored.
    OverQuota(i64),
}

/// Files a group and its targets in one transaction: all of them or nothing (a group that
/// would take the owner past `max_unfinished` unfinished tickets is refused whole).
pub async fn file(
    pool: &PgPool,
    user_id: i64,
    image_id: i64,
    policy: GroupPolicy,
    targets: &[NewTarget],
    max_unfinished: i64,
) -> Result<FiledGroup, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(count) = over_quota(&mut tx, user_id, targets.len(), max_unfinished).await? {
        return Ok(FiledGroup::OverQuota(count));
    }
    let id = sqlx::query_scalar!(
        "INSERT INTO publish_groups (user_id, image_id, policy) VALUES ($1, $2, $3) RETURNING id",
        user_id,
        image_id,
        policy.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    let created = add_in(&mut tx, id, targets).await?;
    let group = get_in(&mut tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok(FiledGroup::Created(group, created))
}

/// Adds targets to an existing group (finished or not): only they are published.
pub async fn add_targets(
    pool: &PgPool,
    group: &Group,
    targets: &[NewTarget],
    max_unfinished: i64,
) -> Result<FiledGroup, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(count) = over_quota(&mut tx, group.user_id, targets.len(), max_unfinished).await? {
        return Ok(FiledGroup::OverQuota(count));
    }
    let created = add_in(&mut tx, group.id, targets).await?;
    tx.commit().await?;
    Ok(FiledGroup::Created(group.clone(), created))
}

/// Locks the owner's row (as `tickets::file_batch` does) and counts its unfinished
/// tickets: `Some(count)` when `adding` more would pass `max_unfinished`.
async fn over_quota(
    tx: &mut Transaction<'_, Postgres>,
    user_id: i64,
    adding: usize,
    max_unfinished: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query!(
        "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE",
        user_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let counts = tickets::unfinished_of_users(&mut **tx, &[user_id], max_unfinished).await?;
    let count = counts.get(&user_id).copied().unwrap_or(0);
    let adding = i64::try_from(adding).unwrap_or(i64::MAX);
    Ok((count.saturating_add(adding) > max_unfinished).then_some(count))
}

/// Stores the targets as tickets of group `id`; a held target's outbox row is removed in
/// the same transaction (its source releases it).
async fn add_in(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    targets: &[NewTarget],
) -> Result<Vec<(Ticket, Option<i64>)>, sqlx::Error> {
    let news: Vec<&NewTicket> = targets.iter().map(|t| &t.ticket).collect();
    let created = tickets::create_many(&mut **tx, &news).await?;
    let ids: Vec<i64> = created.iter().map(|(t, _)| t.id).collect();
    let mut out = Vec::with_capacity(created.len());
    for ((mut ticket, outbox_id), target) in created.into_iter().zip(targets) {
        let source = match target.copies_from {
            Source::None => None,
            Source::Filed(at) => ids.get(at).copied(),
            Source::Ticket(id) => Some(id),
        };
        let held = hold(tx, ticket.id, id, target.store.as_deref(), source).await?;
        (ticket.group_id, ticket.glance_store, ticket.copies_from) =
            (Some(id), target.store.clone(), source);
        if held {
            ticket.message = HELD_MESSAGE.into();
        }
        out.push((ticket, (!held).then_some(outbox_id)));
    }
    Ok(out)
}

/// The status of a target held until its source's image is complete.
const HELD_MESSAGE: &str = "queued, waiting for its source target's image to copy it";

/// Writes a new ticket's group columns; holds it (no outbox row) while its source is
/// unfinished. Whether it is held.
async fn hold(
    tx: &mut Transaction<'_, Postgres>,
    ticket_id: i64,
    group_id: i64,
    store: Option<&str>,
    source: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let held = sqlx::query_scalar!(
        r#"UPDATE publish_tickets t SET group_id = $2, glance_store = $3, copies_from = $4,
               message = CASE WHEN s.unfinished THEN $5 ELSE t.message END
             FROM (SELECT COALESCE(bool_or(state IN ('queued', 'running')), false) AS unfinished
                     FROM publish_tickets WHERE id = $4) s
            WHERE t.id = $1
        RETURNING s.unfinished AS "held!""#,
        ticket_id,
        group_id,
        store,
        source,
        HELD_MESSAGE
    )
    .fetch_one(&mut **tx)
    .await?;
    if held {
        sqlx::query!("DELETE FROM ticket_outbox WHERE ticket_id = $1", ticket_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(held)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Group>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    get_in(&mut conn, id).await
}

async fn get_in(conn: &mut sqlx::PgConnection, id: i64) -> Result<Option<Group>, sqlx::Error> {
    sqlx::query_as!(
        Group,
        r#"SELECT g.id, g.user_id, u.login AS owner_login, g.image_id,
                  g.policy AS "policy: GroupPolicy", g.created_at
             FROM publish_groups g JOIN users u ON u.id = g.user_id WHERE g.id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// The group's tickets, in the order they were filed.
pub async fn children(pool: &PgPool, group_id: i64) -> Result<Vec<Ticket>, sqlx::Error> {
    tickets::of_group(pool, group_id).await
}

/// The group ticket `ticket_id` is a target of, if any (a group's event stream asks it of
/// a ticket it has not seen yet: one added to the group while the stream is open).
pub async fn group_of_ticket(pool: &PgPool, ticket_id: i64) -> Result<Option<i64>, sqlx::Error> {
    let group = sqlx::query_scalar!(
        "SELECT group_id FROM publish_tickets WHERE id = $1",
        ticket_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(group.flatten())
}

/// Events after `after`, oldest first, of the group's tickets and of `known` ones (tickets
/// of it the stream saw, deleted since: their rows are gone, their events are not). Read
/// per ticket through `ticket_events (ticket_id, id)`, never by a range of all events.
pub async fn events_after(
    pool: &PgPool,
    after: i64,
    group_id: i64,
    known: &[i64],
) -> Result<Vec<events::TicketEvent>, sqlx::Error> {
    sqlx::query_as!(
        events::TicketEvent,
        "SELECT id, ticket_id, kind, state, old_state, percentage, bytes_loaded, bytes_total,
                message, at
           FROM ticket_events
          WHERE ticket_id = ANY(ARRAY(SELECT id FROM publish_tickets WHERE group_id = $2)
                                || $3::bigint[])
            AND id > $1
          ORDER BY id LIMIT $4",
        after,
        group_id,
        known,
        events::REPLAY_BATCH,
    )
    .fetch_all(pool)
    .await
}

/// After a change that may have ended tickets (`before`: them as they were), in its
/// transaction: under `all`, a target ended in `error` or `cancelled` ends its siblings
/// (`withdraw_siblings`); then every held ticket whose source has ended is released (an
/// outbox row each, returned as (ticket id, outbox id)): it copies a complete source, or
/// uploads itself when the source failed.
pub(crate) async fn on_ended(
    tx: &mut Transaction<'_, Postgres>,
    before: &[Before],
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    if before.is_empty() {
        return Ok(Vec::new());
    }
    withdraw_siblings(tx, before).await?;
    let released = sqlx::query!(
        "WITH ended AS (SELECT t.id FROM jsonb_to_recordset($1::jsonb) AS o(id bigint)
                          JOIN publish_tickets t ON t.id = o.id
                         WHERE t.state IN ('complete', 'error', 'cancelled')),
              held AS (SELECT f.id FROM publish_tickets f JOIN ended e ON f.copies_from = e.id
                        WHERE f.state = 'queued' AND NOT f.cancel_requested
                          AND NOT EXISTS (SELECT 1 FROM ticket_outbox o WHERE o.ticket_id = f.id)
                        FOR UPDATE OF f),
              touched AS (UPDATE publish_tickets t SET message = 'queued, waiting for a worker',
                                 updated_at = now()
                            FROM held WHERE t.id = held.id RETURNING t.id)
         INSERT INTO ticket_outbox (ticket_id) SELECT id FROM touched RETURNING ticket_id, id",
        Json(before) as _,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(released.into_iter().map(|r| (r.ticket_id, r.id)).collect())
}

/// Before ticket `id` is deleted, in that transaction: the tickets it held are queued (the
/// relay hands them on); with no source left, each uploads the file itself.
pub(crate) async fn release_held_by(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO ticket_outbox (ticket_id)
         SELECT f.id FROM publish_tickets f
          WHERE f.copies_from = $1 AND f.state = 'queued' AND NOT f.cancel_requested
            AND NOT EXISTS (SELECT 1 FROM ticket_outbox o WHERE o.ticket_id = f.id)",
        id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Under `all`: the siblings of each ticket of `before` that this change ended in `error`
/// or `cancelled` are ended too: queued ones cancelled, running ones asked to stop (their
/// worker removes what it made), complete ones withdrawn (cancelled; the reconciler removes
/// their image). Their events and cleanups are written here.
async fn withdraw_siblings(
    tx: &mut Transaction<'_, Postgres>,
    before: &[Before],
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH failed AS (SELECT DISTINCT ON (t.group_id) t.group_id, t.id, t.state
                             FROM jsonb_to_recordset($1::jsonb) AS o(id bigint, state text)
                             JOIN publish_tickets t ON t.id = o.id
                             JOIN publish_groups g ON g.id = t.group_id AND g.policy = 'all'
                            WHERE t.state IN ('error', 'cancelled') AND o.state IS DISTINCT FROM t.state
                            ORDER BY t.group_id, t.id),
              old AS (SELECT s.id, s.state, s.percentage, s.bytes_loaded, s.message, s.cloud_id,
                             f.id AS failed_id, f.state AS failed_state
                        FROM publish_tickets s JOIN failed f ON s.group_id = f.group_id AND s.id <> f.id
                       WHERE s.state IN ('queued', 'running', 'complete')
                       ORDER BY s.id FOR UPDATE OF s)
         UPDATE publish_tickets t SET
             cancel_requested = true,
             state = CASE WHEN t.state = 'running' THEN t.state ELSE 'cancelled' END,
             message = CASE
                 WHEN t.state = 'complete' THEN 'withdrawn: target ' || old.failed_id
                      || ' of its group ended in ' || old.failed_state
                      || ' (policy all); removing its image from the cloud'
                 ELSE 'cancelled: target ' || old.failed_id || ' of its group ended in '
                      || old.failed_state || ' (policy all)' END,
             finished_at = CASE WHEN t.state = 'running' THEN t.finished_at ELSE now() END,
             updated_at = now()
           FROM old WHERE t.id = old.id
         RETURNING t.id, t.state AS "state!", to_jsonb(old) - 'failed_id' - 'failed_state' AS "before!: Json<Before>""#,
        Json(before) as _,
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    for row in rows.iter().filter(|r| r.state == "running") {
        // Delivered at commit: the worker running it stops and removes its image.
        sqlx::query!(
            r#"SELECT pg_notify($1, $2) AS "notified: ()""#,
            CANCEL_CHANNEL,
            row.id.to_string()
        )
        .execute(&mut **tx)
        .await?;
    }
    let changed = events::unwrap_before(rows.into_iter().map(|r| r.before));
    events::record_changes(tx, &changed).await?;
    cleanups::record_for_ended(tx, &changed).await?;
    Ok(())
}

/// Cancels every unfinished ticket of the group (each as `cancel::request_cancel` does);
/// under `all` the first to end takes the complete ones with it. How many were asked.
pub async fn cancel(pool: &PgPool, group_id: i64) -> Result<usize, sqlx::Error> {
    let unfinished = sqlx::query_scalar!(
        "SELECT id FROM publish_tickets
          WHERE group_id = $1 AND state IN ('queued', 'running') ORDER BY id",
        group_id
    )
    .fetch_all(pool)
    .await?;
    for id in &unfinished {
        super::cancel::request_cancel(pool, *id).await?;
    }
    Ok(unfinished.len())
}

/// What a ticket that copies from `source` needs to know of it.
#[derive(Debug, Clone)]
pub struct CopySource {
    pub id: i64,
    pub state: tickets::TicketState,
    pub cloud_id: Option<String>,
    pub glance_url: Option<String>,
    pub glance_region: Option<String>,
    pub glance_store: Option<String>,
}

pub async fn copy_source(pool: &PgPool, source: i64) -> Result<Option<CopySource>, sqlx::Error> {
    sqlx::query_as!(
        CopySource,
        r#"SELECT id, state AS "state: tickets::TicketState", cloud_id, glance_url, glance_region,
                  glance_store
             FROM publish_tickets WHERE id = $1"#,
        source
    )
    .fetch_optional(pool)
    .await
}
