//! The same docker-compose.yml on a single-node Swarm: `docker swarm init` on the test's
//! dockerd, `docker stack deploy -c docker-compose.yml -c docker/swarm-test.yml` (the offline
//! images and the demo cloud), a publish that completes, then `docker stack rm` and
//! `docker swarm leave`, leaving no container, volume, network or secret of the stack.

use super::stack::{wait_for, Stack};
use super::Steps;
use crate::process::{cmd, output, succeeds};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const NAMESPACE: &str = "com.docker.stack.namespace";

pub fn run(st: &Stack, steps: &mut Steps) -> Result<Value> {
    let name = format!("{}sw", st.project);
    leave_swarm(&name); // a run killed half-way
    let had_gwbridge = succeeds(&mut cmd(
        "docker",
        ["network", "inspect", "docker_gwbridge"],
    ));
    output(&mut cmd(
        "docker",
        ["swarm", "init", "--advertise-addr", "127.0.0.1"],
    ))?;
    let result = deploy_and_publish(st, steps, &name);
    if result.is_err() {
        diagnose(&name);
    }
    let left = remove(&name, had_gwbridge);
    steps.step("docker stack rm, swarm leave: nothing left");
    let figures = result?;
    left?;
    Ok(figures)
}

fn deploy_and_publish(st: &Stack, steps: &mut Steps, name: &str) -> Result<Value> {
    output(&mut cmd(
        "docker",
        [
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            "docker-compose.yml",
            "-c",
            "docker/swarm-test.yml",
            name,
        ],
    ))?;
    steps.step("swarm init, stack deploy of docker-compose.yml");
    for service in ["postgres", "rabbitmq", "api", "worker", "demo-cloud"] {
        wait_for(240, &format!("swarm {service} healthy"), || {
            task(name, service).is_some_and(|c| st.health(&c) == "healthy")
        })?;
    }
    // Its newest task exited 0 and nothing runs it again (a one-shot under Swarm too); an
    // earlier try may have failed before PostgreSQL listened (restart_policy: on-failure).
    let migrate = output(&mut cmd(
        "docker",
        [
            "service",
            "ps",
            &format!("{name}_migrate"),
            "--format",
            "{{.CurrentState}}",
        ],
    ))?;
    let tries = migrate.lines().count();
    if !migrate.starts_with("Complete")
        || migrate
            .lines()
            .any(|l| !l.starts_with("Complete") && !l.starts_with("Failed"))
    {
        bail!("migrate under Swarm: {migrate}");
    }
    steps.step(format!(
        "swarm: every service healthy, migrate complete ({tries} tries)"
    ));
    let api = task(name, "api").context("api task")?;
    let uri = register(&api)?;
    let started = std::time::Instant::now();
    let body = super::scenario::publish_body();
    let answer = exec(
        &api,
        &[
            "curl",
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
            &body,
            &format!("http://127.0.0.1:8080/api/{uri}/pimages"),
        ],
    )?;
    if !answer.ends_with("201") {
        bail!("POST through the swarm API: {answer}");
    }
    let postgres = task(name, "postgres").context("postgres task")?;
    let sql = "SELECT state || ' ' || coalesce(cloud_id, '') FROM publish_tickets";
    let mut state = String::new();
    wait_for(180, "the swarm publish complete", || {
        state = exec(
            &postgres,
            &["psql", "-U", "pimage", "-d", "pimage", "-tAXq", "-c", sql],
        )
        .unwrap_or_default();
        state.starts_with("complete ") || state.starts_with("error")
    })?;
    if !state.starts_with("complete ") || state.len() <= "complete ".len() {
        bail!("the swarm publish ended: {state}");
    }
    let secs = started.elapsed().as_secs_f64();
    steps.say(&format!("swarm publish complete in {secs:.1} s: {state}"));
    steps.step("swarm: a publish through the stack, complete");
    let paths = paths_to_the_api(st, name)?;
    steps.say(&format!("swarm: the API by {paths}"));
    Ok(
        json!({"publish_seconds": secs, "ticket": state, "migrate_tries": tries, "api_paths": paths}),
    )
}

/// What answers on this engine, recorded, not required: the API by its task's address, by
/// its service's virtual IP, and by its published (ingress) port on the host. The last two
/// need IPVS and dockerd's iptables rules, which this machine has not (README, "On a Swarm").
fn paths_to_the_api(st: &Stack, stack: &str) -> Result<Value> {
    let worker = task(stack, "worker").context("worker task")?;
    let curl = ["curl", "-sS", "-m", "5", "-o", "/dev/null"];
    let from_worker = |url: &str| reached(cmd("docker", ["exec", &worker]).args(curl).arg(url));
    let task_address = from_worker("http://tasks.api:8080/healthz");
    if task_address != "answers" {
        bail!("the API's task address (tasks.api:8080) from a worker: {task_address}");
    }
    let published = format!("http://127.0.0.1:{}/healthz", st.ports.api);
    Ok(json!({
        "task_address (tasks.api:8080, from a worker)": task_address,
        "virtual_ip (api:8080, from a worker)": from_worker("http://api:8080/healthz"),
        "published_port (127.0.0.1, from the host)": reached(cmd("curl", curl.iter().skip(1)).arg(published)),
    }))
}

/// "answers", or curl's exit status and message.
fn reached(c: &mut std::process::Command) -> String {
    match output(c) {
        Ok(_) => "answers".into(),
        Err(e) => {
            let e = e.to_string();
            e.split_once("exit status: ")
                .map_or(e.clone(), |(_, why)| why.to_string())
        }
    }
}

/// The running container of the stack's SERVICE (one replica each here).
fn task(stack: &str, service: &str) -> Option<String> {
    output(&mut cmd(
        "docker",
        [
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={stack}_{service}"),
        ],
    ))
    .ok()
    .and_then(|ids| ids.lines().next().map(str::to_string))
}

fn exec(container: &str, args: &[&str]) -> Result<String> {
    let mut c = cmd("docker", ["exec", container]);
    c.args(args);
    output(&mut c)
}

/// The user demo and a 1 MiB image, registered in the API's container: its URI.
fn register(api: &str) -> Result<String> {
    output(&mut cmd(
        "docker",
        [
            "exec",
            "-e",
            "PIMAGE_USER_PASSWORD=demopass",
            api,
            "pimage",
            "users",
            "add",
            "demo",
        ],
    ))?;
    exec(
        api,
        &["sh", "-c", "head -c 1048576 /dev/urandom >/tmp/small.raw"],
    )?;
    let uri = exec(
        api,
        &[
            "pimage",
            "images",
            "register",
            "--user",
            "demo",
            "--file",
            "/tmp/small.raw",
            "--format",
            "raw",
            "--name",
            "swarm",
        ],
    )?;
    Ok(uri.trim().to_string())
}

/// On failure: where each service stands, and its last lines of log.
fn diagnose(stack: &str) {
    eprintln!("[compose-test] swarm step failed; its services:");
    let _ = cmd("docker", ["stack", "ps", "--no-trunc", stack]).status();
    for s in [
        "postgres",
        "rabbitmq",
        "migrate",
        "api",
        "worker",
        "demo-cloud",
    ] {
        let _ = cmd(
            "docker",
            [
                "service",
                "logs",
                "--no-task-ids",
                "--tail",
                "20",
                &format!("{stack}_{s}"),
            ],
        )
        .status();
    }
}

/// `docker stack rm` of a stack left by an earlier run, and `swarm leave`.
fn leave_swarm(stack: &str) {
    let state = output(&mut cmd(
        "docker",
        ["info", "--format", "{{.Swarm.LocalNodeState}}"],
    ))
    .unwrap_or_default();
    if state == "active" {
        succeeds(&mut cmd("docker", ["stack", "rm", stack]));
        succeeds(&mut cmd("docker", ["swarm", "leave", "--force"]));
    }
}

/// stack rm, its containers gone, its volumes removed, swarm leave; then nothing of it left.
fn remove(stack: &str, had_gwbridge: bool) -> Result<()> {
    let label = format!("label={NAMESPACE}={stack}");
    let ls = |kind: &str| {
        let mut c = cmd("docker", [kind, "ls", "-q", "--filter", &label]);
        if kind == "container" {
            c.arg("-a");
        }
        output(&mut c).unwrap_or_default()
    };
    succeeds(&mut cmd("docker", ["stack", "rm", stack]));
    wait_for(90, "the stack's containers gone", || {
        ls("container").is_empty()
    })?;
    for v in ls("volume").lines() {
        output(&mut cmd("docker", ["volume", "rm", v]))?;
    }
    output(&mut cmd("docker", ["swarm", "leave", "--force"]))?;
    if !had_gwbridge {
        // swarm init made it; leave does not remove it
        let _ = output(&mut cmd("docker", ["network", "rm", "docker_gwbridge"]));
    }
    for kind in ["container", "volume", "network"] {
        let left = ls(kind);
        if !left.is_empty() {
            bail!("the swarm stack left {kind}s: {left}");
        }
    }
    Ok(())
}
