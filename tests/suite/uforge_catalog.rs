//! What hammr 3.8.13 reads before it publishes: a user's images, its scanned instances and
//! scans, one scan (the publish source), and `image delete`; in XML (validated against the
//! UForge schema) and JSON, against real Postgres (and, for a published image, Glance).

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use std::time::Duration;

use crate::common;

use common::processes::Env;
use common::{
    app_with_users, assert_valid_xml, publish_json, spawn_app, DemoCloud, TestApp, PASSWORD,
};
use reqwest::StatusCode;

async fn get_xml(app: &TestApp, user: &str, path: &str) -> (StatusCode, String) {
    let resp = app.get(path, user).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    if status.is_success() {
        assert_valid_xml(&text);
    }
    (status, text)
}

async fn get_json(app: &TestApp, user: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let resp = app
        .get(path, user)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

async fn delete(app: &TestApp, user: &str, path: &str) -> (StatusCode, String) {
    let resp = app
        .client
        .delete(app.url(path))
        .basic_auth(user, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The scan part of an image URI: users/{u}/scannedinstances/{siid}/scans/{sid}.
fn scan_uri(image_uri: &str) -> &str {
    image_uri.rsplit_once("/images/").unwrap().0
}

/// The scanned instance part: users/{u}/scannedinstances/{siid}.
fn instance_uri(image_uri: &str) -> &str {
    scan_uri(image_uri).rsplit_once("/scans/").unwrap().0
}

#[tokio::test]
async fn a_users_images_carry_what_hammr_image_list_reads() {
    let (app, raw_uri) = app_with_users().await;
    let qcow2 = app.qcow2_file("disk.qcow2", 1);
    let qcow2 = app.register_image("alice", &qcow2, "qcow2").await;
    let bobs = app.raw_file("bob.raw", 1024);
    let bobs = app.register_image("bob", &bobs, "raw").await;

    let (status, xml) = get_xml(&app, "alice", "users/alice/images").await;
    assert_eq!(status, StatusCode::OK);
    assert!(xml.contains("<total>2</total>"), "{xml}");
    assert!(xml.contains(&format!("<uri>{raw_uri}</uri>")));
    assert!(xml.contains(&format!("<uri>{}</uri>", qcow2.uri())));
    assert!(!xml.contains(&bobs.uri()), "only alice's images");
    // In schema order: status (complete) … compress, fileSize, targetFormat … version.
    for part in [
        "<complete>true</complete><detailedError>false</detailedError><error>false</error>",
        "<compress>false</compress>",
        "<targetFormat><name>OpenStack QCOW2</name><format><name>openstackqcow2</name></format><type>cloud</type><credAccountType>openstack</credAccountType></targetFormat>",
        "<revision>1</revision>",
        "<version>1</version>",
        &format!("<parentUri>{}</parentUri>", scan_uri(&raw_uri)),
    ] {
        assert!(xml.contains(part), "{part} in {xml}");
    }

    let (status, json) = get_json(&app, "alice", "users/alice/images").await;
    assert_eq!(status, StatusCode::OK);
    let images = json["images"]["image"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    // A raw file is named for what it is; hammr publishes it with its OpenStack publisher.
    assert_eq!(images[0]["targetFormat"]["name"], "OpenStack RAW");
    assert_eq!(
        images[0]["targetFormat"]["format"]["name"],
        "openstackqcow2"
    );
    assert_eq!(images[0]["format"]["name"], "raw");
    let second = &images[1];
    assert_eq!(second["dbId"], qcow2.id);
    assert_eq!(second["name"], qcow2.name);
    assert_eq!(second["fileSize"], qcow2.size_bytes);
    assert_eq!(second["status"]["complete"], true);
    assert_eq!(second["status"]["cancelled"], false);
    assert_eq!(second["targetFormat"]["name"], "OpenStack QCOW2");
    assert_eq!(second["format"]["name"], "qcow2");
    assert!(second["created"].is_string());

    // `img` narrows to one image; another user's list is not reachable.
    let (_, one) = get_json(
        &app,
        "alice",
        &format!("users/alice/images?img={}", qcow2.id),
    )
    .await;
    assert_eq!(one["total"], 1);
    assert_eq!(
        get_json(&app, "bob", "users/alice/images").await.0,
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

#[tokio::test]
async fn one_scan_is_the_publish_source_with_its_uri_and_id() {
    let (app, image_uri) = app_with_users().await;
    let scan = scan_uri(&image_uri);
    let sid: i64 = scan.rsplit('/').next().unwrap().parse().unwrap();

    let (status, xml) = get_xml(&app, "alice", scan).await;
    assert_eq!(status, StatusCode::OK);
    assert!(xml.contains("<ns0:scan xmlns:ns0="), "{xml}");
    assert!(xml.contains(&format!("<dbId>{sid}</dbId>")));
    assert!(xml.contains(&format!("<uri>{scan}</uri><images><image>")));
    assert!(xml.contains("<scanned>true</scanned>"));

    let (status, json) = get_json(&app, "alice", scan).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["uri"], scan);
    assert_eq!(json["dbId"], sid);
    assert_eq!(json["status"]["complete"], true);
    assert_eq!(json["images"]["image"][0]["uri"], image_uri);

    // Another user's scan, under their login or under one's own: not found.
    assert_eq!(get_xml(&app, "bob", scan).await.0, StatusCode::NOT_FOUND);
    let as_bob = scan.replacen("users/alice/", "users/bob/", 1);
    assert_eq!(get_xml(&app, "bob", &as_bob).await.0, StatusCode::NOT_FOUND);
    let (status, body) = get_xml(&app, "alice", &format!("{scan}0")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no scan"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn scanned_instances_list_their_scans_when_asked_as_hammr_scan_list_does() {
    let (app, image_uri) = app_with_users().await;
    let instance = instance_uri(&image_uri);
    let siid: i64 = instance.rsplit('/').next().unwrap().parse().unwrap();
    let bobs = app.raw_file("bob.raw", 1024);
    app.register_image("bob", &bobs, "raw").await;

    let (status, xml) = get_xml(
        &app,
        "alice",
        "users/alice/scannedinstances?includeScans=true",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(xml.contains("<total>1</total>"), "{xml}");
    assert!(xml.contains("<overlayIncluded>false</overlayIncluded><scans><scan><created>"));
    assert!(xml.contains(&format!("<uri>{}</uri>", scan_uri(&image_uri))));
    assert!(xml.contains("<totalScans>1</totalScans>"));

    // Without includeScans, no scans (their count still).
    let (_, xml) = get_xml(&app, "alice", "users/alice/scannedinstances").await;
    assert!(
        !xml.contains("<scans>") && xml.contains("<totalScans>1</totalScans>"),
        "{xml}"
    );
    let (_, json) = get_json(&app, "alice", "users/alice/scannedinstances?includeScans=1").await;
    let listed = &json["scannedInstances"]["scannedInstance"];
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["dbId"], siid);
    assert_eq!(listed[0]["scans"]["scan"][0]["status"]["complete"], true);
    let (_, none) = get_json(&app, "alice", "users/alice/scannedinstances?name=nothing").await;
    assert_eq!(none["total"], 0);
    let (status, body) = get_json(
        &app,
        "alice",
        "users/alice/scannedinstances?includeScans=maybe",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.to_string()
            .contains("includeScans must be true or false"),
        "{body}"
    );

    // One instance, with its scans.
    let (status, xml) = get_xml(&app, "alice", instance).await;
    assert_eq!(status, StatusCode::OK);
    assert!(xml.contains("<ns0:scannedInstance xmlns:ns0="), "{xml}");
    assert!(xml.contains(&format!("<uri>{instance}</uri>")));
    let (_, json) = get_json(&app, "alice", instance).await;
    assert_eq!(json["scans"]["scan"].as_array().unwrap().len(), 1);
    assert_eq!(
        get_xml(&app, "bob", instance).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, bobs_list) = get_json(&app, "bob", "users/bob/scannedinstances").await;
    assert_eq!(bobs_list["total"], 1);
    assert_ne!(
        bobs_list["scannedInstances"]["scannedInstance"][0]["dbId"],
        siid
    );
    app.stop().await;
}

#[tokio::test]
async fn image_delete_removes_the_image_and_its_ended_tickets_then_answers_404() {
    let (app, image_uri) = app_with_users().await;
    let ticket = app
        .publish_created(
            "alice",
            &image_uri,
            publish_json("x", "demo", "demopass", "demo"),
        )
        .await;
    app.cancel("alice", &ticket.uri).await;
    let file: (String,) = sqlx::query_as("SELECT file_path FROM images")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    // Another user's image is not found, and stays.
    assert_eq!(
        delete(&app, "bob", &image_uri).await.0,
        StatusCode::NOT_FOUND
    );
    let bobs_path = image_uri.replacen("users/alice/", "users/bob/", 1);
    assert_eq!(
        delete(&app, "bob", &bobs_path).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get_xml(&app, "alice", &image_uri).await.0, StatusCode::OK);

    assert_eq!(
        delete(&app, "alice", &image_uri).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_xml(&app, "alice", &image_uri).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_xml(&app, "alice", &ticket.uri).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, list) = get_json(&app, "alice", "users/alice/images").await;
    assert_eq!(list["total"], 0);
    // The ticket's end is told as any deleted ticket's; the scan and the file stay.
    let deleted: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM ticket_events WHERE ticket_id = $1 AND kind = 'deleted'",
    )
    .bind(ticket.db_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(deleted.0, 1);
    assert_eq!(
        get_xml(&app, "alice", scan_uri(&image_uri)).await.0,
        StatusCode::OK
    );
    assert!(std::path::Path::new(&file.0).exists());

    let (status, body) = delete(&app, "alice", &image_uri).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no image"), "{body}");
    let bad = format!("{}/images/abc", scan_uri(&image_uri));
    assert_eq!(delete(&app, "alice", &bad).await.0, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn image_delete_is_refused_while_a_ticket_of_it_is_queued() {
    // No worker: the ticket stays queued.
    let (app, image_uri) = app_with_users().await;
    let ticket = app
        .publish_created(
            "alice",
            &image_uri,
            publish_json("x", "demo", "demopass", "demo"),
        )
        .await;

    let (status, body) = delete(&app, "alice", &image_uri).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains(&format!("({})", ticket.db_id)), "{body}");
    assert!(body.contains("queued or running"), "{body}");
    assert_eq!(get_xml(&app, "alice", &image_uri).await.0, StatusCode::OK);
    assert_eq!(app.ticket("alice", &ticket.uri).await.db_id, ticket.db_id);

    app.cancel("alice", &ticket.uri).await;
    assert_eq!(
        delete(&app, "alice", &image_uri).await.0,
        StatusCode::NO_CONTENT
    );
    app.stop().await;
}

#[tokio::test]
async fn image_delete_is_refused_while_publishing_and_keeps_a_published_cloud_image() {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.qcow2_file("big.qcow2", 64);
    let image = app.register_image("alice", &file, "qcow2").await;
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            publish_json("catalog", "demo", "demopass", "demo"),
        )
        .await;

    // Running (its upload under way), until it ends: the image stays.
    let started = std::time::Instant::now();
    while pimage::store::tickets::get(&app.pool, ticket.db_id)
        .await
        .unwrap()
        .unwrap()
        .state
        != pimage::store::tickets::TicketState::Running
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a worker claims it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = delete(&app, "alice", &image.uri()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let status = app
        .wait_final("alice", &ticket.uri, Duration::from_secs(120))
        .await;
    assert!(status.complete, "published: {status:?}");
    let published = app.ticket("alice", &ticket.uri).await;
    let cloud_id = published.cloud_id.clone().unwrap();

    assert_eq!(
        delete(&app, "alice", &image.uri()).await.0,
        StatusCode::NO_CONTENT
    );
    let kept: (i64,) = sqlx::query_as("SELECT count(*) FROM kept_images WHERE cloud_id = $1")
        .bind(&cloud_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        kept.0, 1,
        "the published image is the user's: the orphan sweep spares it"
    );
    let cloud = DemoCloud::login().await;
    assert!(cloud.image(&cloud_id).await.is_some(), "still in Glance");
    cloud.delete(&cloud_id).await;
    app.stop().await;
}

#[tokio::test]
async fn an_instance_registered_with_its_os_names_it_as_hammr_prints_it() {
    let (app, unknown_os) = app_with_users().await;
    let env = Env::of_app(&app, vec![]);
    let file = app.raw_file("centos.raw", 2048);
    let register = |os: &str| {
        env.run(&[
            "images",
            "register",
            "--user",
            "alice",
            "--file",
            file.to_str().unwrap(),
            "--format",
            "raw",
            "--os",
            os,
        ])
    };
    let refused = register("Gentoo 2.14 x86_64");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--os unknown operating system 'Gentoo'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("RedHat Enterprise Linux"),
        "names what is accepted: {stderr}"
    );

    let registered = register("CentOS 7 x86_64");
    assert!(registered.status.success());
    let uri = String::from_utf8(registered.stdout).unwrap();
    let instance = instance_uri(uri.trim());
    let (status, xml) = get_xml(&app, "alice", instance).await;
    assert_eq!(status, StatusCode::OK);
    assert!(xml.contains(
        "<distribution><arch>x86_64</arch><name>CentOS</name><version>7</version></distribution><name>centos.raw</name>"
    ), "{xml}");
    let (_, json) = get_json(
        &app,
        "alice",
        "users/alice/scannedinstances?includeScans=true",
    )
    .await;
    let listed = json["scannedInstances"]["scannedInstance"]
        .as_array()
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed[0]["distribution"].is_null(),
        "{}: not known",
        instance_uri(&unknown_os)
    );
    assert_eq!(listed[1]["distribution"]["name"], "CentOS");
    assert_eq!(listed[1]["distribution"]["arch"], "x86_64");
    app.stop().await;
}

/// A publish that found the image before a delete took it: the delete wins, the publish is
/// told the image is gone (not a 500), and no ticket is left without its image.
#[tokio::test]
async fn a_publish_racing_an_image_delete_is_told_the_image_is_gone() {
    let (app, image_uri) = app_with_users().await;
    let itid: i64 = image_uri.rsplit('/').next().unwrap().parse().unwrap();
    // alice's login checked once: the publish below gets past its image lookup at once.
    assert_eq!(get_xml(&app, "alice", &image_uri).await.0, StatusCode::OK);
    // Holds the image row as `DELETE …/images/{itid}` does, until it deletes it.
    let mut deleting = app.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM images WHERE id = $1 FOR UPDATE")
        .bind(itid)
        .execute(&mut *deleting)
        .await
        .unwrap();
    let publish = {
        let (client, url) = (app.client.clone(), app.url(&format!("{image_uri}/pimages")));
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .basic_auth("alice", Some(PASSWORD))
                .header("Content-Type", "application/json")
                .body(publish_json("x", "demo", "demopass", "demo"))
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !publish.is_finished(),
        "the publish waits for the image row"
    );
    sqlx::query("DELETE FROM images WHERE id = $1")
        .bind(itid)
        .execute(&mut *deleting)
        .await
        .unwrap();
    deleting.commit().await.unwrap();
    let (status, body) = publish.await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body.contains(&format!("image {itid} was deleted meanwhile")),
        "{body}"
    );
    let tickets: (i64,) = sqlx::query_as("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tickets.0, 0);
    app.stop().await;
}
