//! A hostile cloud cannot hurt a worker (issue 13, items 3, 4, 7c, 7d): a Keystone catalog
//! naming a forbidden Glance gets no connection, a redirect inside is a permanent error, and
//! a huge error body or a gzip bomb leaves a real `pimage worker` process under 128 MiB.
//! The Keystone here is the tests' own HOSTILE fake (`common/hostile_keystone.rs`).

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;
use crate::common::hostile_keystone;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::processes::BIN;
use common::{spawn_app, spawn_app_with, TestApp};
use hostile_keystone::{ConnectionCounter, HostileAnswer, HostileKeystone};

/// A publish body naming only a Keystone: Glance comes from its catalog.
fn publish_to(keystone_url: &str) -> String {
    serde_json::json!({
        "displayName": "hostile",
        "publicImage": false,
        "keystoneDomain": "Default",
        "keystoneProject": "demo",
        "credAccount": {
            "targetPlatform": {"name": "openstack"},
            "keystoneUrl": keystone_url,
            "keystoneVersion": "v3",
            "login": "demo",
            "password": "demopass"
        }
    })
    .to_string()
}

/// Publishes a 1 MiB image through the Keystone at `keystone_url`; returns the final status
/// and every status message seen.
async fn publish_and_wait(app: &TestApp, keystone_url: &str) -> (common::OpStatus, Vec<String>) {
    let file = app.raw_file(&format!("{}.raw", uuid::Uuid::new_v4()), 1 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    let ticket = app
        .publish_created("alice", &image.uri(), publish_to(keystone_url))
        .await;
    let seen = app
        .watch_until_final("alice", ticket.uri.as_str(), Duration::from_secs(60))
        .await;
    let messages = seen
        .iter()
        .map(|s| s.message.as_str().to_string())
        .collect();
    (seen.into_iter().last().unwrap(), messages)
}

#[tokio::test]
async fn catalogs_naming_forbidden_glance_endpoints_get_no_connection() {
    // The dev profile's policy (loopback allowed); one attempt, so the control ends fast.
    let app = spawn_app_with(true, |s| s.worker.retry.max_attempts = 1).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let counter = ConnectionCounter::start().await;
    let port = counter.port;
    for forbidden in [
        format!("http://0.0.0.0:{port}/"),
        format!("http://[::ffff:0.0.0.0]:{port}/"),
        format!("http://[::127.0.0.1]:{port}/"),
        format!("http://[::]:{port}/"),
        "http://169.254.169.254/".to_string(),
        "http://[::ffff:169.254.169.254]/".to_string(),
        "http://[fe80::a9fe:a9fe]/".to_string(),
        format!("http://224.0.0.1:{port}/"),
    ] {
        let keystone = HostileKeystone::start(HostileAnswer::Catalog {
            glance: forbidden.clone(),
        })
        .await;
        let (last, messages) = publish_and_wait(&app, &keystone.url).await;
        assert!(last.error, "{forbidden}: {last:?}");
        let message = last.error_message.as_deref().unwrap();
        assert!(
            message.starts_with("the catalog's Glance endpoint")
                && message.contains("pimage never calls those"),
            "{forbidden}: {message}"
        );
        assert!(
            !messages.iter().any(|m| m.contains("retrying")),
            "{forbidden}: permanent, not retried: {messages:?}"
        );
        assert_eq!(counter.accepted(), 0, "{forbidden} got a connection");
    }
    // The control: an allowed (loopback, dev) endpoint on the same port is connected to.
    let keystone = HostileKeystone::start(HostileAnswer::Catalog {
        glance: format!("http://127.0.0.1:{port}/"),
    })
    .await;
    let (last, _) = publish_and_wait(&app, &keystone.url).await;
    assert!(last.error, "{last:?}");
    assert!(counter.accepted() >= 1, "the counter sees connections");
    app.stop().await;
}

#[tokio::test]
async fn a_redirect_to_a_forbidden_address_is_a_permanent_error() {
    let app = spawn_app(true).await; // up to 6 attempts: none may be spent on it
    app.add_user("alice", &["migration_publish"], false).await;
    let counter = ConnectionCounter::start().await;
    for inside in [
        format!("http://0.0.0.0:{}/v3/auth/tokens", counter.port),
        "http://169.254.169.254/latest/meta-data".to_string(),
    ] {
        let keystone = HostileKeystone::start(HostileAnswer::Redirect {
            location: inside.clone(),
        })
        .await;
        let (last, messages) = publish_and_wait(&app, &keystone.url).await;
        assert!(last.error, "{inside}: {last:?}");
        let message = last.error_message.as_deref().unwrap();
        assert!(
            message.contains("refused to follow a redirect")
                && !message.starts_with("gave up retrying"),
            "{inside}: {message}"
        );
        assert!(
            !messages.iter().any(|m| m.contains("retrying")),
            "{inside}: not retried: {messages:?}"
        );
    }
    assert_eq!(
        counter.accepted(),
        0,
        "the redirect target got a connection"
    );
    app.stop().await;
}

/// A `/proc/<pid>/status` figure in KiB ("VmHWM", "VmRSS").
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_huge_401_and_a_gzip_bomb_leave_a_worker_process_under_128_mib() {
    const MIB: u64 = 1 << 20;
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let mut worker = Command::new(BIN)
        .arg("worker")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PIMAGE_ENV", "dev")
        .env("PIMAGE__DATABASE__URL", app.settings.database.url.expose())
        .env("PIMAGE__AMQP__QUEUE", &app.settings.amqp.queue)
        .env(
            "PIMAGE__STORAGE__URL",
            &app.settings.storage.url,
        )
        .env("PIMAGE__WORKER__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = worker.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = proc_kib(pid, "VmHWM");

    let huge = HostileKeystone::start(HostileAnswer::Huge401 { bytes: 256 * MIB }).await;
    let (last, _) = publish_and_wait(&app, &huge.url).await;
    assert!(last.error, "{last:?}");
    assert!(
        last.error_message
            .as_deref()
            .unwrap()
            .contains("wrong cloud password"),
        "{last:?}"
    );
    let after_401 = proc_kib(pid, "VmHWM");

    // 256 MiB of zeros: about 254 KiB once gzipped.
    let gzip = Command::new("sh")
        .args(["-c", "head -c 268435456 /dev/zero | gzip -9 -c"])
        .output()
        .unwrap()
        .stdout;
    assert!(gzip.len() < MIB as usize, "{} bytes", gzip.len());
    let bomb = HostileKeystone::start(HostileAnswer::GzipBomb {
        gzip: std::sync::Arc::new(gzip),
    })
    .await;
    let (last, _) = publish_and_wait(&app, &bomb.url).await;
    assert!(last.error, "{last:?}");
    assert!(
        last.error_message
            .as_deref()
            .unwrap()
            .contains("answered the login with something unreadable"),
        "{last:?}"
    );
    let (peak, rss) = (proc_kib(pid, "VmHWM"), proc_kib(pid, "VmRSS"));
    println!(
        "worker memory: idle peak {} MiB; peak after the 256 MiB 401 {} MiB; after the gzip \
         bomb peak {} MiB, RSS {} MiB",
        idle / 1024,
        after_401 / 1024,
        peak / 1024,
        rss / 1024
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(peak < 128 * 1024, "worker peak {peak} KiB");
    app.stop().await;
}
