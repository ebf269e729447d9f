//! Launching the tools the scenarios drive (curl, psql, docker, wrk): their output as text,
//! a failure as an error that names the command.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// A command from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs it; its standard output, trimmed; an error with its standard error when it fails.
pub fn output(c: &mut Command) -> Result<String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs it, output discarded: whether it succeeded.
pub fn succeeds(c: &mut Command) -> bool {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs it with its output on ours; an error when it fails.
pub fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?}: {status}");
    }
    Ok(())
}

/// `sh -c SCRIPT`, for the few pipelines that read best as one.
pub fn sh(script: &str) -> Command {
    cmd("sh", ["-c", script])
}

/// utime + stime of these processes, in seconds (/proc/PID/stat; gone processes count 0).
pub fn cpu_seconds(pids: &[u32], hz: f64) -> f64 {
    pids.iter().map(|p| cpu_ticks(*p) as f64).sum::<f64>() / hz
}

fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Clock ticks per second (getconf CLK_TCK).
pub fn clock_ticks() -> f64 {
    output(&mut cmd("getconf", ["CLK_TCK"]))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0)
}

/// The ids of the processes `pgrep ARGS` finds (none is no error).
pub fn pgrep(args: &[&str]) -> Vec<u32> {
    output(&mut cmd("pgrep", args))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Peak RSS of a running process (VmHWM), MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}
