//! Clouds as operators configure them, against the real lab: Keystone and Glance behind a
//! TLS terminator with a CA made at test time; sha512 compared with Glance's os_hash_value;
//! and one lab variant (started by scripts/openstack-lab with options) whose catalog lists
//! two regions, whose Glance forbids the direct upload (so only glance-direct works) and
//! runs on Keystone unified limits with image_size_total = 2 MiB, and which may fetch
//! web-download links from 127.0.0.1 (pimage's API on loopback).

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fault_proxy::FaultProxy;
use common::tls_proxy::TestCa;
use common::{spawn_app_with, DemoCloud, TestApp};
use pimage::config::{CloudProfile, ImportMethod};
use reqwest::StatusCode;

fn body(keystone: &str, glance: Option<&str>, name: &str) -> String {
    let mut account = serde_json::json!({
        "targetPlatform": {"name": "openstack"},
        "keystoneUrl": keystone,
        "keystoneVersion": "v3",
        "login": "demo",
        "password": "demopass"
    });
    if let Some(glance) = glance {
        account["glanceUrl"] = glance.into();
    }
    serde_json::json!({
        "displayName": name,
        "publicImage": false,
        "keystoneDomain": "Default",
        "keystoneProject": "demo",
        "credAccount": account
    })
    .to_string()
}

/// Publishes a fresh raw image of `bytes` as alice; the ticket's URI and id.
async fn publish(app: &TestApp, bytes: usize, body: String) -> (String, i64) {
    let ticket = app.publish_new_image("alice", bytes, body).await;
    (ticket.uri, ticket.db_id)
}

/// Polls the status until `pred` holds for it (or the ticket ends first: a failure).
async fn wait_status(
    app: &TestApp,
    ticket: &str,
    what: &str,
    pred: impl Fn(&common::OpStatus) -> bool,
) {
    let started = Instant::now();
    loop {
        let s = app.status("alice", ticket).await;
        if pred(&s) {
            return;
        }
        assert!(
            !s.complete && !s.error && !s.cancelled,
            "ended before {what}: {s:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A status that says Glance is importing the image.
fn importing(status: &common::OpStatus) -> bool {
    status.message.starts_with("importing in Glance")
}

/// Watches the ticket to its end: complete, after a status that said it was importing.
async fn completed_after_importing(app: &TestApp, ticket: &str) {
    let seen = app
        .watch_until_final("alice", ticket, Duration::from_secs(90))
        .await;
    let last = seen.last().unwrap();
    assert!(last.complete, "{seen:#?}");
    assert!(
        seen.iter().any(importing),
        "the status said it was importing: {seen:#?}"
    );
}

/// Whether a proxy saw a `method` request whose path ends with `path_end`.
fn sent(calls: &[String], method: &str, path_end: &str) -> bool {
    calls
        .iter()
        .any(|c| c.starts_with(method) && c.ends_with(path_end))
}

#[tokio::test]
async fn tls_with_a_private_ca_trusted_missing_and_for_another_name() {
    let dir = std::env::temp_dir().join(format!("pimage-tls-{}", uuid::Uuid::new_v4()));
    let ca = TestCa::new(&dir);
    let keystone = ca.proxy_to("127.0.0.1:5000").await;
    let glance = ca.proxy_to("127.0.0.1:9292").await;
    let ca_file = ca.ca_pem.clone();
    let trusted = spawn_app_with(true, |s| s.cloud.ca_file = Some(ca_file)).await;
    trusted
        .add_user("alice", &["migration_publish"], false)
        .await;
    let untrusted = spawn_app_with(true, |_| {}).await;
    untrusted
        .add_user("alice", &["migration_publish"], false)
        .await;

    // The company CA in cloud.ca_file: Keystone and Glance over HTTPS.
    let good = body(
        &format!("https://localhost:{keystone}/v3"),
        Some(&format!("https://localhost:{glance}")),
        "over TLS",
    );
    let (ticket, _) = publish(&trusted, 64 * 1024, good.clone()).await;
    let status = trusted
        .wait_final("alice", &ticket, Duration::from_secs(60))
        .await;
    assert!(status.complete, "{status:?}");
    let cloud_id = trusted.ticket("alice", &ticket).await.cloud_id.unwrap();
    DemoCloud::login().await.delete(&cloud_id).await;

    // No CA configured: permanent, in plain words, at once (no retry loop).
    let started = Instant::now();
    let (ticket, _) = publish(&untrusted, 4096, good).await;
    let status = untrusted
        .wait_final("alice", &ticket, Duration::from_secs(30))
        .await;
    let message = status
        .error_message
        .as_deref()
        .unwrap_or_default()
        .to_string();
    assert!(status.error, "{status:?}");
    assert!(
        message.starts_with("the certificate of localhost is not trusted: "),
        "{message}"
    );
    assert!(message.contains("cloud.ca_file"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "retried: {status:?}"
    );

    // The right CA, but a URL naming a host the certificate does not (127.0.0.1).
    let wrong_name = body(
        &format!("https://127.0.0.1:{keystone}/v3"),
        Some(&format!("https://127.0.0.1:{glance}")),
        "wrong name",
    );
    let (ticket, _) = publish(&trusted, 4096, wrong_name).await;
    let status = trusted
        .wait_final("alice", &ticket, Duration::from_secs(30))
        .await;
    let message = status.error_message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("the certificate of 127.0.0.1 is not valid for that name"),
        "{status:?}"
    );

    trusted.stop().await;
    untrusted.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_sha512_that_differs_from_glances_is_caught() {
    let app = spawn_app_with(true, |_| {}).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 64 * 1024);
    let image = app.register_image("alice", &file, "raw").await;
    let sha512 = image.sha512sum.clone().expect("computed at registration");
    assert_eq!(sha512.len(), 128);
    // The md5 still agrees; only the sha512 Glance reports can tell.
    sqlx::query("UPDATE images SET sha512sum = repeat('0', 128) WHERE id = $1")
        .bind(image.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            common::publish_json("sha512", "demo", "demopass", "demo"),
        )
        .await;
    let ticket = ticket.uri.clone();
    let status = app
        .wait_final("alice", &ticket, Duration::from_secs(60))
        .await;
    assert!(status.error, "{status:?}");
    assert!(
        status
            .error_message
            .as_deref()
            .unwrap()
            .contains("changed on disk since it was registered"),
        "{status:?}"
    );
    let detail = app.ticket("alice", &ticket).await.status.detailed_error_msg;
    assert!(
        detail.as_deref().unwrap_or_default().contains(&sha512),
        "the detail names the file's real sha512: {detail:?}"
    );
    app.stop().await;
}

/// A lab variant, started by the project's script and stopped (purged) on drop.
struct VariantLab {
    dir: PathBuf,
}

const VARIANT_KEYSTONE: &str = "http://127.0.0.1:5201/v3";
const VARIANT_GLANCE: &str = "127.0.0.1:9401";
/// Where the variant's catalog puts RegionTwo's Glance: the test's proxy to it.
const REGION_TWO: &str = "127.0.0.1:9402";

impl VariantLab {
    fn command(dir: &std::path::Path, args: &[&str]) -> Command {
        let mut c = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/openstack-lab"
        ));
        c.args(args)
            .env("PIMAGE_LAB_DIR", dir)
            .env(
                "PIMAGE_LAB_VENV",
                concat!(env!("CARGO_MANIFEST_DIR"), "/.lab/venv"),
            )
            .env("PIMAGE_LAB_KEYSTONE_PORT", "5201")
            .env("PIMAGE_LAB_GLANCE_PORT", "9401")
            .env(
                "PIMAGE_LAB_EXTRA_REGION",
                format!("RegionTwo=http://{REGION_TWO}"),
            )
            .env("PIMAGE_LAB_FORBID_UPLOAD", "1")
            .env("PIMAGE_LAB_IMAGE_SIZE_TOTAL_MIB", "2")
            .env("PIMAGE_LAB_WEB_DOWNLOAD_HOSTS", "127.0.0.1");
        c
    }

    fn up() -> VariantLab {
        let dir = std::env::temp_dir().join(format!("pimage-lab-variant-{}", uuid::Uuid::new_v4()));
        let lab = VariantLab { dir };
        let out = VariantLab::command(&lab.dir, &["up"]).output().unwrap();
        assert!(
            out.status.success(),
            "variant lab up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }
}

impl Drop for VariantLab {
    fn drop(&mut self) {
        let _ = VariantLab::command(&self.dir, &["down", "--purge"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The demo project's images in the variant's Glance.
struct VariantCloud {
    token: String,
    client: reqwest::Client,
}

impl VariantCloud {
    async fn login() -> VariantCloud {
        let client = reqwest::Client::new();
        let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "demo", "domain": {"name": "Default"}, "password": "demopass"}}},
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}});
        let resp = client
            .post(format!("{VARIANT_KEYSTONE}/auth/tokens"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let token = resp.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        VariantCloud { token, client }
    }

    async fn images_of_ticket(&self, key: &str) -> Vec<serde_json::Value> {
        let page: serde_json::Value = self
            .client
            .get(format!("http://{VARIANT_GLANCE}/v2/images"))
            .query(&[(pimage::cloud::TICKET_PROPERTY, key)])
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["images"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the ticket's images are gone from Glance.
    async fn assert_nothing_left(&self, key: &str, what: &str) {
        let started = Instant::now();
        loop {
            let left = self.images_of_ticket(key).await;
            if left.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{what}: left {left:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn delete(&self, id: &str) {
        let _ = self
            .client
            .delete(format!("http://{VARIANT_GLANCE}/v2/images/{id}"))
            .header("X-Auth-Token", &self.token)
            .send()
            .await;
    }
}

fn lab_profiles(import_timeout: Option<Duration>) -> Vec<CloudProfile> {
    vec![
        // Reached as localhost: stage + import, always.
        CloudProfile {
            name: "staged".into(),
            hosts: vec!["localhost".into()],
            import_method: Some(ImportMethod::GlanceDirect),
            import_timeout,
            ..Default::default()
        },
        // Reached as 127.0.0.1: direct upload first, and extra properties.
        CloudProfile {
            name: "lab".into(),
            hosts: vec!["127.0.0.1".into()],
            properties: [
                ("hw_disk_bus".to_string(), "scsi".to_string()),
                ("os_distro".to_string(), "pimage-lab".to_string()),
            ]
            .into(),
            ..Default::default()
        },
    ]
}

/// `publishLocation` picks the catalog region per publish, with no region configured: its
/// Glance is recorded on the ticket (so its cleanup and the orphan sweep find it); a region
/// the catalog lacks ends in error naming the ones it lists.
async fn publish_location(app: &TestApp, cloud: &VariantCloud, region_two: &FaultProxy) {
    let located = |region: &str, name: &str| {
        let mut body: serde_json::Value =
            serde_json::from_str(&body(VARIANT_KEYSTONE, None, name)).unwrap();
        body["publishLocation"] = region.into();
        body.to_string()
    };
    let before = region_two.seen().len();
    let (ticket, id) = publish(app, 4096, located("RegionTwo", "located")).await;
    completed_after_importing(app, &ticket).await;
    let calls = &region_two.seen()[before..];
    assert!(
        sent(calls, "POST", "/import"),
        "RegionTwo's Glance: {calls:?}"
    );
    let answer: serde_json::Value = app.get_as("alice", &ticket).await;
    assert_eq!(answer["publishLocation"], "RegionTwo", "{answer}");
    let glance = answer["credAccount"]["glanceUrl"]
        .as_str()
        .unwrap_or_default();
    assert!(
        glance.starts_with(&format!("http://{REGION_TWO}")),
        "{answer}"
    );
    let images = cloud.images_of_ticket(&app.ticket_key(id).await).await;
    assert_eq!(images.len(), 1, "{images:#?}");
    cloud.delete(images[0]["id"].as_str().unwrap()).await;

    let (ticket, _) = publish(app, 4096, located("RegionNine", "nowhere")).await;
    let status = app
        .wait_final("alice", &ticket, Duration::from_secs(30))
        .await;
    let message = status.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("no Glance in region 'RegionNine' (publishLocation)")
            && message.contains("'RegionOne', 'RegionTwo'"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_cloud_configured_as_operators_do() {
    let started = Instant::now();
    let region_two = FaultProxy::start_on(REGION_TWO, VARIANT_GLANCE).await;
    let _lab = VariantLab::up();
    println!("variant lab up in {:.1} s", started.elapsed().as_secs_f64());
    let cloud = VariantCloud::login().await;

    // Two regions in the catalog, none configured: an error that names them.
    let no_region = spawn_app_with(true, |s| s.cloud.profiles = lab_profiles(None)).await;
    no_region
        .add_user("alice", &["migration_publish"], false)
        .await;
    let (ticket, _) = publish(&no_region, 4096, body(VARIANT_KEYSTONE, None, "no region")).await;
    let status = no_region
        .wait_final("alice", &ticket, Duration::from_secs(30))
        .await;
    let message = status.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("several regions ('RegionOne', 'RegionTwo')")
            && message.contains("cloud.region"),
        "{status:?}"
    );
    publish_location(&no_region, &cloud, &region_two).await;
    no_region.stop().await;

    let app = spawn_app_with(true, |s| {
        s.cloud.region = Some("RegionTwo".into());
        s.cloud.profiles = lab_profiles(None);
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;

    // RegionTwo's Glance from the catalog; the direct upload is forbidden (403), so the
    // worker stages and imports; the profile's properties are set; sha512 checked.
    let (ticket, id) = publish(&app, 256 * 1024, body(VARIANT_KEYSTONE, None, "region two")).await;
    completed_after_importing(&app, &ticket).await;
    let calls = region_two.seen();
    assert!(sent(&calls, "PUT", "/file"), "{calls:?}");
    assert!(sent(&calls, "PUT", "/stage"), "{calls:?}");
    assert!(sent(&calls, "POST", "/import"), "{calls:?}");
    let staged = region_two.header_of("PUT", "/stage", "x-openstack-image-size");
    let size = (256 * 1024).to_string();
    assert!(
        staged.iter().any(|s| s.as_deref() == Some(&size)),
        "{staged:?}"
    );
    let key = app.ticket_key(id).await;
    let images = cloud.images_of_ticket(&key).await;
    assert_eq!(images.len(), 1, "{images:#?}");
    let stored = &images[0];
    assert_eq!(stored["hw_disk_bus"], "scsi");
    assert_eq!(stored["os_distro"], "pimage-lab");
    let registered: Option<String> = sqlx::query_scalar(
        "SELECT i.sha512sum FROM images i JOIN publish_tickets t ON t.image_id = i.id WHERE t.id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored["os_hash_algo"], "sha512");
    assert_eq!(stored["os_hash_value"].as_str(), registered.as_deref());
    cloud.delete(stored["id"].as_str().unwrap()).await;

    // 3 MiB against image_size_total = 2 MiB: refused before any byte goes up, with the
    // numbers, and nothing created.
    let before = Instant::now();
    let (ticket, id) = publish(&app, 3 << 20, body(VARIANT_KEYSTONE, None, "too big")).await;
    let status = app
        .wait_final("alice", &ticket, Duration::from_secs(30))
        .await;
    let message = status.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("image_size_total")
            && message.contains("of 2 MiB")
            && message.contains("3 MiB"),
        "{status:?}"
    );
    assert!(
        before.elapsed() < Duration::from_secs(10),
        "retried: {status:?}"
    );
    cloud
        .assert_nothing_left(&app.ticket_key(id).await, "quota")
        .await;

    // Glance's import fails (random bytes declared vmdk): os_glance_failed_import names the
    // store; a clear, permanent error, and the image removed. Stored unchecked: registration
    // itself now refuses a file that is not the format it claims.
    let file = app.raw_file("not-really.vmdk", 64 * 1024);
    let image = app.register_unchecked("alice", &file, "vmdk").await;
    let glance = format!(
        "http://localhost:{}",
        VARIANT_GLANCE.rsplit(':').next().unwrap()
    );
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            body(VARIANT_KEYSTONE, Some(&glance), "import fails"),
        )
        .await;
    let (ticket, id) = (ticket.uri.clone(), ticket.db_id);
    let status = app
        .wait_final("alice", &ticket, Duration::from_secs(60))
        .await;
    assert_eq!(
        status.error_message.as_deref(),
        Some("Glance failed to import the image into its store(s) fs"),
        "{status:?}"
    );
    cloud
        .assert_nothing_left(&app.ticket_key(id).await, "failed import")
        .await;

    // Cancel while staging (the bytes trickle through a throttled proxy).
    let slow = FaultProxy::start(VARIANT_GLANCE).await;
    slow.throttle(128 * 1024);
    let glance = slow.url.replace("127.0.0.1", "localhost");
    let (ticket, id) = publish(
        &app,
        1 << 20,
        body(VARIANT_KEYSTONE, Some(&glance), "cancel staging"),
    )
    .await;
    wait_status(&app, &ticket, "staging", |s| s.bytes_loaded > 0).await;
    assert!(sent(&slow.seen(), "PUT", "/stage"));
    app.cancel("alice", &ticket).await;
    let status = app
        .wait_final("alice", &ticket, Duration::from_secs(10))
        .await;
    assert!(status.cancelled, "{status:?}");
    cloud
        .assert_nothing_left(&app.ticket_key(id).await, "cancel while staging")
        .await;

    // Cancel while importing (Glance is never asked in time: its import call hangs).
    let hung = FaultProxy::start(VARIANT_GLANCE).await;
    hung.hang("POST", "/import", 1);
    let glance = hung.url.replace("127.0.0.1", "localhost");
    let (ticket, id) = publish(
        &app,
        64 * 1024,
        body(VARIANT_KEYSTONE, Some(&glance), "cancel import"),
    )
    .await;
    wait_status(&app, &ticket, "importing", importing).await;
    app.cancel("alice", &ticket).await;
    let status = app
        .wait_final("alice", &ticket, Duration::from_secs(10))
        .await;
    assert!(status.cancelled, "{status:?}");
    cloud
        .assert_nothing_left(&app.ticket_key(id).await, "cancel while importing")
        .await;
    app.stop().await;

    // The import's wait has a timeout (the profile's import_timeout).
    let bounded = spawn_app_with(true, |s| {
        s.cloud.profiles = lab_profiles(Some(Duration::from_secs(2)));
        s.worker.retry.max_attempts = 1;
    })
    .await;
    bounded
        .add_user("alice", &["migration_publish"], false)
        .await;
    let hung = FaultProxy::start(VARIANT_GLANCE).await;
    hung.hang("POST", "/import", 1);
    let glance = hung.url.replace("127.0.0.1", "localhost");
    let (ticket, id) = publish(
        &bounded,
        64 * 1024,
        body(VARIANT_KEYSTONE, Some(&glance), "import timeout"),
    )
    .await;
    let status = bounded
        .wait_final("alice", &ticket, Duration::from_secs(30))
        .await;
    assert!(
        status
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains("did not finish importing the image within 2 s (import_timeout)"),
        "{status:?}"
    );
    cloud
        .assert_nothing_left(&bounded.ticket_key(id).await, "import timeout")
        .await;
    bounded.stop().await;

    web_download(&cloud).await;
    println!(
        "whole variant test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// web-download (on the variant lab, whose Glance may fetch from 127.0.0.1): Glance fetches
/// the file from the API's signed link; no byte goes through pimage's upload; cancel during
/// the import leaves nothing; tampered, expired and ended-ticket links are refused.
async fn web_download(cloud: &VariantCloud) {
    let started = Instant::now();
    // The API's address must be in the profile before the app starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(true, |s| {
        s.api.listen = ([127, 0, 0, 1], port).into();
        s.cloud.profiles = vec![CloudProfile {
            name: "web".into(),
            hosts: vec!["localhost".into()],
            import_method: Some(ImportMethod::WebDownload),
            web_download_base_url: Some(format!("http://127.0.0.1:{port}")),
            ..Default::default()
        }];
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    let watched = FaultProxy::start(VARIANT_GLANCE).await;
    let glance = watched.url.replace("127.0.0.1", "localhost");
    let (ticket, id) = publish(
        &app,
        512 * 1024,
        body(VARIANT_KEYSTONE, Some(&glance), "web-download"),
    )
    .await;
    completed_after_importing(&app, &ticket).await;
    let calls = watched.seen();
    assert!(sent(&calls, "POST", "/import"), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("PUT")),
        "no bytes went up: {calls:?}"
    );
    let key = app.ticket_key(id).await;
    let images = cloud.images_of_ticket(&key).await;
    assert_eq!(images.len(), 1, "{images:#?}");
    let registered: String = sqlx::query_scalar(
        "SELECT i.sha512sum FROM images i JOIN publish_tickets t ON t.image_id = i.id WHERE t.id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(images[0]["status"], "active");
    assert_eq!(
        images[0]["os_hash_value"].as_str(),
        Some(registered.as_str())
    );
    cloud.delete(images[0]["id"].as_str().unwrap()).await;

    // Links: a valid signature for an ended ticket is 404; tampered, expired, unsigned or
    // moved to another ticket are 403; nothing is listed.
    let secrets = pimage::secrets::SecretBox::new(&app.settings.secrets.key, &[]).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid = secrets.image_link(&base, id, now + 600);
    let get = |url: String| {
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().status() }
    };
    assert_eq!(get(valid.clone()).await, StatusCode::NOT_FOUND, "ended");
    let flipped = {
        let mut v = valid.clone().into_bytes();
        let last = v.len() - 1;
        v[last] = if v[last] == b'0' { b'1' } else { b'0' };
        String::from_utf8(v).unwrap()
    };
    assert_eq!(get(flipped).await, StatusCode::FORBIDDEN, "tampered");
    let later = valid.replace(
        &format!("expires={}", now + 600),
        &format!("expires={}", now + 6000),
    );
    assert_eq!(get(later).await, StatusCode::FORBIDDEN, "expiry moved");
    let other = valid.replace(
        &format!("/image-links/{id}?"),
        &format!("/image-links/{}?", id + 1),
    );
    assert_eq!(get(other).await, StatusCode::FORBIDDEN, "another ticket");
    assert_eq!(
        get(secrets.image_link(&base, id, now - 1)).await,
        StatusCode::FORBIDDEN,
        "expired"
    );
    assert_eq!(
        get(format!("{base}/image-links/{id}")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(format!("{base}/image-links/")).await,
        StatusCode::NOT_FOUND
    );

    // Cancel while Glance imports (its import call hangs): nothing left.
    let hung = FaultProxy::start(VARIANT_GLANCE).await;
    hung.hang("POST", "/import", 1);
    let glance = hung.url.replace("127.0.0.1", "localhost");
    let (ticket, id) = publish(
        &app,
        64 * 1024,
        body(VARIANT_KEYSTONE, Some(&glance), "cancel web-download"),
    )
    .await;
    wait_status(&app, &ticket, "importing", importing).await;
    // While it runs, its link serves exactly the file, with its length.
    let running = secrets.image_link(&base, id, now + 600);
    let resp = app.client.get(running).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(64 * 1024));
    assert_eq!(resp.bytes().await.unwrap().len(), 64 * 1024);
    app.cancel("alice", &ticket).await;
    let status = app
        .wait_final("alice", &ticket, Duration::from_secs(10))
        .await;
    assert!(status.cancelled, "{status:?}");
    cloud
        .assert_nothing_left(&app.ticket_key(id).await, "cancel during web-download")
        .await;
    app.stop().await;
    println!(
        "web-download part: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_profile_converts_to_the_disk_format_the_cloud_wants() {
    let scratch = std::env::temp_dir().join(format!("pimage-scratch-{}", uuid::Uuid::new_v4()));
    let dir = scratch.clone();
    let app = spawn_app_with(true, |s| {
        s.worker.scratch_dir = dir;
        s.cloud.profiles = vec![CloudProfile {
            name: "ceph".into(),
            hosts: vec!["localhost".into()],
            disk_format: Some("raw".into()),
            ..Default::default()
        }];
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.qcow2_file("disk.qcow2", 2);
    let image = app.register_image("alice", &file, "qcow2").await;
    let glance = common::glance_url().replace("127.0.0.1", "localhost");
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            common::publish_json_via("converted", "demo", "demopass", "demo", &glance),
        )
        .await;
    let ticket = ticket.uri.clone();
    let seen = app
        .watch_until_final("alice", &ticket, Duration::from_secs(90))
        .await;
    assert!(seen.last().unwrap().complete, "{seen:#?}");
    assert!(
        seen.iter().any(|s| s
            .message
            .as_str()
            .starts_with("converting the image from qcow2 to raw")),
        "{seen:#?}"
    );
    let cloud_id = app.ticket("alice", &ticket).await.cloud_id.unwrap();
    let demo = DemoCloud::login().await;
    let stored = demo.image(&cloud_id).await.unwrap();
    assert_eq!(stored["disk_format"], "raw");
    assert_eq!(
        stored["size"],
        2 << 20,
        "the raw copy holds the virtual size"
    );
    demo.delete(&cloud_id).await;
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "the converted copy is removed: {left:?}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(scratch);
}
