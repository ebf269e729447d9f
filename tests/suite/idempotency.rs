//! `Idempotency-Key` on a publish (issue 29, item 3): a retried request gets its first
//! ticket back, never a second one.

use reqwest::StatusCode;

use crate::common::{self, app_with_users, PublishImage, TestApp, PASSWORD};

async fn publish(
    app: &TestApp,
    user: &str,
    image_uri: &str,
    key: Option<&str>,
    name: &str,
) -> (StatusCode, String) {
    let mut request = app
        .client
        .post(app.url(&format!("{image_uri}/pimages")))
        .basic_auth(user, Some(PASSWORD))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(common::publish_json(name, "demo", "demopass", "demo"));
    if let Some(key) = key {
        let value = reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap();
        request = request.header("Idempotency-Key", value);
    }
    let resp = request.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

fn ticket_id(answer: &str) -> i64 {
    serde_json::from_str::<PublishImage>(answer)
        .unwrap_or_else(|e| panic!("{e}: {answer}"))
        .db_id
}

async fn tickets(app: &TestApp) -> i64 {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM publish_tickets"#)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_publish_gets_its_first_ticket_and_another_body_a_409() {
    let (app, image) = app_with_users().await;
    let (first, answer) = publish(&app, "alice", &image, Some("k-1"), "one").await;
    assert_eq!(first, StatusCode::CREATED, "{answer}");
    let id = ticket_id(&answer);
    let (again, answer) = publish(&app, "alice", &image, Some("k-1"), "one").await;
    assert_eq!(again, StatusCode::OK, "{answer}");
    assert_eq!(ticket_id(&answer), id, "the first ticket");
    assert_eq!(tickets(&app).await, 1);

    let (other, answer) = publish(&app, "alice", &image, Some("k-1"), "two").await;
    assert_eq!(other, StatusCode::CONFLICT);
    assert!(
        answer.contains("Idempotency-Key 'k-1' was sent with another request"),
        "{answer}"
    );
    // Keys are the caller's own; no key, or a new one, files as ever.
    let file = app.raw_file("bobs.raw", 4096);
    let bobs = app.register_image("bob", &file, "raw").await.uri();
    let (bob, answer) = publish(&app, "bob", &bobs, Some("k-1"), "two").await;
    assert_eq!(bob, StatusCode::CREATED, "{answer}");
    assert_ne!(ticket_id(&answer), id);
    assert_eq!(
        publish(&app, "alice", &image, None, "one").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        publish(&app, "alice", &image, Some("k-2"), "one").await.0,
        StatusCode::CREATED
    );
    assert_eq!(tickets(&app).await, 4);

    // Past the window the key is new again.
    sqlx::query("UPDATE publish_idempotency SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (late, answer) = publish(&app, "alice", &image, Some("k-1"), "two").await;
    assert_eq!(late, StatusCode::CREATED, "{answer}");
    assert_eq!(tickets(&app).await, 5);
}

#[tokio::test]
async fn one_key_sent_at_once_from_eight_clients_files_one_ticket() {
    let (app, image) = app_with_users().await;
    let answers = futures::future::join_all(
        (0..8).map(|_| publish(&app, "alice", &image, Some("burst"), "one")),
    )
    .await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    let ids: std::collections::HashSet<i64> = answers.iter().map(|(_, a)| ticket_id(a)).collect();
    assert_eq!(ids.len(), 1, "every answer is the one ticket: {answers:?}");
    assert_eq!(tickets(&app).await, 1);
}

#[tokio::test]
async fn a_failed_publish_frees_its_key_and_bad_keys_are_refused() {
    let app = common::spawn_app_with(false, |s| s.limits.queued_tickets_per_user = 1).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await.uri();
    assert_eq!(
        publish(&app, "alice", &image, Some("a"), "one").await.0,
        StatusCode::CREATED
    );
    // Over the quota: the filing fails and the key is released, so a retry is filed again
    // (and refused again), not answered "still being filed".
    for _ in 0..2 {
        let (status, answer) = publish(&app, "alice", &image, Some("b"), "one").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    }
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_idempotency WHERE key = 'b'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "the failed request's key is free");

    for key in ["", &"x".repeat(256), "with space", "naïve"] {
        let (status, answer) = publish(&app, "alice", &image, Some(key), "one").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}: {answer}");
        assert!(answer.contains("Idempotency-Key"), "{answer}");
    }
    assert_eq!(tickets(&app).await, 1, "nothing more filed");
}
