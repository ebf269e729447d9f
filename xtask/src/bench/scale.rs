//! Scale-out: the limit (a retrying curl loop, 4 at a time, one token) and pimage with 1, 2
//! and 4 worker processes (4 uploads each) on the same Glance; CPU per component, Keystone
//! logins per ticket; then fairness (user A's backlog, user B's one ticket).

use super::{cloud, pimage::DB, profile, Knobs, Paths, Pimage};
use crate::process::{clock_ticks, cmd, cpu_seconds, output, pgrep};
use crate::report::{Report, Section};
use crate::stats::ratio;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Pids {
    glance: Vec<u32>,
    keystone: Vec<u32>,
}

/// CPU seconds of the cloud and PostgreSQL, and Glance's 500s, since a mark.
struct Mark {
    glance: f64,
    keystone: f64,
    postgres: f64,
    e500: u64,
}

impl Mark {
    fn take(pids: &Pids, paths: &Paths, hz: f64) -> Self {
        Mark {
            glance: cpu_seconds(&pids.glance, hz),
            keystone: cpu_seconds(&pids.keystone, hz),
            postgres: cpu_seconds(&pgrep(&["-u", "postgres"]), hz),
            e500: glance_500s(paths),
        }
    }

    fn since(&self, earlier: &Mark) -> Value {
        json!({"glance_cpu_s": self.glance - earlier.glance, "keystone_cpu_s": self.keystone - earlier.keystone,
            "postgres_cpu_s": self.postgres - earlier.postgres, "glance_500s": self.e500.saturating_sub(earlier.e500)})
    }
}

/// Answers 500 in the lab Glance's request log so far (its SQLite database locked).
fn glance_500s(paths: &Paths) -> u64 {
    std::fs::read_to_string(paths.lab.join("openstack/log/glance-uwsgi.log"))
        .map_or(0, |log| log.matches("HTTP/1.1 500").count() as u64)
}

const HEADER: [&str; 11] = [
    "run",
    "seconds",
    "tickets/s",
    "× curl loop",
    "Keystone logins / ticket",
    "CPU s: pimage (API + workers)",
    "pimage ms / ticket",
    "Glance",
    "Keystone",
    "Postgres",
    "Glance 500s",
];

pub fn run(p: &mut Pimage, paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    let n = k.scale_tickets;
    let hz = clock_ticks();
    let pids = Pids {
        glance: pgrep(&["-f", "uwsgi --ini .*glance/uwsgi.ini"]),
        keystone: pgrep(&["-f", "uwsgi --ini .*keystone/uwsgi.ini"]),
    };
    std::env::set_var(
        "PIMAGE__CLOUD__MAX_UPLOADS_PER_CLOUD",
        k.scale_cloud_limit.to_string(),
    );
    let mut s = Section::new(
        format!("Scale-out ({n} tickets of a 1 MiB image; each worker 4 uploads at once; cloud.max_uploads_per_cloud {})", k.scale_cloud_limit),
        &HEADER,
    );
    let file = p.disk(1);
    if std::fs::metadata(&file).map_or(true, |m| m.len() == 0) {
        output(&mut crate::process::sh(&format!(
            "head -c 1048576 /dev/urandom > '{}'",
            file.display()
        )))?;
    }
    let m0 = Mark::take(&pids, paths, hz);
    let t0 = Instant::now();
    let (ids, failed) = curl_loop(p, &file.to_string_lossy(), n)?;
    let secs = t0.elapsed().as_secs_f64();
    let m1 = Mark::take(&pids, paths, hz);
    let curl_rate = (n - failed) as f64 / secs;
    let lost = if failed > 0 {
        format!(" ({failed} gave up after 5 tries)")
    } else {
        String::new()
    };
    s.rows.push(vec![
        format!("curl loop (the limit), 4 at a time, one token, retrying{lost}"),
        format!("{secs:.1}"),
        format!("{curl_rate:.1}"),
        "1.00".into(),
        "0".into(),
        "–".into(),
        "–".into(),
        format!("{:.1}", m1.glance - m0.glance),
        format!("{:.1}", m1.keystone - m0.keystone),
        format!("{:.1}", m1.postgres - m0.postgres),
        (m1.e500.saturating_sub(m0.e500)).to_string(),
    ]);
    let token = cloud::token(p)?;
    for id in &ids {
        cloud::delete_with(p, &token, id);
    }
    let mut runs = vec![
        json!({"run": "curl loop", "seconds": secs, "tickets_per_s": curl_rate, "failed": failed, "cpu": m1.since(&m0)}),
    ];
    for workers in [1u32, 2, 4] {
        let fig = pimage_run(p, paths, k, &pids, hz, workers, curl_rate, &mut s)?;
        let figure = |name: &str| fig[name].as_f64().unwrap_or(f64::NAN);
        let w = format!("scale-out, {workers} worker(s)");
        if workers == 1 {
            let v = figure("vs_curl_loop");
            r.target(format!("{w}: rate / curl loop"), v, "≥ 0.7", v >= 0.7);
        }
        let logins = figure("keystone_logins_per_ticket");
        r.target(
            format!("{w}: Keystone logins per ticket"),
            logins,
            "≤ 0.05",
            logins <= 0.05,
        );
        let ms = figure("pimage_ms_per_ticket");
        r.target(
            format!("{w}: pimage CPU ms per ticket"),
            ms,
            "≤ 15",
            ms <= 15.0,
        );
        runs.push(fig);
    }
    let rate = |i: usize| runs[i]["tickets_per_s"].as_f64().unwrap_or(f64::NAN);
    let two = ratio(rate(2), rate(1));
    r.target(
        "scale-out: 2 workers / 1 worker",
        two,
        "≥ 1.5 (until the curl loop's rate)",
        two >= 1.5,
    );
    s.figures = json!({"tickets": n, "cloud_limit": k.scale_cloud_limit, "runs": runs});
    r.add(s);
    fairness(p, k, r)
}

/// The limit's unit of work, 4 at a time: create, upload, read back (active); a failed try
/// (the lab Glance answers 500 when its SQLite database is locked) is deleted and tried
/// again, up to 5 times, as a client would. (ids of the images made, images given up).
fn curl_loop(p: &Pimage, file: &str, n: usize) -> Result<(Vec<String>, usize)> {
    let token = cloud::token(p)?;
    let next = AtomicUsize::new(0);
    let results: Vec<Option<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while next.fetch_add(1, Ordering::SeqCst) < n {
                        done.push(curl_one(p, &token, file));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let failed = results.iter().filter(|r| r.is_none()).count();
    Ok((results.into_iter().flatten().collect(), failed))
}

fn curl_one(p: &Pimage, token: &str, file: &str) -> Option<String> {
    for _ in 0..5 {
        if let Ok(id) = cloud::create_image(p, token, "bench-curl") {
            let uploaded =
                crate::process::succeeds(&mut cloud::upload_command(p, token, &id, file));
            if uploaded && cloud::is_active(p, token, &id) {
                return Some(id);
            }
            cloud::delete_with(p, token, &id);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn pimage_run(
    p: &mut Pimage,
    paths: &Paths,
    k: &Knobs,
    pids: &Pids,
    hz: f64,
    workers: u32,
    curl_rate: f64,
    s: &mut Section,
) -> Result<Value> {
    let n = k.scale_tickets;
    p.fresh_db()?;
    p.start_api()?;
    let uri = p.make_image(1, "bench")?;
    for i in 1..=workers {
        p.start_worker(i, 4)?;
    }
    let mut ours = p.worker_pids.clone();
    ours.push(p.api_pid);
    let c0 = cpu_seconds(&ours, hz);
    let m0 = Mark::take(pids, paths, hz);
    let perf = k
        .profile
        .then(|| {
            let list = ours
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            profile::start(&list, p.work().join("perf-scale.data"), true, None)
        })
        .flatten();
    let t0 = Instant::now();
    let tickets = (1..=n)
        .map(|i| p.publish(&uri, &format!("scale-{i}")))
        .collect::<Result<Vec<_>>>()?;
    for t in &tickets {
        p.wait_complete(t)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(perf) = perf {
        perf.finish(
            true,
            &["--percent-limit", "1", "-g", "none", "--sort", "dso,sym"],
            p.work().join(format!("perf-scale-{workers}.txt")),
        );
    }
    let logins = worker_logins(workers)?;
    let pim = cpu_seconds(&ours, hz) - c0;
    let m1 = Mark::take(pids, paths, hz);
    let rate = n as f64 / secs;
    s.rows.push(vec![
        format!(
            "pimage, {workers} worker{}",
            if workers > 1 { "s" } else { "" }
        ),
        format!("{secs:.1}"),
        format!("{rate:.1}"),
        format!("{:.2}", ratio(rate, curl_rate)),
        format!("{:.3}", logins / n as f64),
        format!("{pim:.1}"),
        format!("{:.1}", 1000.0 * pim / n as f64),
        format!("{:.1}", m1.glance - m0.glance),
        format!("{:.1}", m1.keystone - m0.keystone),
        format!("{:.1}", m1.postgres - m0.postgres),
        (m1.e500.saturating_sub(m0.e500)).to_string(),
    ]);
    cloud::delete_ticket_images(p)?;
    p.stop_all();
    Ok(
        json!({"run": format!("pimage, {workers} workers"), "workers": workers, "seconds": secs,
        "tickets_per_s": rate, "vs_curl_loop": ratio(rate, curl_rate), "keystone_logins_per_ticket": logins / n as f64,
        "pimage_cpu_s": pim, "pimage_ms_per_ticket": 1000.0 * pim / n as f64, "cpu": m1.since(&m0)}),
    )
}

/// Keystone password logins (ok) of the workers on ports 18201.. (their /metrics).
fn worker_logins(workers: u32) -> Result<f64> {
    let mut total = 0.0;
    for i in 1..=workers {
        let m = output(&mut cmd(
            "curl",
            ["-sf", &format!("http://127.0.0.1:{}/metrics", 18200 + i)],
        ))?;
        total += m
            .lines()
            .find_map(|l| l.strip_prefix("pimage_keystone_logins_total{outcome=\"ok\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(total)
}

/// User bench submits BENCH_FAIR_TICKETS tickets, then user bench2 one; 2 workers.
fn fairness(p: &mut Pimage, k: &Knobs, r: &mut Report) -> Result<()> {
    let n = k.fair_tickets;
    p.fresh_db()?;
    p.add_user("bench2", false)?;
    p.start_api()?;
    let uri = p.make_image(1, "bench")?;
    let uri2 = p.make_image(1, "bench2")?;
    p.start_worker(1, 4)?;
    p.start_worker(2, 4)?;
    let tickets = (1..=n)
        .map(|i| p.publish(&uri, &format!("fair-{i}")))
        .collect::<Result<Vec<_>>>()?;
    let b = p.publish_as("bench2:benchpass", &uri2, "b")?;
    p.wait_complete_as("bench2:benchpass", &b)?;
    for t in &tickets {
        p.wait_complete(t)?;
    }
    let row = p.psql(DB, "
        WITH b AS (SELECT t.* FROM publish_tickets t JOIN users u ON u.id = t.user_id WHERE u.login = 'bench2')
        SELECT round(extract(epoch FROM b.started_at - b.created_at)::numeric, 2),
               (SELECT round(extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY a.finished_at - a.started_at))::numeric, 2)
                  FROM publish_tickets a WHERE a.user_id <> b.user_id),
               (SELECT count(*) FROM publish_tickets a WHERE a.user_id <> b.user_id AND a.created_at < b.created_at AND a.started_at IS NOT NULL AND a.started_at > b.started_at),
               (SELECT count(*) FROM publish_tickets a WHERE a.user_id <> b.user_id AND a.started_at > b.created_at AND a.started_at < b.started_at)
          FROM b")?;
    let f: Vec<f64> = row
        .split('|')
        .map(|v| v.trim().parse().unwrap_or(f64::NAN))
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(f64::NAN);
    let (waited, one_upload, overtaken, started_while_waiting) = (get(0), get(1), get(2), get(3));
    let mut s = Section::new(
        format!("Fairness (user A submits {n} tickets, then user B one; 2 workers × 4 uploads)"),
        &["measure", "value"],
    );
    s.rows = vec![
        vec![
            "B waited from its POST to its start (s)".into(),
            format!("{waited:.2}"),
        ],
        vec![
            "one upload of A (median, s)".into(),
            format!("{one_upload:.2}"),
        ],
        vec![
            "A tickets submitted before B that started after it".into(),
            format!("{overtaken:.0}"),
        ],
        vec![
            "A tickets that started while B waited".into(),
            format!("{started_while_waiting:.0}"),
        ],
    ];
    s.figures = json!({"tickets_of_a": n, "b_waited_s": waited, "a_one_upload_median_s": one_upload,
        "a_overtaken_by_b": overtaken, "a_started_while_b_waited": started_while_waiting});
    r.target(
        "fairness: A tickets that started while B waited",
        started_while_waiting,
        "0",
        started_while_waiting == 0.0,
    );
    r.add(s);
    cloud::delete_ticket_images(p).context("deleting the fairness images")?;
    p.stop_all();
    Ok(())
}
