//! Nothing one client or user can exhaust at the API (issue 23, findings 6 to 9): open feeds
//! and event streams end when their session or user loses access; connections that send
//! nothing are closed; event streams, unfinished tickets and publishes per minute are capped
//! per user, past the cap a 429 with Retry-After. Real API, Postgres and RabbitMQ; no worker
//! (tickets stay queued).
#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{publish_json, spawn_app_with, TestApp, PASSWORD};
use pimage::config::Settings;
use reqwest::header::SET_COOKIE;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// alice and bob publish (an image each); root is an administrator.
async fn app_with(adjust: impl FnOnce(&mut Settings)) -> (TestApp, String, String) {
    let app = spawn_app_with(false, adjust).await;
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("bob", &["migration_publish"], false).await;
    app.add_user("root", &["migration_publish"], true).await;
    let file = app.raw_file("disk.raw", 4096);
    let alice = app.register_image("alice", &file, "raw").await.uri();
    let bob = app.register_image("bob", &file, "raw").await.uri();
    (app, alice, bob)
}

async fn publish(app: &TestApp, user: &str, image_uri: &str) -> reqwest::Response {
    let body = publish_json("exhaustion", "demo", "demopass", "demo");
    app.publish(user, image_uri, "application/json", body).await
}

/// A queued ticket's URI.
async fn queued_ticket(app: &TestApp, user: &str, image_uri: &str) -> String {
    let answer = publish(app, user, image_uri).await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    answer.json::<common::PublishImage>().await.unwrap().uri
}

/// Reads the stream until it ends: Ok(how long it took), or Err after `within`.
async fn ends_within(mut stream: reqwest::Response, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let read_all = async { while let Ok(Some(_)) = stream.chunk().await {} };
    match tokio::time::timeout(within, read_all).await {
        Ok(()) => Ok(started.elapsed()),
        Err(_) => Err(format!("the stream was still open after {within:?}")),
    }
}

/// A 429's Retry-After (seconds) and its uforgeError message.
async fn refused(answer: reqwest::Response) -> (u64, String) {
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = answer.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let error: serde_json::Value = answer.json().await.unwrap();
    let message = error["localizedErrorMsg"]["message"].as_str().unwrap();
    (retry_after, message.to_string())
}

/// A console session of `login`: its cookie and CSRF token.
async fn console_login(app: &TestApp, login: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{}/console/login", app.address))
        .send()
        .await
        .unwrap();
    let cookie = form.headers()[SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let csrf = csrf_of(&form.text().await.unwrap());
    let answer = http
        .post(format!("{}/console/login", app.address))
        .header("Cookie", cookie)
        .form(&[("login", login), ("password", PASSWORD), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let session = answer
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("pimage_console="))
        .unwrap();
    let session = session.split(';').next().unwrap().to_string();
    let overview = http
        .get(format!("{}/console", app.address))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    let csrf = csrf_of(&overview.text().await.unwrap());
    (session, csrf)
}

fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    html[at..at + html[at..].find('"').unwrap()].to_string()
}

async fn console_feed(app: &TestApp, session: &str) -> reqwest::Response {
    let feed = app
        .client
        .get(format!("{}/console/events", app.address))
        .header("Cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    feed
}

fn recheck_every_second(settings: &mut Settings) {
    settings.limits.stream_recheck = Duration::from_secs(1);
}

#[tokio::test]
async fn a_console_feed_ends_when_its_session_is_logged_out_or_its_admin_demoted() {
    let (app, _, _) = app_with(recheck_every_second).await;

    let (session, csrf) = console_login(&app, "root").await;
    let feed = console_feed(&app, &session).await;
    let logout = app
        .client
        .post(format!("{}/console/logout", app.address))
        .header("Cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(logout.status().is_success() || logout.status().is_redirection());
    let logged_out = ends_within(feed, Duration::from_secs(5)).await;

    // Demoted (`pimage users add` without --admin).
    let (session, _) = console_login(&app, "root").await;
    let feed = console_feed(&app, &session).await;
    app.add_user("root", &["migration_publish"], false).await;
    let demoted = ends_within(feed, Duration::from_secs(5)).await;
    assert!(
        logged_out.is_ok() && demoted.is_ok(),
        "logged out: {logged_out:?}; demoted: {demoted:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_ticket_stream_ends_when_its_user_loses_the_entitlement() {
    let (app, alice_image, _) = app_with(recheck_every_second).await;
    let ticket = queued_ticket(&app, "alice", &alice_image).await;
    let mut stream = app
        .get(&format!("{ticket}/events"), "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // The current status arrives first.
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("queued"));

    sqlx::query(
        "DELETE FROM user_entitlements WHERE user_id = (SELECT id FROM users WHERE login = 'alice')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let took = ends_within(stream, Duration::from_secs(5)).await;
    assert!(took.is_ok(), "entitlement removed: {took:?}");
    app.stop().await;
}

/// Reads until the server closes the connection: Ok, or Err after `within`.
async fn closed_within(mut socket: TcpStream, within: Duration) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an answer (408 or 400) before the close
            }
        }
    };
    tokio::time::timeout(within, read_to_end)
        .await
        .map_err(|_| format!("still open after {within:?}"))
}

/// Three connections that hold the server: one sends nothing, one half a request head, one
/// a publish whose body stops after 10 of its 1,000 bytes.
async fn hold_three(addr: &str, publish_path: &str) -> [TcpStream; 3] {
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut half_head = TcpStream::connect(addr).await.unwrap();
    half_head
        .write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut stalled_body = TcpStream::connect(addr).await.unwrap();
    let credentials = base64_of(&format!("alice:{PASSWORD}"));
    let head = format!(
        "POST {publish_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"displayN"
    );
    stalled_body.write_all(head.as_bytes()).await.unwrap();
    [silent, half_head, stalled_body]
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_within_the_timeouts() {
    let (app, alice_image, _) = app_with(|s| {
        s.limits.header_read_timeout = Duration::from_secs(1);
        s.limits.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let publish_path = format!("/api/{alice_image}/pimages");
    let held = hold_three(&addr, &publish_path).await;
    let closed = futures::future::join_all(
        held.into_iter()
            .map(|socket| closed_within(socket, Duration::from_secs(5))),
    )
    .await;
    let what = ["silent", "half head", "stalled body"];
    assert!(
        closed.iter().all(Result::is_ok),
        "API: {:?}",
        what.iter().zip(&closed).collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test]
async fn the_workers_metrics_listener_closes_silent_connections() {
    let app = spawn_app_with(false, |s| {
        s.limits.header_read_timeout = Duration::from_secs(1);
        s.limits.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let shutdown = CancellationToken::new();
    let probes = pimage::health::Probes {
        pool: app.pool.clone(),
        publisher: Arc::new(pimage::queue::Publisher::new(
            app.settings.amqp.clone(),
            "exhaustion-test",
        )),
        queue_required: true,
    };
    let timeouts = pimage::api::connection_timeouts(&app.settings.limits);
    let metrics = pimage::health::serve(
        "127.0.0.1:0".parse().unwrap(),
        probes,
        timeouts,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let silent = TcpStream::connect(metrics).await.unwrap();
    let closed = closed_within(silent, Duration::from_secs(5)).await;
    assert!(closed.is_ok(), "worker listener, silent: {closed:?}");
    // A request that is sent whole is still answered.
    let answer = reqwest::get(format!("http://{metrics}/healthz"))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    shutdown.cancel();
    app.stop().await;
}

#[tokio::test]
async fn a_user_past_the_event_stream_cap_gets_429_and_another_user_still_opens_one() {
    let (app, alice_image, bob_image) = app_with(|s| s.limits.event_streams_per_user = 3).await;
    let ticket = queued_ticket(&app, "alice", &alice_image).await;
    let path = format!("{ticket}/events");
    let mut open = vec![];
    for _ in 0..3 {
        let stream = app.get(&path, "alice").send().await.unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        open.push(stream);
    }
    let (retry_after, message) = refused(
        app.get(&path, "alice")
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(retry_after >= 1);
    assert!(message.contains("3 event streams open"), "{message}");

    let bobs = queued_ticket(&app, "bob", &bob_image).await;
    let stream = app
        .get(&format!("{bobs}/events"), "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_publishes_stop_at_the_queued_ticket_cap_and_another_user_still_publishes() {
    let (app, alice_image, bob_image) = app_with(|s| s.limits.queued_tickets_per_user = 5).await;
    // One login first: the concurrent publishes then use the remembered credential.
    let read = app.get(&alice_image, "alice").send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let answers =
        futures::future::join_all((0..20).map(|_| publish(&app, "alice", &alice_image))).await;
    let created = answers
        .iter()
        .filter(|a| a.status() == StatusCode::CREATED)
        .count();
    assert_eq!(
        created,
        5,
        "{:?}",
        answers.iter().map(|a| a.status()).collect::<Vec<_>>()
    );
    for refusal in answers
        .into_iter()
        .filter(|a| a.status() != StatusCode::CREATED)
    {
        let (retry_after, message) = refused(refusal).await;
        assert!(retry_after >= 1);
        assert!(message.contains("5 tickets queued or running"), "{message}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 5);

    assert_eq!(
        publish(&app, "bob", &bob_image).await.status(),
        StatusCode::CREATED
    );
    // An ended ticket frees its place.
    sqlx::query("UPDATE publish_tickets SET state = 'cancelled' WHERE id = (SELECT min(id) FROM publish_tickets)")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        publish(&app, "alice", &alice_image).await.status(),
        StatusCode::CREATED
    );
    app.stop().await;
}

#[tokio::test]
async fn publishing_past_the_burst_gets_429_with_retry_after() {
    let (app, alice_image, bob_image) = app_with(|s| {
        s.limits.publish_burst = 3;
        s.limits.publishes_per_minute = 2;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            publish(&app, "alice", &alice_image).await.status(),
            StatusCode::CREATED
        );
    }
    let (retry_after, message) = refused(publish(&app, "alice", &alice_image).await).await;
    // One publish comes back every 30 s.
    assert!((25..=30).contains(&retry_after), "{retry_after}");
    assert!(message.contains("publishing too fast"), "{message}");
    assert_eq!(
        publish(&app, "bob", &bob_image).await.status(),
        StatusCode::CREATED
    );
    app.stop().await;
}

/// A publish whose body trickles one byte a second: each byte resets the idle timeout, so
/// only a deadline on the whole body ends it.
#[tokio::test]
async fn a_body_trickled_one_byte_a_second_is_cut_within_the_body_timeout() {
    let (app, alice_image, _) = app_with(|s| {
        s.limits.idle_timeout = Duration::from_secs(3);
        s.limits.body_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let credentials = base64_of(&format!("alice:{PASSWORD}"));
    let head = format!(
        "POST /api/{alice_image}/pimages HTTP/1.1\r\nHost: x\r\n\
         Authorization: Basic {credentials}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n"
    );
    let socket = TcpStream::connect(&addr).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = Instant::now();
    let mut answer = vec![];
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        while let Ok(n @ 1..) = reader.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    };
    let cut = tokio::time::timeout(Duration::from_secs(6), read_to_end).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        cut.is_ok(),
        "still open after {:?}, answer so far: {answer:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    app.stop().await;
}

/// Sends a whole GET on `socket` (kept alive) and reads its answer's status line.
async fn status_over(socket: &mut TcpStream) -> Result<String, String> {
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    socket.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1024];
    let read = socket.read(&mut buf);
    match tokio::time::timeout(Duration::from_secs(3), read).await {
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(n)) => Ok(String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap()
            .into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 3 s".into()),
    }
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed_and_a_slot_frees_on_close() {
    let (app, _, _) = app_with(|s| s.limits.max_connections = 2).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(status_over(&mut first).await.unwrap(), "HTTP/1.1 200 OK");
    assert_eq!(status_over(&mut second).await.unwrap(), "HTTP/1.1 200 OK");

    let mut third = TcpStream::connect(&addr).await.unwrap();
    let past_the_cap = status_over(&mut third).await;
    // The connections held still answer.
    let held = status_over(&mut first).await;

    drop(second);
    // The server notices the close on its next read; then the slot is free.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fourth = TcpStream::connect(&addr).await.unwrap();
    let after_a_close = status_over(&mut fourth).await;
    assert!(
        past_the_cap.is_err()
            && held.as_deref() == Ok("HTTP/1.1 200 OK")
            && after_a_close.as_deref() == Ok("HTTP/1.1 200 OK"),
        "past the cap: {past_the_cap:?}; held: {held:?}; after a close: {after_a_close:?}"
    );
    app.stop().await;
}

/// An open event stream of `ticket` for `user` (Basic), past its first event.
async fn open_stream(app: &TestApp, ticket: &str, user: &str) -> reqwest::Response {
    let mut stream = app
        .get(&format!("{ticket}/events"), user)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.chunk().await.unwrap().is_some());
    stream
}

#[tokio::test]
async fn a_ticket_stream_ends_when_its_users_password_changes() {
    let (app, alice_image, _) = app_with(recheck_every_second).await;
    let ticket = queued_ticket(&app, "alice", &alice_image).await;
    let stream = open_stream(&app, &ticket, "alice").await;
    let hash = pimage::secrets::hash_password(&pimage::secrets::Secret::new("another-password"));
    let entitlements = ["migration_publish".to_string()];
    pimage::store::users::upsert(&app.pool, "alice", &hash, false, &entitlements)
        .await
        .unwrap();
    let took = ends_within(stream, Duration::from_secs(5)).await;
    assert!(took.is_ok(), "password changed: {took:?}");
    app.stop().await;
}

/// An administrator may watch another user's ticket; demoted, they no longer may.
#[tokio::test]
async fn an_admins_stream_of_another_users_ticket_ends_when_the_admin_is_demoted() {
    let (app, alice_image, _) = app_with(recheck_every_second).await;
    let ticket = queued_ticket(&app, "alice", &alice_image).await;
    let roots = open_stream(&app, &ticket, "root").await;
    app.add_user("root", &["migration_publish"], false).await;
    let took = ends_within(roots, Duration::from_secs(5)).await;
    assert!(took.is_ok(), "admin demoted, not the owner: {took:?}");
    app.stop().await;
}

/// An open event stream of `ticket`, signed with `key`, past its first event.
async fn open_signed_stream(
    app: &TestApp,
    ticket: &str,
    key: &(String, String),
) -> reqwest::Response {
    let relative = format!("{ticket}/events?apiKey={}", key.0);
    let signature = pimage::api::sign(&key.1, &relative);
    let encoded: String = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect();
    let mut signed = app
        .client
        .get(app.url(&format!("{relative}&signature={encoded}")))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::OK);
    assert!(signed.chunk().await.unwrap().is_some());
    signed
}

#[tokio::test]
async fn a_ticket_stream_ends_when_the_api_key_that_signed_it_expires() {
    let (app, alice_image, _) = app_with(recheck_every_second).await;
    let ticket = queued_ticket(&app, "alice", &alice_image).await;
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let key = app.api_key_of("alice", None, Some(expires_at)).await;
    let signed = open_signed_stream(&app, &ticket, &key).await;
    let took = ends_within(signed, Duration::from_secs(6)).await;
    assert!(took.is_ok(), "key expired: {took:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_ticket_stream_ends_when_the_api_key_that_signed_it_is_revoked() {
    let (app, alice_image, _) = app_with(recheck_every_second).await;
    let ticket = queued_ticket(&app, "alice", &alice_image).await;
    let key = app.api_key_of("alice", None, None).await;
    let public = key.0.clone();
    let signed = open_signed_stream(&app, &ticket, &key).await;
    let basic = open_stream(&app, &ticket, "alice").await;

    assert!(pimage::store::users::revoke_api_key(&app.pool, &public)
        .await
        .unwrap());
    let signed_ended = ends_within(signed, Duration::from_secs(5)).await;
    // Alice herself keeps access: her password stream stays open.
    let basic_ended = ends_within(basic, Duration::from_secs(3)).await;
    assert!(
        signed_ended.is_ok() && basic_ended.is_err(),
        "key revoked: signed stream {signed_ended:?}; Basic stream {basic_ended:?}"
    );
    app.stop().await;
}
