//! Issue 26, "flat as tickets grow": every recurring query is read through its plan. Each
//! statement is taken from the store's source as it is (`statement`: the n-th string literal
//! of the named function), so the copy cannot drift; it is prepared, then explained with
//! `enable_seqscan = off`, so that a sequential scan remains only where no index can serve
//! the query, even on an empty table. No plan may read a big table whole: no `Seq Scan`, and
//! no index scan without a condition unless a `Limit` above it bounds it.

use crate::common::database::TestDatabase;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};

/// The tables that grow with the tickets.
const BIG: [&str; 5] = [
    "publish_tickets",
    "ticket_events",
    "ticket_attempts",
    "ticket_outbox",
    "image_cleanups",
];

fn source(file: &str) -> &'static str {
    match file {
        "claims" => include_str!("../../src/store/claims.rs"),
        "cleanups" => include_str!("../../src/store/cleanups.rs"),
        "console" => include_str!("../../src/store/console.rs"),
        "events" => include_str!("../../src/store/events.rs"),
        "outbox" => include_str!("../../src/store/outbox.rs"),
        "rescue" => include_str!("../../src/store/rescue.rs"),
        "retention" => include_str!("../../src/store/retention.rs"),
        "tickets" => include_str!("../../src/store/tickets.rs"),
        "workers" => include_str!("../../src/store/workers.rs"),
        other => panic!("no store file {other}"),
    }
}

/// The `nth` string literal ("…" or r#"…"#) after `fn function` in `src/store/{file}.rs`,
/// comments skipped: the statement as the code runs it.
fn statement(file: &str, function: &str, nth: usize) -> String {
    let src = source(file);
    let start = [format!("fn {function}("), format!("fn {function}<")]
        .iter()
        .filter_map(|header| src.find(header.as_str()))
        .min()
        .unwrap_or_else(|| panic!("no fn {function} in src/store/{file}.rs"));
    let mut rest = &src[start..];
    let mut found = 0;
    loop {
        let quote = rest.find('"').expect("a literal");
        let comment = rest.find("//").filter(|&c| c < quote);
        if let Some(c) = comment {
            rest = &rest[c + rest[c..].find('\n').unwrap()..];
            continue;
        }
        let raw = rest[..quote].ends_with("r#");
        let body = &rest[quote + 1..];
        let end = if raw {
            body.find("\"#")
        } else {
            body.find('"')
        }
        .unwrap();
        if found == nth {
            return body[..end].to_string();
        }
        found += 1;
        rest = &body[end + 1..];
    }
}

/// A fresh migrated database, and a session on it that plans as the check wants.
async fn session() -> (TestDatabase, PgConnection) {
    let database = TestDatabase::new().await;
    let mut conn = PgConnection::connect(&database.url()).await.unwrap();
    conn.execute("SET enable_seqscan = off").await.unwrap();
    (database, conn)
}

/// The plan of `sql` run with `args` (SQL literals; a quoted one takes its parameter's
/// type), as JSON.
async fn plan(conn: &mut PgConnection, sql: &str, args: &[&str]) -> Value {
    static PREPARED: AtomicUsize = AtomicUsize::new(0);
    let name = format!("checked_{}", PREPARED.fetch_add(1, Ordering::Relaxed));
    conn.execute(format!("PREPARE {name} AS {sql}").as_str())
        .await
        .unwrap_or_else(|e| panic!("preparing {sql}: {e}"));
    let execute = if args.is_empty() {
        format!("EXECUTE {name}")
    } else {
        format!("EXECUTE {name}({})", args.join(", "))
    };
    let explained: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {execute}"))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("explaining {sql}: {e}"));
    explained[0]["Plan"].clone()
}

/// Partial indexes whose rows are the work in flight (queued, running, pending), not the
/// history: reading one whole is bounded by the work, not by the tickets kept.
const LIVE_INDEXES: [&str; 8] = [
    "publish_tickets_queued",
    "publish_tickets_lease",
    "publish_tickets_running_host",
    "publish_tickets_running_owner",
    "publish_tickets_unfinished_user",
    "image_cleanups_due",
    "image_cleanups_pending",
    "ticket_attempts_open",
];

/// The nodes that read a big table whole, as "node type on table".
fn whole_reads(node: &Value, bounded: bool, found: &mut Vec<String>) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let table = node["Relation Name"].as_str().unwrap_or_default();
    let index = node["Index Name"].as_str().unwrap_or_default();
    if BIG.contains(&table) {
        let unconditioned = kind.starts_with("Index")
            && node.get("Index Cond").is_none()
            && !LIVE_INDEXES.contains(&index);
        if kind == "Seq Scan" || (unconditioned && !bounded) {
            found.push(format!("{kind} on {table}"));
        }
    }
    let bounded = bounded || kind == "Limit";
    for child in node["Plans"].as_array().into_iter().flatten() {
        whole_reads(child, bounded, found);
    }
}

/// Statements that count the outbox's backlog: its rows live only until RabbitMQ confirms
/// them (work in flight, not history), so reading them all is bounded by the backlog.
const BACKLOG_READS: [(&str, &str); 1] = [("outbox", "lag")];

/// Fails naming each statement whose plan reads a big table whole.
async fn assert_flat(conn: &mut PgConnection, cases: &[(&str, &str, usize, &[&str])]) {
    let mut failures = Vec::new();
    for &(file, function, nth, args) in cases {
        let sql = statement(file, function, nth);
        let mut found = Vec::new();
        whole_reads(&plan(conn, &sql, args).await, false, &mut found);
        if BACKLOG_READS.contains(&(file, function)) {
            found.retain(|f| !f.ends_with("on ticket_outbox"));
        }
        if !found.is_empty() {
            failures.push(format!("{file}::{function} #{nth}: {found:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "plans reading a big table whole:\n{failures:#?}"
    );
}

#[test]
fn statements_are_read_from_the_source_as_written() {
    let sql = statement("outbox", "claim_stale", 0);
    assert!(
        sql.starts_with("SELECT id, ticket_id FROM ticket_outbox"),
        "{sql}"
    );
    assert!(sql.ends_with("FOR UPDATE SKIP LOCKED"), "{sql}");
    // The comment before the literal is skipped.
    let sql = statement("events", "bytes_over_time", 0);
    assert!(sql.starts_with("WITH e AS"), "{sql}");
}

/// The check can fail: the orphan sweep's account list as it was before issue 26 (every
/// ticket, sorted) is flagged, on the same session as the tests below.
#[tokio::test]
async fn a_statement_reading_every_ticket_is_flagged() {
    let (_database, mut conn) = session().await;
    let before = "SELECT DISTINCT ON (keystone_url, keystone_domain, keystone_project, glance_url,
                              cloud_login)
                keystone_url, keystone_domain, keystone_project, glance_url, cloud_login,
                cloud_password_enc
           FROM (SELECT keystone_url, keystone_domain, keystone_project, glance_url, cloud_login,
                        cloud_password_enc, created_at FROM publish_tickets
                 UNION ALL
                 SELECT keystone_url, keystone_domain, keystone_project, glance_url, cloud_login,
                        cloud_password_enc, created_at FROM image_cleanups WHERE done_at IS NULL)
                accounts
          ORDER BY keystone_url, keystone_domain, keystone_project, glance_url, cloud_login,
                   created_at DESC";
    let mut found = Vec::new();
    whole_reads(&plan(&mut conn, before, &[]).await, false, &mut found);
    assert!(
        found.iter().any(|f| f.ends_with("on publish_tickets")),
        "{found:?}"
    );
}

#[tokio::test]
async fn the_worker_and_the_relay_read_by_index() {
    let (_database, mut conn) = session().await;
    assert_flat(
        &mut conn,
        &[
            ("claims", "claim", 0, &["'1'", "'w'", "'60'", "'5'"]),
            ("claims", "cloud_loads", 0, &[]),
            ("claims", "fairest", 0, &["'{cloud-1}'", "'{8}'", "'5'"]),
            ("claims", "fairest", 2, &["'cloud-1'"]),
            ("claims", "mark_waiting", 0, &["'{cloud-1}'", "'{8}'"]),
            (
                "claims",
                "report_progress",
                0,
                &["'1'", "'1'", "'m'", "'10'", "'100'", "'50'", "NULL", "'60'"],
            ),
            ("outbox", "claim_stale", 0, &["'5'", "'100'"]),
            ("outbox", "lag", 0, &[]),
            ("outbox", "done", 0, &["'{1,2}'"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_rescuer_and_retention_read_by_index() {
    let (_database, mut conn) = session().await;
    assert_flat(
        &mut conn,
        &[
            ("rescue", "rescue_expired", 0, &["'5'"]),
            ("rescue", "rescue_expired", 1, &[]),
            ("rescue", "rescue_expired", 2, &[]),
            ("rescue", "requeue_lost", 0, &[]),
            ("rescue", "requeue_lost", 1, &["'600'", "'20'"]),
            ("events", "purge_old", 0, &["'604800'", "'1000'"]),
            ("retention", "forget_finished", 0, &["'7776000'", "'1000'"]),
            (
                "retention",
                "forget_done_cleanups",
                0,
                &["'7776000'", "'1000'"],
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_reconciler_and_the_orphan_sweep_read_by_index() {
    let (_database, mut conn) = session().await;
    let first_page: &[&str] = &["'-9223372036854775808'", "'100'"];
    assert_flat(
        &mut conn,
        &[
            ("cleanups", "take_due", 0, &[]),
            ("cleanups", "take_due", 1, &["'1'"]),
            ("cleanups", "count_pending", 0, &[]),
            ("cleanups", "pending", 0, &["'50'"]),
            ("cleanups", "accounts_after", 0, first_page),
            ("cleanups", "cleanup_accounts_after", 0, &["'0'", "'100'"]),
            ("cleanups", "judge_image", 0, &["gen_random_uuid()"]),
            (
                "cleanups",
                "judge_image",
                1,
                &["gen_random_uuid()", "'img'"],
            ),
            ("cleanups", "kept_image", 0, &["gen_random_uuid()"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_status_read_and_the_console_read_by_index() {
    let (_database, mut conn) = session().await;
    // tickets::find_at: its clause, on the joins of `ticket_query!` (the columns read do not
    // change the plan).
    let find_at = format!(
        "SELECT t.id, t.state, t.message FROM publish_tickets t
           JOIN images i ON i.id = t.image_id
           JOIN scans s ON s.id = i.scan_id
           JOIN users u ON u.id = t.user_id {}",
        statement("tickets", "find_at", 0)
    );
    let mut found = Vec::new();
    let args = ["'alice'", "'1'", "'2'", "'3'", "'4'"];
    whole_reads(&plan(&mut conn, &find_at, &args).await, false, &mut found);
    assert!(found.is_empty(), "tickets::find_at: {found:?}");
    let page = |filters: [&'static str; 7]| -> Vec<&'static str> {
        let mut args = filters.to_vec();
        args.push("'50'");
        args
    };
    let all = page(["NULL"; 7]);
    let next = page(["NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "'5000'"]);
    let state = page(["'error'", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"]);
    let user = page(["NULL", "'user7'", "NULL", "NULL", "NULL", "NULL", "NULL"]);
    let cloud = page([
        "'error'",
        "NULL",
        "'http://cloud-3:5000/v3'",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
    ]);
    let image = page([
        "NULL",
        "NULL",
        "NULL",
        "'1'",
        "'2020-01-01'",
        "NULL",
        "NULL",
    ]);
    assert_flat(
        &mut conn,
        &[
            ("console", "tickets", 0, &all),
            ("console", "tickets", 0, &next),
            ("console", "tickets", 0, &state),
            ("console", "tickets", 0, &user),
            ("console", "tickets", 0, &cloud),
            ("console", "tickets", 0, &image),
            ("console", "running_per_cloud", 0, &[]),
            ("console", "tickets_per_state", 0, &["100000"]),
            ("console", "last_hour", 0, &[]),
            ("console", "last_hour", 1, &[]),
            ("workers", "live", 0, &["'30'"]),
            ("events", "after", 0, &["'0'", "NULL", "'500'"]),
            ("events", "after", 0, &["'0'", "'7'", "'500'"]),
            ("events", "latest_of", 0, &["'7'"]),
            ("events", "newest_id", 0, &[]),
            ("events", "bytes_over_time", 0, &["'7'", "'100'"]),
        ],
    )
    .await;
}

/// What deleting a ticket (retention, an operator) makes its foreign keys run, per ticket:
/// the statements Postgres's referential actions issue (not in `src/store`).
#[tokio::test]
async fn deleting_a_ticket_cascades_by_index() {
    let (_database, mut conn) = session().await;
    let mut failures = Vec::new();
    for sql in [
        "DELETE FROM ticket_attempts WHERE ticket_id = $1",
        "DELETE FROM ticket_outbox WHERE ticket_id = $1",
        "UPDATE image_cleanups SET ticket_id = NULL WHERE ticket_id = $1",
    ] {
        let mut found = Vec::new();
        whole_reads(&plan(&mut conn, sql, &["'42'"]).await, false, &mut found);
        if !found.is_empty() {
            failures.push(format!("{sql}: {found:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
