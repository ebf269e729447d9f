//! Workers on several hosts (issue 27): the API in this network namespace, a worker on each
//! of two hosts made by `scripts/hosts` (network namespaces on a bridge, each with its own
//! host name and its link to the cloud shaped by tc), and a lab cloud of this test's own that
//! listens on the bridge (Glance at 4 processes, its database on PostgreSQL). The hosts share
//! nothing with the API but the network: PostgreSQL and RabbitMQ through the bridge, images
//! from an S3 store on the bridge (`scripts/s3-lab`; `store_settings` is the one place that
//! says where images are kept).

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::processes::{free_port, sigterm_and_wait, wait_final_at, wait_for_api, Env, BIN};
use common::{DemoCloud, PASSWORD};
use sqlx::PgPool;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// This test's hosts: namespaces pimage-t1, pimage-t2 on 10.231.28.0/24 (the bench's are
/// pimage-h*, 10.231.27.0/24), so both can run at once.
const PREFIX: &str = "pimage-t";
const NET: &str = "10.231.28";
const BRIDGE: &str = "10.231.28.1";
const KEYSTONE_PORT: u16 = 5127;
const GLANCE_PORT: u16 = 9127;
/// The S3 lab's API port (its other servers take the next three).
const S3_PORT: u16 = 9140;
const HOSTS: usize = 2;
const TICKETS: usize = 8;
const IMAGE_BYTES: usize = 8 << 20;

/// `scripts/hosts` with this test's names; `down` on drop.
struct Hosts;

fn hosts_command(args: &[&str]) -> Command {
    let mut c = Command::new(format!("{ROOT}/scripts/hosts"));
    c.args(args)
        .env("PIMAGE_HOSTS_PREFIX", PREFIX)
        .env("PIMAGE_HOSTS_NET", NET);
    c
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Hosts {
    fn up(n: usize) -> Hosts {
        run_ok(hosts_command(&["up", &n.to_string()]), "scripts/hosts up");
        Hosts
    }

    /// Bytes host `i`'s shaped link has sent (its tc counter).
    fn sent(&self, i: usize) -> u64 {
        let out = run_ok(hosts_command(&["sent", &i.to_string()]), "hosts sent");
        out.trim().parse().unwrap()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = hosts_command(&["down"]).output();
    }
}

/// The lab cloud of this test, on the bridge address; `down --purge` on drop (which drops
/// its PostgreSQL databases too).
struct Lab {
    dir: PathBuf,
}

impl Lab {
    fn command(dir: &Path, args: &[&str]) -> Command {
        let venv = std::env::var("PIMAGE_LAB_VENV").unwrap_or_else(|_| {
            let lab = std::env::var("PIMAGE_LAB_DIR").unwrap_or_else(|_| format!("{ROOT}/.lab"));
            format!("{lab}/venv")
        });
        let mut c = Command::new(format!("{ROOT}/scripts/openstack-lab"));
        c.args(args)
            .env("PIMAGE_LAB_DIR", dir)
            .env("PIMAGE_LAB_VENV", venv)
            .env("PIMAGE_LAB_KEYSTONE_PORT", KEYSTONE_PORT.to_string())
            .env("PIMAGE_LAB_GLANCE_PORT", GLANCE_PORT.to_string())
            .env("PIMAGE_LAB_LISTEN_HOST", BRIDGE)
            .env("PIMAGE_LAB_PUBLIC_HOST", BRIDGE)
            .env("PIMAGE_LAB_GLANCE_PROCESSES", "4")
            .env("PIMAGE_LAB_DATABASE", "postgres")
            .env("PIMAGE_LAB_SMOKE", "0");
        c
    }

    fn up() -> Lab {
        let lab = Lab {
            dir: PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/lab-many-hosts")),
        };
        run_ok(
            Lab::command(&lab.dir, &["up"]),
            "openstack-lab up (many hosts)",
        );
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Lab::command(&self.dir, &["down", "--purge"]).output();
    }
}

/// The S3 server of this test (`scripts/s3-lab`), bound to the bridge address so that every
/// host reaches it; `down` on drop.
struct S3Lab {
    dir: PathBuf,
}

impl S3Lab {
    fn command(dir: &Path, arg: &str) -> Command {
        let venv =
            std::env::var("PIMAGE_S3_LAB_VENV").unwrap_or_else(|_| format!("{ROOT}/.s3-lab/venv"));
        let mut c = Command::new(format!("{ROOT}/scripts/s3-lab"));
        c.arg(arg)
            .env("PIMAGE_S3_LAB_DIR", dir)
            .env("PIMAGE_S3_LAB_VENV", venv)
            .env("PIMAGE_S3_LAB_PORT", S3_PORT.to_string())
            .env("PIMAGE_S3_LAB_LISTEN_HOST", BRIDGE);
        c
    }

    fn up() -> S3Lab {
        let lab = S3Lab {
            dir: PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/s3-many-hosts")),
        };
        run_ok(S3Lab::command(&lab.dir, "up"), "s3-lab up (many hosts)");
        lab
    }

    /// Where images are kept, as every host reads them (`scripts/s3-lab env`): the one
    /// place to change for another store.
    fn store_settings(&self) -> Vec<(String, String)> {
        run_ok(S3Lab::command(&self.dir, "env"), "s3-lab env")
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for S3Lab {
    fn drop(&mut self) {
        let _ = S3Lab::command(&self.dir, "down").output();
        let _ = std::fs::remove_dir_all(self.dir.join("state"));
    }
}

/// The processes of the test: killed on drop (also when it fails), before the hosts and
/// the lab go.
struct Site {
    api: Option<Child>,
    workers: Vec<Child>,
    base: String,
    /// Taken at the end, to remove its queues (its database goes when it drops).
    env: Option<Env>,
    hosts: Hosts,
    _lab: Lab,
    _s3: S3Lab,
}

impl Site {
    fn env(&self) -> &Env {
        self.env.as_ref().unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for c in self.workers.iter_mut().chain(self.api.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Worker on host `i`: `pimage worker` through `scripts/hosts exec`, which execs it (same
/// PID), with PostgreSQL and RabbitMQ at the bridge address.
fn spawn_worker(env: &Env, i: usize) -> Child {
    let log = std::fs::File::create(env.dir.join(format!("worker-h{i}.log"))).unwrap();
    let db = env.database_url().replace("127.0.0.1", BRIDGE);
    env.program(
        &format!("{ROOT}/scripts/hosts"),
        &["exec", &i.to_string(), BIN, "worker"],
    )
    .env("PIMAGE_HOSTS_PREFIX", PREFIX)
    .env("PIMAGE_HOSTS_NET", NET)
    .env("PIMAGE__DATABASE__URL", db)
    .env(
        "PIMAGE__AMQP__URL",
        format!("amqp://guest:guest@{BRIDGE}:5672/%2f"),
    )
    .env("PIMAGE__WORKER__CONCURRENCY", "2")
    .stdout(std::process::Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap()
}

async fn start_site() -> Site {
    let hosts = Hosts::up(HOSTS);
    let lab = Lab::up();
    let s3 = S3Lab::up();
    let mut env = Env::new().await;
    for (k, v) in s3.store_settings() {
        env.set(&k, v);
    }
    env.run_ok(&["migrate"]);
    let out = env
        .command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success());
    let port = free_port();
    let api = env.spawn(&["api"], Some(port), "api");
    let base = format!("http://127.0.0.1:{port}/api");
    let workers = (1..=HOSTS).map(|i| spawn_worker(&env, i)).collect();
    let site = Site {
        api: Some(api),
        workers,
        base,
        env: Some(env),
        hosts,
        _lab: lab,
        _s3: s3,
    };
    wait_for_api(&site.base).await;
    site
}

/// Waits until a worker of every host has beaten (its heartbeat names the host).
async fn wait_for_hosts(pool: &PgPool) {
    let started = Instant::now();
    loop {
        let hosts: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT host FROM worker_heartbeats ORDER BY host")
                .fetch_all(pool)
                .await
                .unwrap();
        let want: Vec<String> = (1..=HOSTS).map(|i| format!("{PREFIX}{i}")).collect();
        if hosts == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "heartbeats of {want:?}, got {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn publish_body(name: &str) -> String {
    serde_json::json!({
        "displayName": name, "publicImage": false,
        "keystoneDomain": "Default", "keystoneProject": "demo",
        "credAccount": {"targetPlatform": {"name": "openstack"},
            "keystoneUrl": format!("http://{BRIDGE}:{KEYSTONE_PORT}/v3"),
            "glanceUrl": format!("http://{BRIDGE}:{GLANCE_PORT}"),
            "keystoneVersion": "v3", "login": "demo", "password": "demopass"}
    })
    .to_string()
}

async fn publish(base: &str, image: &str, name: &str) -> String {
    let answer = reqwest::Client::new()
        .post(format!("{base}/{image}/pimages"))
        .basic_auth("alice", Some(PASSWORD))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(publish_body(name))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "publish {name}");
    let ticket: common::PublishImage = answer.json().await.unwrap();
    ticket.uri
}

/// The demo project's images of a ticket in this test's Glance.
async fn images_of_ticket(key: &str) -> Vec<serde_json::Value> {
    let keystone = format!("http://{BRIDGE}:{KEYSTONE_PORT}/v3");
    let glance = format!("http://{BRIDGE}:{GLANCE_PORT}");
    DemoCloud::login_at(&keystone, &glance)
        .await
        .images_of_ticket(key)
        .await
}

/// Bytes each host's workers sent in published attempts (the attempt names its worker,
/// `host:pid`).
async fn published_bytes_per_host(pool: &PgPool) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT split_part(worker, ':', 1), count(*), sum(bytes_sent)::BIGINT
           FROM ticket_attempts WHERE outcome = 'published' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_two_hosts_publish_over_their_own_shaped_links() {
    let started = Instant::now();
    let mut site = start_site().await;
    let pool = PgPool::connect(&site.env().database_url()).await.unwrap();
    wait_for_hosts(&pool).await;
    let file = site.env().dir.join("disk.raw");
    let data: Vec<u8> = (0..IMAGE_BYTES).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&file, data).unwrap();
    let image = site.env().run_ok(&[
        "images",
        "register",
        "--user",
        "alice",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    // The image is in the bucket only: no host can read it from a disk.
    std::fs::remove_file(&file).unwrap();
    let location: String = sqlx::query_scalar("SELECT file_path FROM images")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(location.starts_with("s3://"), "{location}");
    let sent_before: Vec<u64> = (1..=HOSTS).map(|i| site.hosts.sent(i)).collect();
    let mut tickets = vec![];
    for n in 0..TICKETS {
        tickets.push(publish(&site.base, image.trim(), &format!("hosts-{n}")).await);
    }
    for t in &tickets {
        let status =
            wait_final_at(&site.base, ("alice", PASSWORD), t, Duration::from_secs(120)).await;
        assert!(status.complete, "{t}: {status:?}");
    }
    assert_one_image_each(&pool).await;
    let per_host = published_bytes_per_host(&pool).await;
    let names: Vec<&str> = per_host.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(
        names,
        ["pimage-t1", "pimage-t2"],
        "both hosts published: {per_host:?}"
    );
    assert_eq!(
        per_host.iter().map(|(_, n, _)| n).sum::<i64>(),
        TICKETS as i64
    );
    for (i, (host, n, bytes)) in per_host.iter().enumerate() {
        assert_eq!(*bytes, n * IMAGE_BYTES as i64, "{host}: whole images sent");
        let sent = site.hosts.sent(i + 1) - sent_before[i];
        assert!(
            sent >= *bytes as u64,
            "{host}'s shaped link carried its uploads: {sent} bytes sent, {bytes} uploaded"
        );
    }
    for w in std::mem::take(&mut site.workers) {
        sigterm_and_wait(w, "a host's worker", Duration::from_secs(30)).await;
    }
    sigterm_and_wait(
        site.api.take().unwrap(),
        "pimage api",
        Duration::from_secs(30),
    )
    .await;
    pool.close().await;
    site.env.take().unwrap().drop_all().await;
    eprintln!("many hosts: {:?} ({per_host:?})", started.elapsed());
}

/// Every ticket's image is in Glance once, whole, and active.
async fn assert_one_image_each(pool: &PgPool) {
    let keys: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT ticket_key FROM publish_tickets")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(keys.len(), TICKETS);
    for key in keys {
        let images = images_of_ticket(&key.to_string()).await;
        assert_eq!(images.len(), 1, "ticket {key}: {images:?}");
        assert_eq!(images[0]["status"], "active", "{:?}", images[0]);
        assert_eq!(images[0]["size"], IMAGE_BYTES as u64, "{:?}", images[0]);
    }
}
