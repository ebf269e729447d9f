//! Fan-out against separate publishes (issue 28): one image to three targets of one Keystone
//! project -- RegionOne's default store, RegionOne's store `cold`, RegionTwo -- as one
//! publication group (policy all: the first target uploads, the others copy server-side) and
//! as three ordinary publishes POSTed at once (they have no store field: the second goes to
//! RegionOne's default store too). A lab of the bench's own (scripts/openstack-lab with two
//! stores and a second Glance, BENCH_GROUPS_GLANCE_PROCESSES uwsgi processes each, default 4,
//! on PostgreSQL). Each run is timed from the first POST until every target is complete; what
//! crossed pimage's link is counted outside pimage, in the Glances' uwsgi request logs: the
//! image data requests (`PUT …/file` or `…/stage`) times the file's size (uwsgi does not log
//! request body sizes), and the bytes Glance served to Glance (`GET …/file`: glance-download
//! between the regions). The rounds alternate which run goes first; the images are deleted
//! between runs.

use super::{cloud, say, Knobs, Paths, Pimage};
use crate::process::{self, clock_ticks, cmd, cpu_seconds, output, pgrep};
use crate::report::{Report, Section};
use crate::stats::{median, ratio};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const KEYSTONE_PORT: &str = "5321";
const GLANCE_PORT: &str = "9521";
const GLANCE2_PORT: &str = "9522";
const MIB: f64 = (1u64 << 20) as f64;

/// The bench's lab: scripts/openstack-lab with the variables `prepare` set in this process.
fn lab(paths: &Paths, args: &[&str]) -> std::process::Command {
    let mut c = cmd("scripts/openstack-lab", args);
    c.env("PIMAGE_LAB_DIR", lab_dir(paths));
    c
}

fn lab_dir(paths: &Paths) -> PathBuf {
    paths.lab.join("bench-groups")
}

/// Starts the lab; its variables stay set, so that `lab_urls` (Pimage::new) gives its
/// Keystone and RegionOne's Glance.
pub fn prepare(paths: &Paths) -> Result<()> {
    let venv = super::env("PIMAGE_LAB_VENV").map_or_else(|| paths.lab.join("venv"), PathBuf::from);
    let processes = super::env("BENCH_GROUPS_GLANCE_PROCESSES").unwrap_or_else(|| "4".into());
    for (k, v) in [
        ("PIMAGE_LAB_VENV", venv.to_string_lossy().into_owned()),
        ("PIMAGE_LAB_KEYSTONE_PORT", KEYSTONE_PORT.into()),
        ("PIMAGE_LAB_GLANCE_PORT", GLANCE_PORT.into()),
        (
            "PIMAGE_LAB_SECOND_GLANCE",
            format!("RegionTwo={GLANCE2_PORT}"),
        ),
        ("PIMAGE_LAB_STORES", "fast,cold".into()),
        ("PIMAGE_LAB_GLANCE_PROCESSES", processes),
        ("PIMAGE_LAB_DATABASE", "postgres".into()),
        ("PIMAGE_LAB_SMOKE", "0".into()),
    ] {
        std::env::set_var(k, v);
    }
    say("the bench's copies lab: two stores, a second region");
    process::run(&mut lab(paths, &["up"]))
}

/// Stops the lab, its databases and state removed (best effort).
pub fn teardown(paths: &Paths) {
    let _ = output(&mut lab(paths, &["down", "--purge"]));
}

const HEADER: [&str; 8] = [
    "run",
    "seconds",
    "uploads (PUT …/file)",
    "over pimage's link",
    "Glance to Glance (GET …/file)",
    "worker CPU s",
    "Glance CPU s (both regions)",
    "seconds / separate",
];

pub fn run(p: &mut Pimage, paths: &Paths, k: &Knobs, r: &mut Report) -> Result<()> {
    p.fresh_db()?;
    p.start_api()?;
    let worker = p.start_worker(1, 4)?;
    let mib = k.groups_mib;
    let image = p.make_image(mib, "bench")?;
    let logs = lab_dir(paths).join("openstack/log");
    // Also warms what both runs share: Keystone's first logins, both Glances' token checks.
    delete_images(p)?;
    let (mut fan, mut sep) = (vec![], vec![]);
    for round in 1..=k.groups_rounds {
        for fan_out in [round % 2 == 1, round % 2 == 0] {
            let fig = measure(p, fan_out, &image, mib, &logs, worker)?;
            say(&format!("round {round}: {fig}"));
            delete_images(p)?;
            let runs = if fan_out { &mut fan } else { &mut sep };
            runs.push(fig);
        }
    }
    let (f, s) = (medians(&fan), medians(&sep));
    let mut section = Section::new(
        format!(
            "Fan-out against separate publishes: {mib} MiB to three targets (median of {} rounds)",
            k.groups_rounds
        ),
        &HEADER,
    );
    let x = ratio(f["seconds"], s["seconds"]);
    section.rows.push(row("group of three (policy all)", &f, x));
    section.rows.push(row("three separate publishes", &s, 1.0));
    section.figures = json!({"mib": mib, "fan_out": fan, "separate": sep,
        "median_fan_out": f, "median_separate": s, "seconds_fan_out_over_separate": x});
    r.target(
        "groups: uploads per fan-out group",
        f["uploads"],
        "= 1",
        (f["uploads"] - 1.0).abs() < 0.5,
    );
    r.add(section);
    Ok(())
}

type Figures = std::collections::BTreeMap<&'static str, f64>;

const KEYS: [&str; 7] = [
    "seconds",
    "first_target_seconds",
    "uploads",
    "upload_bytes",
    "glance_to_glance_bytes",
    "worker_cpu_s",
    "glance_cpu_s",
];

fn medians(runs: &[Value]) -> Figures {
    KEYS.iter()
        .map(|k| {
            let v: Vec<f64> = runs.iter().filter_map(|r| r[k].as_f64()).collect();
            (*k, if v.is_empty() { f64::NAN } else { median(&v) })
        })
        .collect()
}

fn row(name: &str, f: &Figures, x: f64) -> Vec<String> {
    vec![
        name.to_string(),
        if f["first_target_seconds"].is_nan() {
            format!("{:.1}", f["seconds"])
        } else {
            format!(
                "{:.1} (upload {:.1}, then the copies)",
                f["seconds"], f["first_target_seconds"]
            )
        },
        format!("{}", f["uploads"]),
        format!("{:.0} MiB", f["upload_bytes"] / MIB),
        format!("{:.0} MiB", f["glance_to_glance_bytes"] / MIB),
        format!("{:.1}", f["worker_cpu_s"]),
        format!("{:.1}", f["glance_cpu_s"]),
        format!("{x:.2}"),
    ]
}

/// One run, fan-out or separate: its figures.
fn measure(
    p: &Pimage,
    fan_out: bool,
    image: &str,
    mib: u64,
    logs: &Path,
    worker: u32,
) -> Result<Value> {
    let hz = clock_ticks();
    let glance_cpu = || {
        cpu_seconds(
            &pgrep(&["-f", "uwsgi --ini .*bench-groups/openstack/glance"]),
            hz,
        )
    };
    let (log0, w0, g0) = (requests(logs), cpu_seconds(&[worker], hz), glance_cpu());
    let t0 = Instant::now();
    // The fan-out's first step: until its first target (the upload) is complete.
    let mut upload_secs = f64::NAN;
    if fan_out {
        let body = json!({"policy": "all", "targets": [
            target(p, "one", "RegionOne", None),
            target(p, "cold", "RegionOne", Some("cold")),
            target(p, "two", "RegionTwo", None)]});
        let group = post(p, &format!("{image}/pimagegroups"), &body)?;
        upload_secs = wait_group(p, &group, t0)?;
    } else {
        let tickets = [
            ("one", "RegionOne"),
            ("again", "RegionOne"),
            ("two", "RegionTwo"),
        ]
        .iter()
        .map(|(name, region)| {
            post(
                p,
                &format!("{image}/pimages"),
                &target(p, name, region, None),
            )
        })
        .collect::<Result<Vec<_>>>()?;
        for t in &tickets {
            p.wait_complete(t)?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (w1, g1) = (cpu_seconds(&[worker], hz), glance_cpu());
    // uwsgi logs a request once answered: the last may trail the completion a little.
    std::thread::sleep(Duration::from_millis(300));
    let log1 = requests(logs);
    let uploads = log1.uploads - log0.uploads;
    Ok(json!({
        "run": if fan_out { "fan-out" } else { "separate" },
        "seconds": secs,
        "first_target_seconds": crate::report::finite(upload_secs),
        "uploads": uploads,
        "upload_bytes": uploads as f64 * (mib << 20) as f64,
        "glance_to_glance_bytes": log1.served - log0.served,
        "worker_cpu_s": w1 - w0,
        "glance_cpu_s": g1 - g0,
    }))
}

/// A target of the lab's demo project: REGION's Glance, STORE (none: its default).
fn target(p: &Pimage, name: &str, region: &str, store: Option<&str>) -> Value {
    let mut body = json!({
        "displayName": format!("bench-{name}"), "publicImage": false,
        "publishLocation": region, "keystoneDomain": "Default", "keystoneProject": "demo",
        "credAccount": {"targetPlatform": {"name": "openstack"}, "keystoneUrl": p.keystone,
            "keystoneVersion": "v3", "login": "demo", "password": "demopass"}});
    if let Some(store) = store {
        body["store"] = store.into();
    }
    body
}

/// POST BODY to the API's PATH as the bench user: the answer's `uri`.
fn post(p: &Pimage, path: &str, body: &Value) -> Result<String> {
    let out = output(&mut cmd(
        "curl",
        [
            "-sS",
            "-u",
            super::pimage::USER_AUTH,
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: application/json",
            "--data-binary",
            &body.to_string(),
            &format!("{}/{path}", p.api),
        ],
    ))?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("POST {path}: {out}"))?;
    v["uri"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("POST {path}: no uri in {out}"))
}

/// Polls the group every 100 ms until it is final; fails unless it is complete. The
/// seconds from T0 until its first target was seen complete.
fn wait_group(p: &Pimage, uri: &str, t0: Instant) -> Result<f64> {
    let url = format!("{}/{uri}", p.api);
    let started = Instant::now();
    let mut first = f64::NAN;
    loop {
        let out = output(&mut cmd(
            "curl",
            [
                "-sf",
                "-u",
                super::pimage::USER_AUTH,
                "-H",
                "Accept: application/json",
                &url,
            ],
        ))
        .unwrap_or_default();
        let group = serde_json::from_str::<Value>(&out).unwrap_or_default();
        if first.is_nan() && group["targets"]["target"][0]["state"] == "complete" {
            first = t0.elapsed().as_secs_f64();
        }
        let state = &group["state"];
        match state.as_str() {
            Some("complete") => return Ok(first),
            Some("partial" | "error" | "cancelled") => bail!("group {uri} ended {state}: {out}"),
            _ if started.elapsed() > Duration::from_secs(1800) => {
                bail!("group {uri} not final after 30 minutes: {out}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What the Glances' uwsgi logs show so far.
struct Requests {
    /// Image data requests (`PUT /v2/images/ID/file` or `…/stage`) both Glances received.
    uploads: u64,
    /// Bytes both Glances answered `GET /v2/images/ID/file` with (the other region's
    /// glance-download fetching the image).
    served: f64,
}

fn requests(logs: &Path) -> Requests {
    let mut r = Requests {
        uploads: 0,
        served: 0.0,
    };
    for g in ["glance", "glance2"] {
        let text = std::fs::read_to_string(logs.join(format!("{g}-uwsgi.log"))).unwrap_or_default();
        for l in text.lines() {
            if l.contains("PUT /v2/images/") && (l.contains("/file ") || l.contains("/stage ")) {
                r.uploads += 1;
            } else if l.contains("GET /v2/images/") && l.contains("/file ") {
                r.served += generated_bytes(l);
            }
        }
    }
    r
}

/// N of uwsgi's `=> generated N bytes`.
fn generated_bytes(line: &str) -> f64 {
    line.split_once("=> generated ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// Deletes every image of the demo project in both regions.
fn delete_images(p: &Pimage) -> Result<()> {
    let token = cloud::token(p)?;
    for glance in [
        format!("http://127.0.0.1:{GLANCE_PORT}"),
        format!("http://127.0.0.1:{GLANCE2_PORT}"),
    ] {
        let out = output(&mut cmd(
            "curl",
            [
                "-sf",
                "-H",
                &format!("X-Auth-Token: {token}"),
                &format!("{glance}/v2/images?limit=1000"),
            ],
        ))?;
        let v: Value = serde_json::from_str(&out).context("Glance's image list")?;
        for id in v["images"].as_array().into_iter().flatten() {
            let id = id["id"].as_str().unwrap_or_default();
            output(&mut cmd(
                "curl",
                [
                    "-sf",
                    "-X",
                    "DELETE",
                    "-H",
                    &format!("X-Auth-Token: {token}"),
                    &format!("{glance}/v2/images/{id}"),
                ],
            ))
            .with_context(|| format!("deleting image {id} of {glance}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the lab's uwsgi writes them: an upload, a glance-download's fetch, a read of
    /// the image's record (neither).
    #[test]
    fn counts_uploads_and_the_bytes_served_to_the_other_region() {
        let dir = std::env::temp_dir().join(format!("bench-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = |method: &str, path: &str, bytes: u64| {
            format!("[pid: 1|app: 0|req: 1/1] 127.0.0.1 () {{30 vars in 634 bytes}} [Tue Dec  8 02:32:34 2026] {method} /v2/images/c281582e/{path} => generated {bytes} bytes in 24 msecs (HTTP/1.1 200) 4 headers in 171 bytes (1 switches on core 0)\n")
        };
        std::fs::write(
            dir.join("glance-uwsgi.log"),
            line("PUT", "file", 0) + &line("GET", "file", 67_108_864),
        )
        .unwrap();
        std::fs::write(
            dir.join("glance2-uwsgi.log"),
            line("PUT", "stage", 0) + &line("GET", "members", 20),
        )
        .unwrap();
        let r = requests(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(r.uploads, 2);
        assert_eq!(r.served, 67_108_864.0);
    }
}
