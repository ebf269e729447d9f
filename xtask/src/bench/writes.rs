//! Write amplification: what one big ticket costs PostgreSQL (transactions, rows, WAL).

use super::{cloud, pimage::DB, Knobs, Pimage};
use crate::report::{Report, Section};
use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};

pub fn run(p: &mut Pimage, k: &Knobs, r: &mut Report) -> Result<()> {
    p.fresh_db()?;
    p.start_api()?;
    p.start_worker(1, 4)?;
    let mib = k.writes_mib;
    let uri = p.make_image(mib, "bench")?;
    // Start-up writes settle and their statistics flush (idle backends: within 10 s).
    std::thread::sleep(Duration::from_secs(11));
    let q = format!("SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = '{DB}'");
    p.psql(DB, "SELECT pg_stat_reset()")?;
    std::thread::sleep(Duration::from_secs(1));
    let before = pair(&p.psql(DB, &q)?)?;
    let wal0 = p.psql("postgres", "SELECT pg_current_wal_lsn()")?;
    let t0 = Instant::now();
    let ticket = p.publish(&uri, "writes")?;
    p.wait_complete(&ticket)?;
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(11));
    let after = pair(&p.psql(DB, &q)?)?;
    let wal1 = p.psql("postgres", "SELECT pg_current_wal_lsn()")?;
    let wal: f64 = p
        .psql(
            "postgres",
            &format!("SELECT pg_wal_lsn_diff('{wal1}', '{wal0}')"),
        )?
        .parse()?;
    let updates: u64 = p
        .psql(
            DB,
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'publish_tickets'",
        )?
        .parse()?;
    cloud::delete(p, &p.cloud_id(&ticket)?);
    let (commits, rows) = (after.0 - before.0, after.1 - before.1);
    let mut s = Section::new(
        format!("Write amplification (one {mib} MiB ticket, {secs:.0} s)"),
        &["measure", "value"],
    );
    s.rows = vec![
        vec![
            "transactions committed on the pimage database (reads too: relay and rescuer polls)"
                .into(),
            commits.to_string(),
        ],
        vec!["rows inserted + updated + deleted".into(), rows.to_string()],
        vec![
            "updates of its publish_tickets row".into(),
            updates.to_string(),
        ],
        vec![
            "WAL written (whole server, KiB)".into(),
            format!("{:.0}", wal / 1024.0),
        ],
    ];
    s.figures = json!({"size_mib": mib, "seconds": secs, "transactions": commits, "rows_written": rows,
        "ticket_row_updates": updates, "wal_kib": wal / 1024.0});
    r.target(
        "rows written per ticket",
        rows as f64,
        "a few hundred at most (≤ 300)",
        rows <= 300,
    );
    r.add(s);
    p.stop_all();
    Ok(())
}

fn pair(line: &str) -> Result<(i64, i64)> {
    let (a, b) = line.split_once('|').context("two columns")?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}
