//! The API under load (wrk) on its two hot paths, against pgbench -S on the same PostgreSQL.

use super::{pimage::note, profile, Knobs, Paths, Pimage};
use crate::process::{clock_ticks, cmd, cpu_seconds, output, pgrep, run as run_cmd};
use crate::report::{Report, Section};
use crate::stats::{parse_pgbench, parse_wrk, ratio, thousands};
use anyhow::Result;
use serde_json::{json, Value};

pub fn run(p: &mut Pimage, _paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    p.fresh_db()?;
    p.start_api()?;
    let uri = p.make_image(1, "bench")?;
    let ticket = p.publish(&uri, "api")?;
    let auth = output(&mut crate::process::sh(&format!(
        "printf '%s' '{}' | base64",
        super::pimage::USER_AUTH
    )))?;
    let post = p.work().join("post.lua");
    let get = p.work().join("get.lua");
    std::fs::write(
        &post,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Authorization\"] = \"Basic {auth}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Accept\"] = \"application/json\"\nwrk.body = [[{}]]\n",
            p.publish_body("wrk")
        ),
    )?;
    std::fs::write(
        &get,
        format!("wrk.headers[\"Authorization\"] = \"Basic {auth}\"\nwrk.headers[\"Accept\"] = \"application/json\"\n"),
    )?;
    p.psql(
        "postgres",
        "DROP DATABASE IF EXISTS pimage_pgbench WITH (FORCE)",
    )?;
    p.psql("postgres", "CREATE DATABASE pimage_pgbench")?;
    run_cmd(
        cmd(
            "pgbench",
            [
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-i",
                "-s",
                "10",
                "-q",
                "pimage_pgbench",
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null()),
    )?;
    let c = k.connections;
    let mut s = Section::new(
        format!(
            "API (wrk -t2 -c{c}, {} s each; pgbench -S -c{c} -j2)",
            k.seconds
        ),
        &["load", "requests/s", "p50 ms", "p99 ms", "non-2xx / errors"],
    );
    let status = wrk_run(
        p,
        k,
        &mut s,
        "GET …/pimages/N/status (JSON)",
        &format!("{}/{ticket}/status", p.api),
        &get,
    )?;
    let publish = wrk_run(
        p,
        k,
        &mut s,
        "POST …/pimages (insert + queue publish)",
        &format!("{}/{uri}/pimages", p.api),
        &post,
    )?;
    let out = output(&mut cmd(
        "pgbench",
        [
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-S",
            &format!("-c{c}"),
            "-j2",
            &format!("-T{}", k.seconds),
            "pimage_pgbench",
        ],
    ))?;
    let (tps, latency) = parse_pgbench(&out)?;
    s.rows.push(vec![
        "pgbench -S (one SELECT by primary key)".into(),
        thousands(tps),
        format!("{latency:.2} (average)"),
        "–".into(),
        "0".into(),
    ]);
    let get_vs_pg = ratio(status["requests_per_s"].as_f64().unwrap_or(0.0), tps);
    s.figures = json!({"status_get": status, "publish_post": publish,
        "pgbench_select": {"tps": tps, "latency_avg_ms": latency}, "status_get_vs_pgbench": get_vs_pg});
    let (post_rps, post_p99) = (
        publish["requests_per_s"].as_f64().unwrap_or(0.0),
        publish["p99_ms"].as_f64().unwrap_or(f64::MAX),
    );
    r.target(
        "POST …/pimages requests/s",
        post_rps,
        "≥ 2000 (p99 < 20 ms)",
        post_rps >= 2000.0 && post_p99 < 20.0,
    );
    let get_p99 = status["p99_ms"].as_f64().unwrap_or(f64::MAX);
    r.target(
        "GET …/status / pgbench -S",
        get_vs_pg,
        "≥ 0.5 (p99 < 20 ms)",
        get_vs_pg >= 0.5 && get_p99 < 20.0,
    );
    r.add(s);
    p.psql(
        "postgres",
        "DROP DATABASE IF EXISTS pimage_pgbench WITH (FORCE)",
    )?;
    p.stop_all();
    Ok(())
}

/// One line of the table: a 3 s warm-up (pools connect, statements get prepared, each
/// connection's first request pays argon2), then the measured run.
fn wrk_run(
    p: &Pimage,
    k: &Knobs,
    s: &mut Section,
    name: &str,
    url: &str,
    script: &std::path::Path,
) -> Result<Value> {
    let conns = format!("-c{}", k.connections);
    let script = script.to_string_lossy().to_string();
    let _ = output(&mut cmd("wrk", ["-t2", &conns, "-d3s", "-s", &script, url]));
    let profiling = k.profile.then(|| {
        let pg = pgrep(&["-d,", "-u", "postgres"])
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let secs = Some(k.seconds.saturating_sub(2));
        (
            profile::start(
                &p.api_pid.to_string(),
                p.work().join("perf.data"),
                true,
                secs,
            ),
            profile::start(&pg, p.work().join("perf-pg.data"), false, secs),
        )
    });
    let hz = clock_ticks();
    let cpu = |pids: &[u32]| cpu_seconds(pids, hz);
    let (a0, p0, r0) = (
        cpu(&[p.api_pid]),
        cpu(&pgrep(&["-u", "postgres"])),
        cpu(&pgrep(&["beam.smp"])),
    );
    let out = output(&mut cmd(
        "wrk",
        [
            "-t2",
            &conns,
            &format!("-d{}s", k.seconds),
            "--latency",
            "-s",
            &script,
            url,
        ],
    ))?;
    // Where the two cores went during the run (wrk takes the rest).
    note(format!(
        "{name}: CPU s over {} s: API {:.0}, PostgreSQL {:.0}, RabbitMQ {:.0}",
        k.seconds,
        cpu(&[p.api_pid]) - a0,
        cpu(&pgrep(&["-u", "postgres"])) - p0,
        cpu(&pgrep(&["beam.smp"])) - r0
    ));
    if let Some((api, pg)) = profiling {
        let tag: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(20)
            .collect();
        if let Some(perf) = api {
            perf.finish(
                false,
                &["--percent-limit", "1.5", "-g", "none", "--sort", "dso,sym"],
                p.work().join(format!("perf-{tag}.txt")),
            );
        }
        if let Some(perf) = pg {
            perf.finish(
                false,
                &["--percent-limit", "1", "--sort", "sym"],
                p.work().join(format!("perf-pg-{tag}.txt")),
            );
        }
    }
    let w = parse_wrk(&out)?;
    let errors = w
        .socket_errors
        .as_ref()
        .map_or(String::new(), |e| format!("; {e}"));
    s.rows.push(vec![
        name.to_string(),
        thousands(w.requests_per_s),
        format!("{:.2}", w.p50_ms),
        format!("{:.2}", w.p99_ms),
        format!("{}{errors}", w.non_2xx),
    ]);
    Ok(
        json!({"requests_per_s": w.requests_per_s, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms,
        "non_2xx": w.non_2xx, "socket_errors": w.socket_errors}),
    )
}
