//! Nothing left behind, and no race deletes a good image: a worker that lost its lease
//! spares the image its successor adopted, a delete or cancel that meets the publication
//! still removes the image, the orphan sweep deletes leftovers (and only those), and a
//! cleanup whose credentials stopped working shows. Real Keystone, Glance and Postgres.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::time::{Duration, Instant};

use common::fault_proxy::FaultProxy;
use common::processes::BIN;
use common::{glance_url, keystone_url, publish_json, publish_json_via, spawn_app_with, DemoCloud};
use common::{TestApp, PASSWORD};
use pimage::cloud::{AddressPolicy, Keystone, OpenStackAccount};
use pimage::reconciler::Reconciler;
use pimage::secrets::{Secret, SecretBox};
use pimage::store::claims::{self, Outcome};
use pimage::store::tickets::{self, TicketState};
use reqwest::StatusCode;
use sqlx::PgPool;

/// An app (API, and a worker when `with_worker`) with alice, reconciling every second.
async fn app(with_worker: bool, lease: Duration) -> TestApp {
    let app = spawn_app_with(with_worker, |s| {
        s.worker.rescue_interval = Duration::from_secs(1);
        s.worker.lease = lease;
        s.cloud.orphan_sweep = Duration::from_secs(1);
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    app
}

/// Stores a ticket for alice (publishing `body`); returns its id and URI.
async fn ticket(app: &TestApp, bytes: usize, body: String) -> (i64, String) {
    let file = app.raw_file(&format!("{}.raw", uuid::Uuid::new_v4()), bytes);
    let image = app.register_image("alice", &file, "raw").await;
    let t = app.publish_created("alice", &image.uri(), body).await;
    (t.db_id, t.uri.clone())
}

fn demo_account() -> OpenStackAccount {
    OpenStackAccount {
        keystone_url: keystone_url(),
        glance_url: Some(glance_url()),
        region: None,
        user: "demo".into(),
        password: Secret::new("demopass"),
        domain: "Default".into(),
        project: "demo".into(),
    }
}

/// Creates a (queued) image as pimage would, with the ticket and deployment properties.
async fn create_image(app: &TestApp, ticket_key: &str) -> String {
    create_image_of(app, ticket_key, &app.settings.cloud.deployment).await
}

async fn create_image_of(app: &TestApp, ticket_key: &str, deployment: &str) -> String {
    let policy = AddressPolicy::from(app.settings.cloud.clone());
    let glance = Keystone::login(&demo_account(), &policy).await.unwrap();
    glance
        .create_image(
            "pimage cleanup test",
            "raw",
            false,
            ticket_key,
            deployment,
            &Default::default(),
        )
        .await
        .unwrap()
        .id
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what} (within {within:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pending_cleanups(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM image_cleanups WHERE done_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_spares_the_image_its_successor_adopted() {
    // A long lease: the lease keeper stays quiet, so the worker learns of its loss only
    // when the upload is over.
    let app = app(true, Duration::from_secs(300)).await;
    let proxy = FaultProxy::start("127.0.0.1:9292").await;
    proxy.throttle(64 << 10); // 1 MiB at 64 KiB/s: a 16 s upload
    let (id, _) = ticket(
        &app,
        1 << 20,
        publish_json_via("adopted", "demo", "demopass", "demo", &proxy.url),
    )
    .await;
    let started = Instant::now();
    let cloud_id = loop {
        if let Some(id) = tickets::get(&app.pool, id).await.unwrap().unwrap().cloud_id {
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker creates the image"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The worker's read-back of the uploaded image fails: it goes the error path.
    proxy.fail_with_status("GET", &format!("/v2/images/{cloud_id}"), 503, 1000);
    wait_until("all bytes are sent", Duration::from_secs(30), || {
        let pool = app.pool.clone();
        async move {
            let t = tickets::get(&pool, id).await.unwrap().unwrap();
            t.bytes_total > 0 && t.bytes_loaded == t.bytes_total
        }
    })
    .await;
    assert!(proxy.uploads_in_flight() > 0, "the upload still runs");
    // Meanwhile the worker was taken for dead: a successor claims the ticket and adopts the
    // image as published (what its attempt does on finding it active).
    sqlx::query(
        "UPDATE publish_tickets SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    let successor = claims::claim(&app.pool, id, "successor:1", Duration::from_secs(300), 5)
        .await
        .unwrap()
        .unwrap();
    let adopted = Outcome::Published {
        cloud_id: cloud_id.clone(),
        bytes: 1 << 20,
    };
    assert_eq!(
        claims::finish(&app.pool, id, successor.token, &adopted)
            .await
            .unwrap()
            .map(|f| f.state),
        Some(TicketState::Complete)
    );
    // The old worker's upload ends, its read-back fails, and it finds its claim lost.
    wait_until(
        "the old worker reads the image back",
        Duration::from_secs(60),
        || async { proxy.injected() > 0 && proxy.uploads_in_flight() == 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cloud = DemoCloud::login().await;
    let image = cloud.image(&cloud_id).await;
    assert_eq!(
        image.as_ref().map(|i| i["status"].clone()),
        Some("active".into()),
        "the complete ticket's image is still in Glance"
    );
    let t = tickets::get(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(t.state, TicketState::Complete);
    assert_eq!(t.cloud_id.as_deref(), Some(cloud_id.as_str()));
    cloud.delete(&cloud_id).await;
    app.stop().await;
}

/// A ticket claimed by the test (as its worker would be), with a real image recorded.
async fn running_with_image(app: &TestApp) -> (i64, String, i64, String) {
    let (id, uri) = ticket(
        app,
        4096,
        publish_json("racing", "demo", "demopass", "demo"),
    )
    .await;
    let claim = claims::claim(&app.pool, id, "worker:1", Duration::from_secs(60), 5)
        .await
        .unwrap()
        .unwrap();
    let cloud_id = create_image(app, &claim.ticket.ticket_key.to_string()).await;
    assert!(claims::set_cloud_id(&app.pool, id, claim.token, &cloud_id)
        .await
        .unwrap());
    (id, uri, claim.token, cloud_id)
}

async fn gone_from_glance(cloud_id: &str) -> bool {
    DemoCloud::login().await.image(cloud_id).await.is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_with_the_cloud_image_that_meets_the_publication_removes_the_image() {
    let app = app(false, Duration::from_secs(60)).await;
    let (id, uri, token, cloud_id) = running_with_image(&app).await;
    // The user deletes the running ticket, image included, as its worker publishes it.
    let resp = app
        .client
        .delete(app.url(&format!("{uri}?deleteCloudImage=true")))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // The deletion recorded the image's cleanup in its own transaction, for the reconciler.
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM image_cleanups WHERE cloud_id = $1")
            .bind(&cloud_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(recorded, 1, "the cleanup outlives the record");
    let published = Outcome::Published {
        cloud_id: cloud_id.clone(),
        bytes: 4096,
    };
    assert_eq!(
        claims::finish(&app.pool, id, token, &published)
            .await
            .unwrap()
            .map(|f| f.state),
        None,
        "the record is gone"
    );
    wait_until(
        "the reconciler deletes the image",
        Duration::from_secs(30),
        || gone_from_glance(&cloud_id),
    )
    .await;
    wait_until("the cleanup is done", Duration::from_secs(10), || {
        let pool = app.pool.clone();
        async move { pending_cleanups(&pool).await == 0 }
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_meets_the_publication_wins_and_removes_the_image() {
    let app = app(false, Duration::from_secs(60)).await;
    let (id, uri, token, cloud_id) = running_with_image(&app).await;
    app.cancel("alice", &uri).await;
    // The worker's upload was already done: it records the publication.
    let published = Outcome::Published {
        cloud_id: cloud_id.clone(),
        bytes: 4096,
    };
    assert_eq!(
        claims::finish(&app.pool, id, token, &published)
            .await
            .unwrap()
            .map(|f| f.state),
        Some(TicketState::Cancelled)
    );
    wait_until(
        "the reconciler deletes the image",
        Duration::from_secs(30),
        || gone_from_glance(&cloud_id),
    )
    .await;
    wait_until(
        "the ticket stops naming the image",
        Duration::from_secs(10),
        || {
            let pool = app.pool.clone();
            async move {
                let t = tickets::get(&pool, id).await.unwrap().unwrap();
                t.cloud_id.is_none()
            }
        },
    )
    .await;
    let last = app.status("alice", &uri).await;
    assert!(last.cancelled, "{last:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_deletes_leftovers_and_keeps_what_users_own() {
    let app = app(true, Duration::from_secs(60)).await;
    // A complete ticket (its image stays), and one whose record is deleted without
    // deleteCloudImage (the user keeps that image).
    let (_, kept_uri) = ticket(&app, 4096, publish_json("kept", "demo", "demopass", "demo")).await;
    let (complete_id, complete_uri) = ticket(
        &app,
        4096,
        publish_json("complete", "demo", "demopass", "demo"),
    )
    .await;
    for uri in [&kept_uri, &complete_uri] {
        let last = app.wait_final("alice", uri, Duration::from_secs(60)).await;
        assert!(last.complete, "{last:?}");
    }
    let kept_id = app.ticket("alice", &kept_uri).await.cloud_id.unwrap();
    let resp = app
        .client
        .delete(app.url(&kept_uri))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // An image of this deployment whose ticket pimage does not know (its record removed).
    let orphan = create_image(&app, &uuid::Uuid::new_v4().to_string()).await;
    wait_until(
        "the sweep deletes the orphan",
        Duration::from_secs(30),
        || gone_from_glance(&orphan),
    )
    .await;
    // Two more sweeps (one a second): the users' images are still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cloud = DemoCloud::login().await;
    let complete = tickets::get(&app.pool, complete_id).await.unwrap().unwrap();
    let complete_image = complete.cloud_id.unwrap();
    for id in [&kept_id, &complete_image] {
        let image = cloud.image(id).await;
        assert_eq!(
            image.map(|i| i["status"].clone()),
            Some("active".into()),
            "image {id} is kept"
        );
        cloud.delete(id).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_whose_credentials_stopped_working_shows_its_error() {
    let app = app(false, Duration::from_secs(60)).await;
    let (id, _) = ticket(&app, 4096, publish_json("pw", "demo", "demopass", "demo")).await;
    let claim = claims::claim(&app.pool, id, "worker:1", Duration::from_secs(60), 5)
        .await
        .unwrap()
        .unwrap();
    // Out of the orphan sweep's sight (another deployment's name), which may have read the
    // account while its password still worked: only the cleanup may delete this image.
    let key = claim.ticket.ticket_key.to_string();
    let cloud_id = create_image_of(&app, &key, "another-deployment").await;
    assert!(claims::set_cloud_id(&app.pool, id, claim.token, &cloud_id)
        .await
        .unwrap());
    // The account's password changes before the cleanup runs.
    let secrets = SecretBox::from_base64_key(&app.settings.secrets.key).unwrap();
    sqlx::query("UPDATE publish_tickets SET cloud_password_enc = $2 WHERE id = $1")
        .bind(id)
        .bind(secrets.seal(&Secret::new("not-the-password")))
        .execute(&app.pool)
        .await
        .unwrap();
    let failed = Outcome::Failed {
        error_message: "x".into(),
        detail: None,
    };
    assert_eq!(
        claims::finish(&app.pool, id, claim.token, &failed)
            .await
            .unwrap()
            .map(|f| f.state),
        Some(TicketState::Error)
    );
    let reconciler = Reconciler::new(app.pool.clone(), secrets, &app.settings.cloud);
    wait_until("a cleanup try fails", Duration::from_secs(15), || {
        let pool = app.pool.clone();
        let reconciler = reconciler.clone();
        async move {
            reconciler.pass(false).await.unwrap();
            let attempts: i32 = sqlx::query_scalar(
                "SELECT attempts FROM image_cleanups WHERE ticket_id = $1 AND done_at IS NULL",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            attempts > 0
        }
    })
    .await;
    let out = std::process::Command::new(BIN)
        .args(["tickets", "list", "--state", "cleanup"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PIMAGE_ENV", "dev")
        .env("PIMAGE__DATABASE__URL", app.settings.database.url.expose())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    let line = listed
        .lines()
        .find(|l| l.contains(&cloud_id))
        .unwrap_or_else(|| panic!("the pending cleanup is listed:\n{listed}"));
    assert!(line.contains(&id.to_string()), "{line}");
    assert!(
        line.contains("wrong cloud password"),
        "its error shows: {line}"
    );
    let t = tickets::get(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(
        t.cloud_id.as_deref(),
        Some(cloud_id.as_str()),
        "still named: not confirmed deleted"
    );
    assert!(DemoCloud::login().await.image(&cloud_id).await.is_some());
    DemoCloud::login().await.delete(&cloud_id).await;
    app.stop().await;
}
