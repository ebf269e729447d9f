//! The machine the figures come from.

use super::{Paths, Pimage};
use crate::process::{output, sh};
use crate::report::{Report, Section};
use anyhow::Result;
use serde_json::json;

pub fn run(p: &mut Pimage, paths: &Paths, r: &mut Report) -> Result<()> {
    let text = |script: &str| output(&mut sh(script)).unwrap_or_default();
    let pip = |venv: &std::path::Path, package: &str| {
        text(&format!(
            "'{}/bin/pip' show {package} 2>/dev/null | awk '/^Version/{{print $2}}'",
            venv.display()
        ))
    };
    let cores = text("nproc");
    let cpu = text("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs");
    let ram = text("free -g | awk '/Mem:/{print $2}'");
    let kernel = text("uname -r");
    let rustc = text("rustc --version");
    let pg = p
        .psql("postgres", "SHOW server_version")
        .unwrap_or_default();
    let curl = text("curl --version | head -1 | cut -d' ' -f1-2");
    let wrk = text("wrk -v 2>&1 | head -1 | cut -d' ' -f2");
    let venv = paths.lab.join("venv");
    let (glance, keystone) = (pip(&venv, "glance"), pip(&venv, "keystone"));
    let osc = pip(&paths.venv, "python-openstackclient");
    let disk = text(&format!(
        "df -h '{}' | awk 'NR==2{{print $1\", \"$2\" total\"}}'",
        paths.work.display()
    ));
    let mut s = Section::new("Machine", &[]);
    s.rows = vec![
        vec![format!("- {cores} cores: {cpu}; {ram} GiB RAM; kernel {kernel}")],
        vec![format!("- {rustc}; PostgreSQL {pg}; {curl}; wrk {wrk}")],
        vec![format!("- Glance {glance}, Keystone {keystone} under uwsgi on 127.0.0.1 (file store on the same disk); python-openstackclient {osc}")],
        vec![format!("- disk: {disk}")],
    ];
    s.figures = json!({"cores": cores, "cpu": cpu, "ram_gib": ram, "kernel": kernel, "rustc": rustc,
        "postgresql": pg, "curl": curl, "wrk": wrk, "glance": glance, "keystone": keystone,
        "openstackclient": osc, "disk": disk});
    r.add(s);
    Ok(())
}
