//! Test harness: a real API (and optionally worker) on port 0, a fresh Postgres database
//! and a fresh RabbitMQ queue per test, against the real services on 127.0.0.1.

pub mod copies_lab;
pub mod database;
mod exclusive;
pub mod fault_proxy;
pub mod hostile_keystone;
pub mod processes;
pub mod tls_proxy;

pub use exclusive::{alone, shared, Shared};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
pub use pimage::api::wire::{AttemptDoc, OpStatus, PublishImage};
use pimage::api::Application;
use pimage::config::Settings;
use pimage::secrets::{self, Secret, SecretBox};
use pimage::store::{self, images, users, Image, NewImage, NewTicket};
use pimage::worker::WorkerApp;
use reqwest::StatusCode;
use sqlx::PgPool;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

/// A JSON ticket or status answer's attempts (JSON only: not in the UForge schema, so not in
/// `PublishImage` or `OpStatus`).
#[derive(Debug, serde::Deserialize)]
pub struct Attempts {
    pub attempts: Vec<AttemptDoc>,
}

use database::TestDatabase;

pub const PASSWORD: &str = "correct horse battery staple";
pub const XSD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/uforge-publish.xsd"
);

/// The demo cloud started by `scripts/openstack-lab up`.
pub fn keystone_url() -> String {
    std::env::var("PIMAGE_TEST_KEYSTONE_URL").unwrap_or_else(|_| "http://127.0.0.1:5000/v3".into())
}
pub fn glance_url() -> String {
    std::env::var("PIMAGE_TEST_GLANCE_URL").unwrap_or_else(|_| "http://127.0.0.1:9292".into())
}

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub settings: Settings,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    // Dropped in this order, also when the test panics: the services stop, then the
    // database goes, then this test no longer holds off an exclusive one.
    _stop_on_drop: DropGuard,
    pub database: TestDatabase,
    _shared: Shared,
}

pub fn settings_for_test(db_name: &str, queue: &str) -> Settings {
    let mut settings = Settings::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config")))
        .expect("config/default.toml loads");
    let base = database::server_url();
    settings.database.url = Secret::new(format!("{base}/{db_name}"));
    settings.amqp.queue = queue.to_string();
    settings.api.listen = "127.0.0.1:0".parse().unwrap();
    settings.worker.progress_interval = Duration::from_millis(200);
    // The lab cloud listens on 127.0.0.1.
    settings.cloud.allow_loopback = true;
    // Tests share the lab cloud: each one's orphan sweep must see only its own images.
    settings.cloud.deployment = db_name.to_string();
    settings.worker.retry.min_delay = Duration::from_millis(300);
    settings.worker.retry.max_delay = Duration::from_millis(2000);
    settings.worker.retry.deadline = Duration::from_secs(600);
    settings.secrets.key = Secret::new("ZGV2LW9ubHkta2V5LWRvLW5vdC11c2UtaW4tcHJvZCE=");
    settings
}

/// Starts the API (and a worker when `with_worker`) on a fresh database and queue.
pub async fn spawn_app(with_worker: bool) -> TestApp {
    spawn_app_with(with_worker, |_| {}).await
}

/// alice and bob publish; carol lacks the entitlement; root is an administrator.
pub async fn app_with_users() -> (TestApp, String) {
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("bob", &["migration_publish"], false).await;
    app.add_user("carol", &["other_entitlement"], false).await;
    app.add_user("root", &["migration_publish"], true).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    (app, image.uri())
}

/// `spawn_app`, with settings changed by `adjust` first.
pub async fn spawn_app_with(with_worker: bool, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    // Logs only on request: the services' own logs are on stderr, not captured by the runner.
    if std::env::var_os("PIMAGE_TEST_LOG").is_some() {
        pimage::telemetry::init(pimage::config::LogFormat::Text);
    }
    let _shared = shared().await;
    let database = TestDatabase::new().await;
    let id = database.name.trim_start_matches("pimage_test_").to_string();
    let mut settings = settings_for_test(&database.name, &format!("pimage.test.{id}"));
    adjust(&mut settings);

    let app = Application::build(&settings).await.expect("API builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let mut tasks = vec![];
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        app.run_until_stopped(token).await.expect("API runs")
    }));
    let pool = store::connect_and_migrate(&settings.database)
        .await
        .unwrap();
    if with_worker {
        tasks.push(spawn_worker(&settings, shutdown.clone()));
    }
    let dir = std::env::temp_dir().join(format!("pimage-test-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    TestApp {
        address,
        pool,
        settings,
        client: reqwest::Client::new(),
        dir,
        _stop_on_drop: shutdown.clone().drop_guard(),
        shutdown,
        tasks,
        database,
        _shared,
    }
}

/// A worker built as `pimage worker` builds it (`WorkerApp::build`), running in this
/// process until `shutdown`.
pub fn spawn_worker(
    settings: &Settings,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let settings = settings.clone();
    tokio::spawn(async move {
        let app = WorkerApp::build(&settings).await.expect("worker builds");
        app.run_until_stopped(shutdown).await.expect("worker runs")
    })
}

impl TestApp {
    /// Starts a worker in this process; it stops with the app.
    pub fn start_worker(&mut self) {
        let worker = spawn_worker(&self.settings, self.shutdown.clone());
        self.tasks.push(worker);
    }

    /// Stops the API and worker, then removes the test's queues, database and files.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        // A task that panicked or would not stop fails the test: its failure must not be lost.
        for t in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => panic!("a service task was cancelled: {e}"),
                Err(_) => panic!("a service task did not stop within 30 s of shutdown"),
            }
        }
        if let Ok(conn) = pimage::queue::connect(&self.settings.amqp, "pimage-test-cleanup").await {
            if let Ok(ch) = conn.create_channel().await {
                for q in [
                    self.settings.amqp.queue.clone(),
                    format!("{}.dead", self.settings.amqp.queue),
                ] {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
        }
        self.pool.close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        // The database is dropped with `self`.
    }

    pub async fn add_user(&self, login: &str, entitlements: &[&str], admin: bool) {
        let hash = secrets::hash_password(&Secret::new(PASSWORD));
        let ents: Vec<String> = entitlements.iter().map(|e| e.to_string()).collect();
        users::upsert(&self.pool, login, &hash, admin, &ents)
            .await
            .unwrap();
    }

    /// Registers `file` for `owner` as the CLI does (in place).
    pub async fn register_image(&self, owner: &str, file: &Path, format: &str) -> Image {
        let user = users::find_by_login(&self.pool, owner)
            .await
            .unwrap()
            .expect("user exists");
        let max = pimage::image_files::inspect::DEFAULT_MAX_VIRTUAL_SIZE;
        let f =
            pimage::image_files::examine(file, &file.display().to_string(), format, max).unwrap();
        let path = std::fs::canonicalize(file).unwrap();
        images::register(
            &self.pool,
            &NewImage {
                owner_id: user.id,
                distribution: None,
                name: &f.file_name,
                file_path: &path.to_string_lossy(),
                file_name: &f.file_name,
                format,
                size_bytes: f.sums.size as i64,
                md5sum: &f.sums.md5,
                sha256sum: &f.sums.sha256,
                sha512sum: &f.sums.sha512,
            },
        )
        .await
        .unwrap()
    }

    /// Stores `file` as an image without inspecting it: a file registered before the
    /// inspector existed, or one Glance itself must refuse.
    pub async fn register_unchecked(&self, owner: &str, file: &Path, format: &str) -> Image {
        let user = users::find_by_login(&self.pool, owner)
            .await
            .unwrap()
            .expect("user exists");
        let sums = pimage::image_files::checksums(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        images::register(
            &self.pool,
            &NewImage {
                owner_id: user.id,
                distribution: None,
                name: &name,
                file_path: &file.to_string_lossy(),
                file_name: &name,
                format,
                size_bytes: sums.size as i64,
                md5sum: &sums.md5,
                sha256sum: &sums.sha256,
                sha512sum: &sums.sha512,
            },
        )
        .await
        .unwrap()
    }

    /// A small raw image file with random content.
    pub fn raw_file(&self, name: &str, bytes: usize) -> PathBuf {
        let path = self.dir.join(name);
        let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&path, data).unwrap();
        path
    }

    /// A real qcow2 (qemu-img) holding `mib` MiB of random data.
    pub fn qcow2_file(&self, name: &str, mib: usize) -> PathBuf {
        let raw = self.dir.join(format!("{name}.raw"));
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {mib}M /dev/urandom > '{}'", raw.display()))
            .status()
            .unwrap();
        assert!(status.success());
        let path = self.dir.join(name);
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&path)
            .status()
            .expect("qemu-img is installed");
        assert!(status.success());
        std::fs::remove_file(raw).unwrap();
        path
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/{}", self.address, path.trim_start_matches('/'))
    }

    pub fn get(&self, path: &str, user: &str) -> reqwest::RequestBuilder {
        self.client
            .get(self.url(path))
            .basic_auth(user, Some(PASSWORD))
    }

    /// POSTs a publish body for `image` as `user`.
    pub async fn publish(
        &self,
        user: &str,
        image_uri: &str,
        content_type: &str,
        body: String,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("{image_uri}/pimages")))
            .basic_auth(user, Some(PASSWORD))
            .header("Content-Type", content_type)
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Polls the status every 50 ms until it is final; returns every distinct status seen.
    pub async fn watch_until_final(
        &self,
        user: &str,
        ticket_uri: &str,
        timeout: Duration,
    ) -> Vec<OpStatus> {
        let started = Instant::now();
        let mut seen: Vec<OpStatus> = vec![];
        loop {
            let status = self.status(user, ticket_uri).await;
            let is_final = is_final(&status);
            if seen.last().map(what_a_user_reads) != Some(what_a_user_reads(&status)) {
                seen.push(status);
            }
            if is_final {
                return seen;
            }
            assert!(
                started.elapsed() < timeout,
                "ticket {ticket_uri} not final after {timeout:?}: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET `path` as JSON, read as `T` (a wire type).
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self, user: &str, path: &str) -> T {
        let answer = self
            .get(path, user)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path} ({status}): {e}: {text}"))
    }

    /// A ticket as `user` reads it.
    pub async fn ticket(&self, user: &str, ticket_uri: &str) -> PublishImage {
        self.get_as(user, ticket_uri).await
    }

    /// POSTs a publish body as `user` and expects 201: the new ticket.
    pub async fn publish_created(&self, user: &str, image_uri: &str, body: String) -> PublishImage {
        let answer = self
            .publish(user, image_uri, "application/json", body)
            .await;
        assert_eq!(answer.status(), StatusCode::CREATED);
        answer.json().await.unwrap()
    }

    /// Registers a fresh raw image of `bytes` random bytes for `user` and publishes it: the
    /// new ticket.
    pub async fn publish_new_image(&self, user: &str, bytes: usize, body: String) -> PublishImage {
        let file = self.raw_file(&format!("disk-{}.raw", Uuid::new_v4()), bytes);
        let image = self.register_image(user, &file, "raw").await;
        self.publish_created(user, &image.uri(), body).await
    }

    /// Cancels a ticket as `user`; expects 204.
    pub async fn cancel(&self, user: &str, ticket_uri: &str) {
        let answer = self
            .client
            .delete(self.url(&format!("{ticket_uri}/cancel")))
            .basic_auth(user, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    }

    /// A new API key of `login`, for `methods` (`None`: all) until `expires_at`:
    /// (public key, secret key).
    pub async fn api_key_of(
        &self,
        login: &str,
        methods: Option<&[&str]>,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> (String, String) {
        let user = users::find_by_login(&self.pool, login)
            .await
            .unwrap()
            .expect("user exists");
        let (public, secret) = pimage::api::new_api_key();
        let sealed = SecretBox::from_base64_key(&self.settings.secrets.key)
            .unwrap()
            .seal(&secret);
        let methods: Option<Vec<String>> =
            methods.map(|m| m.iter().map(|m| m.to_string()).collect());
        users::add_scoped_api_key(
            &self.pool,
            user.id,
            &public,
            &sealed,
            methods.as_deref(),
            expires_at,
        )
        .await
        .unwrap();
        (public, secret.expose().to_string())
    }

    pub async fn status(&self, user: &str, ticket_uri: &str) -> OpStatus {
        self.get_as(user, &format!("{ticket_uri}/status")).await
    }

    /// Waits until every stored ticket was handed to RabbitMQ (the API does that just after
    /// answering the POST): the outbox is empty.
    pub async fn wait_handed_off(&self) {
        let started = Instant::now();
        loop {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_outbox")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            if pending == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{pending} tickets never handed to RabbitMQ"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The Glance property value that names a ticket's image.
    pub async fn ticket_key(&self, ticket_id: i64) -> String {
        let key: Uuid = sqlx::query_scalar("SELECT ticket_key FROM publish_tickets WHERE id = $1")
            .bind(ticket_id)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        key.to_string()
    }

    /// Polls the ticket status (JSON) until it is complete, failed or cancelled.
    pub async fn wait_final(&self, user: &str, ticket_uri: &str, timeout: Duration) -> OpStatus {
        let started = Instant::now();
        loop {
            let status = self.status(user, ticket_uri).await;
            if is_final(&status) {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "ticket {ticket_uri} not final after {timeout:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits up to 120 s (CI runs tests side by side on 2 cores) for the ticket to be
    /// published; a ticket that ends otherwise fails the test with its status.
    pub async fn wait_published(&self, user: &str, ticket_uri: &str) -> OpStatus {
        let status = self
            .wait_final(user, ticket_uri, Duration::from_secs(120))
            .await;
        assert!(
            status.complete,
            "ticket {ticket_uri} was not published: {status:?}"
        );
        status
    }
}

/// Complete, failed or cancelled.
pub fn is_final(status: &OpStatus) -> bool {
    status.complete || status.error || status.cancelled
}

/// A status without what changes on every write (timestamps, digest, estimates).
fn what_a_user_reads(status: &OpStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap();
    for noisy in ["lastModified", "digest", "eta", "totalTime"] {
        value.as_object_mut().unwrap().remove(noisy);
    }
    value
}

/// A ticket of `user_id` for `image_id`, named `name`, as the API would file it (for the demo
/// cloud; its password sealed as nothing: tests that publish it set their own).
pub fn new_ticket(image_id: i64, user_id: i64, name: &str) -> NewTicket {
    NewTicket {
        image_id,
        user_id,
        display_name: name.into(),
        public_image: false,
        account_name: None,
        keystone_url: keystone_url(),
        keystone_version: "v3".into(),
        keystone_domain: "Default".into(),
        keystone_project: "demo".into(),
        glance_url: None,
        publish_location: None,
        cloud_login: "demo".into(),
        cloud_password_enc: b"sealed".to_vec(),
        bytes_total: 4096,
        cloud_account_id: None,
    }
}

/// A JSON publish body for the demo cloud (project `demo`).
pub fn publish_json(display_name: &str, login: &str, password: &str, project: &str) -> String {
    publish_json_via(display_name, login, password, project, &glance_url())
}

/// The same, with Glance reached at `glance` (e.g. through the fault proxy).
pub fn publish_json_via(
    display_name: &str,
    login: &str,
    password: &str,
    project: &str,
    glance: &str,
) -> String {
    serde_json::json!({
        "displayName": display_name,
        "publicImage": false,
        "keystoneDomain": "Default",
        "keystoneProject": project,
        "credAccount": {
            "targetPlatform": {"name": "openstack"},
            "keystoneUrl": keystone_url(),
            "glanceUrl": glance,
            "keystoneVersion": "v3",
            "login": login,
            "password": password
        }
    })
    .to_string()
}

/// Checks an XML document against the vendored UForge schema with xmllint.
pub fn assert_valid_xml(xml: &str) {
    let path = std::env::temp_dir().join(format!("pimage-xsd-{}.xml", Uuid::new_v4()));
    std::fs::write(&path, xml).unwrap();
    let out = Command::new("xmllint")
        .args(["--noout", "--schema", XSD])
        .arg(&path)
        .output()
        .expect("xmllint is installed (libxml2-utils)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "XML does not validate against the XSD:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Keystone token + Glance access as the demo user, to check what the cloud holds.
pub struct DemoCloud {
    token: String,
    client: reqwest::Client,
    /// The Glance it reads (the lab's, or another lab's).
    glance: String,
}

impl DemoCloud {
    pub async fn login() -> DemoCloud {
        DemoCloud::login_at(&keystone_url(), &glance_url()).await
    }

    /// The demo user of the lab whose Keystone and Glance are at these URLs.
    pub async fn login_at(keystone: &str, glance: &str) -> DemoCloud {
        let client = reqwest::Client::new();
        let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "demo", "domain": {"name": "Default"}, "password": "demopass"}}},
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}});
        let url = format!("{}/auth/tokens", keystone.trim_end_matches('/'));
        let resp = client
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("Keystone answers");
        assert_eq!(resp.status(), 201, "demo login to Keystone");
        let token = resp.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        DemoCloud {
            token,
            client,
            glance: glance.trim_end_matches('/').to_string(),
        }
    }

    pub async fn image(&self, id: &str) -> Option<serde_json::Value> {
        let resp = self
            .client
            .get(format!("{}/v2/images/{id}", self.glance))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            return None;
        }
        Some(resp.json().await.unwrap())
    }

    /// Images carrying a ticket's property.
    pub async fn images_of_ticket(&self, ticket_key: &str) -> Vec<serde_json::Value> {
        let resp: serde_json::Value = self
            .client
            .get(format!("{}/v2/images", self.glance))
            .query(&[(pimage::cloud::TICKET_PROPERTY, ticket_key)])
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["images"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the ticket has no image in Glance. A failed attempt deletes its own image
    /// at once; when that delete cannot be made, the reconciler makes it (every 10 s here).
    pub async fn wait_no_image_of_ticket(&self, ticket_key: &str, what: &str) {
        let started = Instant::now();
        loop {
            let left = self.images_of_ticket(ticket_key).await;
            if left.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: left {left:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every image of the project that carries a ticket property: (image id, ticket key).
    pub async fn images_with_ticket_property(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        let mut next = Some("/v2/images?limit=1000".to_string());
        while let Some(path) = next {
            let page: serde_json::Value = self
                .client
                .get(format!("{}{path}", self.glance))
                .header("X-Auth-Token", &self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for image in page["images"].as_array().unwrap() {
                if let Some(key) = image[pimage::cloud::TICKET_PROPERTY].as_str() {
                    out.push((image["id"].as_str().unwrap().to_string(), key.to_string()));
                }
            }
            next = page["next"].as_str().map(str::to_string);
        }
        out
    }

    pub async fn delete(&self, id: &str) {
        let _ = self
            .client
            .delete(format!("{}/v2/images/{id}", self.glance))
            .header("X-Auth-Token", &self.token)
            .send()
            .await;
    }
}

pub fn md5_of(path: &Path) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}
