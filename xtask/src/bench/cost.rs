//! What a ticket costs (issue 26): BENCH_COST_TICKETS tickets of a 1 MiB image published
//! through the API and completed by two workers on the lab Glance; per 1,000 tickets, the CPU
//! seconds of the API, the workers, PostgreSQL and RabbitMQ, the WAL written and the rows
//! inserted, updated and deleted. Completion is watched in PostgreSQL, not by polling the
//! API, so that the API's CPU is the tickets' own.

use super::{pimage::DB, Knobs, Pimage};
use crate::process::{clock_ticks, cpu_seconds, pgrep};
use crate::report::{Report, Section};
use anyhow::{bail, Result};
use serde_json::json;
use std::time::{Duration, Instant};

/// Counters read before and after: CPU seconds per process group, the WAL position, and the
/// rows written to pimage's tables.
struct Reading {
    cpu: [f64; 4],
    wal_lsn: String,
    rows: [f64; 3],
}

fn read(p: &Pimage) -> Result<Reading> {
    let hz = clock_ticks();
    // Table statistics reach pg_stat_user_tables when a backend reports them (about 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let rows = p.psql(
        DB,
        "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_del), 0)
           FROM pg_stat_user_tables",
    )?;
    let rows: Vec<f64> = rows
        .trim()
        .split('|')
        .filter_map(|v| v.parse().ok())
        .collect();
    let [ins, upd, del] = rows[..] else {
        bail!("pg_stat_user_tables: no counts")
    };
    Ok(Reading {
        cpu: [
            cpu_seconds(&[p.api_pid], hz),
            cpu_seconds(&p.worker_pids, hz),
            cpu_seconds(&pgrep(&["-u", "postgres"]), hz),
            cpu_seconds(&pgrep(&["beam.smp"]), hz),
        ],
        wal_lsn: p
            .psql(DB, "SELECT pg_current_wal_lsn()")?
            .trim()
            .to_string(),
        rows: [ins, upd, del],
    })
}

pub fn run(p: &mut Pimage, k: &Knobs, r: &mut Report) -> Result<()> {
    let n = k.cost_tickets;
    p.fresh_db()?;
    p.start_api()?;
    let uri = p.make_image(1, "bench")?;
    p.start_worker(1, 4)?;
    p.start_worker(2, 4)?;
    let before = read(p)?;
    let started = Instant::now();
    for i in 1..=n {
        p.publish(&uri, &format!("cost-{i}"))?;
    }
    wait_all_complete(p, n)?;
    let seconds = started.elapsed().as_secs_f64();
    let after = read(p)?;
    let wal_bytes: f64 = p
        .psql(
            DB,
            &format!(
                "SELECT pg_wal_lsn_diff('{}', '{}')",
                after.wal_lsn, before.wal_lsn
            ),
        )?
        .trim()
        .parse()?;
    let per_thousand = |v: f64| v * 1000.0 / n as f64;
    let cpu: Vec<f64> = (0..4)
        .map(|i| per_thousand(after.cpu[i] - before.cpu[i]))
        .collect();
    let rows: Vec<f64> = (0..3)
        .map(|i| per_thousand(after.rows[i] - before.rows[i]))
        .collect();
    let mut s = Section::new(
        format!(
            "What 1,000 tickets cost ({n} tickets of a 1 MiB image, 2 workers, {seconds:.0} s)"
        ),
        &[
            "CPU s: API",
            "workers",
            "PostgreSQL",
            "RabbitMQ",
            "WAL MiB",
            "rows inserted",
            "updated",
            "deleted",
        ],
    );
    s.rows.push(vec![
        format!("{:.1}", cpu[0]),
        format!("{:.1}", cpu[1]),
        format!("{:.1}", cpu[2]),
        format!("{:.1}", cpu[3]),
        format!("{:.1}", per_thousand(wal_bytes) / 1048576.0),
        format!("{:.0}", rows[0]),
        format!("{:.0}", rows[1]),
        format!("{:.0}", rows[2]),
    ]);
    s.figures = json!({"tickets": n, "seconds": seconds, "per_1000_tickets": {
        "api_cpu_s": cpu[0], "workers_cpu_s": cpu[1], "postgres_cpu_s": cpu[2], "rabbitmq_cpu_s": cpu[3],
        "wal_bytes": per_thousand(wal_bytes), "rows_inserted": rows[0], "rows_updated": rows[1],
        "rows_deleted": rows[2]}});
    r.add(s);
    super::cloud::delete_ticket_images(p)?;
    p.stop_all();
    Ok(())
}

/// Waits until the N tickets are complete; fails on one in error, or after 20 minutes.
fn wait_all_complete(p: &Pimage, n: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let counts = p.psql(
            DB,
            "SELECT count(*) FILTER (WHERE state = 'complete'), count(*) FILTER (WHERE state IN ('error', 'cancelled'))
               FROM publish_tickets",
        )?;
        let counts: Vec<usize> = counts
            .trim()
            .split('|')
            .filter_map(|v| v.parse().ok())
            .collect();
        match counts[..] {
            [_, failed] if failed > 0 => bail!("{failed} tickets failed"),
            [complete, _] if complete >= n => return Ok(()),
            _ if started.elapsed() > Duration::from_secs(1200) => {
                bail!("tickets still running after 20 minutes: {counts:?}")
            }
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
