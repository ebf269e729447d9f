//! End to end: API → Postgres → RabbitMQ → worker → real Keystone + Glance
//! (started by `scripts/openstack-lab up`).

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::time::{Duration, Instant};

use common::{md5_of, publish_json, spawn_app, DemoCloud, PASSWORD};
use reqwest::StatusCode;

#[tokio::test]
async fn publishes_a_64_mib_qcow2_into_glance() {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.qcow2_file("disk.qcow2", 64);
    let image = app.register_image("alice", &file, "qcow2").await;

    let started = Instant::now();
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            publish_json("e2e image ✓", "demo", "demopass", "demo"),
        )
        .await;
    let ticket_uri = ticket.uri.clone();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the publish call answers at once"
    );

    // Progress is visible while it uploads, and never goes down.
    let mut last_percentage = 0;
    let mut saw_progress = false;
    let status = loop {
        let s = app.status("alice", &ticket_uri).await;
        let p = s.percentage;
        assert!(
            p >= last_percentage,
            "percentage went down: {last_percentage} -> {p}"
        );
        last_percentage = p;
        if s.bytes_loaded > 0 && !s.complete {
            saw_progress = true;
            assert_eq!(s.bytes_total, image.size_bytes);
        }
        if s.complete || s.error {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not done in 180 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    println!(
        "64 MiB end to end: {:.2} s (saw progress: {saw_progress})",
        elapsed.as_secs_f64()
    );
    assert!(
        saw_progress,
        "no status showed bytes moving before completion"
    );
    assert!(status.complete, "{status:?}");
    assert!(status.published);
    assert_eq!(status.percentage, 100);
    assert!(!status.error);

    let ticket = app.ticket("alice", &ticket_uri).await;
    let cloud_id = ticket
        .cloud_id
        .clone()
        .expect("a published ticket names its Glance image");
    let xml = app
        .get(&ticket_uri, "alice")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::assert_valid_xml(&xml);
    assert!(xml.contains(&format!("<cloudId>{cloud_id}</cloudId>")));

    let cloud = DemoCloud::login().await;
    let glance = cloud
        .image(&cloud_id)
        .await
        .expect("the image is in Glance");
    assert_eq!(glance["status"], "active");
    assert_eq!(glance["name"], "e2e image ✓");
    assert_eq!(glance["disk_format"], "qcow2");
    assert_eq!(glance["visibility"], "private");
    assert_eq!(glance["checksum"], md5_of(&file).as_str());
    assert_eq!(glance["size"].as_i64().unwrap(), image.size_bytes);
    let key = app.ticket_key(ticket.db_id).await;
    assert_eq!(glance[pimage::cloud::TICKET_PROPERTY], key.as_str());
    assert_eq!(
        cloud.images_of_ticket(&key).await.len(),
        1,
        "exactly one image for the ticket"
    );

    // The ticket's end and its last attempt's end are one write (one transaction, one
    // `now()`): a complete ticket never shows an attempt still running.
    let (open, last_ended_with_ticket): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM ticket_attempts WHERE ticket_id = t.id AND ended_at IS NULL),
                (SELECT a.ended_at = t.finished_at AND a.outcome = 'published'
                   FROM ticket_attempts a WHERE a.ticket_id = t.id ORDER BY a.number DESC LIMIT 1)
           FROM publish_tickets t WHERE t.id = $1",
    )
    .bind(ticket.db_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((open, last_ended_with_ticket), (0, true));

    cloud.delete(&cloud_id).await;
    app.stop().await;
}

#[tokio::test]
async fn a_public_image_refused_by_glance_is_explained_and_cleaned_up() {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("pub.raw", 1 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    let mut body: serde_json::Value =
        serde_json::from_str(&publish_json("public", "demo", "demopass", "demo")).unwrap();
    body["publicImage"] = true.into();
    let ticket = app
        .publish_created("alice", &image.uri(), body.to_string())
        .await;
    let status = app
        .wait_final("alice", ticket.uri.as_str(), Duration::from_secs(30))
        .await;
    assert!(status.error, "{status:?}");
    assert!(
        status
            .error_message
            .as_deref()
            .unwrap()
            .contains("public image"),
        "{status:?}"
    );
    let key = app.ticket_key(ticket.db_id).await;
    DemoCloud::login()
        .await
        .wait_no_image_of_ticket(&key, "the refused image was deleted")
        .await;
    app.stop().await;
}

/// The upload is not hashed on the way (Glance's checksum is compared with the registered
/// one), so a file rewritten after registration must still be caught, and said plainly.
#[tokio::test]
async fn a_file_changed_since_registration_is_caught_by_its_checksum() {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("changing.raw", 1 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    std::fs::write(&file, vec![0x5a; 1 << 20]).unwrap();
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            publish_json("changed", "demo", "demopass", "demo"),
        )
        .await;
    let status = app
        .wait_final("alice", ticket.uri.as_str(), Duration::from_secs(60))
        .await;
    assert!(status.error, "{status:?}");
    let message = status.error_message.as_deref().unwrap();
    assert!(message.contains("changed on disk"), "{status:?}");
    let key = app.ticket_key(ticket.db_id).await;
    DemoCloud::login()
        .await
        .wait_no_image_of_ticket(&key, "the bad image was deleted")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_ticket_is_never_started_and_a_finished_one_cannot_be_cancelled() {
    // No worker yet: the ticket waits in the queue.
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("c.raw", 1 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    let body = publish_json("cancel me", "demo", "demopass", "demo");
    let first: common::PublishImage = app
        .publish("alice", &image.uri(), "application/json", body.clone())
        .await
        .json()
        .await
        .unwrap();
    let second: common::PublishImage = app
        .publish("alice", &image.uri(), "application/json", body)
        .await
        .json()
        .await
        .unwrap();
    let cancel = |uri: &str| {
        app.client
            .delete(app.url(&format!("{uri}/cancel")))
            .basic_auth("alice", Some(PASSWORD))
            .send()
    };
    assert_eq!(
        cancel(first.uri.as_str()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );

    // Now a worker takes both messages: the cancelled ticket stays cancelled.
    let stop = tokio_util::sync::CancellationToken::new();
    let running = common::spawn_worker(&app.settings, stop.clone());
    let done = app
        .wait_final("alice", second.uri.as_str(), Duration::from_secs(60))
        .await;
    assert!(done.complete, "{done:?}");
    let cancelled = app
        .wait_final("alice", first.uri.as_str(), Duration::from_secs(5))
        .await;
    assert!(cancelled.cancelled);
    assert_eq!(
        cancelled.bytes_loaded, 0,
        "the cancelled ticket never uploaded"
    );
    let key = app.ticket_key(first.db_id).await;
    let cloud = DemoCloud::login().await;
    assert!(cloud.images_of_ticket(&key).await.is_empty());

    // Cancel after complete: 409.
    let resp = cancel(second.uri.as_str()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let ticket = app.ticket("alice", &second.uri).await;
    let cloud_id = ticket.cloud_id.as_deref().unwrap();
    assert_eq!(
        cloud.image(cloud_id).await.unwrap()["status"],
        "active",
        "cancel after complete leaves the image"
    );
    cloud.delete(cloud_id).await;
    stop.cancel();
    running.await.unwrap();
    app.stop().await;
}
