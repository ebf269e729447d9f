//! `cargo xtask compose-test`: the real docker-compose.yml, run as users run it, offline.
//! Leaves no container, volume or network behind (the images stay, as a cache).
//!
//! 1-2. scripts/compose-images: docker, dockerd, the base image from debootstrap, the images
//!      (the release binary built here first, on the Dockerfile's runtime stage)
//! 3. docker-compose.yml + docker-compose.override.yml + docker/compose-test.override.yml
//!    (the images swapped, nothing else) with the demo and monitoring profiles, its secrets
//!    from scripts/compose-secrets: up with 3 workers, 30 publishes of 128 MiB, a worker
//!    killed mid-upload, scaled to 5 then 1 (hand-back within the grace), RabbitMQ
//!    restarted; then every ticket complete with one Glance image each, consumers named after
//!    the worker containers, every worker's /metrics, Prometheus' targets, every dashboard
//!    query
//! 4. the scale-out figure: tickets/s of 1 MiB images with 1 and 3 worker containers
//! 5. docker-compose down -v, and a check that nothing of the project is left
//! 6. Swarm (swarm.rs): the same docker-compose.yml by `docker stack deploy` on a single-node
//!    swarm of this dockerd, a publish through it, stack rm and swarm leave
//!
//! Host ports (127.0.0.1, first free from): API 18080, RabbitMQ management 18672, Keystone
//! 15000, Glance 19292, Prometheus 19090. Project: PIMAGE_COMPOSE_PROJECT (pimagect). Cache:
//! PIMAGE_COMPOSE_CACHE (~/.cache/pimage-compose-test). The summary (steps, figures) is
//! printed and written to target/compose-test/summary.json.
//! `cargo xtask compose-test images`: steps 1-2 without the pimage image (scripts/compose-images).

mod checks;
mod scenario;
mod stack;
mod swarm;

use crate::process::{cmd, output, run};
use crate::steps::Steps;
use anyhow::{bail, Context, Result};
use serde_json::json;
use stack::Stack;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let mode = match args.first().map(String::as_str) {
        None => "all",
        Some("images") => "images",
        Some(_) => bail!("usage: cargo xtask compose-test [images]"),
    };
    let cache = std::env::var("PIMAGE_COMPOSE_CACHE").map_or_else(
        |_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/pimage-compose-test")
        },
        PathBuf::from,
    );
    if mode == "images" {
        return run(cmd("scripts/compose-images", ["images"]).env("PIMAGE_COMPOSE_CACHE", &cache));
    }
    let mut steps = Steps::new("compose-test");
    std::fs::create_dir_all(&cache)?;
    // An images run started earlier (by .ci/run) finishes first; then this one reuses its work.
    let _lock = lock(&cache.join("lock"), Duration::from_secs(1800))?;
    steps.say("cargo build --release --locked");
    run(&mut cmd("cargo", ["build", "--release", "--locked", "-q"]))?;
    steps.step("release binary (cargo build --release)");
    let step_file =
        std::env::temp_dir().join(format!("pimage-compose-steps.{}", std::process::id()));
    let _ = std::fs::remove_file(&step_file);
    let images = run(cmd("scripts/compose-images", ["all"])
        .env("PIMAGE_COMPOSE_CACHE", &cache)
        .env("PIMAGE_COMPOSE_LOCK_HELD", "1")
        .env("PIMAGE_COMPOSE_STEPS", &step_file));
    steps.add_from(&step_file);
    let _ = std::fs::remove_file(&step_file);
    // A dockerd an images run started (this one's, or .ci/run's earlier) is this run's to stop.
    let dockerd = std::fs::read_to_string(cache.join("dockerd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let _ = std::fs::remove_file(cache.join("dockerd.pid"));
    let result = images.and_then(|()| {
        let mut stack = Stack::new(root)?;
        let outcome = scenario::run(&mut stack, &mut steps).and_then(|mut figures| {
            figures["swarm"] = swarm::run(&stack, &mut steps)?;
            Ok(figures)
        });
        stack.tear_down(outcome.is_err());
        let figures = outcome?;
        let summary = json!({
            "passed": true,
            "seconds": steps.total(),
            "steps": steps.json(),
            "figures": figures,
        });
        let dir = root.join("target/compose-test");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)? + "\n",
        )?;
        print_summary(&steps, &figures);
        println!("== summary: {}", dir.join("summary.json").display());
        Ok(())
    });
    if let Some(pid) = dockerd {
        let _ = output(&mut cmd("kill", [pid.to_string()]));
    }
    result
}

/// An exclusive lock on PATH (flock, as scripts/compose-images takes the cache's), waiting up
/// to TIMEOUT; readme-check takes one too.
pub fn lock(path: &Path, timeout: Duration) -> Result<File> {
    let file = File::create(path).with_context(|| format!("opening {}", path.display()))?;
    let until = Instant::now() + timeout;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_secs(1))
            }
            Err(e) => bail!("another run holds {}: {e}", path.display()),
        }
    }
}

fn text_of(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn print_summary(steps: &Steps, f: &serde_json::Value) {
    println!("== compose-test passed in {} s", steps.total());
    for (name, secs) in &steps.done {
        println!("{name:<44} {secs:>4}s");
    }
    let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
    println!("== image sizes\n{}", text("image_sizes"));
    println!(
        "== consumers (management API) and their containers\n{}",
        text("consumers")
    );
    println!(
        "== Prometheus targets (at 5 workers)\n{}",
        text("prometheus_targets")
    );
    println!("== figures");
    println!(
        "killed {} with {} running tickets; most claims used by a ticket: {}",
        text("killed"),
        f["killed_running_tickets"],
        f["attempts_max"]
    );
    println!(
        "scale 5 -> 1: {} tickets running, 4 workers exited 0 in {} s, {} hand-backs after the {} s grace ({} grace-over)",
        f["scale_down"]["running_before"], f["scale_down"]["seconds"], f["scale_down"]["handed_back"],
        f["scale_down"]["grace_secs"], f["scale_down"]["grace_over"]
    );
    println!(
        "scale-out ({} tickets of 1 MiB): 1 worker {:.2} tickets/s, 3 workers {:.2} tickets/s",
        f["scale_out"]["tickets"],
        f["scale_out"]["workers_1_tickets_per_s"]
            .as_f64()
            .unwrap_or(0.0),
        f["scale_out"]["workers_3_tickets_per_s"]
            .as_f64()
            .unwrap_or(0.0)
    );
    println!(
        "Glance images: {} for {} tickets",
        f["glance_images"], f["tickets"]
    );
    println!(
        "swarm: a publish through the stack in {:.1} s ({}), migrate tries {}",
        f["swarm"]["publish_seconds"].as_f64().unwrap_or(0.0),
        text_of(&f["swarm"]["ticket"]),
        f["swarm"]["migrate_tries"]
    );
    println!("swarm: the API by {}", f["swarm"]["api_paths"]);
}
