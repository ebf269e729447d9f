//! What the operator console reads and keeps: its sessions, the filtered ticket list (keyset
//! pages, newest first) and the Overview's figures.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::tickets::TicketState;

/// A live session: its user (as it is now) and the session's CSRF token.
pub struct Session {
    pub login: String,
    pub is_admin: bool,
    pub csrf_token: String,
}

pub async fn create_session(
    pool: &PgPool,
    token_hash: &[u8],
    user_id: i64,
    csrf_token: &str,
    ttl_secs: f64,
) -> Result<(), sqlx::Error> {
    // Expired sessions are removed by the next login.
    sqlx::query!("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    sqlx::query!(
        "INSERT INTO console_sessions (token_hash, user_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        token_hash,
        user_id,
        csrf_token,
        ttl_secs,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The session of a cookie, if it exists and has not expired.
pub async fn session(pool: &PgPool, token_hash: &[u8]) -> Result<Option<Session>, sqlx::Error> {
    sqlx::query_as!(
        Session,
        "SELECT u.login, u.is_admin, s.csrf_token
           FROM console_sessions s JOIN users u ON u.id = s.user_id
          WHERE s.token_hash = $1 AND s.expires_at > now()",
        token_hash,
    )
    .fetch_optional(pool)
    .await
}

/// Which of the sessions `token_hashes` are open and belong to an administrator.
pub async fn admin_sessions(
    pool: &PgPool,
    token_hashes: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT s.token_hash FROM console_sessions s JOIN users u ON u.id = s.user_id
          WHERE s.token_hash = ANY($1) AND s.expires_at > now() AND u.is_admin",
        token_hashes,
    )
    .fetch_all(pool)
    .await
}

/// Of `public_keys`, those that still exist and have not expired (an open stream's re-check).
pub async fn live_api_keys(
    pool: &PgPool,
    public_keys: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT public_key FROM api_keys
          WHERE public_key = ANY($1) AND (expires_at IS NULL OR expires_at > now())",
        public_keys,
    )
    .fetch_all(pool)
    .await
}

pub async fn end_session(pool: &PgPool, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM console_sessions WHERE token_hash = $1",
        token_hash
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The Tickets page's filters; `None` filters nothing.
#[derive(Debug, Default, Clone)]
pub struct TicketFilter {
    pub state: Option<TicketState>,
    pub user: Option<String>,
    /// The Keystone URL, as stored.
    pub cloud: Option<String>,
    pub image_id: Option<i64>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Keyset: only tickets older (smaller id) than this one.
    pub before_id: Option<i64>,
}

/// One line of the Tickets page and of `pimage tickets list` (no credentials).
#[derive(Debug, Clone)]
pub struct TicketLine {
    pub id: i64,
    pub state: TicketState,
    pub owner_login: String,
    pub image_id: i64,
    pub display_name: String,
    pub keystone_url: String,
    pub percentage: i32,
    pub message: String,
    pub cloud_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` tickets matching `filter`, newest first. A state or cloud filter starts
/// the walk back at that state's (cloud's) newest ticket: the planner takes states to be
/// spread evenly over ids, and would otherwise walk through a queued backlog newer than
/// every ticket in `error` (issue 26).
pub async fn tickets(
    pool: &PgPool,
    filter: &TicketFilter,
    limit: i64,
) -> Result<Vec<TicketLine>, sqlx::Error> {
    sqlx::query_as!(
        TicketLine,
        r#"SELECT t.id, t.state AS "state: TicketState", u.login AS owner_login, t.image_id,
                  t.display_name, t.keystone_url, t.percentage, t.message, t.cloud_id,
                  t.created_at
             FROM publish_tickets t JOIN users u ON u.id = t.user_id
            WHERE ($1::text IS NULL OR t.state = $1)
              AND ($2::text IS NULL OR u.login = $2)
              AND ($3::text IS NULL OR t.keystone_url = $3)
              AND ($4::bigint IS NULL OR t.image_id = $4)
              AND ($5::timestamptz IS NULL OR t.created_at >= $5)
              AND ($6::timestamptz IS NULL OR t.created_at < $6)
              AND ($7::bigint IS NULL OR t.id < $7)
              AND ($1::text IS NULL OR t.id <= (SELECT max(id) FROM publish_tickets WHERE state = $1))
              AND ($3::text IS NULL
                   OR t.id <= (SELECT max(id) FROM publish_tickets WHERE keystone_url = $3))
            ORDER BY t.id DESC
            LIMIT $8"#,
        filter.state.map(TicketState::as_str),
        filter.user,
        filter.cloud,
        filter.image_id,
        filter.created_from,
        filter.created_to,
        filter.before_id,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Running uploads per cloud (Keystone URL).
pub async fn running_per_cloud(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT cloud_host, count(*) AS "running!" FROM publish_tickets
            WHERE state = 'running' GROUP BY cloud_host ORDER BY cloud_host"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.cloud_host, r.running))
        .collect())
}

/// The last hour: tickets ended per outcome, and bytes sent by attempts that ended.
pub struct LastHour {
    pub complete: i64,
    pub error: i64,
    pub cancelled: i64,
    pub bytes_sent: i64,
}

pub async fn last_hour(pool: &PgPool) -> Result<LastHour, sqlx::Error> {
    let ended = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE state = 'complete') AS "complete!",
                  count(*) FILTER (WHERE state = 'error') AS "error!",
                  count(*) FILTER (WHERE state = 'cancelled') AS "cancelled!"
             FROM publish_tickets WHERE finished_at > now() - interval '1 hour'"#
    )
    .fetch_one(pool)
    .await?;
    let sent = sqlx::query!(
        r#"SELECT COALESCE(sum(bytes_sent), 0)::bigint AS "bytes!" FROM ticket_attempts
            WHERE ended_at > now() - interval '1 hour'"#
    )
    .fetch_one(pool)
    .await?;
    Ok(LastHour {
        complete: ended.complete,
        error: ended.error,
        cancelled: ended.cancelled,
        bytes_sent: sent.bytes,
    })
}

/// Below this many tickets (the planner's estimate; -1 before the first ANALYZE) every state is
/// counted: a few milliseconds at most.
const EXACT_BELOW: f32 = 100_000.0;

/// Tickets per state for the Overview and the `pimage_tickets` gauge, without counting every
/// ticket kept: queued and running are counted (their partial indexes: the work in flight);
/// ended states too while the table holds fewer than `EXACT_BELOW` rows, past that they are
/// estimated from the planner's statistics of the table (its row count times each state's
/// share, as autovacuum's last ANALYZE saw them). Returns (state, count, counted exactly).
pub async fn tickets_per_state(pool: &PgPool) -> Result<Vec<(String, i64, bool)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT s.state AS "state!",
                  CASE WHEN s.state = 'queued'
                           THEN (SELECT count(*) FROM publish_tickets WHERE state = 'queued')
                       WHEN s.state = 'running'
                           THEN (SELECT count(*) FROM publish_tickets WHERE state = 'running')
                       WHEN (SELECT reltuples FROM pg_class WHERE oid = 'publish_tickets'::regclass) < $1
                           THEN (SELECT count(*) FROM publish_tickets t WHERE t.state = s.state)
                       ELSE (SELECT (GREATEST(c.reltuples, 0) * f.freq)::bigint
                              FROM pg_class c, pg_stats st,
                                   unnest(st.most_common_vals::text::text[], st.most_common_freqs)
                                       AS f(val, freq)
                             WHERE c.oid = 'publish_tickets'::regclass
                               AND st.schemaname = current_schema()
                               AND st.tablename = 'publish_tickets' AND st.attname = 'state'
                               AND f.val = s.state)
                  END AS "count",
                  s.state IN ('queued', 'running')
                      OR (SELECT reltuples FROM pg_class WHERE oid = 'publish_tickets'::regclass) < $1
                      AS "exact!"
             FROM unnest(ARRAY['queued', 'running', 'complete', 'error', 'cancelled']) AS s(state)"#,
        EXACT_BELOW
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.state, r.count.unwrap_or(0), r.exact))
        .collect())
}
