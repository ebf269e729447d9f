//! The API under load (wrk) on its two hot paths, beside pgbench on the same PostgreSQL: the
//! status GET against `pgbench -S`, the publish POST against a bare durable 1 KiB insert per
//! transaction at the same connection count (issue 26), with each one's CPU per request.

use super::{pimage::note, profile, Knobs, Paths, Pimage};
use crate::process::{clock_ticks, cmd, cpu_seconds, output, pgrep, run as run_cmd};
use crate::report::{Report, Section};
use crate::stats::{parse_pgbench, parse_wrk, ratio, thousands};
use anyhow::Result;
use serde_json::{json, Value};

pub fn run(p: &mut Pimage, _paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    p.fresh_db()?;
    // As deployed: each user may hold 200 unfinished tickets (the default quota, counted on
    // every publish), and a verified password is remembered for the whole run.
    p.start_api_with(&[
        ("PIMAGE__LIMITS__QUEUED_TICKETS_PER_USER", "200".into()),
        ("PIMAGE__API__CREDENTIAL_CACHE", "1h".into()),
    ])?;
    let uri = p.make_image(1, "bench")?;
    let ticket = p.publish(&uri, "api")?;
    let auth = output(&mut crate::process::sh(&format!(
        "printf '%s' '{}' | base64",
        super::pimage::USER_AUTH
    )))?;
    let post = p.work().join("post.lua");
    let get = p.work().join("get.lua");
    std::fs::write(&post, publishers_script(p, k.publishers)?)?;
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
    let insert = p.work().join("insert.sql");
    std::fs::write(
        &insert,
        "INSERT INTO bare_insert (payload) VALUES (repeat('x', 1024));\n",
    )?;
    p.psql(
        "pimage_pgbench",
        "CREATE TABLE bare_insert (id bigserial PRIMARY KEY, payload text NOT NULL)",
    )?;
    let c = k.connections;
    let mut s = Section::new(
        format!(
            "API (wrk -t2, {} s each after a 3 s warm-up) beside pgbench on the same PostgreSQL",
            k.seconds
        ),
        &[
            "load",
            "connections",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "CPU ms per request: API / PostgreSQL",
            "non-2xx / errors",
        ],
    );
    let status = wrk_run(
        p,
        k,
        &mut s,
        "GET …/pimages/N/status (JSON)",
        c,
        &format!("{}/{ticket}/status", p.api),
        &get,
    )?;
    let select = pgbench_run(
        p,
        k,
        &mut s,
        "pgbench -S (one SELECT by primary key)",
        c,
        &["-S"],
    )?;
    let get_vs_pg = ratio(
        status["requests_per_s"].as_f64().unwrap_or(0.0),
        select["tps"].as_f64().unwrap_or(0.0),
    );
    let mut figures =
        json!({"status_get": status, "pgbench_select": select, "status_get_vs_pgbench": get_vs_pg});
    let insert = insert.to_string_lossy().to_string();
    for conns in [c, 64] {
        let post = wrk_run(
            p,
            k,
            &mut s,
            &format!("POST …/pimages ({} users in turn)", k.publishers),
            conns,
            &format!("http://127.0.0.1:{}/", super::pimage::PORT),
            &post,
        )?;
        let bare = pgbench_run(
            p,
            k,
            &mut s,
            "pgbench: a bare durable 1 KiB insert per transaction",
            conns,
            &["-n", "-f", &insert],
        )?;
        let post_vs_insert = ratio(
            post["requests_per_s"].as_f64().unwrap_or(0.0),
            bare["tps"].as_f64().unwrap_or(0.0),
        );
        r.target(
            format!("POST …/pimages / pgbench bare insert, -c{conns}"),
            post_vs_insert,
            "≥ 0.25",
            post_vs_insert >= 0.25,
        );
        if conns == 64 {
            let p99 = post["p99_ms"].as_f64().unwrap_or(f64::MAX);
            r.target("POST …/pimages p99 ms, -c64", p99, "< 25", p99 < 25.0);
        }
        let api_ms = post["api_cpu_ms_per_request"].as_f64().unwrap_or(f64::MAX);
        r.target(
            format!("API CPU ms per POST, -c{conns}"),
            api_ms,
            "≤ 0.25",
            api_ms <= 0.25,
        );
        figures[format!("publish_post_c{conns}")] = post;
        figures[format!("pgbench_insert_c{conns}")] = bare;
        figures[format!("publish_post_vs_insert_c{conns}")] = json!(post_vs_insert);
    }
    s.figures = figures;
    let get_p99 = status["p99_ms"].as_f64().unwrap_or(f64::MAX);
    r.target(
        "GET …/status / pgbench -S",
        get_vs_pg,
        "≥ 1.5 (p99 < 20 ms)",
        get_vs_pg >= 1.5 && get_p99 < 20.0,
    );
    r.add(s);
    p.psql(
        "postgres",
        "DROP DATABASE IF EXISTS pimage_pgbench WITH (FORCE)",
    )?;
    p.stop_all();
    Ok(())
}

/// A wrk script publishing as `n` users in turn, each its own image: many users publish at
/// once, as in a deployment, each within its quota (one user alone reaches its 200
/// unfinished tickets within a second of such a load). The users are copies of `bench` (its
/// password hash and entitlements); each logs in once before the load, so that no measured
/// request pays argon2.
fn publishers_script(p: &Pimage, n: usize) -> Result<String> {
    p.psql(
        super::pimage::DB,
        &format!(
            "INSERT INTO users (login, password_hash, is_admin)
               SELECT 'publisher' || g, password_hash, false FROM users, generate_series(1, {n}) g
                WHERE login = 'bench';
             INSERT INTO user_entitlements (user_id, entitlement)
               SELECT u.id, e.entitlement FROM users u, user_entitlements e
                 JOIN users b ON b.id = e.user_id AND b.login = 'bench'
                WHERE u.login LIKE 'publisher%'"
        ),
    )?;
    let mut requests = String::new();
    for i in 1..=n {
        let login = format!("publisher{i}");
        let uri = p.make_image(1, &login)?;
        let credentials = format!("{login}:benchpass");
        output(&mut cmd(
            "curl",
            [
                "-sf",
                "-o",
                "/dev/null",
                "-u",
                &credentials,
                &format!("{}/{uri}", p.api),
            ],
        ))?;
        let auth = output(&mut crate::process::sh(&format!(
            "printf '%s' '{credentials}' | base64"
        )))?;
        requests.push_str(&format!(
            "  table.insert(requests, wrk.format(\"POST\", \"/api/{uri}/pimages\", \
             {{[\"Authorization\"] = \"Basic {}\", [\"Content-Type\"] = \"application/json\", \
             [\"Accept\"] = \"application/json\"}}, [[{}]]))\n",
            auth.trim(),
            p.publish_body(&login)
        ));
    }
    Ok(format!(
        "requests = {{}}\nnext_request = 0\ninit = function(args)\n{requests}end\n\
         request = function()\n  next_request = next_request % #requests + 1\n  return requests[next_request]\nend\n"
    ))
}

/// Marks every queued ticket complete, as if workers had taken them: no user of the next run
/// starts near its quota.
fn drain_queue(p: &Pimage) -> Result<()> {
    p.psql(
        super::pimage::DB,
        // Replica mode: no trigger announces the change, which the API would then process
        // during the measured run.
        "SET session_replication_role = replica;
         UPDATE publish_tickets SET state = 'complete', finished_at = now() WHERE state = 'queued'",
    )
    .map(drop)
}

/// CPU seconds used so far by the API, PostgreSQL and RabbitMQ.
fn cpu_now(p: &Pimage) -> [f64; 3] {
    let hz = clock_ticks();
    [
        cpu_seconds(&[p.api_pid], hz),
        cpu_seconds(&pgrep(&["-u", "postgres"]), hz),
        cpu_seconds(&pgrep(&["beam.smp"]), hz),
    ]
}

/// One pgbench line: `args` (a built-in script or `-f FILE`) at `conns` clients for the run's
/// seconds, on the scratch database, with the CPU it cost PostgreSQL.
fn pgbench_run(
    p: &Pimage,
    k: &Knobs,
    s: &mut Section,
    name: &str,
    conns: u64,
    args: &[&str],
) -> Result<Value> {
    let (c, t) = (format!("-c{conns}"), format!("-T{}", k.seconds));
    let mut all = vec!["-h", "127.0.0.1", "-U", "postgres", &c, "-j2", &t];
    all.extend_from_slice(args);
    all.push("pimage_pgbench");
    let before = cpu_now(p);
    let out = output(&mut cmd("pgbench", all))?;
    let pg_cpu = cpu_now(p)[1] - before[1];
    let (tps, latency) = parse_pgbench(&out)?;
    let pg_ms = pg_cpu * 1000.0 / (tps * k.seconds as f64).max(1.0);
    s.rows.push(vec![
        name.into(),
        conns.to_string(),
        thousands(tps),
        format!("{latency:.2} (average)"),
        "–".into(),
        format!("– / {pg_ms:.3}"),
        "0".into(),
    ]);
    Ok(
        json!({"connections": conns, "tps": tps, "latency_avg_ms": latency, "postgres_cpu_ms_per_transaction": pg_ms}),
    )
}

/// One line of the table: a 3 s warm-up (pools connect, statements get prepared, each
/// connection's first request pays argon2), then the measured run.
fn wrk_run(
    p: &Pimage,
    k: &Knobs,
    s: &mut Section,
    name: &str,
    connections: u64,
    url: &str,
    script: &std::path::Path,
) -> Result<Value> {
    let conns = format!("-c{connections}");
    let script = script.to_string_lossy().to_string();
    let _ = output(&mut cmd("wrk", ["-t2", &conns, "-d3s", "-s", &script, url]));
    drain_queue(p)?;
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
    let before = cpu_now(p);
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
    let after = cpu_now(p);
    let used: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    // Where the two cores went during the run (wrk takes the rest).
    note(format!(
        "{name} -c{connections}: CPU s over {} s: API {:.1}, PostgreSQL {:.1}, RabbitMQ {:.1}",
        k.seconds, used[0], used[1], used[2]
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
    let requests = (w.requests_per_s * k.seconds as f64).max(1.0);
    let per_request = |cpu: f64| cpu * 1000.0 / requests;
    s.rows.push(vec![
        name.to_string(),
        connections.to_string(),
        thousands(w.requests_per_s),
        format!("{:.2}", w.p50_ms),
        format!("{:.2}", w.p99_ms),
        format!("{:.3} / {:.3}", per_request(used[0]), per_request(used[1])),
        format!("{}{errors}", w.non_2xx),
    ]);
    Ok(
        json!({"connections": connections, "requests_per_s": w.requests_per_s, "p50_ms": w.p50_ms,
        "p99_ms": w.p99_ms, "non_2xx": w.non_2xx, "socket_errors": w.socket_errors,
        "api_cpu_ms_per_request": per_request(used[0]), "postgres_cpu_ms_per_request": per_request(used[1]),
        "rabbitmq_cpu_ms_per_request": per_request(used[2])}),
    )
}
