//! pimage under benchmark: its scratch database and queue, its API and worker processes, and
//! the client calls a user makes (register, publish, poll).

use super::{lab_urls, say, Paths};
use crate::process::{cmd, output, run, succeeds};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PORT: u16 = 18180;
pub const DB: &str = "pimage_bench";
pub const USER_AUTH: &str = "bench:benchpass";

pub struct Pimage {
    pub bin: PathBuf,
    pub api: String,
    pub keystone: String,
    pub glance: String,
    work: PathBuf,
    children: Vec<Child>,
    pub api_pid: u32,
    pub worker_pids: Vec<u32>,
}

impl Pimage {
    /// Sets the environment every pimage process of the run reads.
    pub fn new(bin: PathBuf, paths: &Paths) -> Result<Self> {
        let (keystone, glance) = lab_urls()?;
        let sslmode = std::env::var("PGSSLMODE").unwrap_or_else(|_| "disable".into());
        let set = |k: &str, v: &str| std::env::set_var(k, v);
        set("PIMAGE_ENV", "dev");
        // No TLS to the loopback PostgreSQL, for pimage and pgbench alike: Debian's server
        // offers it, both clients prefer it, and it cost pimage 12 % of its CPU in the
        // scale-out profile (libcrypto), which is not pimage's work.
        set("PGSSLMODE", &sslmode);
        set(
            "PIMAGE__DATABASE__URL",
            &format!("postgres://postgres@127.0.0.1:5432/{DB}?sslmode={sslmode}"),
        );
        set(
            "PIMAGE__DATABASE__MAX_CONNECTIONS",
            &std::env::var("BENCH_DB_CONNECTIONS").unwrap_or_else(|_| "10".into()),
        );
        set("PIMAGE__AMQP__QUEUE", "pimage.bench");
        set("PIMAGE__API__LISTEN", &format!("127.0.0.1:{PORT}"));
        set(
            "PIMAGE__STORAGE__URL",
            &paths.work.join("images").to_string_lossy(),
        );
        // Benchmarks measure throughput: the per-user limits (issue 23) would cap one user.
        for k in [
            "PUBLISHES_PER_MINUTE",
            "PUBLISH_BURST",
            "QUEUED_TICKETS_PER_USER",
        ] {
            set(&format!("PIMAGE__LIMITS__{k}"), "100000000");
        }
        set(
            "RUST_LOG",
            &std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        );
        Ok(Self {
            bin,
            api: format!("http://127.0.0.1:{PORT}/api"),
            keystone,
            glance,
            work: paths.work.clone(),
            children: Vec::new(),
            api_pid: 0,
            worker_pids: Vec::new(),
        })
    }

    pub fn work(&self) -> &Path {
        &self.work
    }

    fn pimage(&self, args: &[&str]) -> Command {
        cmd(&self.bin.to_string_lossy(), args)
    }

    /// psql on DATABASE, unaligned, tuples only.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        output(&mut cmd(
            "psql",
            [
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-qtAX",
                "-d",
                database,
                "-c",
                sql,
            ],
        ))
    }

    /// A new scratch database and queue, migrated, with the user bench.
    pub fn fresh_db(&mut self) -> Result<()> {
        self.stop_all();
        self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
        )?;
        self.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
        for q in ["pimage.bench", "pimage.bench.dead"] {
            succeeds(&mut cmd("rabbitmqctl", ["-q", "delete_queue", q]));
        }
        let _ = std::fs::remove_dir_all(self.work.join("images"));
        output(&mut self.pimage(&["migrate"]))?;
        self.add_user("bench", false)
    }

    pub fn add_user(&self, login: &str, admin: bool) -> Result<()> {
        let mut args = vec!["users", "add", login];
        if admin {
            args.push("--admin");
        }
        output(self.pimage(&args).env("PIMAGE_USER_PASSWORD", "benchpass")).map(drop)
    }

    pub fn drop_database(&mut self) {
        self.stop_all();
        let _ = self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
        );
    }

    fn spawn(&mut self, args: &[&str], log: &str, envs: &[(&str, String)]) -> Result<u32> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join(log))?;
        let child = self
            .pimage(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    fn wait_ready(&self, url: &str, what: &str, log: &str) -> Result<()> {
        for _ in 0..100 {
            if succeeds(&mut cmd("curl", ["-sf", "-o", "/dev/null", url])) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let tail = std::fs::read_to_string(self.work.join(log)).unwrap_or_default();
        let lines: Vec<&str> = tail.lines().rev().take(10).collect();
        bail!(
            "{what} did not start: {}",
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    pub fn start_api(&mut self) -> Result<()> {
        self.start_api_with(&[])
    }

    /// The API with settings of its own (`PIMAGE__…` variables) over the run's.
    pub fn start_api_with(&mut self, envs: &[(&str, String)]) -> Result<()> {
        self.api_pid = self.spawn(&["api"], "api.log", envs)?;
        let url = format!("{}/status", self.api);
        self.wait_ready(&url, "the API", "api.log")
    }

    /// Worker N on port 18200+N with CONCURRENCY uploads at once.
    pub fn start_worker(&mut self, n: u32, concurrency: u32) -> Result<u32> {
        let port = 18200 + n;
        let log = format!("worker-{n}.log");
        let pid = self.spawn(
            &["worker"],
            &log,
            &[
                ("PIMAGE__WORKER__LISTEN", format!("127.0.0.1:{port}")),
                ("PIMAGE__WORKER__CONCURRENCY", concurrency.to_string()),
            ],
        )?;
        self.worker_pids.push(pid);
        self.wait_ready(
            &format!("http://127.0.0.1:{port}/readyz"),
            &format!("worker {n}"),
            &log,
        )?;
        Ok(pid)
    }

    pub fn stop_all(&mut self) {
        for c in &self.children {
            succeeds(&mut cmd("kill", [c.id().to_string()]));
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
        self.worker_pids.clear();
        self.api_pid = 0;
    }

    /// A random raw file of MIB MiB (kept between runs) registered for USER: its URI.
    pub fn make_image(&self, mib: u64, user: &str) -> Result<String> {
        let file = self.disk(mib);
        if std::fs::metadata(&file).map_or(true, |m| m.len() == 0) {
            run(&mut crate::process::sh(&format!(
                "head -c {} /dev/urandom > '{}'",
                mib << 20,
                file.display()
            )))?;
        }
        output(&mut self.pimage(&[
            "images",
            "register",
            "--user",
            user,
            "--file",
            &file.to_string_lossy(),
            "--format",
            "raw",
            "--in-place",
        ]))
    }

    pub fn disk(&self, mib: u64) -> PathBuf {
        self.work.join(format!("disk-{mib}.raw"))
    }

    pub fn publish_body(&self, name: &str) -> String {
        serde_json::json!({
            "displayName": format!("bench-{name}"), "keystoneProject": "demo", "keystoneDomain": "Default",
            "credAccount": {"targetPlatform": {"name": "openstack"}, "keystoneUrl": self.keystone,
                "glanceUrl": self.glance, "login": "demo", "password": "demopass"}
        })
        .to_string()
    }

    /// POST IMAGE_URI/pimages as AUTH: the ticket's URI.
    pub fn publish_as(&self, auth: &str, image: &str, name: &str) -> Result<String> {
        let out = output(&mut cmd(
            "curl",
            [
                "-sf",
                "-u",
                auth,
                "-H",
                "Content-Type: application/json",
                "-H",
                "Accept: application/json",
                "--data-binary",
                &self.publish_body(name),
                &format!("{}/{image}/pimages", self.api),
            ],
        ))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("publish answer")?;
        v["uri"]
            .as_str()
            .map(str::to_string)
            .context("publish answer without uri")
    }

    pub fn publish(&self, image: &str, name: &str) -> Result<String> {
        self.publish_as(USER_AUTH, image, name)
    }

    /// Polls every 100 ms (one curl, no JSON parsing: the poll must cost next to nothing on
    /// 2 cores) until the ticket is complete; fails when it fails.
    pub fn wait_complete_as(&self, auth: &str, ticket: &str) -> Result<()> {
        let url = format!("{}/{ticket}/status", self.api);
        loop {
            let s = output(&mut cmd(
                "curl",
                ["-sf", "-u", auth, "-H", "Accept: application/json", &url],
            ))
            .unwrap_or_default();
            if s.contains("\"complete\":true") {
                return Ok(());
            }
            if s.contains("\"error\":true") {
                bail!("ticket failed: {s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_complete(&self, ticket: &str) -> Result<()> {
        self.wait_complete_as(USER_AUTH, ticket)
    }

    /// The Glance image id of a ticket.
    pub fn cloud_id(&self, ticket: &str) -> Result<String> {
        let out = output(&mut cmd(
            "curl",
            [
                "-sf",
                "-u",
                USER_AUTH,
                "-H",
                "Accept: application/json",
                &format!("{}/{ticket}", self.api),
            ],
        ))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["cloudId"]
            .as_str()
            .map(str::to_string)
            .context("ticket without cloudId")
    }
}

impl Drop for Pimage {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A note on the progress of a run.
pub fn note(msg: String) {
    say(&msg);
}
