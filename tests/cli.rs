//! The `pimage` binary, run as plain processes: migrate, users add, images register, config,
//! and `api` + `worker` publishing an image into the real Glance, stopped with SIGTERM.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{publish_json, DemoCloud};
use sqlx::{Connection, Executor, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_pimage");

struct Env {
    db_name: String,
    queue: String,
    dir: std::path::PathBuf,
}

impl Env {
    async fn new() -> Env {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("pimage_test_{id}");
        let mut admin = PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        admin
            .execute(format!(r#"CREATE DATABASE "{db_name}""#).as_str())
            .await
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pimage-cli-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            db_name,
            queue: format!("pimage.test.{id}"),
            dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PIMAGE_ENV", "dev")
            .env(
                "PIMAGE__DATABASE__URL",
                format!("postgres://postgres@127.0.0.1:5432/{}", self.db_name),
            )
            .env("PIMAGE__AMQP__QUEUE", &self.queue)
            .env("PIMAGE__STORAGE__IMAGE_DIR", self.dir.join("store"))
            .env("PIMAGE__WORKER__PROGRESS_INTERVAL_MS", "200");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pimage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn(&self, args: &[&str], port: Option<u16>) -> Child {
        let mut cmd = self.command(args);
        if let Some(port) = port {
            cmd.env("PIMAGE__API__LISTEN", format!("127.0.0.1:{port}"));
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn drop_all(self) {
        let mut admin = PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        let _ = admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.db_name).as_str())
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(conn) =
            lapin::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Default::default())
                .await
        {
            if let Ok(ch) = conn.create_channel().await {
                for q in [self.queue.clone(), format!("{}.dead", self.queue)] {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
            }
        }
    }
}

fn sigterm_and_wait(mut child: Child, what: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{what} exits cleanly on SIGTERM, got {status}"
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what} did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn help_documents_every_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in ["migrate", "api", "worker", "users", "images", "config"] {
        assert!(help.contains(sub), "--help names {sub}: {help}");
    }
}

#[tokio::test]
async fn admin_commands_set_up_users_and_images() {
    let env = Env::new().await;
    assert!(env.run_ok(&["migrate"]).contains("migrations applied"));
    let out = env
        .command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", "pw-from-env")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migration_publish"));

    let file = env.dir.join("disk.raw");
    std::fs::write(&file, vec![7u8; 10_000]).unwrap();
    let uri = env.run_ok(&[
        "images",
        "register",
        "--user",
        "alice",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    let uri = uri.trim();
    assert!(
        uri.starts_with("users/alice/scannedinstances/")
            && uri.contains("/scans/")
            && uri.contains("/images/"),
        "prints the image URI: {uri}"
    );
    // The file was copied into the image directory.
    assert_eq!(std::fs::read_dir(env.dir.join("store")).unwrap().count(), 1);

    let bad = env.run(&[
        "images",
        "register",
        "--user",
        "alice",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a qcow2 file"));
    let nobody = env.run(&[
        "images",
        "register",
        "--user",
        "nobody",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no user 'nobody'"));

    // `config` masks secrets; without a key the service refuses to start.
    let config = env.run_ok(&["config"]);
    assert!(config.contains("image_dir") && config.contains("***"));
    assert!(!config.contains("ZGV2LW9ubHkta2V5"), "the key is masked");
    let no_key = env
        .command(&["worker"])
        .env_remove("PIMAGE_ENV")
        .output()
        .unwrap();
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("secrets.key is not set"));
    env.drop_all().await;
}

#[tokio::test]
async fn api_and_worker_processes_publish_and_stop_on_sigterm() {
    let env = Env::new().await;
    env.run_ok(&["migrate"]);
    env.command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", "alice-pw")
        .output()
        .unwrap();
    let file = env.dir.join("disk.raw");
    std::fs::write(
        &file,
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let uri = env.run_ok(&[
        "images",
        "register",
        "--user",
        "alice",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    let port = free_port();
    let api = env.spawn(&["api"], Some(port));
    let worker = env.spawn(&["worker"], None);
    let base = format!("http://127.0.0.1:{port}/api");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/status")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "api answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = client
        .post(format!("{base}/{}/pimages", uri.trim()))
        .basic_auth("alice", Some("alice-pw"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(publish_json("from processes", "demo", "demopass", "demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let ticket: serde_json::Value = resp.json().await.unwrap();
    let status_url = format!("{base}/{}/status", ticket["uri"].as_str().unwrap());
    let status = loop {
        let s: serde_json::Value = client
            .get(&status_url)
            .basic_auth("alice", Some("alice-pw"))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["complete"] == true || s["error"] == true {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not done: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["complete"], true, "{status}");
    let ticket: serde_json::Value = client
        .get(format!("{base}/{}", ticket["uri"].as_str().unwrap()))
        .basic_auth("alice", Some("alice-pw"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cloud = DemoCloud::login().await;
    let cloud_id = ticket["cloudId"].as_str().unwrap();
    assert_eq!(cloud.image(cloud_id).await.unwrap()["status"], "active");
    cloud.delete(cloud_id).await;
    sigterm_and_wait(api, "pimage api");
    sigterm_and_wait(worker, "pimage worker");
    env.drop_all().await;
}
