//! pimage's developer tool (`cargo xtask <command>`, the alias in .cargo/config.toml).
//!
//! | command | what |
//! |---|---|
//! | `bench [part] [--quick] [--out DIR]` | docs/BENCHMARKS.md: measures, compares with the baselines, writes `DIR/latest.json` and `DIR/latest.md` (default `target/bench`) |
//! | `compose-test [images]` | the docker-compose stack run as users run it, its checks, a JSON summary of its figures |
//! | `readme-check` | README.md's `scripts/demo up` and its curl examples run as written, isolated by environment variables; a JSON summary |
//!
//! The arithmetic and the assertions live here, typed; processes (docker, curl, psql, wrk)
//! are launched as they are on the command line.

mod bench;
mod compose;
mod process;
mod readme_check;
mod report;
mod stats;
mod steps;

use anyhow::{bail, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("bench") => bench::main(&root, &args[1..]),
        Some("compose-test") => compose::main(&root, &args[1..]),
        Some("readme-check") => readme_check::main(&root, &args[1..]),
        _ => bail!("usage: cargo xtask bench [all|upload|memory|api|scale|writes|machine|console|growth|hosts|groups] [--quick] [--out DIR]\n       cargo xtask compose-test [images]\n       cargo xtask readme-check"),
    }
}

/// The workspace root: xtask/ sits in it.
fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
