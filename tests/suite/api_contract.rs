//! The API contract (spec/API.md), route by route, in XML and JSON, against real Postgres
//! and RabbitMQ. No worker runs here: tickets stay queued.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use common::{app_with_users, assert_valid_xml, spawn_app, TestApp, PASSWORD};
use reqwest::StatusCode;

const EXAMPLES: [&str; 3] = [
    include_str!("../fixtures/publish-request.canonical.xml"),
    include_str!("../fixtures/publish-request.sdk.xml"),
    include_str!("../fixtures/publish-request.seed.xml"),
];

async fn get_xml(app: &TestApp, path: &str, user: &str) -> (StatusCode, String) {
    let resp = app.get(path, user).send().await.unwrap();
    let status = resp.status();
    if status.is_success() {
        assert_eq!(
            resp.headers()["content-type"],
            "application/xml",
            "XML answers are exactly application/xml"
        );
    }
    (status, resp.text().await.unwrap())
}

async fn get_json(app: &TestApp, path: &str, user: &str) -> (StatusCode, serde_json::Value) {
    let resp = app
        .get(path, user)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (status, resp.json().await.unwrap())
}

/// Publishes the canonical example as alice; returns the ticket URI (relative to /api).
async fn publish_one(app: &TestApp, image_uri: &str) -> String {
    let resp = app
        .publish(
            "alice",
            image_uri,
            "application/xml",
            EXAMPLES[0].to_string(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: common::PublishImage = resp.json().await.unwrap();
    body.uri.clone()
}

#[tokio::test]
async fn service_status_answers_without_login_in_both_formats() {
    let app = spawn_app(false).await;
    let resp = app.client.get(app.url("status")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/xml");
    let xml = resp.text().await.unwrap();
    assert!(xml.contains("<alive>true</alive>"));
    assert_valid_xml(&xml);
    let json: serde_json::Value = app
        .client
        .get(app.url("status"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["alive"], true);
    app.stop().await;
}

/// UForge clients compare `version` with their own and stop when it differs (hammr 3.8.13:
/// "not compatible with the version of UForge"), so it is the UForge version, a setting;
/// pimage's own version is in the `Server` header, `/healthz` and `pimage_build_info`.
#[tokio::test]
async fn service_status_answers_the_uforge_version_and_pimage_names_its_own_elsewhere() {
    let own = env!("CARGO_PKG_VERSION");
    let app = spawn_app(false).await;
    let resp = app.client.get(app.url("status")).send().await.unwrap();
    assert_eq!(resp.headers()["server"], format!("pimage/{own}").as_str());
    let xml = resp.text().await.unwrap();
    assert!(xml.contains("<version>3.8.13</version>"), "{xml}");
    let base = &app.address;
    let healthz = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(
        healthz.headers()["server"],
        format!("pimage/{own}").as_str()
    );
    assert_eq!(healthz.text().await.unwrap(), format!("ok\npimage {own}\n"));
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(&format!("pimage_build_info{{version=\"{own}\"}} 1")),
        "{metrics}"
    );
    app.stop().await;

    let app = common::spawn_app_with(false, |s| s.api.uforge_version = "3.9.1".into()).await;
    let json: serde_json::Value = app
        .client
        .get(app.url("status"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["version"], "3.9.1");
    app.stop().await;
}

#[tokio::test]
async fn publish_accepts_every_spec_example_and_never_returns_the_password() {
    let (app, image_uri) = app_with_users().await;
    for example in EXAMPLES {
        let resp = app
            .client
            .post(app.url(&format!("{image_uri}/pimages")))
            .basic_auth("alice", Some(PASSWORD))
            .header("Content-Type", "application/xml")
            .body(example)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "example accepted: {example}"
        );
        assert_eq!(resp.headers()["content-type"], "application/xml");
        assert!(resp.headers().contains_key("location"));
        let xml = resp.text().await.unwrap();
        assert_valid_xml(&xml);
        assert!(xml.contains(r#"xsi:type="ns0:PublishImageOpenStack""#));
        assert!(xml.contains(r#"<credAccount xsi:type="ns0:CredAccountOpenStack">"#));
        assert!(xml.contains("<secretsMissing>true</secretsMissing>"));
        assert!(
            xml.contains("<complete>false</complete>")
                && xml.contains("<percentage>0</percentage>")
        );
        for password in [">demopass<", ">secret<", ">password<", "<password>"] {
            assert!(!xml.contains(password), "the answer carries no password");
        }
        // The path names the image: the body's imageUri never overrides it.
        assert!(xml.contains(&format!("<imageUri>{image_uri}</imageUri>")));
    }
    // Stored encrypted: no row holds a password in clear text.
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT cloud_password_enc FROM publish_tickets")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (enc,) in rows {
        for pw in [&b"demopass"[..], b"secret", b"password"] {
            assert!(!enc.windows(pw.len()).any(|w| w == pw));
        }
    }
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, '|') FROM publish_tickets t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!dump.contains("demopass"));
    // The outbox empties, just after the answers: RabbitMQ confirmed each ticket.
    app.wait_handed_off().await;
    app.stop().await;
}

#[tokio::test]
async fn every_read_route_answers_valid_xml_and_json() {
    let (app, image_uri) = app_with_users().await;
    let ticket_uri = publish_one(&app, &image_uri).await;
    let scan_uri = image_uri.rsplit_once("/images/").unwrap().0.to_string() + "/images";
    let image_id = image_uri.rsplit('/').next().unwrap().to_string();
    let routes = [
        (scan_uri.clone(), "images"),
        (image_uri.clone(), "image"),
        (format!("{image_uri}/pimages"), "publishImages"),
        (ticket_uri.clone(), "publishImage"),
        (format!("{ticket_uri}/status"), "status"),
        ("users/alice/pimages".to_string(), "publishImages"),
        (
            format!("users/alice/pimages?img={image_id}"),
            "publishImages",
        ),
        ("users/alice/pimages/status".to_string(), "statuses"),
        (
            format!("users/alice/pimages/status?img={image_uri}"),
            "statuses",
        ),
    ];
    for (path, root) in routes {
        let (status, xml) = get_xml(&app, &path, "alice").await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {xml}");
        assert!(
            xml.contains(&format!("<ns0:{root} ")),
            "GET {path} has root {root}: {xml}"
        );
        assert_valid_xml(&xml);
        let (status, json) = get_json(&app, &path, "alice").await;
        assert_eq!(status, StatusCode::OK);
        assert!(json.is_object(), "GET {path} JSON: {json}");
    }
    let (_, list) = get_json(&app, &format!("{image_uri}/pimages"), "alice").await;
    assert_eq!(list["total"], 1);
    assert_eq!(
        list["publishImages"]["publishImage"][0]["uri"],
        ticket_uri.as_str()
    );
    let (_, status) = get_json(&app, &format!("{ticket_uri}/status"), "alice").await;
    assert_eq!(status["complete"], false);
    assert_eq!(status["percentage"], 0);
    assert!(status["message"].as_str().unwrap().contains("queued"));
    let (_, images) = get_json(&app, &scan_uri, "alice").await;
    assert_eq!(images["images"]["image"][0]["fileSize"], 4096);
    // The other user's list is empty, and the filter narrows to one image.
    app.add_user("dave", &["migration_publish"], false).await;
    let (_, none) = get_json(&app, "users/dave/pimages/status", "dave").await;
    assert_eq!(none["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn get_answers_304_when_the_etag_matches() {
    let (app, image_uri) = app_with_users().await;
    let ticket_uri = publish_one(&app, &image_uri).await;
    for path in [
        ticket_uri.clone(),
        format!("{ticket_uri}/status"),
        image_uri.clone(),
    ] {
        let first = app.get(&path, "alice").send().await.unwrap();
        let etag = first.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(first.headers()["vary"], "accept");
        let body = first.text().await.unwrap();
        let digest = body
            .split("<digest>")
            .nth(1)
            .unwrap()
            .split("</digest>")
            .next()
            .unwrap();
        assert_eq!(
            etag,
            format!("\"{digest}\""),
            "the ETag is the object's digest"
        );
        let second = app
            .get(&path, "alice")
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(
            second.status(),
            StatusCode::NOT_MODIFIED,
            "GET {path} with its ETag"
        );
        let other = app
            .get(&path, "alice")
            .header("If-None-Match", "\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }
    // A change to the ticket changes its ETag.
    let before = app
        .get(&ticket_uri, "alice")
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .clone();
    app.cancel("alice", &ticket_uri).await;
    let after = app
        .get(&ticket_uri, "alice")
        .header("If-None-Match", before.to_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    app.stop().await;
}

/// Checks an error answer: status, a valid uforgeError, and a message containing `needle`.
async fn assert_error(resp: reqwest::Response, status: StatusCode, needle: &str) {
    assert_eq!(resp.status(), status);
    let json = resp.headers()["content-type"] == "application/json";
    let text = resp.text().await.unwrap();
    if json {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["statusCode"], status.as_u16());
        let msg = v["localizedErrorMsg"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "message {msg:?} mentions {needle:?}");
    } else {
        assert!(text.contains("<ns0:uforgeError "), "{text}");
        assert!(text.contains(&format!("<statusCode>{}</statusCode>", status.as_u16())));
        assert!(text.contains(needle), "{text} mentions {needle:?}");
        assert_valid_xml(&text);
    }
}

#[tokio::test]
async fn authentication_and_authorisation_errors() {
    let (app, image_uri) = app_with_users().await;
    let ticket_uri = publish_one(&app, &image_uri).await;
    for path in [
        image_uri.clone(),
        ticket_uri.clone(),
        format!("{ticket_uri}/status"),
        "users/alice/pimages".into(),
    ] {
        // No credentials, wrong password, unknown user: the same 401.
        let resp = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Basic realm="pimage""#
        );
        assert_error(resp, StatusCode::UNAUTHORIZED, "authentication required").await;
        let resp = app
            .client
            .get(app.url(&path))
            .basic_auth("alice", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::UNAUTHORIZED, "authentication required").await;
        let resp = app
            .client
            .get(app.url(&path))
            .basic_auth("nobody", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::UNAUTHORIZED, "authentication required").await;
        // Without the entitlement: 403.
        assert_error(
            app.get(&path, "carol").send().await.unwrap(),
            StatusCode::FORBIDDEN,
            "migration_publish",
        )
        .await;
        // Another user's resource looks absent: 404, in XML and in JSON.
        assert_error(
            app.get(&path, "bob").send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "no user",
        )
        .await;
        let resp = app
            .get(&path, "bob")
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::NOT_FOUND, "no user").await;
        // An administrator reaches it.
        assert_eq!(
            app.get(&path, "root").send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    // bob cannot publish, cancel or delete alice's tickets either.
    let resp = app
        .publish("bob", &image_uri, "application/xml", EXAMPLES[0].into())
        .await;
    assert_error(resp, StatusCode::NOT_FOUND, "no user").await;
    for path in [format!("{ticket_uri}/cancel"), ticket_uri.clone()] {
        let resp = app
            .client
            .delete(app.url(&path))
            .basic_auth("bob", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::NOT_FOUND, "no user").await;
    }
    let (_, status) = get_json(&app, &format!("{ticket_uri}/status"), "alice").await;
    assert_eq!(status["cancelled"], false, "bob's cancel changed nothing");
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_store_nothing() {
    let (app, image_uri) = app_with_users().await;
    let post = |body: &str, ct: &str| {
        app.client
            .post(app.url(&format!("{image_uri}/pimages")))
            .basic_auth("alice", Some(PASSWORD))
            .header("Content-Type", ct.to_string())
            .body(body.to_string())
            .send()
    };
    assert_error(
        post("<publishImage><credAccount>", "application/xml")
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed XML",
    )
    .await;
    assert_error(
        post("{\"credAccount\": ", "application/json")
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed JSON",
    )
    .await;
    let no_password = EXAMPLES[0].replace("<password>demopass</password>", "");
    assert_error(
        post(&no_password, "application/xml").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "credAccount/password",
    )
    .await;
    // Found by the fuzzer: JSON took an empty password that XML refused.
    let empty_password = r#"{"keystoneProject":"p","credAccount":{"keystoneUrl":"http://k","login":"u","password":""}}"#;
    assert_error(
        post(empty_password, "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "credAccount/password is required",
    )
    .await;
    let v2 = EXAMPLES[0].replace(
        "<keystoneVersion>v3</keystoneVersion>",
        "<keystoneVersion>v2.0</keystoneVersion>",
    );
    assert_error(
        post(&v2, "application/xml").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "v2.0",
    )
    .await;
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><publishImage>&b;</publishImage>"#;
    assert_error(
        post(bomb, "application/xml").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "DTD",
    )
    .await;
    assert_error(
        post(EXAMPLES[0], "text/plain").await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "text/plain",
    )
    .await;
    let huge = format!(
        "<publishImage><displayName>{}</displayName></publishImage>",
        "x".repeat(200_000)
    );
    assert_error(
        post(&huge, "application/xml").await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than",
    )
    .await;
    let resp = app
        .get(&image_uri, "alice")
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        StatusCode::NOT_ACCEPTABLE,
        "application/xml or application/json",
    )
    .await;
    // Ids: not numbers, negative, overflowing, unknown.
    let bad_ids = [
        format!(
            "{}/images/abc",
            image_uri.rsplit_once("/images/").unwrap().0
        ),
        image_uri.replacen("scannedinstances/", "scannedinstances/-", 1),
        image_uri.replacen(
            "scannedinstances/",
            "scannedinstances/99999999999999999999",
            1,
        ),
    ];
    for path in bad_ids {
        assert_error(
            app.get(&path, "alice").send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "positive integer",
        )
        .await;
    }
    let unknown = format!(
        "{}/images/999999",
        image_uri.rsplit_once("/images/").unwrap().0
    );
    assert_error(
        app.get(&unknown, "alice").send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "no image 999999",
    )
    .await;
    assert_error(
        app.get(&format!("{image_uri}/pimages/77"), "alice")
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "no publish ticket 77",
    )
    .await;
    assert_error(
        app.get("no/such/route", "alice").send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "no such resource",
    )
    .await;
    let resp = app
        .client
        .put(app.url(&image_uri))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::METHOD_NOT_ALLOWED, "not allowed").await;
    // Nothing was stored by any of them.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    app.stop().await;
}

#[tokio::test]
async fn publishing_an_image_whose_file_is_gone_is_a_conflict() {
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("gone.raw", 1024);
    let image = app.register_image("alice", &file, "raw").await;
    std::fs::remove_file(&file).unwrap();
    let resp = app
        .publish("alice", &image.uri(), "application/xml", EXAMPLES[0].into())
        .await;
    assert_error(resp, StatusCode::CONFLICT, "file is missing").await;
    app.stop().await;
}

#[tokio::test]
async fn cancel_and_delete_a_queued_ticket() {
    let (app, image_uri) = app_with_users().await;
    let ticket_uri = publish_one(&app, &image_uri).await;
    let delete = |path: String| {
        app.client
            .delete(app.url(&path))
            .basic_auth("alice", Some(PASSWORD))
            .send()
    };
    assert_eq!(
        delete(format!("{ticket_uri}/cancel"))
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let (_, status) = get_json(&app, &format!("{ticket_uri}/status"), "alice").await;
    assert_eq!(status["cancelled"], true);
    assert_eq!(status["complete"], false);
    // A cancelled ticket cannot be cancelled again.
    assert_error(
        delete(format!("{ticket_uri}/cancel")).await.unwrap(),
        StatusCode::CONFLICT,
        "already ended",
    )
    .await;
    assert_eq!(
        delete(ticket_uri.clone()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&ticket_uri, "alice").send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}
