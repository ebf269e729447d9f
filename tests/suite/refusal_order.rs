//! Which refusal a request wrong in two ways hears, as the API has always answered: login
//! (401), then the format (406), then for a publish the rate (429), then `{uid}` (403/404),
//! then the ids and the query (400), then the resource (404). And a repeated query
//! parameter is read as its last value. Real API and Postgres; no worker.
#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use common::{app_with_users, publish_json, spawn_app_with, PASSWORD};
use reqwest::StatusCode;

/// `image_uri` with its image id replaced by one no image has.
fn missing_image(image_uri: &str) -> String {
    let (scan, _) = image_uri.rsplit_once('/').unwrap();
    format!("{scan}/999999")
}

#[tokio::test]
async fn an_unacceptable_format_is_refused_before_the_path_is_looked_at() {
    let (app, image_uri) = app_with_users().await;
    let scan_uri = image_uri.rsplit_once("/images/").unwrap().0.to_string() + "/images";
    let cases = [
        // bob at alice's resources: 406, not the 404 of another user's path.
        ("bob", image_uri.clone()),
        ("bob", format!("{image_uri}/pimages")),
        ("bob", scan_uri),
        ("bob", "users/alice/pimages?img=not-an-image".to_string()),
        ("bob", "users/alice/pimages/status".to_string()),
        // carol lacks the entitlement: 406, not 403.
        ("carol", image_uri.clone()),
        // alice at a missing image or ticket: 406, not 404.
        ("alice", missing_image(&image_uri)),
        ("alice", format!("{image_uri}/pimages/999999")),
        ("alice", format!("{image_uri}/pimages/999999/status")),
    ];
    for (user, path) in cases {
        let answer = app
            .get(&path, user)
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::NOT_ACCEPTABLE,
            "GET {path} as {user}"
        );
    }
    // No login at all is still a 401 first.
    let answer = app
        .client
        .get(app.url(&image_uri))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn a_bad_delete_flag_is_refused_before_the_ticket_is_looked_at() {
    let (app, image_uri) = app_with_users().await;
    for path in [
        format!("{image_uri}/pimages/999999?deleteCloudImage=maybe"),
        format!(
            "{}/pimages/1?deleteCloudImage=maybe",
            missing_image(&image_uri)
        ),
    ] {
        let answer = app
            .client
            .delete(app.url(&path))
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "DELETE {path}");
        let text = answer.text().await.unwrap();
        assert!(
            text.contains("deleteCloudImage must be true or false"),
            "{text}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_publish_spends_the_rate_before_its_path_is_looked_at() {
    let app = spawn_app_with(false, |s| s.limits.publish_burst = 1).await;
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("bob", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image_uri = app.register_image("alice", &file, "raw").await.uri();
    let body = || publish_json("order", "demo", "demopass", "demo");
    // bob's publish at alice's image is refused (404), but it took his one token.
    let first = app
        .publish("bob", &image_uri, "application/json", body())
        .await;
    assert_eq!(first.status(), StatusCode::NOT_FOUND);
    let second = app
        .publish("bob", &image_uri, "application/json", body())
        .await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    // A wrong format is refused before a token is taken: alice still has hers.
    let unacceptable = app
        .client
        .post(app.url(&format!("{image_uri}/pimages")))
        .basic_auth("alice", Some(PASSWORD))
        .header("Accept", "text/html")
        .header("Content-Type", "application/json")
        .body(body())
        .send()
        .await
        .unwrap();
    assert_eq!(unacceptable.status(), StatusCode::NOT_ACCEPTABLE);
    let missing = app
        .publish(
            "alice",
            &missing_image(&image_uri),
            "application/json",
            body(),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_query_parameter_is_read_as_its_last_value() {
    let (app, image_uri) = app_with_users().await;
    let ticket = app
        .publish_created(
            "alice",
            &image_uri,
            publish_json("order", "demo", "demopass", "demo"),
        )
        .await;
    let image_id = image_uri.rsplit('/').next().unwrap();
    for (query, lists_it) in [
        (format!("img=999999&img={image_id}"), true),
        (format!("img={image_id}&img=999999"), false),
        (format!("img=not-an-image&img={image_uri}"), true),
    ] {
        for list in ["users/alice/pimages", "users/alice/pimages/status"] {
            let answer = app
                .get(&format!("{list}?{query}"), "alice")
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{list}?{query}");
            let text = answer.text().await.unwrap();
            assert_eq!(
                text.contains(&ticket.uri),
                lists_it,
                "{list}?{query}: {text}"
            );
        }
    }
    let answer = app
        .client
        .delete(app.url(&format!(
            "{}?deleteCloudImage=maybe&deleteCloudImage=false",
            ticket.uri
        )))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    app.stop().await;
}
