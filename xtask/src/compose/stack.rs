//! The compose project under test: its ports, docker-compose and docker calls, and its
//! teardown (which leaves no container, volume or network).

use crate::process::{cmd, output, succeeds};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub struct Ports {
    pub api: u16,
    pub management: u16,
    pub keystone: u16,
    pub glance: u16,
    pub prometheus: u16,
}

pub struct Stack {
    pub project: String,
    pub ports: Ports,
    pub work: PathBuf,
    /// The RabbitMQ user pimage's password (the management API's login), from the secrets.
    pub rabbit_password: String,
    /// Followers (docker events, compose logs -f) to stop at the end.
    pub followers: Vec<Child>,
}

/// Whether something listens on 127.0.0.1:PORT.
fn port_taken(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
        || output(&mut cmd("ss", ["-Hltn", &format!("sport = :{port}")]))
            .is_ok_and(|o| !o.is_empty())
}

fn free_port(from: u16) -> u16 {
    (from..u16::MAX).find(|p| !port_taken(*p)).unwrap_or(from)
}

impl Stack {
    /// Picks the ports and sets the environment the compose file reads.
    pub fn new(root: &Path) -> Result<Self> {
        let ports = Ports {
            api: free_port(18080),
            management: free_port(18672),
            keystone: free_port(15000),
            glance: free_port(19292),
            prometheus: free_port(19090),
        };
        let work = std::env::temp_dir().join(format!("pimage-compose-test.{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        // The secret files as users make them (scripts/compose-secrets), in the work directory.
        let secrets = work.join("secrets");
        output(&mut cmd("scripts/compose-secrets", [&secrets]))?;
        let rabbit_password = std::fs::read_to_string(secrets.join("rabbitmq_password"))?
            .trim()
            .to_string();
        for (k, v) in [
            ("PIMAGE_API_PORT", ports.api.to_string()),
            (
                "PIMAGE_RABBITMQ_MANAGEMENT_PORT",
                ports.management.to_string(),
            ),
            ("PIMAGE_DEMO_KEYSTONE_PORT", ports.keystone.to_string()),
            ("PIMAGE_DEMO_GLANCE_PORT", ports.glance.to_string()),
            ("PIMAGE_PROMETHEUS_PORT", ports.prometheus.to_string()),
            ("PIMAGE_SECRETS_DIR", secrets.display().to_string()),
            // A short grace, so that scaling down hands running uploads back; Docker waits longer.
            ("PIMAGE_WORKER_GRACE_SECS", "5".into()),
            ("PIMAGE_WORKER_STOP_GRACE", "60s".into()),
            ("COMPOSE_PROFILES", "demo,monitoring".into()),
        ] {
            std::env::set_var(k, v);
        }
        let _ = root;
        Ok(Stack {
            project: std::env::var("PIMAGE_COMPOSE_PROJECT").unwrap_or_else(|_| "pimagect".into()),
            ports,
            work,
            rabbit_password,
            followers: Vec::new(),
        })
    }

    pub fn compose(&self, args: &[&str]) -> Command {
        let mut c = cmd(
            "docker-compose",
            [
                "-p",
                &self.project,
                "-f",
                "docker-compose.yml",
                "-f",
                "docker-compose.override.yml",
                "-f",
                "docker/compose-test.override.yml",
            ],
        );
        c.args(args);
        c
    }

    /// `docker-compose up -d --no-build` with these arguments; its log on failure.
    pub fn up(&self, args: &[&str], what: &str) -> Result<()> {
        let mut all = vec!["up", "-d", "--no-build"];
        all.extend_from_slice(args);
        match output(&mut self.compose(&all)) {
            Ok(_) => Ok(()),
            Err(e) => bail!("{what}: {e}"),
        }
    }

    /// The service's container ids.
    pub fn ids(&self, service: &str) -> Vec<String> {
        output(&mut self.compose(&["ps", "-q", service]))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn psql(&self, sql: &str) -> Result<String> {
        output(&mut self.compose(&[
            "exec", "-T", "postgres", "psql", "-U", "pimage", "-d", "pimage", "-tAXq", "-c", sql,
        ]))
    }

    pub fn count(&self, condition: &str) -> Result<u64> {
        Ok(self
            .psql(&format!(
                "SELECT count(*) FROM publish_tickets WHERE {condition}"
            ))?
            .parse()?)
    }

    /// `docker inspect -f FORMAT CONTAINER`.
    pub fn inspect(&self, format: &str, container: &str) -> String {
        output(&mut cmd("docker", ["inspect", "-f", format, container])).unwrap_or_default()
    }

    pub fn health(&self, container: &str) -> String {
        self.inspect(
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            container,
        )
    }

    pub fn all_healthy(&self, service: &str, n: usize) -> bool {
        self.ids(service)
            .iter()
            .filter(|c| self.health(c) == "healthy")
            .count()
            == n
    }

    pub fn workers_running(&self) -> Vec<String> {
        output(&mut cmd(
            "docker",
            [
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--filter",
                "label=com.docker.compose.service=worker",
            ],
        ))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
    }

    /// Exactly N workers running, all healthy, within 120 s.
    pub fn wait_workers(&self, n: usize) -> Result<()> {
        let (mut have, mut ok) = (0, 0);
        for _ in 0..120 {
            let running = self.workers_running();
            have = running.len();
            ok = running
                .iter()
                .filter(|c| self.health(c) == "healthy")
                .count();
            if have == n && ok == n {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!("{n} healthy workers: have {ok} of {have}")
    }

    /// Stops the followers; on failure prints the stack's last logs; `down -v`.
    pub fn tear_down(&mut self, failed: bool) {
        for mut f in self.followers.drain(..) {
            let _ = f.kill();
            let _ = f.wait();
        }
        let docker_up = succeeds(&mut cmd("docker", ["info"]));
        if failed
            && docker_up
            && output(&mut self.compose(&["ps", "-q"])).is_ok_and(|o| !o.is_empty())
        {
            eprintln!("[compose-test] failed; the stack's last logs:");
            let _ = self.compose(&["ps"]).status();
            let _ = self.compose(&["logs", "--no-color", "--tail=40"]).status();
        }
        if docker_up {
            succeeds(&mut self.compose(&["down", "-v", "--remove-orphans", "-t", "30"]));
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Retries CHECK every second for SECS seconds.
pub fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..secs {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("{what}: not within {secs} s")
}
