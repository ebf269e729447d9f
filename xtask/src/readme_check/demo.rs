//! The demo as a user starts it, isolated by environment variables only: free ports, and a
//! database, a queue and directories of its own (the lab's venv reused); and its teardown,
//! which checks that nothing of it is left.

use crate::process::{cmd, output, run};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const DATABASE: &str = "pimage_readme_check";
pub const QUEUE: &str = "pimage.readme_check";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub api: u16,
    pub worker: u16,
    pub keystone: u16,
    pub glance: u16,
}

impl Ports {
    /// Four free ports: never the defaults (8080, 9101, 5000, 9292), which other engineers'
    /// demos and labs and CI's lab use.
    fn free() -> Result<Ports> {
        // All held open at once, so they differ; closed before the demo binds them.
        let held = (0..4)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let port = |i: usize| held[i].local_addr().map(|a| a.port());
        Ok(Ports {
            api: port(0)?,
            worker: port(1)?,
            keystone: port(2)?,
            glance: port(3)?,
        })
    }
}

pub struct Demo {
    root: PathBuf,
    /// All this run keeps on disk: demo/ (PIMAGE_DEMO_DIR), lab/ (PIMAGE_LAB_DIR), curl/.
    pub dir: PathBuf,
    pub ports: Ports,
    venv: PathBuf,
}

impl Demo {
    pub fn new(root: &Path) -> Result<Demo> {
        // The lab's venv takes minutes to install: the checkout's (scripts/test's lab made
        // it), unless PIMAGE_LAB_VENV names another.
        let venv = std::env::var_os("PIMAGE_LAB_VENV")
            .map_or_else(|| root.join(".lab/venv"), PathBuf::from);
        Ok(Demo {
            root: root.to_path_buf(),
            dir: std::env::temp_dir().join("pimage-readme-check"),
            ports: Ports::free()?,
            venv,
        })
    }

    pub fn demo_dir(&self) -> PathBuf {
        self.dir.join("demo")
    }

    /// `http://127.0.0.1:PORT/api/`
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}/api/", self.ports.api)
    }

    /// `bash -c LINE` from the checkout, as a user runs it, with this run's settings only:
    /// inherited PIMAGE* variables are dropped, so that none points it elsewhere.
    fn command(&self, line: &str) -> Command {
        let mut c = cmd("bash", ["-c", line]);
        c.current_dir(&self.root);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PIMAGE") {
                c.env_remove(key);
            }
        }
        let p = self.ports;
        c.env("PIMAGE_DEMO_PORT", p.api.to_string())
            .env("PIMAGE_DEMO_WORKER_PORT", p.worker.to_string())
            .env("PIMAGE_LAB_KEYSTONE_PORT", p.keystone.to_string())
            .env("PIMAGE_LAB_GLANCE_PORT", p.glance.to_string())
            .env("PIMAGE__DATABASE__URL", format!("{POSTGRES}/{DATABASE}"))
            .env("PIMAGE__AMQP__QUEUE", QUEUE)
            .env("PIMAGE_DEMO_DIR", self.demo_dir())
            .env("PIMAGE_LAB_DIR", self.dir.join("lab"))
            .env("PIMAGE_LAB_VENV", &self.venv);
        c
    }

    /// Runs LINE (`scripts/demo up`): what it printed, shown as it comes.
    pub fn up(&self, line: &str) -> Result<String> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join("demo-up.out");
        // A file, read as it grows, not a pipe: a server the demo starts in the background
        // could hold a pipe open long after the demo has ended.
        let mut child = self
            .command(line)
            .stdin(Stdio::null())
            .stdout(File::create(&path)?)
            .spawn()
            .with_context(|| format!("starting `{line}`"))?;
        let mut reader = File::open(&path)?;
        let mut printed = Vec::new();
        loop {
            let ended = child.try_wait()?;
            let from = printed.len();
            reader.read_to_end(&mut printed)?;
            std::io::stdout().write_all(&printed[from..])?;
            match ended {
                Some(status) if status.success() => break,
                Some(status) => bail!("`{line}` failed ({status}); its output is above"),
                None => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(String::from_utf8_lossy(&printed).into_owned())
    }

    /// What a killed earlier run left: its demo stopped (by its PID files), its database,
    /// queues and directory removed.
    pub fn clear(&self, down: &str) -> Result<()> {
        if self.dir.exists() {
            let _ = output(&mut self.command(down));
        }
        self.remove_state()
    }

    /// `down` (DOWN), then: no process of the run left, its database, queues and directory
    /// (with the lab's Glance store, so the published image) removed.
    pub fn tear_down(&self, down: &str) -> Result<()> {
        let stopped = run(&mut self.command(down)).with_context(|| format!("`{down}`"));
        let left = self.wait_gone(Duration::from_secs(20));
        for (pid, _) in &left {
            let _ = output(&mut cmd("kill", ["-KILL".to_string(), pid.to_string()]));
        }
        let removed = self.remove_state();
        stopped?;
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(|(p, c)| format!("{p} {c}")).collect();
            bail!(
                "`{down}` left processes (killed now):\n  {}",
                list.join("\n  ")
            );
        }
        removed
    }

    fn wait_gone(&self, within: Duration) -> Vec<(u32, String)> {
        let until = Instant::now() + within;
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() > until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Processes whose environment holds this run's PIMAGE_DEMO_DIR: all the demo starts (the
    /// API, the worker, the lab's servers) inherit it, and nothing else has it.
    fn processes(&self) -> Vec<(u32, String)> {
        let marker = format!("PIMAGE_DEMO_DIR={}\0", self.demo_dir().display()).into_bytes();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.windows(marker.len()).any(|w| w == marker))
            })
            .map(|pid| (pid, command_line(pid)))
            .collect()
    }

    fn remove_state(&self) -> Result<()> {
        let server = format!("{POSTGRES}/postgres");
        let drop = format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)");
        let dropped = output(&mut cmd("psql", [server.as_str(), "-qc", drop.as_str()]));
        let queues = delete_queues();
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        dropped.context("dropping the database")?;
        queues
    }
}

/// The work queue and its dead letters, which the worker declared (RabbitMQ keeps them).
fn delete_queues() -> Result<()> {
    let listed = output(&mut cmd("rabbitmqctl", ["-q", "list_queues", "name"]))?;
    let dead = format!("{QUEUE}.dead");
    for queue in listed.lines().map(str::trim) {
        if queue == QUEUE || queue == dead {
            output(&mut cmd("rabbitmqctl", ["-q", "delete_queue", queue]))?;
        }
    }
    Ok(())
}

fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim()
        .to_string()
}
