//! `cargo xtask readme-check`: README.md's demo command and its curl examples, run as written
//! from this checkout with the demo's printed values put in; it fails when either is wrong.
//!
//! 1. README.md: the two-commands table (`scripts/demo up`, `scripts/test`) and the curl block
//!    of "Publish an image with curl"; an error names what is missing
//! 2. the table's demo command, in `bash -c`, isolated by environment variables only: free
//!    ports for the API, the worker, Keystone and Glance, the database pimage_readme_check,
//!    the queue pimage.readme_check, its demo and lab directories under
//!    $TMPDIR/pimage-readme-check (the lab's venv reused: PIMAGE_LAB_VENV, default .lab/venv)
//! 3. the curl lines the demo printed must be the README's with its values (its port, demo
//!    directory and image, `N` for the ticket); then the README's lines run, each in
//!    `bash -c`: the POST answers 201 with a publishImage whose uri ends in /pimages/N, the
//!    status poll reaches complete within 5 minutes, the JSON GET answers JSON
//! 4. always: the demo's `down`; no process of the run left; its database, queues and
//!    directory (with the lab's Glance store, so the published image) removed
//!
//! `scripts/test` runs it last (without arguments). The test command itself is only found:
//! this check runs inside it. Summary: target/readme-check/summary.json.

mod curls;
mod demo;
mod readme;

use crate::compose::lock;
use crate::process::{cmd, run};
use crate::steps::Steps;
use anyhow::{bail, ensure, Context, Result};
use curls::Curl;
use demo::{Demo, DATABASE, QUEUE};
use readme::{Readme, Values};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

pub fn main(root: &Path, args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask readme-check");
    }
    let mut steps = Steps::new("readme-check");
    let text = std::fs::read_to_string(root.join("README.md")).context("reading README.md")?;
    let readme = Readme::parse(&text)?;
    readme.check_programs(root)?;
    let down = readme.demo_down()?;
    steps.step(format!(
        "README.md: `{}`, `{}`, {} curl lines",
        readme.demo_up,
        readme.test,
        readme.curl.lines.len()
    ));
    // One run at a time on a machine: the database, the queue and the directory are fixed,
    // so that a killed run's leftovers are found and removed by the next.
    let _lock = lock(
        &std::env::temp_dir().join("pimage-readme-check.lock"),
        Duration::from_secs(1800),
    )?;
    // Outside the demo's environment: a PostgreSQL or RabbitMQ the demo started would carry
    // the run's marker and count as left behind.
    run(&mut cmd("scripts/services", ["--demo"]))?;
    let demo = Demo::new(root)?;
    demo.clear(&down)?;
    let outcome = exercise(root, &demo, &readme, &mut steps);
    let teardown = demo.tear_down(&down);
    if teardown.is_ok() {
        steps.step(format!(
            "`{down}`: no process left; {DATABASE}, {QUEUE} and {} removed",
            demo.dir.display()
        ));
    }
    let result = outcome.and_then(|figures| teardown.map(|()| figures));
    summarize(root, &steps, &result)?;
    result.map(|_| ())
}

/// Steps 2 and 3: the figures for the summary.
fn exercise(root: &Path, demo: &Demo, readme: &Readme, steps: &mut Steps) -> Result<Value> {
    let p = demo.ports;
    steps.say(&format!(
        "`{}`: API :{}, worker :{}, Keystone :{}, Glance :{}, in {}",
        readme.demo_up,
        p.api,
        p.worker,
        p.keystone,
        p.glance,
        demo.dir.display()
    ));
    let printed = demo.up(&readme.demo_up)?;
    steps.step(format!("`{}`", readme.demo_up));
    let image = readme::printed_image(&printed)?;
    let (api, dir) = (demo.api(), demo.demo_dir().display().to_string());
    // `N`: the demo prints the commands before there is a ticket.
    let values = Values {
        api: &api,
        dir: &dir,
        image: &image,
        ticket: "N",
    };
    check_printed(demo, readme, &printed, &values)?;
    steps.step("the curl commands it printed are README.md's, with its values");
    run_curl_lines(root, demo, readme, &values, steps)
}

/// What the demo printed: its API, and the README's curl lines with its values.
fn check_printed(demo: &Demo, readme: &Readme, printed: &str, values: &Values) -> Result<()> {
    ensure!(
        printed.contains(&format!("READY: API {}", values.api.trim_end_matches('/'))),
        "`{}` did not print its API as {}",
        readme.demo_up,
        values.api
    );
    readme.curl.check_printed(printed, values)?;
    body_names_this_cloud(demo)
}

/// The README's POST, status poll and JSON GET, in that order, with the demo's values.
fn run_curl_lines(
    root: &Path,
    demo: &Demo,
    readme: &Readme,
    values: &Values,
    steps: &mut Steps,
) -> Result<Value> {
    let curl = Curl::new(root, &demo.dir)?;
    // The POST names no ticket.
    let ticket = curl.publish(&readme.curl.with(values), values.image)?;
    let ticket_uri = format!("{}/pimages/{ticket}", values.image);
    steps.step(format!("README.md's POST: 201, publishImage {ticket_uri}"));
    let lines = readme.curl.with(&Values {
        ticket: &ticket,
        ..*values
    });
    let polls = curl.wait_complete(&lines, Duration::from_secs(300))?;
    steps.step(format!("README.md's status poll: complete ({polls} polls)"));
    let cloud_id = curl.json_get(&lines, &ticket_uri, demo.ports.glance)?;
    steps.step(format!(
        "README.md's JSON GET: JSON, complete, cloudId {cloud_id}"
    ));
    let p = demo.ports;
    Ok(json!({
        "image": values.image,
        "ticket": ticket_uri,
        "cloud_id": cloud_id,
        "polls": polls,
        "ports": {"api": p.api, "worker": p.worker, "keystone": p.keystone, "glance": p.glance},
    }))
}

/// The body the README's POST sends must name this run's cloud: with the default ports it
/// would publish into another lab (CI's, an engineer's) and pass for the wrong reason.
fn body_names_this_cloud(demo: &Demo) -> Result<()> {
    let path = demo.demo_dir().join("publish.xml");
    let body =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let p = demo.ports;
    ensure!(
        body.contains(&format!("127.0.0.1:{}/v3", p.keystone))
            && body.contains(&format!("127.0.0.1:{}<", p.glance)),
        "{} does not name this run's Keystone (:{}) and Glance (:{}):\n{body}",
        path.display(),
        p.keystone,
        p.glance
    );
    Ok(())
}

/// Prints the summary as one JSON line and writes it to target/readme-check/summary.json.
fn summarize(root: &Path, steps: &Steps, result: &Result<Value>) -> Result<()> {
    let summary = match result {
        Ok(figures) => {
            json!({"passed": true, "seconds": steps.total(), "steps": steps.json(), "figures": figures})
        }
        Err(e) => {
            json!({"passed": false, "seconds": steps.total(), "steps": steps.json(), "error": format!("{e:#}")})
        }
    };
    let dir = root.join("target/readme-check");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!("{summary}");
    Ok(())
}
