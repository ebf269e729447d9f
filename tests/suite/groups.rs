//! Publication groups (issue 28, items 2 and 3): one request, several targets, each an
//! ordinary ticket; the group's status aggregated; `all` and `each` against the real lab.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common::fault_proxy::FaultProxy;
use crate::common::{self, spawn_app, DemoCloud, TestApp, PASSWORD};
use pimage::store::claims::{self, Outcome};
use pimage::store::groups::{self, FiledGroup, GroupPolicy, NewTarget, Source};
use pimage::store::{users, TicketState};

/// A target: the lab's demo project, in `region` (None: the configured one), as `password`.
pub(crate) fn target(name: &str, region: Option<&str>, password: &str) -> Value {
    let mut body: Value =
        serde_json::from_str(&common::publish_json(name, "demo", password, "demo")).unwrap();
    if let Some(region) = region {
        body["publishLocation"] = region.into();
    }
    body
}

/// A target through `glance` (a proxy to the lab's Glance: another given Glance, so no copy
/// between it and a target straight to the lab; each uploads).
pub(crate) fn target_via(name: &str, glance: &str) -> Value {
    serde_json::from_str(&common::publish_json_via(
        name, "demo", "demopass", "demo", glance,
    ))
    .unwrap()
}

/// A target whose Glance comes from the catalog of `region` (a place of its own per region).
pub(crate) fn catalog_target(name: &str, region: &str) -> Value {
    let mut t = target(name, Some(region), "demopass");
    t["credAccount"]
        .as_object_mut()
        .unwrap()
        .remove("glanceUrl");
    t
}

/// POSTs `body` (JSON) as alice to `path`: the status and the answer.
pub(crate) async fn post_as_alice(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(app.url(path))
        .basic_auth("alice", Some(PASSWORD))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })),
    )
}

/// Files a group of the image at `image_uri`.
pub(crate) async fn post_group(app: &TestApp, image_uri: &str, body: Value) -> (StatusCode, Value) {
    post_as_alice(app, &format!("{image_uri}/pimagegroups"), body).await
}

async fn group(app: &TestApp, uri: &str) -> Value {
    app.get_as("alice", uri).await
}

/// Polls the group until its state is one of `states`.
pub(crate) async fn wait_group(app: &TestApp, uri: &str, states: &[&str]) -> Value {
    let started = Instant::now();
    loop {
        let g = group(app, uri).await;
        if states.iter().any(|s| g["state"] == *s) {
            return g;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "group never {states:?}: {g:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn targets(g: &Value) -> Vec<Value> {
    g["targets"]["target"].as_array().unwrap().clone()
}

async fn app_and_image() -> (TestApp, String) {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 256 * 1024);
    let image = app.register_image("alice", &file, "raw").await;
    (app, image.uri())
}

#[tokio::test]
async fn a_group_publishes_each_target_as_an_ordinary_ticket() {
    let (app, image) = app_and_image().await;
    // Two places in the lab: its Glance, and the same Glance through a proxy (another URL,
    // so another cloud as far as copies go: each target uploads).
    let proxy = FaultProxy::start("127.0.0.1:9292").await;
    let through_proxy: Value = serde_json::from_str(&common::publish_json_via(
        "g-2", "demo", "demopass", "demo", &proxy.url,
    ))
    .unwrap();
    let body =
        json!({"policy": "each", "targets": [target("g-1", None, "demopass"), through_proxy]});
    let (status, filed) = post_group(&app, &image, body).await;
    assert_eq!(status, StatusCode::CREATED, "{filed:#}");
    let uri = filed["uri"].as_str().unwrap().to_string();
    assert_eq!(filed["policy"], "each");
    assert_eq!(filed["total"], 2);

    let done = wait_group(&app, &uri, &["complete", "partial", "error", "cancelled"]).await;
    assert_eq!(done["state"], "complete", "{done:#}");
    assert_eq!(done["complete"], 2);
    assert_eq!(done["percentage"], 100);
    assert_eq!(done["bytesLoaded"], 2 * 256 * 1024);
    let cloud = DemoCloud::login().await;
    let mut ids = vec![];
    for t in targets(&done) {
        // Each target is a ticket the UForge routes serve as any other.
        let ticket = app
            .ticket("alice", t["publishImage"]["uri"].as_str().unwrap())
            .await;
        assert_eq!(ticket.cloud_id.as_deref(), t["cloudId"].as_str());
        let id = t["cloudId"].as_str().unwrap().to_string();
        assert_eq!(cloud.image(&id).await.unwrap()["status"], "active");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "an image per target");
    for id in ids {
        cloud.delete(&id).await;
    }
    app.stop().await;
}

/// A group of `policy`: one target straight to the lab's Glance, one through a proxy that
/// slows its upload and cuts it half-way, with a single attempt allowed: it fails for good
/// after the first completed. The finished group.
async fn one_completes_then_one_fails(policy: &str) -> (TestApp, Value) {
    let app = common::spawn_app_with(true, |s| s.worker.retry.max_attempts = 1).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 256 * 1024);
    let image = app.register_image("alice", &file, "raw").await.uri();
    let proxy = FaultProxy::start("127.0.0.1:9292").await;
    proxy.throttle(64 * 1024);
    proxy.reset_after("PUT", "/file", 128 * 1024, 1);
    let failing: Value = serde_json::from_str(&common::publish_json_via(
        "cut", "demo", "demopass", "demo", &proxy.url,
    ))
    .unwrap();
    let body = json!({"policy": policy, "targets": [target("ok", None, "demopass"), failing]});
    let (status, filed) = post_group(&app, &image, body).await;
    assert_eq!(status, StatusCode::CREATED, "{filed:#}");
    let uri = filed["uri"].as_str().unwrap().to_string();
    let done = wait_group(&app, &uri, &["error", "cancelled", "complete", "partial"]).await;
    assert_eq!(proxy.injected(), 1, "the cut upload");
    (app, done)
}

/// Under `all`, a target that fails for good takes the others with it: the one that had
/// completed is withdrawn and its image removed; nothing stays in the cloud.
#[tokio::test]
async fn under_all_one_target_failing_for_good_leaves_nothing_in_the_cloud() {
    let (app, done) = one_completes_then_one_fails("all").await;
    assert_eq!(done["state"], "error", "{done:#}");
    let states: Vec<_> = targets(&done).iter().map(|t| t["state"].clone()).collect();
    assert_eq!(states, [json!("cancelled"), json!("error")], "{done:#}");
    let message = targets(&done)[0]["publishImage"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.starts_with("withdrawn: target"), "{message}");
    assert!(message.contains("ended in error (policy all)"), "{message}");
    let cloud = DemoCloud::login().await;
    for t in targets(&done) {
        let id = t["publishImage"]["dbId"].as_i64().unwrap();
        let key = app.ticket_key(id).await;
        cloud
            .wait_no_image_of_ticket(&key, "a target of a failed `all` group")
            .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn under_each_the_targets_that_completed_stay() {
    let (app, done) = one_completes_then_one_fails("each").await;
    assert_eq!(done["state"], "partial", "{done:#}");
    let kept = targets(&done)[0]["cloudId"].as_str().unwrap().to_string();
    let cloud = DemoCloud::login().await;
    assert_eq!(cloud.image(&kept).await.unwrap()["status"], "active");
    cloud.delete(&kept).await;
    app.stop().await;
}

#[tokio::test]
async fn a_group_is_cancelled_whole_and_bad_requests_store_nothing() {
    // A quota of 2: a group of 3 targets is refused whole.
    let app = common::spawn_app_with(false, |s| s.limits.queued_tickets_per_user = 2).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await.uri();
    let two = || json!({"targets": [catalog_target("a", "R1"), catalog_target("b", "R2")]});

    let refused = [
        (
            json!({"policy": "most", "targets": [target("a", None, "demopass")]}),
            "'all' or 'each'",
        ),
        (
            json!({"targets": [target("a", None, "demopass"), target("b", None, "demopass")]}),
            "target 2 publishes where target 1 already does",
        ),
        (json!({"targets": []}), "1 to 16"),
    ];
    for (body, says) in refused {
        let (status, answer) = post_group(&app, &image, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer:#}");
        assert!(answer.to_string().contains(says), "{says}: {answer:#}");
    }
    let three = json!({"targets": [target("a", None, "demopass"),
        catalog_target("b", "R2"), catalog_target("c", "R3")]});
    let (status, answer) = post_group(&app, &image, three).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer:#}");
    assert!(
        answer.to_string().contains("this request adds 3"),
        "{answer:#}"
    );
    assert_eq!(
        tickets(&app.pool).await,
        0,
        "nothing stored by refused requests"
    );

    let (status, filed) = post_group(&app, &image, two()).await;
    assert_eq!(status, StatusCode::CREATED, "{filed:#}");
    let uri = filed["uri"].as_str().unwrap().to_string();
    let cancel = |uri: String| {
        app.client
            .delete(app.url(&format!("{uri}/cancel")))
            .basic_auth("alice", Some(PASSWORD))
            .send()
    };
    assert_eq!(
        cancel(uri.clone()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let g = group(&app, &uri).await;
    assert_eq!(g["state"], "cancelled", "{g:#}");
    assert_eq!(
        cancel(uri.clone()).await.unwrap().status(),
        StatusCode::CONFLICT
    );
    // Another user's group is not there for them.
    app.add_user("bob", &["migration_publish"], false).await;
    let theirs = app
        .get(&uri.replace("/alice/", "/bob/"), "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn tickets(pool: &PgPool) -> i64 {
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM publish_tickets"#)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A target that copies a sibling is held (no outbox row, so no worker takes it) until that
/// sibling ends; then it is released with an outbox row for the caller to hand on.
#[tokio::test]
async fn a_held_target_is_released_when_its_source_ends() {
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let alice = users::find_by_login(&app.pool, "alice")
        .await
        .unwrap()
        .unwrap()
        .id;
    let new = |name: &str, copies_from| NewTarget {
        ticket: common::new_ticket(image.id, alice, name),
        store: None,
        copies_from,
    };
    let filed = groups::file(
        &app.pool,
        alice,
        image.id,
        GroupPolicy::Each,
        &[new("source", Source::None), new("copy", Source::Filed(0))],
        10,
    )
    .await
    .unwrap();
    let FiledGroup::Created(_, created) = filed else {
        panic!("over quota")
    };
    let (source, copy) = (&created[0], &created[1]);
    assert!(source.1.is_some(), "the source is queued for RabbitMQ");
    assert_eq!(copy.1, None, "the copy is held");
    assert_eq!(copy.0.copies_from, Some(source.0.id));
    let claim = claims::claim(&app.pool, source.0.id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let published = Outcome::Published {
        cloud_id: "img-1".into(),
        bytes: 4096,
    };
    let finished = claims::finish(&app.pool, source.0.id, claim.token, &published)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.state, TicketState::Complete);
    assert_eq!(finished.released.len(), 1);
    assert_eq!(
        finished.released[0].0, copy.0.id,
        "the copy, released with its outbox row"
    );
    app.stop().await;
}

/// Each group route as each kind of caller: no login 401, no entitlement 403, another user
/// 404 (the group is not there for them), the owner and an administrator its success status.
#[tokio::test]
async fn every_group_route_against_the_access_rules() {
    let (app, image) = common::app_with_users().await;
    let mut region = 0;
    // Glance from the catalog, in a region of its own each: never the same place twice.
    let mut next_target = || {
        region += 1;
        catalog_target("t", &format!("R{region}"))
    };
    for (method, ok, template) in crate::security::GROUP_ROUTES {
        for (caller, expected) in [
            (None, 401),
            (Some("carol"), 403),
            (Some("bob"), 404),
            (Some("alice"), ok),
            (Some("root"), ok),
        ] {
            // A fresh unfinished group per call: a cancel ends its group.
            let (status, filed) =
                post_group(&app, &image, json!({"targets": [next_target()]})).await;
            assert_eq!(status, StatusCode::CREATED, "{filed:#}");
            let group = filed["uri"].as_str().unwrap();
            let path = if template.contains("/images/") {
                format!("{image}/pimagegroups")
            } else {
                let rest = template.split("{gid}").nth(1).unwrap();
                format!("{group}{rest}")
            };
            let mut request = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&path),
                )
                .header("accept", "application/json");
            if let Some(login) = caller {
                request = request.basic_auth(login, Some(PASSWORD));
            }
            if method == "POST" {
                request = request
                    .header("content-type", "application/json")
                    .body(json!({"targets": [next_target()]}).to_string());
            }
            let resp = request.send().await.unwrap();
            assert_eq!(
                resp.status().as_u16(),
                expected,
                "{method} {path} as {caller:?}"
            );
        }
    }
    app.stop().await;
}
