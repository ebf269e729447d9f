//! BENCH_PROFILE=1: perf on the software clock (this VM has no hardware counters) over the
//! processes under load, its report in the scratch directory.

use crate::process::{cmd, output};
use std::path::PathBuf;
use std::process::{Child, Stdio};

pub struct Perf {
    child: Child,
    data: PathBuf,
}

/// Records PIDS (comma-separated) until stopped, or for SECONDS when given.
pub fn start(pids: &str, data: PathBuf, graph: bool, seconds: Option<u64>) -> Option<Perf> {
    let mut c = cmd("perf", ["record", "-q", "-e", "cpu-clock", "-F", "499"]);
    if graph {
        c.arg("-g");
    }
    c.args(["-p", pids, "-o"]).arg(&data);
    if let Some(s) = seconds {
        c.args(["--", "sleep", &s.to_string()]);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Perf { child, data })
}

impl Perf {
    /// Stops the recording (SIGINT, as perf wants) unless it ends by itself, and writes
    /// `perf report ARGS` into OUT.
    pub fn finish(mut self, interrupt: bool, report_args: &[&str], out: PathBuf) {
        if interrupt {
            let _ = output(&mut cmd(
                "kill",
                ["-INT".to_string(), self.child.id().to_string()],
            ));
        }
        let _ = self.child.wait();
        let mut c = cmd("perf", ["report", "-i"]);
        c.arg(&self.data)
            .args(["--no-children", "--stdio"])
            .args(report_args);
        if let Ok(text) = output(&mut c) {
            let _ = std::fs::write(out, text);
        }
    }
}
