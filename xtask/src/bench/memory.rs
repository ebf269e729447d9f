//! Peak RSS: the worker idle and with 4 uploads at once, against the openstack client's for one.

use super::{cloud, Knobs, Paths, Pimage};
use crate::process::{cmd, output, peak_rss_mib};
use crate::report::{Report, Section};
use anyhow::Result;
use serde_json::json;

pub fn run(p: &mut Pimage, paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    p.fresh_db()?;
    p.start_api()?;
    let worker = p.start_worker(1, 4)?;
    let mib = k.memory_mib;
    let uri = p.make_image(mib, "bench")?;
    let idle = peak_rss_mib(worker);
    let tickets = (1..=4)
        .map(|i| p.publish(&uri, &format!("mem-{i}")))
        .collect::<Result<Vec<_>>>()?;
    for t in &tickets {
        p.wait_complete(t)?;
    }
    let busy = peak_rss_mib(worker);
    for t in &tickets {
        cloud::delete(p, &p.cloud_id(t)?);
    }
    let time_file = p.work().join("osc-time");
    let id = output(
        cmd("/usr/bin/time", ["-o"])
            .arg(&time_file)
            .args(["-f", "%M"])
            .arg(paths.openstack())
            .args([
                "image",
                "create",
                "--disk-format",
                "raw",
                "--container-format",
                "bare",
                "--file",
            ])
            .arg(p.disk(mib))
            .args(["-f", "value", "-c", "id", "bench-osc-mem"]),
    )?;
    let osc_kib: f64 = std::fs::read_to_string(&time_file)?
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0.0);
    cloud::delete(p, &id);
    let osc = osc_kib / 1024.0;
    let mut s = Section::new("Memory (peak RSS, MiB)", &["what", "peak RSS"]);
    s.rows = vec![
        vec![
            "pimage worker, idle after start".into(),
            format!("{idle:.1}"),
        ],
        vec![
            format!("pimage worker, 4 uploads of {mib} MiB at once"),
            format!("{busy:.1}"),
        ],
        vec![
            format!("openstack image create, one upload of {mib} MiB"),
            format!("{osc:.1}"),
        ],
    ];
    s.figures = json!({
        "size_mib": mib, "worker_idle_mib": idle, "worker_4_uploads_mib": busy,
        "openstack_one_upload_mib": osc, "worker_vs_openstack": busy / osc,
    });
    r.target(
        "worker peak RSS, 4 uploads at once (MiB)",
        busy,
        "< 64",
        busy < 64.0,
    );
    r.add(s);
    p.stop_all();
    Ok(())
}
