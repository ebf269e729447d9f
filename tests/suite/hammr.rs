//! The real UForge CLI: hammr 3.8.13 with uforge-python-sdk 3.8.13 from PyPI, unmodified,
//! under Python 2.7 (installed by `scripts/hammr` into `.lab/hammr`), typed as a user types it:
//! `account create`, `account list`, `image list`, `image publish` to the real Glance, a
//! Ctrl-C + `y` cancel, and a cloud password that stopped working.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common;
use common::fault_proxy::FaultProxy;
use common::{glance_url, keystone_url, md5_of, processes, DemoCloud, TestApp, PASSWORD};
use pimage::store::tickets;

/// `scripts/hammr` runs hammr as `alice` against one test's API.
struct Hammr {
    api: String,
    home: PathBuf,
}

const USER: &str = "alice";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hammr")
}

/// Installs once per test run (the script is not safe to run twice at once).
fn installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let out = Command::new(script()).arg("install").output().unwrap();
        assert!(
            out.status.success(),
            "scripts/hammr install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

impl Hammr {
    fn for_app(app: &TestApp) -> Hammr {
        installed();
        let home = app.dir.join("hammr-home");
        std::fs::create_dir_all(&home).unwrap();
        Hammr {
            api: format!("{}/api", app.address),
            home,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(script());
        command
            .args(["-a", &self.api, "-u", USER, "-p", PASSWORD])
            .args(args)
            // hammr keeps nothing of this test's outside it; no colours in what is read.
            .env("HOME", &self.home)
            .env("TERM", "dumb")
            .current_dir(&self.home);
        command
    }

    /// Runs hammr to its end (in a blocking thread: it polls every 2 s); exit code and output.
    async fn run(&self, args: &[&str]) -> (i32, String) {
        let mut command = self.command(args);
        let out: Output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// `hammr image publish --id ID --file FILE`, to its end.
    async fn publish(&self, image_id: i64, file: &str) -> (i32, String) {
        let id = image_id.to_string();
        self.run(&["image", "publish", "--id", &id, "--file", file])
            .await
    }

    /// Writes `name` in hammr's working directory; returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.home.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    async fn create_account(
        &self,
        name: &str,
        glance: &str,
        login: &str,
        password: &str,
    ) -> (i32, String) {
        let file = self.file(
            &format!("account-{name}.yml"),
            &format!(
                "accounts:\n  - type: OpenStack\n    name: {name}\n    glanceUrl: {glance}\n    \
                 keystoneUrl: {}\n    keystoneVersion: v3\n    login: {login}\n    password: {password}\n",
                keystone_url()
            ),
        );
        self.run(&["account", "create", "--file", &file]).await
    }

    /// The publish file of hammr's OpenStack builder (no `publicImage`: hammr 3.8.13 crashes on
    /// it, see README).
    fn publish_file(&self, account: &str, display_name: &str) -> String {
        self.file(
            &format!("publish-{account}.yml"),
            &format!(
                "builders:\n  - type: OpenStack QCOW2\n    account:\n      name: {account}\n    \
                 displayName: {display_name}\n    keystoneDomain: Default\n    keystoneProject: demo\n"
            ),
        )
    }
}

async fn app_with_image(mib: usize) -> (TestApp, pimage::store::Image, PathBuf) {
    let app = common::spawn_app(true).await;
    app.add_user(USER, &[pimage::api::PUBLISH_ENTITLEMENT], false)
        .await;
    let file = app.qcow2_file("disk.qcow2", mib);
    let image = app.register_image(USER, &file, "qcow2").await;
    (app, image, file)
}

/// The one ticket of `image`, once the API stored it.
async fn ticket_of(app: &TestApp, image_id: i64) -> tickets::Ticket {
    let started = Instant::now();
    loop {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM publish_tickets WHERE image_id = $1")
                .bind(image_id)
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        if let Some(id) = id {
            return tickets::get(&app.pool, id).await.unwrap().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "hammr publishes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammr_creates_an_account_lists_and_publishes_an_image_to_glance() {
    let (app, image, file) = app_with_image(8).await;
    let hammr = Hammr::for_app(&app);

    let (code, out) = hammr
        .create_account("lab", &glance_url(), "demo", "demopass")
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Account create successfully"), "{out}");
    let (code, out) = hammr.run(&["account", "list"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("lab") && out.contains("OpenStack"), "{out}");
    assert!(out.contains("Found 1 accounts"), "{out}");
    assert!(!out.contains("demopass"), "{out}");

    let (code, out) = hammr.run(&["image", "list"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&image.name), "{out}");
    assert!(out.contains("Found 1 images"), "{out}");

    // A client bug, not pimage's: hammr 3.8.13's OpenStack builder sets
    // `credAccount.publicImage` before it has a credAccount, and stops before any request.
    let public = hammr.file(
        "publish-public.yml",
        &format!(
            "{}    publicImage: \"true\"\n",
            std::fs::read_to_string(hammr.publish_file("lab", "public")).unwrap()
        ),
    );
    let (code, out) = hammr.publish(image.id, &public).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("'NoneType' object has no attribute 'publicImage'"),
        "{out}"
    );
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tickets, 0, "nothing reached pimage");

    let display_name = format!("hammr-{}", image.id);
    let publish = hammr.publish_file("lab", &display_name);
    let (code, out) = hammr.publish(image.id, &publish).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Publication to lab is ok"), "{out}");
    let cloud_id = out
        .lines()
        .find_map(|l| l.split("Cloud ID : ").nth(1))
        .unwrap_or_else(|| panic!("hammr prints the Cloud ID: {out}"))
        .trim()
        .to_string();
    let cloud = DemoCloud::login().await;
    let glance_image = cloud
        .image(&cloud_id)
        .await
        .expect("the image is in Glance");
    assert_eq!(glance_image["status"], "active");
    assert_eq!(glance_image["checksum"], md5_of(&file).as_str());
    assert_eq!(glance_image["name"], display_name.as_str());
    let ticket = ticket_of(&app, image.id).await;
    assert_eq!(ticket.cloud_id.as_deref(), Some(cloud_id.as_str()));
    cloud.delete(&cloud_id).await;
    app.stop().await;
}

/// Ctrl-C while hammr watches a running upload, then `y` at "Do you want to cancel the job ?":
/// hammr calls `DELETE …/cancel`, the ticket ends cancelled and Glance keeps nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammr_ctrl_c_and_yes_cancels_a_running_publish_and_glance_keeps_nothing() {
    let (app, image, _) = app_with_image(16).await;
    let hammr = Hammr::for_app(&app);
    let slow = FaultProxy::start("127.0.0.1:9292").await;
    slow.throttle(256 << 10); // 16 MiB at 256 KiB/s: a minute of upload
    let (code, out) = hammr
        .create_account("slow", &slow.url, "demo", "demopass")
        .await;
    assert_eq!(code, 0, "{out}");

    let publish = hammr.publish_file("slow", "hammr-cancelled");
    let mut child: Child = hammr
        .command(&[
            "image",
            "publish",
            "--id",
            &image.id.to_string(),
            "--file",
            &publish,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ticket = ticket_of(&app, image.id).await;
    let started = Instant::now();
    let uploading = loop {
        let t = tickets::get(&app.pool, ticket.id).await.unwrap().unwrap();
        if t.cloud_id.is_some() && t.bytes_loaded > 0 {
            break t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the upload starts: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    processes::signal(&child, "-INT");
    child.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Do you want to cancel the job ?"), "{text}");

    let status = app
        .wait_final(USER, &uploading.uri(), Duration::from_secs(60))
        .await;
    assert!(status.cancelled, "{status:?} after hammr said: {text}");
    let key = app.ticket_key(ticket.id).await;
    DemoCloud::login()
        .await
        .wait_no_image_of_ticket(&key, "a publish cancelled from hammr")
        .await;
    app.stop().await;
}

/// A password the cloud refuses is told at `account create`; one that stops working later
/// ends the publication in error, which hammr prints (and exits 0, as it does for any
/// publication that ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammr_shows_a_refused_cloud_password_at_account_create_and_at_publish() {
    let (app, image, _) = app_with_image(1).await;
    let hammr = Hammr::for_app(&app);
    let (code, out) = hammr
        .create_account("typo", &glance_url(), "demo", "demopasss")
        .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("Keystone refused"),
        "the cloud's reason: {out}"
    );
    let (_, out) = hammr.run(&["account", "list"]).await;
    assert!(!out.contains("typo"), "nothing stored: {out}");

    let user = KeystoneUser::create("first-password").await;
    let (code, out) = hammr
        .create_account("lab", &glance_url(), &user.name, "first-password")
        .await;
    assert_eq!(code, 0, "{out}");
    user.set_password("second-password").await;

    let publish = hammr.publish_file("lab", "hammr-refused");
    let (code, out) = hammr.publish(image.id, &publish).await;
    user.delete().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Publication to 'lab' error:"), "{out}");
    let reason = format!(
        "wrong cloud password for user '{}' in domain 'Default'",
        user.name
    );
    assert!(out.contains(&reason), "{out}");
    app.stop().await;
}

/// A Keystone user of the test's own in project demo, made and changed through Keystone's
/// admin API (the lab's `admin`), so that the shared `demo` user stays as it is.
struct KeystoneUser {
    name: String,
    id: String,
    admin_token: String,
    client: reqwest::Client,
}

impl KeystoneUser {
    async fn create(password: &str) -> KeystoneUser {
        let client = reqwest::Client::new();
        let base = keystone_url().trim_end_matches('/').to_string();
        let login = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": "adminpass"}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
        let resp = client
            .post(format!("{base}/auth/tokens"))
            .json(&login)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "admin login");
        let admin_token = resp.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        let get = |path: String| {
            client
                .get(format!("{base}{path}"))
                .header("X-Auth-Token", &admin_token)
        };
        let projects: serde_json::Value = get("/projects?name=demo".into())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let project = projects["projects"][0]["id"].as_str().unwrap().to_string();
        let roles: serde_json::Value = get("/roles?name=member".into())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let role = roles["roles"][0]["id"].as_str().unwrap().to_string();
        let name = format!("hammr-{}", uuid::Uuid::new_v4().simple());
        let created: serde_json::Value = client
            .post(format!("{base}/users"))
            .header("X-Auth-Token", &admin_token)
            .json(&serde_json::json!({"user": {"name": name, "domain_id": "default", "password": password}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["user"]["id"].as_str().unwrap().to_string();
        let granted = client
            .put(format!("{base}/projects/{project}/users/{id}/roles/{role}"))
            .header("X-Auth-Token", &admin_token)
            .send()
            .await
            .unwrap();
        assert!(granted.status().is_success(), "role granted");
        KeystoneUser {
            name,
            id,
            admin_token,
            client,
        }
    }

    async fn set_password(&self, password: &str) {
        let resp = self
            .client
            .patch(format!(
                "{}/users/{}",
                keystone_url().trim_end_matches('/'),
                self.id
            ))
            .header("X-Auth-Token", &self.admin_token)
            .json(&serde_json::json!({"user": {"password": password}}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "password changed");
    }

    async fn delete(&self) {
        let _ = self
            .client
            .delete(format!(
                "{}/users/{}",
                keystone_url().trim_end_matches('/'),
                self.id
            ))
            .header("X-Auth-Token", &self.admin_token)
            .send()
            .await;
    }
}
