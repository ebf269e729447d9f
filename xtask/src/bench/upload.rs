//! Upload throughput: pimage end to end against `curl -T` (the physical limit) and
//! `openstack image create`, interleaved in each run so that drift hits all three alike.

use super::{cloud, pimage::note, profile, Knobs, Paths, Pimage};
use crate::process::{clock_ticks, cpu_seconds, output};
use crate::report::{finite, Report, Section};
use crate::stats::{median, ratio};
use anyhow::{Context, Result};
use serde_json::json;
use std::time::Instant;

pub fn run(p: &mut Pimage, paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    p.fresh_db()?;
    p.start_api()?;
    let worker = p.start_worker(1, 4)?;
    let hz = clock_ticks();
    let mut s = Section::new(
        format!(
            "Upload throughput (median of {}, seconds; MiB/s; ratio to curl)",
            k.runs
        ),
        &[
            "size",
            "pimage end to end",
            "curl -T (limit)",
            "openstack image create",
            "pimage / curl speed",
            "pimage / openstack speed",
            "CPU per GiB: pimage worker",
            "curl",
            "pimage / curl CPU",
        ],
    );
    let mut sizes = Vec::new();
    for &mib in &k.upload_sizes_mib {
        let uri = p.make_image(mib, "bench")?;
        let file = p.disk(mib).to_string_lossy().to_string();
        let (mut pt, mut pc, mut ct, mut cc, mut ot) = (vec![], vec![], vec![], vec![], vec![]);
        for run in 1..=k.runs {
            let perf = (k.profile && run == 1)
                .then(|| {
                    profile::start(
                        &worker.to_string(),
                        p.work().join("perf-upload.data"),
                        true,
                        None,
                    )
                })
                .flatten();
            let (t, c) = time_pimage(p, &uri, mib, worker, hz)?;
            pt.push(t);
            pc.push(c);
            if let Some(perf) = perf {
                perf.finish(
                    true,
                    &["--percent-limit", "1.5", "-g", "none", "--sort", "dso,sym"],
                    p.work().join(format!("perf-upload-{mib}.txt")),
                );
            }
            let (t, c) = time_curl(p, &file)?;
            ct.push(t);
            cc.push(c);
            ot.push(time_openstack(p, paths, &file)?);
            note(format!("{mib} MiB run {run}: pimage {t0:.2} s ({c0:.2} s CPU), curl {t:.2} s ({c:.2} s CPU), openstack {o:.2} s",
                t0 = pt[run - 1], c0 = pc[run - 1], o = ot[run - 1]));
        }
        let (mp, mc, mo, mpc, mcc) = (
            median(&pt),
            median(&ct),
            median(&ot),
            median(&pc),
            median(&cc),
        );
        let m = mib as f64;
        let gib = m / 1024.0;
        s.rows.push(vec![
            format!("{mib} MiB"),
            format!("{mp:.2} s ({:.0} MiB/s)", m / mp),
            format!("{mc:.2} s ({:.0} MiB/s)", m / mc),
            format!("{mo:.2} s ({:.0} MiB/s)", m / mo),
            format!("{:.2}×", mc / mp),
            format!("{:.2}×", mo / mp),
            format!("{:.0} ms", mpc / gib * 1000.0),
            format!("{:.0} ms", mcc / gib * 1000.0),
            format!("{:.2}×", ratio(mpc, mcc)),
        ]);
        r.target(
            format!("upload {mib} MiB: pimage / curl speed"),
            mc / mp,
            "≥ 0.97",
            mc / mp >= 0.97,
        );
        r.target(
            format!("upload {mib} MiB: pimage / curl CPU per GiB"),
            ratio(mpc, mcc),
            "≤ 1.1",
            ratio(mpc, mcc) <= 1.1,
        );
        r.target(
            format!("upload {mib} MiB: pimage / openstack speed"),
            mo / mp,
            "> 1 (faster)",
            mo / mp > 1.0,
        );
        sizes.push(json!({
            "size_mib": mib,
            "seconds": {"pimage": pt, "curl": ct, "openstack": ot},
            "cpu_seconds": {"pimage_worker": pc, "curl": cc},
            "median": {"pimage_s": mp, "curl_s": mc, "openstack_s": mo, "pimage_cpu_s": mpc, "curl_cpu_s": mcc},
            "pimage_vs_curl_speed": mc / mp,
            "pimage_vs_openstack_speed": mo / mp,
            "cpu_ms_per_gib": {"pimage_worker": mpc / gib * 1000.0, "curl": mcc / gib * 1000.0},
            "pimage_vs_curl_cpu": finite(ratio(mpc, mcc)),
        }));
    }
    s.figures = json!({ "runs": k.runs, "sizes": sizes });
    r.add(s);
    p.stop_all();
    Ok(())
}

/// One ticket: (seconds from the POST until the status reads complete, worker CPU seconds).
fn time_pimage(p: &Pimage, uri: &str, mib: u64, worker: u32, hz: f64) -> Result<(f64, f64)> {
    let c0 = cpu_seconds(&[worker], hz);
    let t0 = Instant::now();
    let ticket = p.publish(uri, &format!("pimage-{mib}"))?;
    p.wait_complete(&ticket)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&[worker], hz) - c0;
    cloud::delete(p, &p.cloud_id(&ticket)?);
    Ok((secs, cpu))
}

/// One create + `curl -T` upload with a token fetched beforehand: (seconds, curl CPU seconds).
fn time_curl(p: &Pimage, file: &str) -> Result<(f64, f64)> {
    let token = cloud::token(p)?;
    let cpu_file = p.work().join("curl-cpu");
    let t0 = Instant::now();
    let id = cloud::create_image(p, &token, "bench-curl")?;
    let upload = cloud::upload_command(p, &token, &id, file);
    let mut timed = crate::process::cmd("/usr/bin/time", ["-o"]);
    timed
        .arg(&cpu_file)
        .args(["-f", "%U %S"])
        .arg(upload.get_program())
        .args(upload.get_args());
    output(&mut timed)?;
    let secs = t0.elapsed().as_secs_f64();
    cloud::delete_with(p, &token, &id);
    let cpu: f64 = std::fs::read_to_string(&cpu_file)?
        .split_whitespace()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    Ok((secs, cpu))
}

/// `openstack image create --file`: seconds.
fn time_openstack(p: &Pimage, paths: &Paths, file: &str) -> Result<f64> {
    let t0 = Instant::now();
    let id = output(&mut crate::process::cmd(
        &paths.openstack().to_string_lossy(),
        [
            "image",
            "create",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--file",
            file,
            "-f",
            "value",
            "-c",
            "id",
            "bench-osc",
        ],
    ))
    .context("openstack image create")?;
    let secs = t0.elapsed().as_secs_f64();
    cloud::delete(p, &id);
    Ok(secs)
}
