//! Workers as users see them (issue 23). Finding 5: a cloud that never answers cannot pin a
//! worker's slots: tickets waiting on a Keystone login see their cancel at once, their slots
//! are free again within seconds, the heartbeat counts only the tickets running, and another
//! user's ticket then runs. The silent Keystone is the tests' own HOSTILE fake (no real
//! Keystone accepts a connection and never answers); the other tickets go to the real lab
//! Keystone and Glance. Round two: a Glance that never answers the create or the read-back
//! (a HOSTILE fake behind the real lab Keystone) cannot hold a cancelled ticket's slot either,
//! and what a cut create leaves the orphan sweep removes. Finding 11: a user's attempt history
//! names its worker by an opaque id; only administrators see its host and pid.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{glance_url, keystone_url, publish_json, publish_json_via, spawn_app, spawn_app_with};
use common::{DemoCloud, TestApp};
use pimage::cloud::{AddressPolicy, Keystone, OpenStackAccount};
use pimage::secrets::Secret;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A HOSTILE Keystone: accepts every connection and holds it open without ever answering.
struct SilentKeystone {
    url: String,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentKeystone {
    async fn start() -> SilentKeystone {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3", listener.local_addr().unwrap());
        let held = Arc::new(Mutex::new(vec![]));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                keep.lock().unwrap().push(conn);
            }
        });
        SilentKeystone { url, held }
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

/// A publish body naming only a Keystone (Glance would come from its catalog).
fn publish_to(keystone_url: &str, name: &str) -> String {
    serde_json::json!({
        "displayName": name,
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

/// Publishes a fresh small image as `user`; returns the ticket's URI.
async fn publish(app: &TestApp, user: &str, body: String) -> String {
    app.publish_new_image(user, 64 * 1024, body).await.uri
}

/// Polls `probe` every 100 ms until it holds; fails naming `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(()) => return started.elapsed(),
            Err(seen) if started.elapsed() > limit => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn running_tickets(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM publish_tickets WHERE state = 'running'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The worker's heartbeat: (slots used, slots total).
async fn heartbeat_slots(app: &TestApp) -> Option<(i32, i32)> {
    sqlx::query_as("SELECT slots_used, slots_total FROM worker_heartbeats")
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn cancelled_tickets_of_a_silent_keystone_free_their_slots_within_seconds() {
    let app = spawn_app(true).await; // concurrency 4, call timeout 60 s
    assert_eq!(app.settings.worker.concurrency, 4);
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("bob", &["migration_publish"], false).await;
    let keystone = SilentKeystone::start().await;
    let mut tickets = vec![];
    for i in 0..4 {
        tickets.push(
            publish(
                &app,
                "alice",
                publish_to(&keystone.url, &format!("silent {i}")),
            )
            .await,
        );
    }
    // All four hold a slot, waiting on a login that gets no answer.
    wait_until(Duration::from_secs(30), "four tickets running", || async {
        let (running, connections) = (running_tickets(&app).await, keystone.connections());
        (running == 4 && connections >= 1)
            .then_some(())
            .ok_or(format!("{running} running, {connections} connections"))
    })
    .await;
    wait_until(
        Duration::from_secs(15),
        "the heartbeat counts 4 of 4",
        || async {
            let slots = heartbeat_slots(&app).await;
            (slots == Some((4, 4)))
                .then_some(())
                .ok_or(format!("{slots:?}"))
        },
    )
    .await;

    for ticket in &tickets {
        app.cancel("alice", ticket).await;
    }
    let cancelled_at = Instant::now();
    for ticket in &tickets {
        wait_until(
            Duration::from_secs(10),
            &format!("{ticket} cancelled"),
            || async {
                let status = app.status("alice", ticket).await;
                (status.cancelled)
                    .then_some(())
                    .ok_or(format!("{status:?}"))
            },
        )
        .await;
    }
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
    // The heartbeat (every 5 s) says so: no slot used, no ticket running.
    wait_until(
        Duration::from_secs(15),
        "the heartbeat counts 0 slots used",
        || async {
            let (slots, running) = (heartbeat_slots(&app).await, running_tickets(&app).await);
            (slots.map(|s| s.0) == Some(0) && running == 0)
                .then_some(())
                .ok_or(format!("{slots:?}, {running} running"))
        },
    )
    .await;

    // Another user's ticket runs at once, against the real lab cloud.
    let ticket = publish(
        &app,
        "bob",
        publish_json("after the silent cloud", "demo", "demopass", "demo"),
    )
    .await;
    let last = app
        .wait_final("bob", &ticket, Duration::from_secs(120))
        .await;
    assert!(last.complete, "{last:?}");
    app.stop().await;
}

/// A HOSTILE Glance (no real Glance answers some calls and never others): answers the quota
/// read (404: nothing to check), the create (one image, `hostile-1`), the upload and the
/// delete, but holds the request starting with `silent_on` open forever.
struct HostileGlance {
    url: String,
    /// Each request line, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl HostileGlance {
    async fn start(silent_on: &'static str) -> HostileGlance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::serve(conn, silent_on, log.clone()));
            }
        });
        HostileGlance { url, seen }
    }

    /// One request per connection (each answer closes it).
    async fn serve(mut conn: TcpStream, silent_on: &str, seen: Arc<Mutex<Vec<String>>>) {
        let (head, mut body) = read_head(&mut conn).await;
        let line = head.lines().next().unwrap_or_default().to_string();
        seen.lock().unwrap().push(line.clone());
        if line.starts_with(silent_on) {
            // Never answers; the connection stays open until the client drops it.
            let _ = conn.read_to_end(&mut body).await;
            return;
        }
        let answer = if line.starts_with("POST /v2/images ") {
            let image = r#"{"id":"hostile-1","status":"queued","checksum":null,"size":null}"#;
            format!(
                "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{image}",
                image.len()
            )
        } else if line.starts_with("PUT ") {
            read_body(&mut conn, &head, body).await;
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".into()
        } else if line.starts_with("DELETE ") {
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".into()
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        };
        let _ = conn.write_all(answer.as_bytes()).await;
    }

    fn saw(&self, prefix: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(prefix))
    }
}

/// The request head, and the bytes of the body read with it.
async fn read_head(conn: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buffer = vec![];
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            return (head, buffer[end + 4..].to_vec());
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&buffer).to_string(), vec![]),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads the rest of the body (by its length, or to the last chunk), so the answer is read.
async fn read_body(conn: &mut TcpStream, head: &str, mut body: Vec<u8>) {
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut chunk = [0u8; 65536];
    loop {
        let done = match length {
            Some(n) => body.len() >= n,
            None => body.ends_with(b"0\r\n\r\n"),
        };
        if done {
            return;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Publishes one ticket to `glance` (the real lab Keystone logs in), waits until `hangs`
/// (the call Glance never answers) reached it, cancels: `cancelled` within 10 s and the
/// worker's slot free again.
async fn cancel_while_glance_is_silent(glance: &HostileGlance, hangs: &str) -> TestApp {
    let app = spawn_app(true).await; // call timeout 60 s
    app.add_user("alice", &["migration_publish"], false).await;
    let body = publish_json_via("silent glance", "demo", "demopass", "demo", &glance.url);
    let ticket = publish(&app, "alice", body).await;
    wait_until(Duration::from_secs(60), hangs, || async {
        glance
            .saw(hangs)
            .then_some(())
            .ok_or(format!("{:?}", glance.seen.lock().unwrap()))
    })
    .await;
    app.cancel("alice", &ticket).await;
    wait_until(Duration::from_secs(10), "the ticket cancelled", || async {
        let status = app.status("alice", &ticket).await;
        (status.cancelled)
            .then_some(())
            .ok_or(format!("{status:?}"))
    })
    .await;
    wait_until(Duration::from_secs(15), "0 slots used", || async {
        let (slots, running) = (heartbeat_slots(&app).await, running_tickets(&app).await);
        (slots.map(|s| s.0) == Some(0) && running == 0)
            .then_some(())
            .ok_or(format!("{slots:?}, {running} running"))
    })
    .await;
    app
}

#[tokio::test]
async fn a_create_that_glance_never_answers_does_not_hold_a_cancelled_tickets_slot() {
    let glance = HostileGlance::start("POST /v2/images ").await;
    let app = cancel_while_glance_is_silent(&glance, "POST /v2/images ").await;
    app.stop().await;
}

#[tokio::test]
async fn a_read_back_that_glance_never_answers_does_not_hold_a_cancelled_tickets_slot() {
    let glance = HostileGlance::start("GET /v2/images/hostile-1 ").await;
    let app = cancel_while_glance_is_silent(&glance, "GET /v2/images/hostile-1 ").await;
    // The attempt's clean-up still ran: the image it created is deleted.
    wait_until(Duration::from_secs(10), "the image deleted", || async {
        glance
            .saw("DELETE /v2/images/hostile-1 ")
            .then_some(())
            .ok_or(format!("{:?}", glance.seen.lock().unwrap()))
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_orphan_sweep_removes_an_image_a_cancelled_create_left_unnamed() {
    // No worker: the ticket is cancelled while queued; the reconciler sweeps every second.
    let app = spawn_app_with(false, |s| s.cloud.orphan_sweep = Duration::from_secs(1)).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let ticket = publish(
        &app,
        "alice",
        publish_json("cut create", "demo", "demopass", "demo"),
    )
    .await;
    app.cancel("alice", &ticket).await;
    let (key, state, cloud_id): (uuid::Uuid, String, Option<String>) =
        sqlx::query_as("SELECT ticket_key, state::text, cloud_id FROM publish_tickets")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), cloud_id), ("cancelled", None));
    // What a create cut by the cancel leaves: an image of the ticket the ticket never names.
    let account = OpenStackAccount {
        keystone_url: keystone_url(),
        glance_url: Some(glance_url()),
        region: None,
        user: "demo".into(),
        password: Secret::new("demopass"),
        domain: "Default".into(),
        project: "demo".into(),
    };
    let policy = AddressPolicy::from(app.settings.cloud.clone());
    let glance = Keystone::login(&account, &policy).await.unwrap();
    let key = key.to_string();
    let deployment = app.settings.cloud.deployment.clone();
    let props = Default::default();
    glance
        .create_image("cut create", "raw", false, &key, &deployment, &props)
        .await
        .unwrap();
    DemoCloud::login()
        .await
        .wait_no_image_of_ticket(&key, "the orphan sweep deletes the cut create's image")
        .await;
    app.stop().await;
}

/// The attempts, as JSON, and the XML body of a ticket's document and status, read by `user`.
async fn attempt_views(app: &TestApp, user: &str, ticket: &str) -> Vec<(String, String)> {
    let mut views = vec![];
    for path in [ticket.to_string(), format!("{ticket}/status")] {
        for accept in ["application/json", "application/xml"] {
            let resp = app
                .get(&path, user)
                .header("Accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{path} as {user}");
            views.push((format!("{path} ({accept})"), resp.text().await.unwrap()));
        }
    }
    views
}

/// Whether `word` stands alone in `body` (a host name such as "vm" is part of other words).
fn has_word(body: &str, word: &str) -> bool {
    body.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '.' || c == '_'))
        .any(|w| w == word)
}

#[tokio::test]
async fn users_see_an_opaque_worker_id_and_only_admins_its_host_and_pid() {
    let app = spawn_app(true).await; // the worker runs in this process: its host and pid
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("root", &["migration_publish"], true).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let (host, pid) = (host.trim().to_string(), std::process::id().to_string());
    let ticket = publish(
        &app,
        "alice",
        publish_json("opaque worker", "demo", "demopass", "demo"),
    )
    .await;
    let last = app
        .wait_final("alice", &ticket, Duration::from_secs(120))
        .await;
    assert!(last.complete, "{last:?}");

    let mut opaque = None;
    for (what, body) in attempt_views(&app, "alice", &ticket).await {
        assert!(
            !has_word(&body, &host),
            "{what} names the host '{host}': {body}"
        );
        assert!(!has_word(&body, &pid), "{what} names the pid {pid}: {body}");
        if what.ends_with("(application/json)") {
            let doc: common::Attempts = serde_json::from_str(&body).unwrap();
            let attempt = &doc.attempts[0];
            let worker = attempt.worker.clone();
            assert!(
                worker.starts_with("w-") && worker.len() == 14 && !worker.contains(&pid),
                "{what}: {attempt:?}"
            );
            // Absent, not null: the typed read cannot tell the two apart.
            assert!(!body.contains("\"workerHost\""), "{what}: {body}");
            assert_eq!(attempt.worker_host, None, "{what}: {attempt:?}");
            // One worker, one id: the same in both documents.
            assert_eq!(opaque.get_or_insert(worker.clone()), &worker);
        }
    }
    for (what, body) in attempt_views(&app, "root", &ticket).await {
        if what.ends_with("(application/json)") {
            let doc: common::Attempts = serde_json::from_str(&body).unwrap();
            let attempt = &doc.attempts[0];
            assert_eq!(
                attempt.worker_host.as_deref(),
                Some(format!("{host}:{pid}").as_str()),
                "{what}"
            );
            assert_eq!(Some(attempt.worker.as_str()), opaque.as_deref(), "{what}");
        }
    }
    app.stop().await;
}
