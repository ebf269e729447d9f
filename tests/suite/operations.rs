//! Operating pimage: metrics, health, request ids, the operator CLI, the compose file, and
//! every container command run as a plain process. RabbitMQ is stopped in one test, so the
//! tests of this file run one at a time.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fault_proxy::FaultProxy;
use common::processes::{free_port, sigterm_and_wait, Env};
use common::{
    assert_valid_xml, publish_json, publish_json_via, spawn_app, spawn_app_with, DemoCloud, TestApp,
};
use pimage::secrets::Secret;
use reqwest::StatusCode;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The value of one sample line (`name{labels} value`), or 0 when absent.
fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_a_publish() {
    let _serial = SERIAL.lock().await;
    // The metrics recorder is the process's: no other test may move it meanwhile.
    let _alone = common::alone().await;
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("m.raw", 3 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    let before = scrape(&app).await;
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            publish_json("metrics", "demo", "demopass", "demo"),
        )
        .await;
    let uri = ticket.uri.as_str();
    app.wait_published("alice", uri).await;
    let _ = app.status("alice", uri).await;
    let after = scrape(&app).await;
    println!("{after}");
    assert_eq!(
        sample(&after, "pimage_publish_requests_total")
            - sample(&before, "pimage_publish_requests_total"),
        1.0
    );
    assert!(
        sample(&after, "pimage_upload_bytes_total") - sample(&before, "pimage_upload_bytes_total")
            >= (3 << 20) as f64
    );
    assert!(
        sample(&after, "pimage_upload_duration_seconds_count")
            > sample(&before, "pimage_upload_duration_seconds_count")
    );
    // This file's tests run one at a time, so the process-wide counter moved for this ticket only.
    let confirmed = "pimage_queue_publish_total{result=\"confirmed\"}";
    assert_eq!(sample(&after, confirmed) - sample(&before, confirmed), 1.0);
    assert_eq!(sample(&after, "pimage_tickets{state=\"complete\"}"), 1.0);
    assert_eq!(sample(&after, "pimage_outbox_pending"), 0.0);
    // HTTP metrics are labelled by route template, never by raw path.
    let route =
        "route=\"/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages\"";
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("pimage_http_requests_total")
                && l.contains(route)
                && l.contains("status=\"201\"")),
        "{after}"
    );
    assert!(after.contains("pimage_http_request_duration_seconds_bucket"));
    // Every metric that has a sample is described (metrics_catalog).
    for m in pimage::metrics_catalog::ALL {
        if after.lines().any(|l| l.starts_with(m.name)) {
            assert!(
                after.contains(&format!("# HELP {} {}", m.name, m.help)),
                "no HELP line for {}",
                m.name
            );
        }
    }
    assert!(
        !after.contains("route=\"/api/users/alice"),
        "no raw paths as labels"
    );
    for line in after.lines() {
        assert!(!line.contains("demopass"), "no secret in metrics");
    }
    let published = app.ticket("alice", uri).await;
    common::DemoCloud::login()
        .await
        .delete(published.cloud_id.as_deref().unwrap())
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_rabbitmq_degraded_without_failing_and_healthz_stays_up() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(false).await;
    let get = |path: &'static str| app.client.get(format!("{}{path}", app.address)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.text().await.unwrap(), "postgres: ok\nrabbitmq: ok\n");
    app.stop().await;

    // An API whose RabbitMQ is unreachable (a closed port: the shared broker stays up)
    // still takes tickets into its outbox: ready, RabbitMQ degraded.
    let closed = free_port();
    let app = spawn_app_with(false, |s| {
        s.amqp.url = Secret::new(format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"));
    })
    .await;
    let get = |path: &'static str| app.client.get(format!("{}{path}", app.address)).send();
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.text().await.unwrap(),
        "postgres: ok\nrabbitmq: degraded (unreachable): tickets wait in the outbox\n"
    );
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("d.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let body = publish_json("waits", "demo", "demopass", "demo");
    let response = app
        .publish("alice", &image.uri(), "application/json", body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let (pending, _) = pimage::store::outbox::lag(&app.pool).await.unwrap();
    assert_eq!(pending, 1, "the ticket waits in the outbox");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(false).await;
    let r = app.client.get(app.url("status")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a uuid: {id}");
    let r = app
        .client
        .get(app.url("status"))
        .header("X-Request-Id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "trace-42",
        "the caller's id is kept"
    );
    let r = app
        .client
        .get(app.url("nope"))
        .header("X-Request-Id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_ne!(r.headers()["x-request-id"], "bad id\twith spaces");
    app.stop().await;
}

/// Runs the binary against a test app's database and queue.
fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(common::processes::BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PIMAGE_ENV", "dev")
        .env("PIMAGE__DATABASE__URL", app.settings.database.url.expose())
        .env("PIMAGE__AMQP__QUEUE", &app.settings.amqp.queue)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_inspects_and_retries_a_failed_ticket() {
    let _serial = SERIAL.lock().await;
    let mut app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("retry.raw", 1 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            publish_json("retried", "demo", "demopass", "demo"),
        )
        .await;
    let uri = ticket.uri.clone();
    let id = ticket.db_id.to_string();
    // The file is gone when the worker looks: the ticket fails.
    let kept = app.dir.join("kept.raw");
    std::fs::rename(&file, &kept).unwrap();
    app.start_worker();
    let failed = app.wait_final("alice", &uri, Duration::from_secs(60)).await;
    assert!(failed.error, "{failed:?}");

    let list = cli(
        &app,
        &[
            "tickets", "list", "--state", "error", "-f", "value", "-c", "id",
        ],
    );
    assert_eq!(String::from_utf8(list.stdout).unwrap(), format!("{id}\n"));
    let show = String::from_utf8(cli(&app, &["tickets", "show", &id]).stdout).unwrap();
    assert!(
        show.contains("is missing from the image store")
            && show.contains("| cloud_login ")
            && show.contains("| demo "),
        "{show}"
    );
    assert!(!show.contains("demopass"), "no password in `tickets show`");

    // The operator puts the file back and retries the ticket.
    std::fs::rename(&kept, &file).unwrap();
    let retry = cli(&app, &["tickets", "retry", &id]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let last = app.wait_final("alice", &uri, Duration::from_secs(60)).await;
    assert!(last.complete, "the retried ticket ran again: {last:?}");
    let again = cli(&app, &["tickets", "retry", &id]);
    assert!(!again.status.success(), "a complete ticket is not retried");
    assert!(String::from_utf8_lossy(&again.stderr)
        .contains("only a failed or cancelled ticket can be retried"));
    let t = app.ticket("alice", &uri).await;
    common::DemoCloud::login()
        .await
        .delete(t.cloud_id.as_deref().unwrap())
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_shows_in_tickets_show_and_in_json_while_xml_stays_valid() {
    let _serial = SERIAL.lock().await;
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let proxy = FaultProxy::start("127.0.0.1:9292").await;
    proxy.fail_with_status("PUT", "/file", 503, 1);
    let file = app.raw_file("r.raw", 1 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    let body = publish_json_via("retried", "demo", "demopass", "demo", &proxy.url);
    let ticket = app.publish_created("alice", &image.uri(), body).await;
    let uri = ticket.uri.as_str();
    let id = ticket.db_id;
    let last = app.wait_final("alice", uri, Duration::from_secs(60)).await;
    assert!(last.complete, "{last:?}");
    assert_eq!(proxy.injected(), 1);

    for path in [uri.to_string(), format!("{uri}/status")] {
        let doc: common::Attempts = app.get_as("alice", &path).await;
        let attempts = &doc.attempts;
        assert_eq!(attempts.len(), 2, "{doc:?}");
        let (first, second) = (&attempts[0], &attempts[1]);
        assert_eq!(first.number, 1);
        assert_eq!(first.outcome.as_deref(), Some("retried"));
        assert!(first.error.as_deref().unwrap().contains("503"), "{first:?}");
        assert!(first.ended.is_some());
        assert_eq!(second.number, 2);
        assert_eq!(second.outcome.as_deref(), Some("published"));
        assert_eq!(second.error, None);
        assert_eq!(second.bytes_sent, 1 << 20);
        assert_eq!(first.worker, second.worker);
        // Users see an opaque worker id, never its host and pid (issue 23, finding 11).
        let worker = first.worker.as_str();
        assert!(
            worker.starts_with("w-") && !worker.contains(':'),
            "{first:?}"
        );
        assert_eq!(first.worker_host, None, "{first:?}");
        // The XML form keeps to the UForge schema: no attempts in it.
        let xml = app
            .get(&path, "alice")
            .header("Accept", "application/xml")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!xml.contains("attempt"), "{xml}");
        assert_valid_xml(&xml);
    }

    let out = cli(
        &app,
        &[
            "tickets",
            "show",
            &id.to_string(),
            "-f",
            "json",
            "-c",
            "attempts",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{shown}");
    assert_eq!(attempts[0]["outcome"], "retried", "{shown}");
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("503"),
        "{shown}"
    );
    assert_eq!(attempts[1]["outcome"], "published", "{shown}");
    assert_eq!(attempts[1]["bytes_sent"], 1 << 20, "{shown}");
    // Administrators see the worker's host and pid.
    assert!(
        attempts[0]["worker"].as_str().unwrap().contains(':'),
        "{shown}"
    );
    let cloud_id = app.ticket("alice", uri).await.cloud_id.unwrap();
    DemoCloud::login().await.delete(&cloud_id).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_health_and_metrics_on_its_own_port() {
    let _serial = SERIAL.lock().await;
    let env = Env::new().await;
    env.run_ok(&["migrate"]);
    let port = free_port();
    let worker = env
        .command(&["worker"])
        .env("PIMAGE__WORKER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let ready = loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            if r.status() == StatusCode::OK {
                break r.text().await.unwrap();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the worker's /readyz answers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready, "postgres: ok\nrabbitmq: ok\n");
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pimage_tickets{state=\"queued\"} 0"),
        "{metrics}"
    );
    sigterm_and_wait(worker, "pimage worker", Duration::from_secs(20)).await;
    env.drop_all().await;
}

/// docker-compose.yml with docker-compose.override.yml is valid once scripts/compose-secrets
/// made the secret files; no secret's value is in the effective file (the `*_FILE` variables
/// name the mounted files); the profiles' services are there; and the main file alone has no
/// `profiles:` nor `depends_on` conditions, which `docker stack deploy` refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_is_valid_and_reads_its_secrets_from_files() {
    let _serial = SERIAL.lock().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let secrets = std::env::temp_dir().join(format!(
        "pimage-compose-secrets-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let made = Command::new(format!("{root}/scripts/compose-secrets"))
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .args(args)
            .current_dir(root)
            .env("PIMAGE_SECRETS_DIR", &secrets)
            .output()
            .expect("docker-compose is installed (scripts/services installs it)")
    };
    let config = compose(&["config"]);
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stderr)
    );
    let text = String::from_utf8(config.stdout).unwrap();
    for file in [
        "postgres_password",
        "rabbitmq_password",
        "rabbitmq_cookie",
        "secrets_key",
    ] {
        let value = std::fs::read_to_string(secrets.join(file)).unwrap();
        assert!(
            !text.contains(value.trim()),
            "{file}'s value is in the compose file"
        );
    }
    for variable in [
        "PIMAGE__DATABASE__URL_FILE: /run/secrets/pimage_database_url",
        "PIMAGE__AMQP__URL_FILE: /run/secrets/pimage_amqp_url",
        "PIMAGE__SECRETS__KEY_FILE: /run/secrets/pimage_secrets_key",
        "POSTGRES_PASSWORD_FILE: /run/secrets/postgres_password",
    ] {
        assert!(text.contains(variable), "{variable}: {text}");
    }
    let services = String::from_utf8(compose(&["config", "--services"]).stdout).unwrap();
    for s in [
        "postgres",
        "rabbitmq",
        "migrate",
        "api",
        "worker",
        "demo-cloud",
        "prometheus",
        "rabbitmq-2",
        "rabbitmq-3",
    ] {
        assert!(
            services.lines().any(|l| l == s),
            "compose names {s}: {services}"
        );
    }
    let main = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
    assert!(
        !main
            .lines()
            .any(|l| l.trim_start().starts_with("profiles:")),
        "docker-compose.yml has profiles"
    );
    assert!(
        !main.contains("condition: service_"),
        "depends_on conditions"
    );
    std::fs::remove_dir_all(&secrets).unwrap();
}

/// The demo-cloud container's command, `scripts/openstack-lab up --foreground`, as a plain
/// process on other ports: it serves Keystone and Glance, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_cloud_command_runs_as_a_plain_process() {
    let _serial = SERIAL.lock().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let venv = std::env::var("PIMAGE_LAB_VENV").unwrap_or_else(|_| format!("{root}/.lab/venv"));
    let dir = std::env::temp_dir().join(format!(
        "pimage-democloud-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let (ks, gl) = (free_port(), free_port());
    let log = std::fs::File::create(std::env::temp_dir().join("pimage-democloud.log")).unwrap();
    let child = Command::new(format!("{root}/scripts/openstack-lab"))
        .args(["up", "--foreground"])
        .env("PIMAGE_LAB_DIR", &dir)
        .env("PIMAGE_LAB_VENV", &venv)
        .env("PIMAGE_LAB_KEYSTONE_PORT", ks.to_string())
        .env("PIMAGE_LAB_GLANCE_PORT", gl.to_string())
        .env("PIMAGE_LAB_LISTEN_HOST", "0.0.0.0")
        .env("PIMAGE_LAB_SMOKE", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Ready when the script's own `status` says so (seeding done), as the container's
    // healthcheck asks it.
    let started = Instant::now();
    loop {
        let status = Command::new(format!("{root}/scripts/openstack-lab"))
            .arg("status")
            .env("PIMAGE_LAB_DIR", &dir)
            .env("PIMAGE_LAB_VENV", &venv)
            .env("PIMAGE_LAB_KEYSTONE_PORT", ks.to_string())
            .env("PIMAGE_LAB_GLANCE_PORT", gl.to_string())
            .env("PIMAGE_LAB_LISTEN_HOST", "0.0.0.0")
            .output()
            .unwrap();
        if status.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the demo cloud comes up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A demo login works against it.
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo", "domain": {"name": "Default"}, "password": "demopass"}}},
        "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}});
    let started = Instant::now();
    loop {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{ks}/v3/auth/tokens"))
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::CREATED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the demo user is seeded"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sigterm_and_wait(
        child,
        "openstack-lab up --foreground",
        Duration::from_secs(60),
    )
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gl)).is_err(),
        "Glance stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logs written to a file (stderr not a terminal) carry no colour codes, and JSON lines are
/// flat: a line's fields beside `message`, not nested under `fields` (issue 31, item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_have_no_colour_codes_and_json_lines_are_flat() {
    let mut env = Env::new().await;
    let text = worker_log_until_connected(&env, "text").await;
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI escapes in a file: {text:?}"
    );

    env.set("PIMAGE__LOG__FORMAT", "json");
    let json = worker_log_until_connected(&env, "json").await;
    let line = json
        .lines()
        .find(|l| l.contains("connected to PostgreSQL"))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        line["message"], "connected to PostgreSQL at 127.0.0.1:5432",
        "{line}"
    );
    assert!(line.get("fields").is_none(), "{line}");
    env.drop_all().await;
}

/// SIGTERM while a process waits for PostgreSQL at start-up ends it at once, cleanly: the
/// signal handlers are installed before anything waits (it used to kill the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_the_wait_for_postgresql_ends_a_process_cleanly() {
    let mut env = Env::new().await;
    let nothing_there = common::processes::free_port();
    env.set(
        "PIMAGE__DATABASE__URL",
        format!("postgres://postgres@127.0.0.1:{nothing_there}/none"),
    );
    for role in ["api", "worker"] {
        let listen = format!("127.0.0.1:{}", common::processes::free_port());
        let child = env
            .command(&[role])
            .env("PIMAGE__API__LISTEN", &listen)
            .env("PIMAGE__WORKER__LISTEN", &listen)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(env.dir.join(format!("{role}.log"))).unwrap())
            .spawn()
            .unwrap();
        let log = env.dir.join(format!("{role}.log"));
        let started = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("waiting for PostgreSQL")
        {
            assert!(started.elapsed() < Duration::from_secs(30), "{role} waits");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sigterm_and_wait(child, role, Duration::from_secs(5)).await;
    }
    env.drop_all().await;
}

/// Starts a worker logging to `<dir>/<name>.log`, stops it once it has connected; its log.
async fn worker_log_until_connected(env: &Env, name: &str) -> String {
    let worker = env.spawn(&["worker"], None, name);
    let log = env.dir.join(format!("{name}.log"));
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("connected to PostgreSQL")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker starts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm_and_wait(worker, "the worker", Duration::from_secs(30)).await;
    std::fs::read_to_string(&log).unwrap()
}

/// A second process on one host finds its port taken: it stops, naming the address and the
/// setting (the OS says only "Address already in use"; issue 31, item 2 of the demo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_named_with_its_setting() {
    let mut env = Env::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    env.set("PIMAGE__WORKER__LISTEN", &address);
    env.set("PIMAGE__API__LISTEN", &address);
    for (role, setting) in [
        ("worker", "worker.listen (PIMAGE__WORKER__LISTEN"),
        ("api", "api.listen (PIMAGE__API__LISTEN"),
    ] {
        let out = env.run(&[role]);
        assert!(!out.status.success(), "{role} stops");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!("cannot listen on {address}, set by {setting}")),
            "{role}: {said}"
        );
    }
    env.drop_all().await;
}
