//! `cargo xtask bench`: pimage side by side with the physical limit and with the tools users
//! would run instead (docs/BENCHMARKS.md).
//!
//! Parts: `all` (machine, upload, memory, api, scale, writes, cost), or one of them, or
//! `console` (not in all), or `growth` (not in all: the recurring queries at 10 thousand and
//! 10 million tickets, BENCH_GROWTH_* knobs in growth.rs; needs only PostgreSQL), or `hosts`
//! (not in all: workers on 1, 2 and 4 network-namespace hosts with shaped links, a lab of its
//! own; BENCH_HOSTS_TICKETS (8 per host), BENCH_HOSTS_MIB (64), BENCH_HOSTS_* in hosts.rs;
//! needs root and the machine to itself), or `groups` (not in all: one image to three targets
//! as a publication group against three separate publishes, a lab of its own;
//! BENCH_GROUPS_MIB (1024), BENCH_GROUPS_ROUNDS (2), BENCH_GROUPS_GLANCE_PROCESSES (4)). `--quick`:
//! small sizes, one run, short loads (checks that it all runs; the
//! figures are not the documented ones). Knobs (environment): BENCH_UPLOAD_SIZES_MIB
//! ("1024 4096"), BENCH_RUNS (3), BENCH_MEMORY_MIB (2048), BENCH_SECONDS (15),
//! BENCH_CONNECTIONS (16), BENCH_SCALE_TICKETS (200), BENCH_SCALE_CLOUD_LIMIT (16),
//! BENCH_FAIR_TICKETS (300), BENCH_WRITES_MIB (4096), BENCH_CONSOLE_TICKETS (100000),
//! BENCH_COST_TICKETS (1000), BENCH_PUBLISHERS (256: the users whose publishes the API bench
//! sends in turn),
//! BENCH_PROFILE=1 (perf), BENCH_BIN (the binary; default the release build), BENCH_WORK
//! (scratch files), BENCH_VENV (python-openstackclient), BENCH_LOG (RUST_LOG).

mod api;
mod cloud;
mod console;
mod cost;
mod groups;
mod growth;
mod hosts;
mod machine;
mod memory;
mod pimage;
mod profile;
mod scale;
mod upload;
mod writes;

use crate::process::{cmd, output, run, succeeds};
use crate::report::Report;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

pub use pimage::Pimage;

/// Sizes and durations of a run.
pub struct Knobs {
    pub upload_sizes_mib: Vec<u64>,
    pub runs: usize,
    pub memory_mib: u64,
    pub seconds: u64,
    pub connections: u64,
    pub scale_tickets: usize,
    pub scale_cloud_limit: u64,
    pub fair_tickets: usize,
    pub writes_mib: u64,
    pub console_tickets: u64,
    pub cost_tickets: usize,
    pub publishers: usize,
    pub hosts_tickets: usize,
    pub hosts_mib: u64,
    pub groups_mib: u64,
    pub groups_rounds: usize,
    pub profile: bool,
}

impl Knobs {
    fn from_env(quick: bool) -> Self {
        let num = |name: &str, full: u64, short: u64| -> u64 {
            env(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(if quick { short } else { full })
        };
        Knobs {
            upload_sizes_mib: env("BENCH_UPLOAD_SIZES_MIB")
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|s| s.parse().ok())
                        .collect()
                })
                .unwrap_or_else(|| {
                    if quick {
                        vec![64, 256]
                    } else {
                        vec![1024, 4096]
                    }
                }),
            runs: num("BENCH_RUNS", 3, 1) as usize,
            memory_mib: num("BENCH_MEMORY_MIB", 2048, 256),
            seconds: num("BENCH_SECONDS", 15, 4),
            connections: num("BENCH_CONNECTIONS", 16, 16),
            scale_tickets: num("BENCH_SCALE_TICKETS", 200, 20) as usize,
            scale_cloud_limit: num("BENCH_SCALE_CLOUD_LIMIT", 16, 16),
            fair_tickets: num("BENCH_FAIR_TICKETS", 300, 30) as usize,
            writes_mib: num("BENCH_WRITES_MIB", 4096, 256),
            console_tickets: num("BENCH_CONSOLE_TICKETS", 100_000, 5_000),
            cost_tickets: num("BENCH_COST_TICKETS", 1000, 50) as usize,
            publishers: num("BENCH_PUBLISHERS", 256, 16) as usize,
            hosts_tickets: num("BENCH_HOSTS_TICKETS", 8, 2) as usize,
            hosts_mib: num("BENCH_HOSTS_MIB", 64, 16),
            groups_mib: num("BENCH_GROUPS_MIB", 1024, 64),
            groups_rounds: num("BENCH_GROUPS_ROUNDS", 2, 1) as usize,
            profile: env("BENCH_PROFILE").is_some_and(|v| !v.is_empty()),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Paths of a run.
pub struct Paths {
    pub lab: PathBuf,
    pub work: PathBuf,
    pub venv: PathBuf,
}

impl Paths {
    pub fn openstack(&self) -> PathBuf {
        self.venv.join("bin/openstack")
    }
}

pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let mut part = "all".to_string();
    let mut quick = false;
    let mut out = root.join("target/bench");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => match it.next() {
                Some(d) => out = PathBuf::from(d),
                None => bail!("--out needs a directory"),
            },
            p if !p.starts_with('-') => part = p.to_string(),
            other => bail!("unknown option {other}"),
        }
    }
    const PARTS: [&str; 12] = [
        "all", "upload", "memory", "api", "scale", "writes", "cost", "machine", "console",
        "growth", "hosts", "groups",
    ];
    if !PARTS.contains(&part.as_str()) {
        bail!(
            "usage: cargo xtask bench [{}] [--quick] [--out DIR]",
            PARTS.join("|")
        );
    }
    if part == "growth" {
        return growth_only(root, &out);
    }
    let knobs = Knobs::from_env(quick);
    let lab = env("PIMAGE_LAB_DIR").map_or_else(|| root.join(".lab"), PathBuf::from);
    let paths = Paths {
        work: env("BENCH_WORK").map_or_else(|| lab.join("bench"), PathBuf::from),
        venv: env("BENCH_VENV").map_or_else(|| lab.join("bench-venv"), PathBuf::from),
        lab,
    };
    let bin = env("BENCH_BIN").map_or_else(|| root.join("target/release/pimage"), PathBuf::from);
    let set_up = setup(&part, &paths, env("BENCH_BIN").is_none());
    let mut pimage = match set_up.and_then(|()| Pimage::new(bin, &paths)) {
        Ok(p) => p,
        Err(e) => {
            hosts_teardown(&part, &paths);
            return Err(e);
        }
    };
    let mut report = Report::default();
    let started = std::time::Instant::now();
    let result = run_parts(&part, &mut pimage, &paths, &knobs, &mut report);
    pimage.drop_database();
    hosts_teardown(&part, &paths);
    let meta = json!({
        "part": part,
        "quick": quick,
        "finished_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "seconds": started.elapsed().as_secs_f64(),
        "runs": knobs.runs,
        "ok": result.is_ok(),
    });
    report.write(&out, meta)?;
    eprintln!(
        "[bench] results: {}/latest.json and latest.md",
        out.display()
    );
    result
}

/// `hosts` and `groups` bring their own labs up (`setup`), and down after the run.
fn hosts_teardown(part: &str, paths: &Paths) {
    match part {
        "hosts" => hosts::teardown(paths),
        "groups" => groups::teardown(paths),
        _ => {}
    }
}

/// `growth` needs neither the lab nor the release build: PostgreSQL only.
fn growth_only(root: &Path, out: &Path) -> Result<()> {
    let mut report = Report::default();
    let started = std::time::Instant::now();
    let result = growth::run(root, &mut report);
    let meta = json!({
        "part": "growth",
        "seconds": started.elapsed().as_secs_f64(),
        "ok": result.is_ok(),
    });
    report.write(out, meta)?;
    result
}

fn run_parts(part: &str, p: &mut Pimage, paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    match part {
        "all" => {
            machine::run(p, paths, r)?;
            upload::run(p, paths, k, r)?;
            memory::run(p, paths, k, r)?;
            api::run(p, paths, k, r)?;
            scale::run(p, paths, k, r)?;
            writes::run(p, k, r)?;
            cost::run(p, k, r)
        }
        "upload" => upload::run(p, paths, k, r),
        "memory" => memory::run(p, paths, k, r),
        "api" => api::run(p, paths, k, r),
        "scale" => scale::run(p, paths, k, r),
        "writes" => writes::run(p, k, r),
        "cost" => cost::run(p, k, r),
        "machine" => machine::run(p, paths, r),
        "hosts" => hosts::run(p, paths, k, r),
        "groups" => groups::run(p, paths, k, r),
        _ => console::run(p, k, r),
    }
}

/// What the part needs: the services, the lab cloud, wrk and the openstack client, the
/// release build.
fn setup(part: &str, paths: &Paths, build: bool) -> Result<()> {
    run(cmd("scripts/services", [] as [&str; 0]).stdout(std::process::Stdio::null()))?;
    if part == "hosts" {
        hosts::prepare(paths)?;
    } else if part == "groups" {
        groups::prepare(paths)?;
    } else if part != "console" {
        if !succeeds(&mut cmd("scripts/openstack-lab", ["status"])) {
            run(&mut cmd("scripts/openstack-lab", ["up"]))?;
        }
        if !matches!(part, "scale" | "writes" | "cost") {
            if !succeeds(&mut cmd("sh", ["-c", "command -v wrk"])) {
                say("installing wrk");
                run(cmd("apt-get", ["install", "-y", "-qq", "wrk"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(std::process::Stdio::null()))?;
            }
            if !paths.openstack().exists() {
                say(&format!(
                    "installing python-openstackclient into {}",
                    paths.venv.display()
                ));
                run(cmd("python3", ["-m", "venv"]).arg(&paths.venv))?;
                run(&mut cmd(
                    &paths.venv.join("bin/pip").to_string_lossy(),
                    ["install", "-q", "python-openstackclient"],
                ))?;
            }
        }
    }
    if build {
        say("building pimage (release)");
        run(&mut cmd("cargo", ["build", "--release", "--locked", "-q"]))?;
    }
    std::fs::create_dir_all(&paths.work)?;
    Ok(())
}

pub fn say(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// The demo account of the lab (scripts/openstack-lab env demo), exported for the openstack
/// client as the shell's `eval` did: its Keystone and Glance URLs.
pub fn lab_urls() -> Result<(String, String)> {
    let env = output(&mut cmd("scripts/openstack-lab", ["env", "demo"]))?;
    for (k, v) in env
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
    {
        std::env::set_var(k, v.trim_matches(['\'', '"']));
    }
    match (std::env::var("OS_AUTH_URL"), std::env::var("OS_IMAGE_URL")) {
        (Ok(k), Ok(g)) => Ok((k, g)),
        _ => bail!("scripts/openstack-lab env demo: no OS_AUTH_URL / OS_IMAGE_URL"),
    }
}
