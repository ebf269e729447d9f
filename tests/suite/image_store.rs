//! Image stores other than a local directory: an S3 bucket on a real S3 server (OpenStack
//! Swift's S3 API, `scripts/s3-lab`). Registration puts the file into the bucket (or takes an
//! object already there); workers and web-download read it in ranges, with no local copy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use pimage::config::Settings;
use pimage::secrets::Secret;
use tokio::sync::OnceCell;

use crate::common::processes::Env;
use crate::common::{self, spawn_app_with, DemoCloud, TestApp};

const BUCKET: &str = "pimage-images";

/// The S3 lab's settings (`scripts/s3-lab env`), the lab started first when it is not up.
async fn s3_lab() -> &'static Vec<(String, String)> {
    static VARS: OnceCell<Vec<(String, String)>> = OnceCell::const_new();
    VARS.get_or_init(|| async {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-lab");
        let up = std::process::Command::new(script).arg("status").output();
        if !up.is_ok_and(|o| o.status.success()) {
            let started = std::process::Command::new(script).arg("up").status();
            assert!(
                started.is_ok_and(|s| s.success()),
                "scripts/s3-lab up failed"
            );
        }
        let env = std::process::Command::new(script)
            .arg("env")
            .output()
            .unwrap();
        String::from_utf8(env.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
    .await
}

fn var<'a>(vars: &'a [(String, String)], key: &str) -> &'a str {
    &vars.iter().find(|(k, _)| k == key).expect(key).1
}

/// The lab's settings with this test's own prefix in the bucket.
fn use_bucket(s: &mut Settings, vars: &[(String, String)], prefix: &str) {
    s.storage.url = format!("s3://{BUCKET}/{prefix}");
    s.storage.s3.endpoint = var(vars, "PIMAGE__STORAGE__S3__ENDPOINT").into();
    s.storage.s3.region = var(vars, "PIMAGE__STORAGE__S3__REGION").into();
    s.storage.s3.access_key_id = var(vars, "PIMAGE__STORAGE__S3__ACCESS_KEY_ID").into();
    s.storage.s3.secret_access_key =
        Secret::new(var(vars, "PIMAGE__STORAGE__S3__SECRET_ACCESS_KEY"));
    s.storage.s3.allow_http = true;
}

/// The bucket, as the test reads and writes it directly.
fn bucket(vars: &[(String, String)]) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(var(vars, "PIMAGE__STORAGE__S3__ENDPOINT"))
            .with_region(var(vars, "PIMAGE__STORAGE__S3__REGION"))
            .with_access_key_id(var(vars, "PIMAGE__STORAGE__S3__ACCESS_KEY_ID"))
            .with_secret_access_key(var(vars, "PIMAGE__STORAGE__S3__SECRET_ACCESS_KEY"))
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

/// An app (API and worker) whose image store is the lab bucket, under a prefix of its own;
/// the CLI's environment for the same store; the prefix.
async fn app_on_bucket(
    with_worker: bool,
    adjust: impl FnOnce(&mut Settings),
) -> (TestApp, Env, String) {
    let vars = s3_lab().await;
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let app = spawn_app_with(with_worker, |s| {
        use_bucket(s, vars, &prefix);
        adjust(s);
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    let mut cli_vars = vars.clone();
    cli_vars.retain(|(k, _)| k != "PIMAGE__STORAGE__URL");
    cli_vars.push((
        "PIMAGE__STORAGE__URL".into(),
        format!("s3://{BUCKET}/{prefix}"),
    ));
    let cli = Env::of_app(&app, cli_vars);
    (app, cli, prefix)
}

fn register(cli: &Env, args: &[&str]) -> String {
    let mut all = vec!["images", "register", "--user", "alice"];
    all.extend_from_slice(args);
    cli.run_ok(&all).trim().to_string()
}

async fn file_path_of(app: &TestApp, image_uri: &str) -> String {
    let id: i64 = image_uri.rsplit('/').next().unwrap().parse().unwrap();
    sqlx::query_scalar("SELECT file_path FROM images WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Publishes `image_uri` to the lab cloud and waits for its end.
async fn publish(app: &TestApp, image_uri: &str) -> (common::OpStatus, String) {
    let body = common::publish_json("from-s3", "demo", "demopass", "demo");
    let ticket = app.publish_created("alice", image_uri, body).await;
    let status = app
        .wait_final("alice", &ticket.uri, Duration::from_secs(120))
        .await;
    let id: i64 = ticket.uri.rsplit('/').next().unwrap().parse().unwrap();
    (status, app.ticket_key(id).await)
}

async fn glance_md5(ticket_key: &str) -> String {
    let images = DemoCloud::login().await.images_of_ticket(ticket_key).await;
    assert_eq!(images.len(), 1, "one Glance image for the ticket");
    images[0]["checksum"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_file_registered_into_the_bucket_is_published_from_it_with_no_local_copy() {
    let (app, cli, prefix) = app_on_bucket(true, |_| {}).await;
    // 40 MiB: the worker reads it in ranges, more than one of them at 64 MiB would be
    // needed for a bigger file; this one crosses the S3 multipart threshold (16 MiB parts).
    let file = app.raw_file("disk.raw", 40 << 20);
    let md5 = common::md5_of(&file);
    let uri = register(&cli, &["--file", file.to_str().unwrap(), "--format", "raw"]);
    std::fs::remove_file(&file).unwrap();

    let location = file_path_of(&app, &uri).await;
    assert!(
        location.starts_with(&format!("s3://{BUCKET}/{prefix}/")),
        "{location}"
    );
    let key = location.trim_start_matches(&format!("s3://{BUCKET}/"));
    let stored = bucket(s3_lab().await)
        .head(&ObjectPath::from(key))
        .await
        .unwrap();
    assert_eq!(stored.size, 40 << 20);
    assert!(
        !cli.dir.join("store").exists(),
        "nothing was copied to the local image directory"
    );

    let (status, key) = publish(&app, &uri).await;
    assert!(status.complete, "{status:?}");
    assert_eq!(glance_md5(&key).await, md5, "Glance holds the file's bytes");
}

#[tokio::test]
async fn an_object_already_in_the_bucket_is_registered_where_it_is() {
    let (app, cli, prefix) = app_on_bucket(true, |_| {}).await;
    let file = app.qcow2_file("uploaded.qcow2", 2);
    let md5 = common::md5_of(&file);
    let key = format!("{prefix}/by-hand/uploaded.qcow2");
    let bytes = std::fs::read(&file).unwrap();
    bucket(s3_lab().await)
        .put(&ObjectPath::from(key.as_str()), bytes.into())
        .await
        .unwrap();

    let object = format!("s3://{BUCKET}/{key}");
    let uri = register(&cli, &["--object", &object, "--format", "qcow2"]);
    assert_eq!(
        file_path_of(&app, &uri).await,
        object,
        "registered in place"
    );
    let image: (String, String) =
        sqlx::query_as("SELECT md5sum, file_name FROM images WHERE file_path = $1")
            .bind(&object)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(image, (md5.clone(), "uploaded.qcow2".to_string()));

    // The object is inspected as any file, and named in the refusal.
    let wrong = cli.run(&[
        "images", "register", "--user", "alice", "--object", &object, "--format", "vmdk",
    ]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    let refused = format!("{object} is refused: it was declared vmdk");
    assert!(
        !wrong.status.success() && stderr.contains(&refused),
        "{stderr}"
    );
    // An object of another bucket, or one that is not there, is refused by name.
    let foreign = cli.run(&[
        "images",
        "register",
        "--user",
        "alice",
        "--object",
        "s3://elsewhere/x.raw",
        "--format",
        "raw",
    ]);
    let stderr = String::from_utf8_lossy(&foreign.stderr);
    assert!(stderr.contains("is in bucket 'elsewhere'"), "{stderr}");
    let missing = format!("s3://{BUCKET}/{prefix}/nothing-here.raw");
    let absent = cli.run(&[
        "images", "register", "--user", "alice", "--object", &missing, "--format", "raw",
    ]);
    let stderr = String::from_utf8_lossy(&absent.stderr);
    assert!(
        !absent.status.success() && stderr.contains("nothing-here.raw"),
        "{stderr}"
    );

    let (status, key) = publish(&app, &uri).await;
    assert!(status.complete, "{status:?}");
    assert_eq!(glance_md5(&key).await, md5);
}

#[tokio::test]
async fn an_object_is_converted_through_a_scratch_copy_that_is_removed_after() {
    let scratch = std::env::temp_dir().join(format!("pimage-s3-scratch-{}", uuid::Uuid::new_v4()));
    let scratch_dir = scratch.clone();
    let (app, cli, _) = app_on_bucket(true, move |s| {
        s.worker.scratch_dir = scratch_dir;
        s.cloud.profiles = vec![pimage::config::CloudProfile {
            name: "converting".into(),
            hosts: vec!["localhost".into()],
            disk_format: Some("raw".into()),
            ..Default::default()
        }];
    })
    .await;
    let file = app.qcow2_file("to-convert.qcow2", 2);
    let uri = register(
        &cli,
        &["--file", file.to_str().unwrap(), "--format", "qcow2"],
    );
    let glance = common::glance_url().replace("127.0.0.1", "localhost");
    let body = common::publish_json_via("converted", "demo", "demopass", "demo", &glance);
    let ticket = app.publish_created("alice", &uri, body).await;
    let status = app
        .wait_final("alice", &ticket.uri, Duration::from_secs(120))
        .await;
    assert!(status.complete, "{status:?}");
    let id: i64 = ticket.uri.rsplit('/').next().unwrap().parse().unwrap();
    let images = DemoCloud::login()
        .await
        .images_of_ticket(&app.ticket_key(id).await)
        .await;
    assert_eq!(images[0]["disk_format"], "raw", "converted for the profile");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "scratch copies removed: {left:?}");
}

#[tokio::test]
async fn a_missing_object_is_refused_at_publish_with_a_409() {
    let (app, cli, _) = app_on_bucket(true, |_| {}).await;
    let file = app.raw_file("gone.raw", 1 << 20);
    let uri = register(&cli, &["--file", file.to_str().unwrap(), "--format", "raw"]);
    let location = file_path_of(&app, &uri).await;
    let key = location.trim_start_matches(&format!("s3://{BUCKET}/"));
    bucket(s3_lab().await)
        .delete(&ObjectPath::from(key))
        .await
        .unwrap();
    let body = common::publish_json("gone", "demo", "demopass", "demo");
    let resp = app
        .client
        .post(app.url(&format!("{uri}/pimages")))
        .basic_auth("alice", Some(common::PASSWORD))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let text = resp.text().await.unwrap();
    assert!(text.contains("missing from the image store"), "{text}");
}

#[tokio::test]
async fn a_store_that_does_not_answer_is_retried_then_named_in_the_error() {
    // The API checks the object in the lab bucket; the worker's store points at a closed port.
    let (app, cli, _) = app_on_bucket(false, |_| {}).await;
    let file = app.raw_file("unreachable.raw", 1 << 20);
    let uri = register(&cli, &["--file", file.to_str().unwrap(), "--format", "raw"]);
    let mut worker_settings = app.settings.clone();
    let closed = common::processes::free_port();
    worker_settings.storage.s3.endpoint = format!("http://127.0.0.1:{closed}");
    worker_settings.worker.retry.max_attempts = 2;
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_worker = stop.clone().drop_guard();
    common::spawn_worker(&worker_settings, stop);
    let (status, key) = publish(&app, &uri).await;
    assert!(status.error, "{status:?}");
    let error = status.error_message.clone().unwrap_or_default();
    assert!(
        error.contains("the image store could not be read"),
        "{status:?}"
    );
    assert!(DemoCloud::login()
        .await
        .images_of_ticket(&key)
        .await
        .is_empty());
}

#[test]
fn a_bad_store_url_is_refused_naming_the_setting() {
    let mut s = common::settings_for_test("unused", "unused");
    for (url, why) in [
        ("s3://", "names no bucket"),
        (
            "ftp://host/dir",
            "use a directory, file:///path or s3://bucket",
        ),
    ] {
        s.storage.url = url.into();
        let err = pimage::image_store::ImageStore::new(&s.storage).unwrap_err();
        assert!(err.to_string().contains(why), "{url}: {err}");
        assert!(err.to_string().starts_with("storage.url"), "{err}");
    }
    assert!(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-lab")).exists());
}

#[tokio::test]
async fn a_web_download_link_serves_the_object_from_the_bucket() {
    let (app, cli, _) = app_on_bucket(false, |_| {}).await;
    let file = app.raw_file("linked.raw", 3 << 20);
    let bytes = std::fs::read(&file).unwrap();
    let uri = register(&cli, &["--file", file.to_str().unwrap(), "--format", "raw"]);
    let body = common::publish_json("linked", "demo", "demopass", "demo");
    let ticket = app.publish_created("alice", &uri, body).await;
    let id: i64 = ticket.uri.rsplit('/').next().unwrap().parse().unwrap();
    // A link serves only while its ticket runs; no worker runs here, so it is set by hand.
    sqlx::query("UPDATE publish_tickets SET state = 'running' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let secrets = pimage::secrets::SecretBox::new(&app.settings.secrets.key, &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let link = secrets.image_link(&app.address, id, now + 600);
    let resp = app.client.get(link).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(bytes.len() as u64));
    assert!(
        resp.bytes().await.unwrap() == bytes,
        "the object's bytes, whole"
    );
}
