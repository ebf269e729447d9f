//! The operator console in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/console.cjs`; `scripts/browser-setup` installs both). This test owns the
//! real API and worker processes, Postgres, RabbitMQ and the lab cloud (Glance reached
//! through the fault proxy for the slow and the failing upload) and performs the steps the
//! script asks for: start the worker, speed Glance up, stop the worker. The script saves
//! the screenshots shown in the README under docs/console/.
#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::groups::{target, target_via};
use common::fault_proxy::FaultProxy;
use common::processes::{free_port, sigterm_and_wait, wait_for_api, Env};
use common::publish_json_via;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Kills the process if the test fails before stopping it.
struct Running(Option<std::process::Child>);

impl Running {
    fn take(&mut self) -> std::process::Child {
        self.0.take().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const ADMIN_PASSWORD: &str = "console-admin-pw";
const ALICE_PASSWORD: &str = "alice-pw";

fn playwright_dir() -> PathBuf {
    std::env::var_os("PIMAGE_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let lab = std::env::var_os("PIMAGE_LAB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".lab"));
            lab.join("browser")
        })
}

async fn publish(base: &str, image_uri: &str, glance: &str) -> i64 {
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/{}/pimages", image_uri.trim()))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(publish_json_via(
            "console", "demo", "demopass", "demo", glance,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    answer.json::<common::PublishImage>().await.unwrap().db_id
}

/// A publication group of two targets, straight to the lab's Glance and through `proxy` to
/// it (two given Glances: each uploads): its id and its tickets' ids, comma-separated.
async fn publish_group(base: &str, image_uri: &str, proxy: &FaultProxy) -> (i64, String) {
    let body = serde_json::json!({"policy": "all", "targets": [
        target("group-1", None, "demopass"), target_via("group-2", &proxy.url)]});
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/{}/pimagegroups", image_uri.trim()))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let group: serde_json::Value = answer.json().await.unwrap();
    let tickets: Vec<String> = group["targets"]["target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["publishImage"]["dbId"].to_string())
        .collect();
    (group["dbId"].as_i64().unwrap(), tickets.join(","))
}

#[tokio::test]
async fn an_administrator_watches_and_steers_tickets_in_a_browser() {
    let playwright = playwright_dir();
    assert!(
        playwright.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not in {}: run scripts/browser-setup",
        playwright.display()
    );
    let mut env = Env::new().await;
    env.set("PIMAGE__WORKER__CONCURRENCY", 3);
    env.set("PIMAGE__CLOUD__ALLOW_LOOPBACK", true);
    env.run_ok(&["migrate"]);
    for (login, password, admin) in [
        ("root", ADMIN_PASSWORD, true),
        ("alice", ALICE_PASSWORD, false),
    ] {
        let mut cmd = env.command(&["users", "add", login]);
        if admin {
            cmd.arg("--admin");
        }
        assert!(cmd
            .env("PIMAGE_USER_PASSWORD", password)
            .status()
            .unwrap()
            .success());
    }
    let image_uri = env.register_raw_image("alice", &vec![7u8; 4 << 20]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = Running(Some(env.spawn(&["api"], Some(port), "api")));
    wait_for_api(&base).await;

    // B's Glance is slow (4 MiB at 128 KiB/s: a 32 s upload, to cancel midway); C's refuses
    // the first image it is asked to create.
    let slow = FaultProxy::start("127.0.0.1:9292").await;
    slow.throttle(128 << 10);
    let refusing = FaultProxy::start("127.0.0.1:9292").await;
    refusing.fail_with_status("POST", "/v2/images", 403, 1);
    let a = publish(&base, &image_uri, &common::glance_url()).await;
    let b = publish(&base, &image_uri, &slow.url).await;
    let c = publish(&base, &image_uri, &refusing.url).await;
    let elsewhere = FaultProxy::start("127.0.0.1:9292").await;
    let (group, group_tickets) = publish_group(&base, &image_uri, &elsewhere).await;

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/console.cjs"
        ))
        .env("PLAYWRIGHT_DIR", &playwright)
        .env("BASE", &base)
        .env("ADMIN", "root")
        .env("PASSWORD", ADMIN_PASSWORD)
        .env("TICKET_A", a.to_string())
        .env("TICKET_B", b.to_string())
        .env("TICKET_C", c.to_string())
        .env("GROUP", group.to_string())
        .env("GROUP_TICKETS", &group_tickets)
        .env("SHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut worker = None;
    let mut done = false;
    let script = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            match line.trim() {
                "@start-worker" => {
                    worker = Some(Running(Some(env.spawn(&["worker"], None, "worker"))))
                }
                "@stop-worker" => {
                    let mut w = worker.take().expect("a worker runs");
                    sigterm_and_wait(w.take(), "worker", Duration::from_secs(30)).await;
                }
                "@done" => {
                    done = true;
                    break;
                }
                other => panic!("the script said {other}"),
            }
            stdin.write_all(b"ok\n").await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(400), script)
        .await
        .expect("the browser script finishes within 400 s");
    let status = node.wait().await.unwrap();
    if let Some(mut w) = worker.take() {
        sigterm_and_wait(w.take(), "worker", Duration::from_secs(30)).await;
    }
    sigterm_and_wait(api.take(), "api", Duration::from_secs(30)).await;
    let logs = std::fs::read_to_string(env.dir.join("api.log")).unwrap_or_default();
    assert!(
        status.success() && done,
        "the browser script failed (see its stderr); API log:\n{logs}"
    );
    for shot in ["overview", "ticket", "workers"] {
        assert!(shots.join(format!("{shot}.png")).is_file());
    }
    env.drop_all().await;
}
