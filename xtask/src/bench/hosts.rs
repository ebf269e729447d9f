//! Hosts as hosts (issue 27): pimage's workers on 1, 2 and 4 hosts made by `scripts/hosts`
//! (network namespaces on a bridge, each with its own host name and its own link to the cloud
//! shaped by tc: BENCH_HOSTS_RATE, default 20MiBps), against a lab cloud of the bench's own,
//! sized as a cloud is (Glance at BENCH_HOSTS_GLANCE_PROCESSES uwsgi processes, default 8,
//! its database on PostgreSQL) and listening on the bridge. The API runs here, in the root
//! namespace. Images come from an S3 server on the bridge (`scripts/s3-lab`), so the hosts
//! read them over the network, none from a disk (BENCH_HOSTS_STORE=dir: a directory of this
//! machine instead, every host reading the same page cache). Each host publishes the same bytes (BENCH_HOSTS_TICKETS tickets of
//! BENCH_HOSTS_MIB MiB, BENCH_HOSTS_CONCURRENCY uploads at once); a run's rate is the bytes
//! published over the time from the first POST to the last ticket complete, after a warm-up
//! ticket; each host's link rate is its tc counter over the same time, and its worker's CPU
//! (utime + stime) is divided by the bytes that host published.

use super::{cloud, pimage::DB, say, Knobs, Paths, Pimage};
use crate::process::{self, clock_ticks, cmd, cpu_seconds, output};
use crate::report::{Report, Section};
use crate::stats::ratio;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "pimage-h";
const NET: &str = "10.231.27";
const BRIDGE: &str = "10.231.27.1";
const KEYSTONE_PORT: &str = "5227";
const GLANCE_PORT: &str = "9227";
const S3_PORT: &str = "9240";
const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

fn knob(name: &str, default: &str) -> String {
    super::env(name).unwrap_or_else(|| default.to_string())
}

fn hosts(args: &[&str]) -> Command {
    let mut c = cmd("scripts/hosts", args);
    c.env("PIMAGE_HOSTS_PREFIX", PREFIX)
        .env("PIMAGE_HOSTS_NET", NET);
    c
}

/// The bench's lab: scripts/openstack-lab with the variables set in this process (`prepare`).
fn lab(paths: &Paths, args: &[&str]) -> Command {
    let mut c = cmd("scripts/openstack-lab", args);
    c.env("PIMAGE_LAB_DIR", paths.lab.join("bench-hosts"));
    c
}

fn s3_store() -> bool {
    knob("BENCH_HOSTS_STORE", "s3") == "s3"
}

/// The bench's S3 server, on the bridge.
fn s3_lab(paths: &Paths, arg: &str) -> Command {
    let mut c = cmd("scripts/s3-lab", [arg]);
    c.env("PIMAGE_S3_LAB_DIR", paths.lab.join("bench-s3"))
        .env("PIMAGE_S3_LAB_PORT", S3_PORT)
        .env("PIMAGE_S3_LAB_LISTEN_HOST", BRIDGE);
    c
}

/// The image store's variables for every pimage process from here on (Pimage::new set a
/// directory): the S3 lab's, or that directory kept.
fn use_store(paths: &Paths) -> Result<()> {
    if !s3_store() {
        return Ok(());
    }
    let env = output(&mut s3_lab(paths, "env"))?;
    for (k, v) in env
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
    {
        std::env::set_var(k, v);
    }
    Ok(())
}

/// The hosts and the labs; the lab's variables stay set, so that `lab_urls` (Pimage::new)
/// gives its Keystone and Glance.
pub fn prepare(paths: &Paths) -> Result<()> {
    let venv = super::env("PIMAGE_LAB_VENV")
        .map_or_else(|| paths.lab.join("venv"), std::path::PathBuf::from);
    for (k, v) in [
        ("PIMAGE_LAB_VENV", venv.to_string_lossy().into_owned()),
        ("PIMAGE_LAB_KEYSTONE_PORT", KEYSTONE_PORT.into()),
        ("PIMAGE_LAB_GLANCE_PORT", GLANCE_PORT.into()),
        ("PIMAGE_LAB_LISTEN_HOST", BRIDGE.into()),
        ("PIMAGE_LAB_PUBLIC_HOST", BRIDGE.into()),
        (
            "PIMAGE_LAB_GLANCE_PROCESSES",
            knob("BENCH_HOSTS_GLANCE_PROCESSES", "8"),
        ),
        ("PIMAGE_LAB_DATABASE", "postgres".into()),
        ("PIMAGE_LAB_SMOKE", "0".into()),
    ] {
        std::env::set_var(k, v);
    }
    say("4 hosts, each link shaped");
    process::run(&mut hosts(&[
        "up",
        "4",
        &knob("BENCH_HOSTS_RATE", "20MiBps"),
    ]))?;
    say("the bench's lab cloud on the hosts' bridge");
    process::run(&mut lab(paths, &["up"]))?;
    if s3_store() {
        say("the bench's S3 server on the hosts' bridge");
        process::run(&mut s3_lab(paths, "up"))?;
    }
    Ok(())
}

/// Stops the lab (its databases dropped) and removes the hosts (best effort).
pub fn teardown(paths: &Paths) {
    let _ = output(&mut lab(paths, &["down", "--purge"]));
    let _ = output(&mut s3_lab(paths, "down"));
    let _ = std::fs::remove_dir_all(paths.lab.join("bench-s3/state"));
    let _ = output(&mut hosts(&["down"]));
}

/// Bytes host I's shaped link has sent so far.
fn sent(i: usize) -> Result<f64> {
    let out = output(&mut hosts(&["sent", &i.to_string()]))?;
    out.parse().context("scripts/hosts sent")
}

/// The worker of host I (`scripts/hosts exec` execs it: the child's PID is the worker's),
/// PostgreSQL and RabbitMQ through the bridge.
fn start_worker(p: &Pimage, i: usize, concurrency: &str) -> Result<Child> {
    let db = std::env::var("PIMAGE__DATABASE__URL")?.replace("127.0.0.1", BRIDGE);
    let log = std::fs::File::create(p.work().join(format!("worker-host{i}.log")))?;
    let child = hosts(&["exec", &i.to_string()])
        .arg(&p.bin)
        .arg("worker")
        .env("PIMAGE__DATABASE__URL", db)
        .env(
            "PIMAGE__AMQP__URL",
            format!("amqp://guest:guest@{BRIDGE}:5672/%2f"),
        )
        .env("PIMAGE__WORKER__LISTEN", "127.0.0.1:18201")
        .env("PIMAGE__WORKER__CONCURRENCY", concurrency)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(child)
}

/// Waits until the workers of N hosts have beaten (a heartbeat names its host).
fn wait_heartbeats(p: &Pimage, n: usize) -> Result<()> {
    for _ in 0..300 {
        let seen = p.psql(DB, "SELECT count(DISTINCT host) FROM worker_heartbeats")?;
        if seen.trim() == n.to_string() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the workers of {n} hosts did not start (logs: worker-host*.log)")
}

/// Bytes published per host (`host`, bytes), from the attempts (each names its worker).
fn bytes_per_host(p: &Pimage) -> Result<Vec<(String, f64)>> {
    let rows = p.psql(
        DB,
        "SELECT split_part(worker, ':', 1), sum(bytes_sent) FROM ticket_attempts
          WHERE outcome = 'published' GROUP BY 1 ORDER BY 1",
    )?;
    Ok(rows
        .lines()
        .filter_map(|l| l.rsplit_once('|'))
        .map(|(h, b)| (h.to_string(), b.parse().unwrap_or(0.0)))
        .collect())
}

/// The machine's CPU time so far, busy and in all (jiffies of every core, /proc/stat).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = f.iter().sum();
    // idle and iowait are the 4th and 5th
    let idle = f.get(3).unwrap_or(&0.0) + f.get(4).unwrap_or(&0.0);
    (total - idle, total)
}

/// CPU seconds of the bench's Glance and S3 server processes so far.
fn cloud_cpu(hz: f64) -> (f64, f64) {
    let glance = crate::process::pgrep(&["-f", "uwsgi --ini .*bench-hosts/openstack/glance"]);
    let s3 = crate::process::pgrep(&["-f", "swift-.*-server .*bench-s3/"]);
    (cpu_seconds(&glance, hz), cpu_seconds(&s3, hz))
}

const HEADER: [&str; 9] = [
    "hosts",
    "published",
    "seconds",
    "MiB/s",
    "× one host",
    "each link, MiB/s",
    "worker CPU s / GiB, per host",
    "CPU s: Glance / S3 server",
    "machine CPU busy",
];

pub fn run(p: &mut Pimage, paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    use_store(paths)?;
    let (tickets, mib) = (k.hosts_tickets, k.hosts_mib);
    let concurrency = knob("BENCH_HOSTS_CONCURRENCY", "2");
    std::env::set_var("PIMAGE__CLOUD__MAX_UPLOADS_PER_CLOUD", "64");
    let mut s = Section::new(
        format!(
            "Hosts: {tickets} tickets of {mib} MiB per host, each host's link {}, Glance {} processes on PostgreSQL, {concurrency} uploads per worker, images from {}",
            knob("BENCH_HOSTS_RATE", "20MiBps"),
            knob("BENCH_HOSTS_GLANCE_PROCESSES", "8"),
            if s3_store() { "S3 (scripts/s3-lab)" } else { "a directory" }
        ),
        &HEADER,
    );
    // A first ticket warms what every run shares (the Glance processes' first token checks,
    // the lab's database pools); not counted.
    one_run(p, 1, 1, mib, &concurrency)?;
    let mut runs: Vec<Value> = vec![];
    for n in [1usize, 2, 4] {
        let fig = one_run(p, n, tickets, mib, &concurrency)?;
        let rate = fig["mib_per_s"].as_f64().unwrap_or(f64::NAN);
        let one = runs
            .first()
            .map_or(rate, |f| f["mib_per_s"].as_f64().unwrap_or(f64::NAN));
        let x = ratio(rate, one);
        s.rows.push(row(&fig, x));
        let mut fig = fig;
        fig["vs_one_host"] = json!(x);
        match n {
            2 => r.target("hosts: 2 hosts / 1 host", x, "≥ 1.8", x >= 1.8),
            4 => r.target("hosts: 4 hosts / 1 host", x, "≥ 3.4", x >= 3.4),
            _ => {}
        }
        runs.push(fig);
    }
    s.figures = json!({"tickets_per_host": tickets, "mib": mib, "runs": runs});
    r.add(s);
    Ok(())
}

fn row(fig: &Value, x: f64) -> Vec<String> {
    let list = |key: &str, field: &str| -> String {
        fig[key]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .map(|h| format!("{:.1}", h[field].as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let f = |k: &str| fig[k].as_f64().unwrap_or(f64::NAN);
    vec![
        fig["hosts"].to_string(),
        format!("{:.0} MiB", f("bytes") / MIB),
        format!("{:.1}", f("seconds")),
        format!("{:.1}", f("mib_per_s")),
        format!("{x:.2}"),
        list("per_host", "link_mib_per_s"),
        list("per_host", "worker_cpu_s_per_gib"),
        format!("{:.1} / {:.1}", f("glance_cpu_s"), f("s3_cpu_s")),
        format!("{:.0} %", 100.0 * f("machine_busy")),
    ]
}

/// The run's image: registered into the S3 bucket (a copy of the local file), or in place
/// in the directory store.
fn image(p: &Pimage, mib: u64) -> Result<String> {
    if !s3_store() {
        return p.make_image(mib, "bench");
    }
    let file = p.disk(mib);
    if std::fs::metadata(&file).map_or(true, |m| m.len() != mib << 20) {
        process::run(&mut process::sh(&format!(
            "head -c {} /dev/urandom > '{}'",
            mib << 20,
            file.display()
        )))?;
    }
    let f = file.to_string_lossy();
    output(&mut cmd(
        &p.bin.to_string_lossy(),
        [
            "images", "register", "--user", "bench", "--file", &f, "--format", "raw",
        ],
    ))
}

/// N hosts, one worker each, TICKETS publishes of a MIB MiB image per host.
fn one_run(p: &mut Pimage, n: usize, tickets: usize, mib: u64, conc: &str) -> Result<Value> {
    p.fresh_db()?;
    p.start_api()?;
    let uri = image(p, mib)?;
    let mut workers = (1..=n)
        .map(|i| start_worker(p, i, conc))
        .collect::<Result<Vec<_>>>()?;
    let result = measure(p, n, tickets, &uri, &workers);
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    cloud::delete_ticket_images(p)?;
    p.stop_all();
    result
}

fn measure(p: &Pimage, n: usize, tickets: usize, uri: &str, workers: &[Child]) -> Result<Value> {
    wait_heartbeats(p, n)?;
    let hz = clock_ticks();
    let cpu = |w: &Child| cpu_seconds(&[w.id()], hz);
    let cpu0: Vec<f64> = workers.iter().map(cpu).collect();
    let sent0 = (1..=n).map(sent).collect::<Result<Vec<_>>>()?;
    let (m0, c0) = (machine_cpu(), cloud_cpu(hz));
    let t0 = Instant::now();
    let ids = (0..n * tickets)
        .map(|i| p.publish(uri, &format!("hosts-{n}-{i}")))
        .collect::<Result<Vec<_>>>()?;
    for t in &ids {
        p.wait_complete(t)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (m1, c1) = (machine_cpu(), cloud_cpu(hz));
    let published = bytes_per_host(p)?;
    let mut per_host = vec![];
    for (i, w) in workers.iter().enumerate() {
        let host = format!("{PREFIX}{}", i + 1);
        let bytes = published
            .iter()
            .find(|(h, _)| *h == host)
            .map_or(0.0, |(_, b)| *b);
        let link = (sent(i + 1)? - sent0[i]) / MIB / secs;
        let cpu_s = cpu(w) - cpu0[i];
        per_host.push(json!({"host": host, "bytes": bytes, "link_mib_per_s": link,
            "worker_cpu_s": cpu_s, "worker_cpu_s_per_gib": ratio(cpu_s, bytes / GIB)}));
    }
    let bytes: f64 = published.iter().map(|(_, b)| b).sum();
    let fig = json!({"hosts": n, "tickets": ids.len(), "bytes": bytes, "seconds": secs,
        "mib_per_s": bytes / MIB / secs, "per_host": per_host,
        "glance_cpu_s": c1.0 - c0.0, "s3_cpu_s": c1.1 - c0.1,
        "machine_busy": ratio(m1.0 - m0.0, m1.1 - m0.1)});
    say(&format!("{n} host(s): {fig}"));
    Ok(fig)
}
