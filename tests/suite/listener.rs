//! The process's one Postgres listener (`live::listener`): what is announced while it is not
//! listening is not lost on its subscribers. The credential cache is the one where a miss
//! matters most: a changed password must not keep working.
//!
//! The API reaches Postgres through a proxy that can hold what the API sends. Held, the
//! listener's connection is cut (`pg_terminate_backend`) and cannot be replaced, so a
//! password changed then is announced to nobody: the gap is as wide as the test wants.
//! The worker's cancel watch is shown the same way: a cancel requested in such a gap still
//! stops the ticket once the listener is back.

use crate::common;

use std::time::{Duration, Instant};

use common::{spawn_app, spawn_app_with, TestApp, PASSWORD};
use pimage::live::Listener;
use pimage::secrets::{self, Secret};
use pimage::store::cancel::{self, CancelOutcome, CANCEL_CHANNEL};
use pimage::store::tickets::{self, NewTicket};
use pimage::store::users;
use pimage::worker::cancel::CancelWatch;
use reqwest::StatusCode;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A TCP proxy to Postgres that, while held, forwards nothing the client sends (what
/// Postgres sends, its closing included, always passes).
struct HoldingProxy {
    port: u16,
    held: watch::Sender<bool>,
}

impl HoldingProxy {
    async fn start(upstream: String) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held, _) = watch::channel(false);
        let holds = held.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, holds.clone()));
            }
        });
        HoldingProxy { port, held }
    }

    fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, mut held: watch::Receiver<bool>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if held.wait_for(|held| !held).await.is_err() {
            break;
        }
        if to_server.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
    let _ = down.await;
}

/// `host:port` of the Postgres `url` names.
fn upstream_of(url: &str) -> String {
    let after_user = url.split_once('@').unwrap().1;
    after_user.split_once('/').unwrap().0.to_string()
}

/// The backends that LISTEN on `channel` in the database `direct` reaches.
async fn listeners_on(direct: &PgPool, channel: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE '%' || $1 || '%'
            AND pid <> pg_backend_pid()",
    )
    .bind(channel)
    .fetch_all(direct)
    .await
    .unwrap()
}

async fn wait_for_listeners(direct: &PgPool, other_than: Option<i32>) -> Vec<i32> {
    wait_for_listeners_on(direct, "pimage_user_changed", other_than).await
}

async fn wait_for_listeners_on(
    direct: &PgPool,
    channel: &str,
    other_than: Option<i32>,
) -> Vec<i32> {
    let started = Instant::now();
    loop {
        let pids = listeners_on(direct, channel).await;
        if !pids.is_empty() && pids.iter().all(|p| Some(*p) != other_than) {
            return pids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the API does not listen (again)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pimages_as(app: &TestApp, password: &str) -> StatusCode {
    app.client
        .get(app.url("users/alice/pimages"))
        .basic_auth("alice", Some(password))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_while_the_listener_reconnects_is_refused_at_once() {
    let direct_url = common::settings_for_test("postgres", "unused")
        .database
        .url
        .expose()
        .to_string();
    let upstream = upstream_of(&direct_url);
    let proxy = HoldingProxy::start(upstream.clone()).await;
    let proxied = format!("127.0.0.1:{}", proxy.port);
    let app = spawn_app_with(false, |settings| {
        let url = settings.database.url.expose().replace(&upstream, &proxied);
        settings.database.url = Secret::new(url);
        // Long enough that only a heard (or re-read) change can end it.
        settings.api.credential_cache = Duration::from_secs(600);
    })
    .await;
    let direct = PgPool::connect(
        &app.settings
            .database
            .url
            .expose()
            .replace(&proxied, &upstream),
    )
    .await
    .unwrap();
    app.add_user("alice", &["migration_publish"], false).await;
    let listening = wait_for_listeners(&direct, None).await;
    assert_eq!(listening.len(), 1, "one listener per API process");

    // Remembered: the next request with it pays neither argon2 nor a lookup.
    assert_eq!(pimages_as(&app, PASSWORD).await, StatusCode::OK);

    // The listener's connection is cut and cannot be replaced (the proxy holds what the API
    // sends); the password changes in the gap: announced, but heard by nobody.
    proxy.hold(true);
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(listening[0])
        .execute(&direct)
        .await
        .unwrap();
    backend_gone(&direct, listening[0]).await;
    let new_password = "a new password, after a leak";
    let hash = secrets::hash_password(&Secret::new(new_password));
    users::upsert(
        &direct,
        "alice",
        &hash,
        false,
        &["migration_publish".to_string()],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.hold(false);
    wait_for_listeners(&direct, Some(listening[0])).await;

    assert_eq!(
        pimages_as(&app, PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "the old password still works after a change announced during a reconnect"
    );
    assert_eq!(pimages_as(&app, new_password).await, StatusCode::OK);
    direct.close().await;
    app.stop().await;
}

/// A running ticket of alice's (no upload behind it: only its cancel matters here).
async fn running_ticket(app: &TestApp) -> i64 {
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let alice = users::find_by_login(&app.pool, "alice")
        .await
        .unwrap()
        .unwrap();
    let (ticket, _) = tickets::create(
        &app.pool,
        &NewTicket {
            cloud_password_enc: b"unused".to_vec(),
            ..common::new_ticket(image.id, alice.id, "cancelled in the gap")
        },
    )
    .await
    .unwrap();
    sqlx::query("UPDATE publish_tickets SET state = 'running', started_at = now() WHERE id = $1")
        .bind(ticket.id)
        .execute(&app.pool)
        .await
        .unwrap();
    ticket.id
}

/// Waits until the backend `pid` has exited.
async fn backend_gone(pool: &PgPool, pid: i32) {
    let started = std::time::Instant::now();
    loop {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(pool)
                .await
                .unwrap();
        if !alive {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "backend {pid} still alive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Without the re-read on `PossiblyMissed`, only the progress writes would report this
/// cancel; here there are none, so the ticket would run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_requested_while_the_worker_listener_reconnects_still_stops_the_ticket() {
    let app = spawn_app(false).await;
    let ticket_id = running_ticket(&app).await;
    let direct_url = app.settings.database.url.expose().to_string();
    let upstream = upstream_of(&direct_url);
    let proxy = HoldingProxy::start(upstream.clone()).await;
    let proxied = direct_url.replace(&upstream, &format!("127.0.0.1:{}", proxy.port));
    let listener = Listener::new(PgPool::connect(&proxied).await.unwrap());
    let watch = CancelWatch::default();
    let cancelled = watch.register(ticket_id, &CancellationToken::new());
    let stop = CancellationToken::new();
    tokio::spawn(watch.run(&listener, app.pool.clone()));
    tokio::spawn(listener.run(stop.clone()));
    let listening = wait_for_listeners_on(&app.pool, CANCEL_CHANNEL, None).await;
    assert_eq!(listening.len(), 1, "one listener per worker process");

    // The listener's connection is cut and cannot be replaced; the cancel is announced in
    // the gap, to nobody.
    proxy.hold(true);
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(listening[0])
        .execute(&app.pool)
        .await
        .unwrap();
    // pg_terminate_backend only signals: a backend still alive when the cancel's NOTIFY
    // commits would deliver it (on a loaded machine it did), and there would be no gap.
    backend_gone(&app.pool, listening[0]).await;
    assert_eq!(
        cancel::request_cancel(&app.pool, ticket_id).await.unwrap(),
        CancelOutcome::Requested
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cancelled.is_cancelled(), "the cancel was heard: no gap");
    proxy.hold(false);
    wait_for_listeners_on(&app.pool, CANCEL_CHANNEL, Some(listening[0])).await;

    assert!(
        tokio::time::timeout(Duration::from_secs(5), cancelled.cancelled())
            .await
            .is_ok(),
        "a cancel requested while the listener reconnected never reached the ticket"
    );
    stop.cancel();
    app.stop().await;
}
