//! `cargo xtask bench growth` (issue 26, "flat as tickets grow"): for each size of
//! BENCH_GROWTH_SIZES ("10000 10000000"), a database `pimage_growth_<size>` is migrated and
//! seeded with that many finished tickets (their attempts, two events each, a done cleanup
//! for each failed or cancelled one) spread over 89 days, plus BENCH_GROWTH_QUEUED (100000)
//! queued tickets, 40 running ones and a small outbox backlog, all by `generate_series` with
//! every index present, then `VACUUM ANALYZE`d. Each recurring query (its statement read
//! from `src/store` as the code has it) is then run BENCH_GROWTH_RUNS (5) times as
//! `EXPLAIN ANALYZE` of the prepared statement, in a transaction rolled back; the table gives
//! the median (planning + execution) at each size and the ratio to the smallest.
//! BENCH_GROWTH_KEEP=1 keeps the databases (and a later run reuses a whole one).

use crate::process::{cmd, output};
use crate::report::{Report, Section};
use crate::stats::{median, ratio};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::Instant;

const CHUNK: u64 = 1_000_000;

/// A recurring query: its name, where its statement is (store file, function, n-th literal),
/// and its arguments (`{mid}`: a finished ticket of user1 in the middle of the ids,
/// `{queued}`: a queued one).
struct Query {
    name: &'static str,
    file: &'static str,
    function: &'static str,
    nth: usize,
    args: &'static [&'static str],
}

const fn q(
    name: &'static str,
    file: &'static str,
    function: &'static str,
    nth: usize,
    args: &'static [&'static str],
) -> Query {
    Query {
        name,
        file,
        function,
        nth,
        args,
    }
}

const HOSTS: &str = "'{cloud-0,cloud-1,cloud-2,cloud-3,cloud-4}'";
const LIMITS: &str = "'{8,8,8,8,8}'";
const ALL: &str = "NULL";

const QUERIES: &[Query] = &[
    q(
        "claim: the fairest queued ticket",
        "claims",
        "fairest",
        0,
        &[HOSTS, LIMITS, "'5'"],
    ),
    q(
        "claim: take it",
        "claims",
        "claim",
        0,
        &["'{queued}'", "'w'", "'60'", "'5'"],
    ),
    q("claim: clouds' loads", "claims", "cloud_loads", 0, &[]),
    q("rescue: expired leases", "rescue", "rescue_expired", 2, &[]),
    q(
        "rescue: lost messages, count",
        "rescue",
        "requeue_lost",
        0,
        &[],
    ),
    q(
        "rescue: lost messages, pick",
        "rescue",
        "requeue_lost",
        1,
        &["'600'", "'20'"],
    ),
    q(
        "outbox relay: stale rows",
        "outbox",
        "claim_stale",
        0,
        &["'5'", "'100'"],
    ),
    q("outbox relay: lag", "outbox", "lag", 0, &[]),
    q("reconciler: due cleanup", "cleanups", "take_due", 0, &[]),
    q(
        "reconciler: pending count",
        "cleanups",
        "count_pending",
        0,
        &[],
    ),
    q(
        "orphan sweep: a page of accounts",
        "cleanups",
        "accounts_after",
        0,
        &["'-9223372036854775808'", "'100'"],
    ),
    q(
        "orphan sweep: cleanups' accounts",
        "cleanups",
        "cleanup_accounts_after",
        0,
        &["'0'", "'100'"],
    ),
    q(
        "orphan sweep: judge an image",
        "cleanups",
        "judge_image",
        0,
        &["gen_random_uuid()"],
    ),
    q(
        "status read (tickets::find_at)",
        "tickets",
        "find_at",
        0,
        &["'user1'", "'1'", "'1'", "'1'", "'{mid}'"],
    ),
    q(
        "console: tickets, first page",
        "console",
        "tickets",
        0,
        &[ALL, ALL, ALL, ALL, ALL, ALL, ALL, "'50'"],
    ),
    q(
        "console: tickets, a later page",
        "console",
        "tickets",
        0,
        &[ALL, ALL, ALL, ALL, ALL, ALL, "'{mid}'", "'50'"],
    ),
    q(
        "console: tickets in error",
        "console",
        "tickets",
        0,
        &["'error'", ALL, ALL, ALL, ALL, ALL, ALL, "'50'"],
    ),
    q(
        "console: a user's tickets",
        "console",
        "tickets",
        0,
        &[ALL, "'user7'", ALL, ALL, ALL, ALL, ALL, "'50'"],
    ),
    q(
        "console: a cloud's errors",
        "console",
        "tickets",
        0,
        &[
            "'error'",
            ALL,
            "'http://cloud-3:5000/v3'",
            ALL,
            ALL,
            ALL,
            ALL,
            "'50'",
        ],
    ),
    q(
        "console: running per cloud",
        "console",
        "running_per_cloud",
        0,
        &[],
    ),
    q(
        "console: ended in the last hour",
        "console",
        "last_hour",
        0,
        &[],
    ),
    q(
        "console: bytes in the last hour",
        "console",
        "last_hour",
        1,
        &[],
    ),
    q("console: workers", "workers", "live", 0, &["'30'"]),
    q(
        "console, /metrics: tickets per state (live counted; ended estimated past 100,000)",
        "console",
        "tickets_per_state",
        0,
        &["100000"],
    ),
    q(
        "events: a ticket's latest",
        "events",
        "latest_of",
        0,
        &["'{mid}'"],
    ),
    q(
        "events: replay after an id",
        "events",
        "after",
        0,
        &["'{event}'", "NULL", "'500'"],
    ),
    q(
        "event pruning: a batch of 1,000",
        "events",
        "purge_old",
        0,
        &["'604800'", "'1000'"],
    ),
    q(
        "retention: a batch of 1,000 tickets",
        "retention",
        "forget_finished",
        0,
        &["'5184000'", "'1000'"],
    ),
    q(
        "retention: done cleanups",
        "retention",
        "forget_done_cleanups",
        0,
        &["'5184000'", "'1000'"],
    ),
];

fn source(file: &str) -> &'static str {
    match file {
        "claims" => include_str!("../../../src/store/claims.rs"),
        "cleanups" => include_str!("../../../src/store/cleanups.rs"),
        "console" => include_str!("../../../src/store/console.rs"),
        "events" => include_str!("../../../src/store/events.rs"),
        "outbox" => include_str!("../../../src/store/outbox.rs"),
        "rescue" => include_str!("../../../src/store/rescue.rs"),
        "retention" => include_str!("../../../src/store/retention.rs"),
        "tickets" => include_str!("../../../src/store/tickets.rs"),
        _ => include_str!("../../../src/store/workers.rs"),
    }
}

/// The `nth` string literal after `fn function` in the store file, comments skipped (as
/// tests/suite/query_plans.rs reads it).
fn statement(file: &str, function: &str, nth: usize) -> Result<String> {
    let src = source(file);
    let start = [format!("fn {function}("), format!("fn {function}<")]
        .iter()
        .filter_map(|header| src.find(header.as_str()))
        .min()
        .with_context(|| format!("no fn {function} in src/store/{file}.rs"))?;
    let mut rest = &src[start..];
    let mut found = 0;
    loop {
        let quote = rest.find('"').context("no literal")?;
        if let Some(c) = rest.find("//").filter(|&c| c < quote) {
            rest = &rest[c + rest[c..].find('\n').unwrap_or(0)..];
            continue;
        }
        let raw = rest[..quote].ends_with("r#");
        let body = &rest[quote + 1..];
        let end = if raw {
            body.find("\"#")
        } else {
            body.find('"')
        }
        .context("unclosed")?;
        if found == nth {
            return Ok(body[..end].to_string());
        }
        found += 1;
        rest = &body[end + 1..];
    }
}

/// tickets::find_at's clause on `ticket_query!`'s joins (the columns do not change the plan).
fn sql_of(query: &Query) -> Result<String> {
    let sql = statement(query.file, query.function, query.nth)?;
    Ok(if query.function == "find_at" {
        format!(
            "SELECT t.id, t.state, t.message, t.cloud_password_enc FROM publish_tickets t
               JOIN images i ON i.id = t.image_id JOIN scans s ON s.id = i.scan_id
               JOIN users u ON u.id = t.user_id {sql}"
        )
    } else {
        sql
    })
}

fn psql(db: &str, commands: &[&str]) -> Result<String> {
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-qtAX",
        "-v",
        "ON_ERROR_STOP=1",
    ];
    args.extend(["-d", db]);
    for c in commands {
        args.extend(["-c", c]);
    }
    output(&mut cmd("psql", args))
}

fn knob(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

/// Migrates `db` as sqlx would (each file in one transaction).
fn migrate(root: &std::path::Path, db: &str) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(root.join("migrations"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    for f in files {
        let f = f.to_string_lossy().to_string();
        output(&mut cmd(
            "psql",
            [
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-qtAX",
                "-v",
                "ON_ERROR_STOP=1",
                "-1",
                "-d",
                db,
                "-f",
                &f,
            ],
        ))?;
    }
    Ok(())
}

/// The finished tickets `from..=to` of `n`, their attempts, events and done cleanups.
fn seed_finished(db: &str, n: u64, from: u64, to: u64) -> Result<()> {
    let tickets = format!(
        "INSERT INTO publish_tickets (image_id, user_id, display_name, public_image, keystone_url,
             keystone_version, keystone_domain, keystone_project, cloud_login, cloud_password_enc,
             state, attempts, fencing_token, message, percentage, bytes_loaded, bytes_total,
             cloud_id, created_at, updated_at, started_at, finished_at)
         SELECT 1, 1 + g % 20, 'seeded-' || g, false, 'http://cloud-' || (g % 5) || ':5000/v3',
             'v3', 'Default', 'project-' || (g % 50), 'login-' || (g % 50),
             decode(md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text), 'hex'),
             (ARRAY['complete','complete','complete','complete','complete','complete',
                    'complete','error','cancelled'])[1 + g % 9], 1, 1,
             CASE WHEN g % 9 < 7 THEN 'published' ELSE 'failed: the cloud said no' END,
             100, 1048576, 1048576, CASE WHEN g % 9 < 7 THEN 'img-' || g END,
             ts - interval '5 minutes', ts, ts - interval '4 minutes', ts
           FROM (SELECT g, now() - interval '89 days' + (g::float8 / {n}) * interval '89 days' AS ts
                   FROM generate_series({from}, {to}) g) s"
    );
    let attempts = format!(
        "INSERT INTO ticket_attempts (ticket_id, number, fencing_token, worker, started_at,
             ended_at, outcome, bytes_sent)
         SELECT id, 1, 1, 'worker-' || (id % 4), started_at, finished_at,
                CASE state WHEN 'complete' THEN 'published' WHEN 'error' THEN 'failed'
                           ELSE 'cancelled' END, bytes_loaded
           FROM publish_tickets WHERE id BETWEEN {from} AND {to}"
    );
    let events = format!(
        "INSERT INTO ticket_events (ticket_id, kind, state, old_state, percentage, bytes_loaded,
             bytes_total, message, at)
         SELECT id, k.kind, CASE k.kind WHEN 'created' THEN 'queued' ELSE state END,
                CASE k.kind WHEN 'created' THEN NULL ELSE 'running' END, 100, bytes_loaded,
                bytes_total, message, CASE k.kind WHEN 'created' THEN created_at ELSE finished_at END
           FROM publish_tickets, (VALUES ('created'), ('changed')) k(kind)
          WHERE id BETWEEN {from} AND {to} ORDER BY id, k.kind DESC"
    );
    let cleanups = format!(
        "INSERT INTO image_cleanups (ticket_id, ticket_key, keystone_url, keystone_domain,
             keystone_project, cloud_login, cloud_password_enc, attempts, created_at, done_at)
         SELECT id, ticket_key, keystone_url, keystone_domain, keystone_project, cloud_login,
                '', 1, finished_at, finished_at + interval '1 minute'
           FROM publish_tickets WHERE id BETWEEN {from} AND {to} AND state <> 'complete'"
    );
    let off = "SET synchronous_commit = off";
    psql(db, &[off, &tickets, &attempts, &events, &cleanups]).map(drop)
}

/// The live work: queued tickets, running ones, an outbox backlog, pending cleanups, workers.
fn seed_live(db: &str, queued: u64) -> Result<()> {
    let live = format!(
        "INSERT INTO publish_tickets (image_id, user_id, display_name, public_image, keystone_url,
             keystone_version, keystone_domain, keystone_project, cloud_login, cloud_password_enc,
             state, message, bytes_total, created_at, updated_at, lease_owner, lease_expires_at,
             started_at, attempts, fencing_token)
         SELECT 1, 1 + g % 20, 'live-' || g, false, 'http://cloud-' || (g % 5) || ':5000/v3',
             'v3', 'Default', 'project-' || (g % 50), 'login-' || (g % 50),
             decode(md5(g::text), 'hex'), CASE WHEN g <= 40 THEN 'running' ELSE 'queued' END,
             'waiting', 1048576, now() - make_interval(secs => g % 3600), now(),
             CASE WHEN g <= 40 THEN 'worker-' || (g % 4) END,
             CASE WHEN g <= 40 THEN now() + interval '60 seconds' END,
             CASE WHEN g <= 40 THEN now() END, (g <= 40)::int, (g <= 40)::int
           FROM generate_series(1, {}) g",
        queued + 40
    );
    let side = "
        INSERT INTO ticket_events (ticket_id, kind, state, percentage, bytes_loaded, bytes_total,
            message, at)
        SELECT id, 'created', 'queued', 0, 0, bytes_total, 'queued', created_at
          FROM publish_tickets WHERE state IN ('queued', 'running');
        INSERT INTO ticket_outbox (ticket_id, created_at)
        SELECT id, created_at FROM publish_tickets WHERE state = 'queued' ORDER BY id LIMIT 1000;
        INSERT INTO image_cleanups (ticket_id, ticket_key, keystone_url, keystone_domain,
            keystone_project, cloud_login, cloud_password_enc, next_try_at)
        SELECT id, ticket_key, keystone_url, keystone_domain, keystone_project, cloud_login,
               cloud_password_enc, now() + interval '1 hour'
          FROM publish_tickets WHERE state = 'error' ORDER BY id DESC LIMIT 100;
        INSERT INTO worker_heartbeats (worker, host, pid, version, slots_total, slots_used)
        SELECT 'worker-' || w, 'host', w, 'bench', 4, 4 FROM generate_series(0, 3) w";
    psql(db, &[&live, side]).map(drop)
}

/// Seeds `db` with `n` finished tickets (in chunks, the rate printed) and the live work.
/// Returns the seconds it took.
fn seed(db: &str, n: u64, queued: u64) -> Result<f64> {
    let started = Instant::now();
    psql(
        db,
        &["INSERT INTO users (login, password_hash) SELECT 'user' || u, 'x' FROM generate_series(1, 20) u;
           INSERT INTO scanned_instances (user_id, name) VALUES (1, 'bench');
           INSERT INTO scans (scanned_instance_id, name) VALUES (1, 'bench');
           INSERT INTO images (scan_id, name, file_path, file_name, format, size_bytes, md5sum, sha256sum)
           VALUES (1, 'disk', '/nonexistent', 'disk.raw', 'raw', 1048576, '', '')"],
    )?;
    let mut from = 1;
    while from <= n {
        let to = (from + CHUNK - 1).min(n);
        seed_finished(db, n, from, to)?;
        let secs = started.elapsed().as_secs_f64();
        super::say(&format!(
            "growth: {db}: {to} finished tickets in {secs:.0} s ({:.0} tickets/s)",
            to as f64 / secs
        ));
        from = to + 1;
    }
    seed_live(db, queued)?;
    psql(
        db,
        &["VACUUM ANALYZE", "CREATE TABLE growth_seeded (n bigint)"],
    )?;
    let secs = started.elapsed().as_secs_f64();
    super::say(&format!("growth: {db} seeded and vacuumed in {secs:.0} s"));
    Ok(secs)
}

/// Median milliseconds (planning + execution) of each query on `db`, over `runs`.
fn measure(db: &str, runs: usize) -> Result<Vec<f64>> {
    let pick = |sql: &str| psql(db, &[sql]).map(|v| v.trim().to_string());
    let mid = pick("SELECT max(id) FROM publish_tickets WHERE user_id = 1 AND id <= (SELECT max(id) / 2 FROM publish_tickets WHERE state <> 'queued' AND state <> 'running')")?;
    let queued = pick("SELECT max(id) FROM publish_tickets WHERE state = 'queued'")?;
    let event = pick("SELECT max(id) - 1000 FROM ticket_events")?;
    let mut medians = Vec::new();
    for query in QUERIES {
        let sql = sql_of(query)?;
        let args: Vec<String> = query
            .args
            .iter()
            .map(|a| {
                a.replace("{mid}", &mid)
                    .replace("{queued}", &queued)
                    .replace("{event}", &event)
            })
            .collect();
        let execute = if args.is_empty() {
            "EXECUTE q".to_string()
        } else {
            format!("EXECUTE q({})", args.join(", "))
        };
        let prepare = format!("PREPARE q AS {sql}");
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {execute}");
        let mut times = Vec::new();
        for _ in 0..runs {
            let out = psql(db, &["BEGIN", &prepare, &explain, "ROLLBACK"])
                .with_context(|| format!("{}: {sql}", query.name))?;
            let plan: serde_json::Value = serde_json::from_str(out.trim())?;
            let ms = |k: &str| plan[0][k].as_f64().unwrap_or(0.0);
            times.push(ms("Planning Time") + ms("Execution Time"));
        }
        medians.push(median(&times));
    }
    Ok(medians)
}

/// Bytes of what tickets leave, and of the whole database.
fn sizes(db: &str) -> Result<(f64, f64)> {
    let out = psql(
        db,
        &[
            "SELECT sum(pg_total_relation_size(t))::bigint, pg_database_size(current_database())
             FROM unnest(ARRAY['publish_tickets', 'ticket_events', 'ticket_attempts',
                               'ticket_outbox', 'image_cleanups', 'kept_images']::regclass[]) t",
        ],
    )?;
    let mut it = out
        .trim()
        .split('|')
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    Ok((it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)))
}

/// One size: its database made (or reused) and measured. Returns (seed seconds or NaN when
/// reused, medians, bytes of tickets' tables, database bytes).
fn one_size(
    root: &std::path::Path,
    n: u64,
    queued: u64,
    runs: usize,
) -> Result<(f64, Vec<f64>, f64, f64)> {
    let db = format!("pimage_growth_{n}");
    let seeded = psql(&db, &["SELECT count(*) FROM growth_seeded"]).is_ok();
    let seconds = if seeded {
        super::say(&format!("growth: reusing {db}"));
        f64::NAN
    } else {
        psql(
            "postgres",
            &[&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")],
        )?;
        psql("postgres", &[&format!("CREATE DATABASE {db}")])?;
        migrate(root, &db)?;
        seed(&db, n, queued)?
    };
    let medians = measure(&db, runs)?;
    let (tables, database) = sizes(&db)?;
    Ok((seconds, medians, tables, database))
}

pub fn run(root: &std::path::Path, r: &mut Report) -> Result<()> {
    let sizes: Vec<u64> = knob("BENCH_GROWTH_SIZES", "10000 10000000")
        .split_whitespace()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("BENCH_GROWTH_SIZES: ticket counts")?;
    let queued: u64 = knob("BENCH_GROWTH_QUEUED", "100000").parse()?;
    let runs: usize = knob("BENCH_GROWTH_RUNS", "5").parse()?;
    let keep = !knob("BENCH_GROWTH_KEEP", "").is_empty();
    if sizes.is_empty() {
        bail!("BENCH_GROWTH_SIZES is empty");
    }
    let mut measured = Vec::new();
    for &n in &sizes {
        let result = one_size(root, n, queued, runs);
        if !keep {
            let _ = psql(
                "postgres",
                &[&format!(
                    "DROP DATABASE IF EXISTS pimage_growth_{n} WITH (FORCE)"
                )],
            );
        }
        measured.push((n, result?));
    }
    let mut header = vec!["query"];
    let names: Vec<String> = sizes
        .iter()
        .map(|n| format!("ms at {}", crate::stats::thousands(*n as f64)))
        .collect();
    header.extend(
        names
            .iter()
            .map(|s| &*Box::leak(s.clone().into_boxed_str())),
    );
    header.push("ratio (largest ÷ smallest)");
    let mut section = Section::new(
        format!("Recurring queries as tickets grow (+{queued} queued)"),
        &header,
    );
    for (i, query) in QUERIES.iter().enumerate() {
        let mut row = vec![query.name.to_string()];
        row.extend(measured.iter().map(|(_, m)| format!("{:.2}", m.1[i])));
        let (first, last) = (measured[0].1 .1[i], measured[measured.len() - 1].1 .1[i]);
        row.push(format!("{:.2}×", ratio(last, first)));
        section.rows.push(row);
    }
    let mut size = Section::new(
        "Database size (what tickets leave) and seeding",
        &[
            "finished tickets",
            "tickets' tables, MiB",
            "MiB per million finished",
            "database, MiB",
            "seeded in, s",
        ],
    );
    for (n, (seconds, _, tables, database)) in &measured {
        size.rows.push(vec![
            crate::stats::thousands(*n as f64),
            format!("{:.0}", tables / 1048576.0),
            format!("{:.0}", tables / 1048576.0 / (*n as f64 / 1e6)),
            format!("{:.0}", database / 1048576.0),
            if seconds.is_nan() {
                "(reused)".into()
            } else {
                format!("{seconds:.0}")
            },
        ]);
    }
    section.figures = json!(measured
        .iter()
        .map(|(n, (s, m, t, d))| json!({"tickets": n, "seed_seconds": crate::report::finite(*s), "ms": m, "tables_bytes": t, "database_bytes": d}))
        .collect::<Vec<_>>());
    r.add(section);
    r.add(size);
    Ok(())
}
