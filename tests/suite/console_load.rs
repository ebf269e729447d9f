//! Load check of the live feed: 200 open console event streams on one API process cost it
//! under 50 MiB and no extra database queries per second (one listener feeds them all), and
//! every one of them hears a change. Prints the figures (docs/BENCHMARKS.md quotes them).
#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::time::{Duration, Instant};

use common::processes::{free_port, sigterm_and_wait, wait_for_api, Env};
use sqlx::{Connection, PgConnection};

/// Kills the process if the test fails before stopping it.
struct Running(Option<std::process::Child>);

impl Running {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }
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

const STREAMS: usize = 200;
const WINDOW: Duration = Duration::from_secs(10);
/// Longer than PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s).
const STATS_FLUSH: Duration = Duration::from_secs(11);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Transactions the API's database has seen (every query of the pool is one).
async fn transactions(conn: &mut PgConnection, db: &str) -> i64 {
    // A fresh snapshot of the statistics each time.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(conn)
    .await
    .unwrap()
}

async fn queries_per_second(conn: &mut PgConnection, db: &str) -> f64 {
    // A backend that went idle reports its counts up to 10 s later (PostgreSQL's idle stats
    // flush): what came before the window must have been counted before it starts.
    tokio::time::sleep(STATS_FLUSH).await;
    let before = transactions(conn, db).await;
    tokio::time::sleep(WINDOW).await;
    (transactions(conn, db).await - before) as f64 / WINDOW.as_secs_f64()
}

#[tokio::test]
async fn two_hundred_event_streams_cost_little_and_no_queries() {
    let env = Env::new().await;
    env.run_ok(&["migrate"]);
    assert!(env
        .command(&["users", "add", "root", "--admin"])
        .env("PIMAGE_USER_PASSWORD", "root-pw")
        .status()
        .unwrap()
        .success());
    let image_uri = env.register_raw_image("root", &[1u8; 4096]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = Running(Some(env.spawn(&["api"], Some(port), "api")));
    wait_for_api(&base).await;
    // One connection for the measurements (the shared server may be busy).
    let mut stats = PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();

    // A console session, as a browser gets it.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let login_cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = form.text().await.unwrap();
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let login = http
        .post(format!("{base}/console/login"))
        .header("Cookie", login_cookie)
        .form(&[
            ("login", "root"),
            ("password", "root-pw"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let session = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| c.starts_with("pimage_console="))
        .expect("a session");

    // Warm: the pages once, then the idle figures.
    for page in ["/console", "/console/tickets", "/console/workers"] {
        http.get(format!("{base}{page}"))
            .header("Cookie", &session)
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(api.id());
    let idle_rate = queries_per_second(&mut stats, &env.db_name).await;

    // 200 streams: one client, and each in-flight stream holds its own HTTP/1.1 connection.
    let client = reqwest::Client::new();
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let answer = client
            .get(format!("{base}/console/events"))
            .header("Cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        streams.push(answer);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open_rss = rss_kib(api.id());
    let open_rate = queries_per_second(&mut stats, &env.db_name).await;

    // A change reaches every stream.
    let published = http
        .post(format!("{base}/api/{}/pimages", image_uri.trim()))
        .basic_auth("root", Some("root-pw"))
        .header("Content-Type", "application/json")
        .body(common::publish_json("load", "demo", "demopass", "demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    let until = Instant::now() + Duration::from_secs(20);
    let mut heard = 0;
    for answer in streams.iter_mut() {
        let mut text = String::new();
        while !text.contains("event: ticket") && Instant::now() < until {
            if let Ok(Ok(Some(chunk))) =
                tokio::time::timeout(Duration::from_secs(1), answer.chunk()).await
            {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
        heard += usize::from(text.contains("event: ticket"));
    }

    let grown_kib = open_rss.saturating_sub(idle_rss);
    println!(
        "console_load: API RSS {idle_rss} KiB idle, {open_rss} KiB with {STREAMS} streams \
         (+{grown_kib} KiB, {:.1} KiB per stream); database {idle_rate:.2} queries/s idle, \
         {open_rate:.2} with the streams open; {heard} of {STREAMS} streams heard the change",
        grown_kib as f64 / STREAMS as f64
    );
    assert_eq!(heard, STREAMS, "every stream hears the change");
    assert!(
        grown_kib < 50 * 1024,
        "{STREAMS} streams cost {grown_kib} KiB"
    );
    // The background passes (relay, rescuer, reconciler) vary by a few queries a second; a
    // query per stream per second would add 200.
    assert!(
        open_rate <= idle_rate + 5.0,
        "{open_rate:.2} queries/s with {STREAMS} streams against {idle_rate:.2} idle"
    );
    drop(streams);
    sigterm_and_wait(api.take(), "api", Duration::from_secs(30)).await;
    env.drop_all().await;
}
