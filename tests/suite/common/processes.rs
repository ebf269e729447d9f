//! The `pimage` binary as plain processes, configured through `PIMAGE__…` variables, on a
//! fresh database and queue.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::database::TestDatabase;

pub const BIN: &str = env!("CARGO_BIN_EXE_pimage");

pub struct Env {
    pub db_name: String,
    pub queue: String,
    pub dir: std::path::PathBuf,
    /// Extra `PIMAGE__…` settings for every command.
    pub vars: Vec<(String, String)>,
    /// The database, when this Env made it (dropped with it).
    _database: Option<TestDatabase>,
    _exclusive: super::Shared,
}

impl Env {
    /// A fresh database (migrated), queue and directory.
    pub async fn new() -> Env {
        let _exclusive = super::shared().await;
        let database = TestDatabase::new().await;
        let id = database.name.trim_start_matches("pimage_test_").to_string();
        let dir = std::env::temp_dir().join(format!("pimage-proc-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            db_name: database.name.clone(),
            queue: format!("pimage.test.{id}"),
            dir,
            vars: vec![],
            _database: Some(database),
            _exclusive,
        }
    }

    /// Processes on `app`'s database, queue and directory (the app drops them).
    pub fn of_app(app: &super::TestApp, vars: Vec<(String, String)>) -> Env {
        Env {
            db_name: app.database.name.clone(),
            queue: app.settings.amqp.queue.clone(),
            dir: app.dir.clone(),
            vars,
            _database: None,
            _exclusive: super::Shared::Inherited,
        }
    }

    pub fn database_url(&self) -> String {
        format!("{}/{}", super::database::server_url(), self.db_name)
    }

    pub fn set(&mut self, key: &str, value: impl ToString) {
        self.vars.push((key.to_string(), value.to_string()));
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.program(BIN, args)
    }

    /// `program` (a wrapper of `pimage`: `script`, …) with this environment's settings.
    pub fn program(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PIMAGE_ENV", "dev")
            .env("PIMAGE__DATABASE__URL", self.database_url())
            .env("PIMAGE__AMQP__QUEUE", &self.queue)
            // Tests share the lab cloud: each one's orphan sweep must see only its own images.
            .env("PIMAGE__CLOUD__DEPLOYMENT", &self.db_name)
            .env("PIMAGE__STORAGE__URL", self.dir.join("store"))
            .env("PIMAGE__WORKER__PROGRESS_INTERVAL", "200ms")
            .env("PIMAGE__WORKER__LISTEN", "127.0.0.1:0");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pimage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Writes `content` as `<dir>/disk.raw` and registers it for `user` (`pimage images
    /// register`); returns what the command printed (the image URI).
    pub fn register_raw_image(&self, user: &str, content: &[u8]) -> String {
        let file = self.dir.join("disk.raw");
        std::fs::write(&file, content).unwrap();
        self.run_ok(&[
            "images",
            "register",
            "--user",
            user,
            "--file",
            file.to_str().unwrap(),
            "--format",
            "raw",
        ])
    }

    /// Starts a long-running role; its log goes to `<dir>/<log_name>.log`.
    pub fn spawn(&self, args: &[&str], port: Option<u16>, log_name: &str) -> Child {
        let mut cmd = self.command(args);
        if let Some(port) = port {
            cmd.env("PIMAGE__API__LISTEN", format!("127.0.0.1:{port}"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{log_name}.log")))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    /// Removes the queues and files; the database goes with the Env.
    pub async fn drop_all(self) {
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

pub fn signal(child: &Child, signal: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}

/// Sends SIGTERM and waits (without blocking the runtime) for a clean exit.
pub async fn sigterm_and_wait(mut child: Child, what: &str, within: Duration) {
    signal(&child, "-TERM");
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
            started.elapsed() < within,
            "{what} did not stop within {within:?} of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn free_port() -> u16 {
    // The kernel may hand a port it just freed out again: once given to a test, a port is
    // never given again in this run (a test's API and its late PostgreSQL got one port).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until `GET {base}/status` answers.
pub async fn wait_for_api(base: &str) {
    let started = Instant::now();
    while reqwest::get(format!("{base}/status")).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the API answers at {base}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `image_uri` through the API at `base` as alice (JSON); the ticket it filed.
pub async fn publish_at(base: &str, image_uri: &str, body: String) -> super::PublishImage {
    let resp = reqwest::Client::new()
        .post(format!("{base}/{image_uri}/pimages"))
        .basic_auth("alice", Some(super::PASSWORD))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    resp.json().await.unwrap()
}

/// GETs `{base}/{path}` as JSON with Basic `login`, read as `T` (a wire type).
pub async fn get_json_at<T: serde::de::DeserializeOwned>(
    base: &str,
    login: (&str, &str),
    path: &str,
) -> T {
    reqwest::Client::new()
        .get(format!("{base}/{path}"))
        .basic_auth(login.0, Some(login.1))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls a ticket's status at `base` (…/api) every 200 ms until it is complete or failed.
pub async fn wait_final_at(
    base: &str,
    login: (&str, &str),
    ticket_uri: &str,
    within: Duration,
) -> super::OpStatus {
    let started = Instant::now();
    loop {
        let status: super::OpStatus =
            get_json_at(base, login, &format!("{ticket_uri}/status")).await;
        if status.complete || status.error {
            return status;
        }
        assert!(started.elapsed() < within, "not done: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to `within`) until something accepts TCP connections at `addr`.
fn wait_for_port(addr: &str, within: Duration) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < within, "{addr} accepts connections");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_tool(program: &str, args: &[&str]) {
    let ok = Command::new(program).args(args).status().unwrap().success();
    assert!(ok, "{program} {args:?}");
}

/// Restarts the whole RabbitMQ node (the Erlang VM too, not only the broker app) and waits
/// until it serves again. Blocking tools run off the runtime's threads.
pub async fn restart_rabbitmq_node() {
    tokio::task::spawn_blocking(|| {
        run_tool("rabbitmqctl", &["-q", "stop"]);
        run_tool("rabbitmq-server", &["-detached"]);
        wait_for_port("127.0.0.1:5672", Duration::from_secs(90));
        run_tool("rabbitmqctl", &["-q", "await_startup"]);
    })
    .await
    .unwrap();
}

/// Restarts the PostgreSQL cluster (every connection drops) and waits until it serves again.
pub async fn restart_postgres() {
    tokio::task::spawn_blocking(|| {
        let version = std::fs::read_dir("/etc/postgresql")
            .unwrap()
            .next()
            .expect("one PostgreSQL cluster version")
            .unwrap()
            .file_name();
        let version = version.to_str().unwrap();
        run_tool(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", version, "main", "restart"],
        );
    })
    .await
    .unwrap();
    let started = Instant::now();
    while PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "PostgreSQL serves again after its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills (-9) one worker process of the Glance lab's uwsgi, not its master (which respawns
/// the worker); returns the killed pid.
pub fn kill_a_glance_worker() -> u32 {
    let out = Command::new("pgrep")
        .args(["-f", "uwsgi.*glance"])
        .output()
        .unwrap();
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    // /proc/<pid>/stat: "pid (comm) state ppid …"; a worker's parent is the uwsgi master.
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let worker = *pids
        .iter()
        .find(|&&pid| parent_of(pid).is_some_and(|parent| pids.contains(&parent)))
        .expect("a Glance uwsgi worker process");
    run_tool("kill", &["-KILL", &worker.to_string()]);
    worker
}
