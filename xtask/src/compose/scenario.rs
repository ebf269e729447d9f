//! The scenario: up, publishes, a worker killed, scale up and down, RabbitMQ restarted,
//! every ticket complete, the scale-out figure; then the checks (checks.rs).

use super::checks;
use super::stack::{wait_for, Stack};
use super::Steps;
use crate::process::{cmd, output, sh};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TICKETS: u64 = 30; // the scenario's publishes
const BIG_MIB: u64 = 128; // their image: big enough to kill and scale down mid-upload
const BENCH_TICKETS: u64 = 30; // per scale-out run, of a 1 MiB image
const GRACE_SECS: u64 = 5; // PIMAGE_WORKER_GRACE_SECS (stack.rs)

pub fn run(st: &mut Stack, steps: &mut Steps) -> Result<Value> {
    let p = &st.ports;
    steps.say(&format!(
        "ports: api {}, management {}, keystone {}, glance {}, prometheus {}",
        p.api, p.management, p.keystone, p.glance, p.prometheus
    ));
    up(st, steps)?;
    let api = format!("http://127.0.0.1:{}/api", st.ports.api);
    let (big, small) = register_images(st, steps)?;
    let publish = Publisher {
        api,
        body: publish_body(),
    };
    publish.many(&big, TICKETS)?;
    steps.step(format!(
        "{TICKETS} publishes ({BIG_MIB} MiB) through the API port"
    ));
    let (killed, killed_running) = kill_a_worker(st, steps)?;
    st.up(&["--no-recreate", "--scale", "worker=5"], "scale to 5")?;
    st.wait_workers(5)?;
    steps.step("--scale worker=5, all healthy");
    let targets = checks::prometheus_targets(st)?;
    steps.step("Prometheus targets: API + 5 workers up");
    let scale_down = scale_down(st, steps)?;
    let rabbit = st.ids("rabbitmq").join(" ");
    output(&mut cmd("docker", ["restart", &rabbit]))?;
    wait_for(120, "rabbitmq healthy again", || {
        st.all_healthy("rabbitmq", 1)
    })?;
    steps.step("docker restart of rabbitmq");
    all_complete(st, 900)?;
    steps.step(format!("all {TICKETS} tickets complete"));
    if st.count("state = 'error' OR state = 'cancelled'")? != 0 {
        bail!(
            "tickets in error: {}",
            st.psql("SELECT id, error_message FROM publish_tickets WHERE state <> 'complete'")?
        );
    }
    let attempts_max: u64 = st
        .psql("SELECT max(attempts) FROM publish_tickets")?
        .parse()?;
    let tps1 = scale_out(st, &publish, &small, 1)?;
    let tps3 = scale_out(st, &publish, &small, 3)?;
    steps.say(&format!(
        "scale-out, {BENCH_TICKETS} tickets of 1 MiB: 1 worker {tps1:.2} tickets/s, 3 workers {tps3:.2} tickets/s"
    ));
    steps.step("scale-out figure (1 and 3 workers)");
    let end = checks::run(st, steps)?;
    Ok(json!({
        "tickets": TICKETS + 2 * BENCH_TICKETS,
        "killed": killed,
        "killed_running_tickets": killed_running,
        "attempts_max": attempts_max,
        "scale_down": scale_down,
        "scale_out": {"tickets": BENCH_TICKETS, "workers_1_tickets_per_s": tps1, "workers_3_tickets_per_s": tps3,
            "three_vs_one": tps3 / tps1},
        "glance_images": end.images,
        "image_sizes": end.sizes,
        "consumers": end.consumers,
        "prometheus_targets": targets,
        "dashboard_queries": end.queries,
    }))
}

fn up(st: &Stack, steps: &mut Steps) -> Result<()> {
    steps.say("docker-compose up -d --scale worker=3");
    st.up(&["--scale", "worker=3"], "compose up")?;
    for s in ["postgres", "rabbitmq", "api", "demo-cloud", "prometheus"] {
        wait_for(180, &format!("{s} healthy by its healthcheck"), || {
            st.all_healthy(s, 1)
        })?;
    }
    st.wait_workers(3)?;
    // restart: on-failure; it must end exited 0, and stay so.
    let migrate = st.ids("migrate").join(" ");
    wait_for(60, "migrate exited 0", || {
        st.inspect("{{.State.Status}} {{.State.ExitCode}}", &migrate) == "exited 0"
    })?;
    steps.step("up, 3 workers, every healthcheck healthy");
    Ok(())
}

/// The user demo and two images in the API container: (big, small) URIs.
fn register_images(st: &Stack, steps: &Steps) -> Result<(String, String)> {
    output(
        st.compose(&[
            "exec",
            "-T",
            "-e",
            "PIMAGE_USER_PASSWORD=demopass",
            "api",
            "pimage",
            "users",
            "add",
            "demo",
        ])
        .stdin(std::process::Stdio::null()),
    )?;
    let api = st.ids("api").join(" ");
    let mut uris = Vec::new();
    for (name, mib) in [("big", BIG_MIB), ("small", 1)] {
        let file = st.work.join(format!("{name}.raw"));
        crate::process::run(&mut sh(&format!(
            "head -c {} /dev/urandom > '{}'",
            mib << 20,
            file.display()
        )))?;
        output(
            cmd("docker", ["cp"])
                .arg(&file)
                .arg(format!("{api}:/tmp/{name}.raw")),
        )?;
        let uri = output(&mut st.compose(&[
            "exec",
            "-T",
            "api",
            "pimage",
            "images",
            "register",
            "--user",
            "demo",
            "--file",
            &format!("/tmp/{name}.raw"),
            "--format",
            "raw",
            "--name",
            name,
        ]))?;
        uris.push(uri.trim().to_string());
    }
    steps.say(&format!(
        "registered {} ({BIG_MIB} MiB) and {} (1 MiB)",
        uris[0], uris[1]
    ));
    Ok((uris[0].clone(), uris[1].clone()))
}

pub(super) fn publish_body() -> String {
    json!({"displayName": "compose-test", "publicImage": false, "keystoneDomain": "Default",
        "keystoneProject": "demo", "credAccount": {"targetPlatform": {"name": "openstack"},
        "keystoneUrl": "http://demo-cloud:5000/v3", "glanceUrl": "http://demo-cloud:9292",
        "keystoneVersion": "v3", "login": "demo", "password": "demopass"}})
    .to_string()
}

/// POSTs through the API's published port.
struct Publisher {
    api: String,
    body: String,
}

impl Publisher {
    fn many(&self, image: &str, n: u64) -> Result<()> {
        for _ in 0..n {
            let out = output(&mut cmd(
                "curl",
                [
                    "-s",
                    "-w",
                    "\n%{http_code}",
                    "-u",
                    "demo:demopass",
                    "-H",
                    "Content-Type: application/json",
                    "-H",
                    "Accept: application/json",
                    "--data-binary",
                    &self.body,
                    &format!("{}/{image}/pimages", self.api),
                ],
            ))?;
            let (answer, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
            if code != "201" {
                bail!("POST {image}/pimages answered {code}: {answer}");
            }
        }
        Ok(())
    }
}

/// A worker with an upload under way (bytes sent), killed: (its name, its running tickets).
fn kill_a_worker(st: &Stack, steps: &mut Steps) -> Result<(String, u64)> {
    for _ in 0..120 {
        let owner = st.psql("SELECT lease_owner FROM publish_tickets WHERE state = 'running' AND bytes_loaded > 0 LIMIT 1")?;
        let host = owner.split(':').next().unwrap_or_default();
        if !owner.is_empty() {
            if let Some(victim) = st
                .workers_running()
                .into_iter()
                .find(|c| st.inspect("{{.Config.Hostname}}", c) == host)
            {
                let name = st
                    .inspect("{{.Name}}", &victim)
                    .trim_start_matches('/')
                    .to_string();
                let running =
                    st.count(&format!("lease_owner = '{owner}' AND state = 'running'"))?;
                output(&mut cmd("docker", ["kill", &victim]))?;
                steps.say(&format!(
                    "killed {name} mid-upload ({running} running tickets)"
                ));
                steps.step("docker kill of a worker mid-upload");
                return Ok((name, running));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("no upload under way to interrupt")
}

/// Scale 5 → 1: the stopped workers hand back within their grace, Docker never kills them.
fn scale_down(st: &mut Stack, steps: &mut Steps) -> Result<Value> {
    let events_file = std::fs::File::create(st.work.join("die-events"))?;
    let log_file = std::fs::File::create(st.work.join("worker.log"))?;
    let events = cmd(
        "docker",
        [
            "events",
            "--filter",
            &format!("label=com.docker.compose.project={}", st.project),
            "--filter",
            "label=com.docker.compose.service=worker",
            "--filter",
            "event=die",
            "--format",
            "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        ],
    )
    .stdout(events_file)
    .spawn()?;
    st.followers.push(events);
    let logs = st
        .compose(&["logs", "-f", "--no-color", "worker"])
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()?;
    st.followers.push(logs);
    let running_before = st.count("state = 'running'")?;
    let t0 = Instant::now();
    st.up(&["--no-recreate", "--scale", "worker=1"], "scale to 1")?;
    let secs = t0.elapsed().as_secs();
    st.wait_workers(1)?;
    std::thread::sleep(Duration::from_secs(1));
    for mut f in st.followers.drain(..) {
        let _ = f.kill();
        let _ = f.wait();
    }
    let events = std::fs::read_to_string(st.work.join("die-events"))?;
    let died: Vec<(&str, &str)> = events.lines().filter_map(|l| l.split_once(' ')).collect();
    if died.len() != 4 {
        bail!("4 workers stopped, events: {events}");
    }
    if died.iter().any(|(_, code)| *code != "0") {
        bail!("a worker did not exit 0 (137: killed at stop_grace_period): {events}");
    }
    let log = std::fs::read_to_string(st.work.join("worker.log")).context("the workers' log")?;
    let handed_back = log
        .lines()
        .filter(|l| l.contains("handing running uploads back"))
        .count();
    let grace_over = log
        .lines()
        .filter(|l| l.contains("grace period over"))
        .count();
    if secs >= 60 {
        bail!("scale-down took {secs} s, past stop_grace_period");
    }
    steps.say(&format!(
        "scale-down: {running_before} tickets running; 4 workers exited 0 in {secs} s; {handed_back} handed uploads back after the grace"
    ));
    // Whether an upload is handed back or finishes within the grace depends on its speed: what
    // must hold is the exit code (above) and, at the end, every ticket complete exactly once.
    steps.step("--scale worker=1: hand-back within the grace");
    Ok(
        json!({"running_before": running_before, "seconds": secs, "workers_exited_0": died.len(),
        "handed_back": handed_back, "grace_over": grace_over, "grace_secs": GRACE_SECS}),
    )
}

fn all_complete(st: &Stack, secs: u64) -> Result<()> {
    let mut left = 0;
    let done = wait_for(secs, "every ticket complete", || {
        left = st.count("state <> 'complete'").unwrap_or(u64::MAX);
        left == 0
    });
    done.with_context(|| format!("{left} tickets left"))
}

/// Tickets/s of BENCH_TICKETS publishes of the 1 MiB image with WORKERS worker containers,
/// from the first POST to the last finished_at.
fn scale_out(st: &Stack, publish: &Publisher, small: &str, workers: usize) -> Result<f64> {
    st.up(
        &["--no-recreate", "--scale", &format!("worker={workers}")],
        &format!("scale to {workers}"),
    )?;
    st.wait_workers(workers)?;
    let before: u64 = st
        .psql("SELECT coalesce(max(id), 0) FROM publish_tickets")?
        .parse()?;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    publish.many(small, BENCH_TICKETS)?;
    all_complete(st, 600).context("bench tickets complete")?;
    let end: f64 = st
        .psql(&format!(
            "SELECT extract(epoch FROM max(finished_at)) FROM publish_tickets WHERE id > {before}"
        ))?
        .parse()?;
    Ok(BENCH_TICKETS as f64 / (end - start))
}
