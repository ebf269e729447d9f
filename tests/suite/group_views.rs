//! A publication group's views (issue 28): its event stream `…/pimagegroups/{gid}/events`
//! (every target's events, targets added later too, resume, the end) and its console page
//! `/console/groups/{id}` (targets, links, Cancel group), against the real API, worker,
//! Postgres, RabbitMQ and lab cloud.
#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::fault_proxy::FaultProxy;
use crate::common::{self, spawn_app, DemoCloud, TestApp, PASSWORD};
use crate::console::{read_stream, Console};
use crate::groups::{catalog_target, post_as_alice, target, target_via};
use pimage::store::claims;
use pimage::store::events::TicketEvent;

/// Files a group of alice's (`path`: the image's `…/pimagegroups` or a group's `…/targets`):
/// the group answered.
async fn file_as_alice(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = post_as_alice(app, path, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer:#}");
    answer
}

fn ticket_ids(group: &Value) -> Vec<i64> {
    group["targets"]["target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["publishImage"]["dbId"].as_i64().unwrap())
        .collect()
}

/// The group's stream opened by alice again, after event `last`.
async fn resume(app: &TestApp, events_path: &str, last: i64) -> reqwest::Response {
    let request = app.get(events_path, "alice");
    let request = request.header("Last-Event-ID", last.to_string());
    request.send().await.unwrap()
}

/// The state of each ticket's last event in `events`.
fn last_states(events: &[(i64, String, TicketEvent)]) -> Vec<(i64, String)> {
    let ids: BTreeSet<i64> = events.iter().map(|(_, _, e)| e.ticket_id).collect();
    ids.into_iter()
        .map(|id| {
            let last = events.iter().rev().find(|(_, _, e)| e.ticket_id == id);
            (id, last.unwrap().2.state.clone())
        })
        .collect()
}

/// Two targets published to the lab: the group's stream carries both to `complete` and
/// ends; a resume replays only what followed the event named; after the last, 204.
#[tokio::test]
async fn a_group_stream_carries_every_target_to_its_end_and_resumes() {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("bob", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 256 * 1024);
    let image = app.register_image("alice", &file, "raw").await;
    let proxy = FaultProxy::start("127.0.0.1:9292").await;
    let body = json!({"policy": "each", "targets": [
        target("v-1", None, "demopass"), target_via("v-2", &proxy.url)]});
    let group = file_as_alice(&app, &format!("{}/pimagegroups", image.uri()), body).await;
    let uri = group["uri"].as_str().unwrap().to_string();
    let ids = ticket_ids(&group);
    let events_path = format!("{uri}/events");

    let theirs = events_path.replace("/alice/", "/bob/");
    let refused = app.get(&theirs, "bob").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);

    let stream = app.get(&events_path, "alice").send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let (seen, ended) = read_stream(stream, Duration::from_secs(120)).await;
    assert!(
        ended,
        "the stream ends when no target is unfinished: {seen:?}"
    );
    assert!(seen.iter().all(|(_, name, _)| name == "status"));
    let ends: Vec<(i64, String)> = ids.iter().map(|id| (*id, "complete".into())).collect();
    assert_eq!(last_states(&seen), ends, "{seen:?}");
    for id in &ids {
        let running = seen
            .iter()
            .any(|(_, _, e)| e.ticket_id == *id && e.state == "running");
        assert!(running, "ticket {id} was followed while running: {seen:?}");
    }

    // Resumed after the first event: what followed it (of both targets), then the end.
    let first = seen[0].0;
    let resumed = resume(&app, &events_path, first).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let (replayed, ended) = read_stream(resumed, Duration::from_secs(10)).await;
    assert!(ended);
    let replayed_ids: BTreeSet<i64> = replayed.iter().map(|e| e.0).collect();
    assert!(
        replayed_ids.iter().all(|id| *id > first),
        "{replayed_ids:?}"
    );
    let seen_after: BTreeSet<i64> = seen[1..].iter().map(|e| e.0).collect();
    assert!(
        seen_after.is_subset(&replayed_ids),
        "{seen_after:?} ⊄ {replayed_ids:?}"
    );
    assert_eq!(last_states(&replayed), ends);
    let last = seen.iter().map(|e| e.0).max().unwrap();
    let done = resume(&app, &events_path, last).await;
    assert_eq!(done.status(), StatusCode::NO_CONTENT);

    let finished: Value = app.get_as("alice", &uri).await;
    let cloud = DemoCloud::login().await;
    for target in finished["targets"]["target"].as_array().unwrap() {
        cloud.delete(target["cloudId"].as_str().unwrap()).await;
    }
    app.stop().await;
}

/// No worker: the targets stay queued. The stream follows a target added while it is open;
/// the console page lists the targets and cancels the group; the stream then ends.
#[tokio::test]
async fn the_console_cancels_a_group_whose_stream_follows_a_target_added_later() {
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("root", &["migration_publish"], true).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let body = json!({"policy": "all", "targets": [
        catalog_target("c-1", "R1"), catalog_target("c-2", "R2")]});
    let group = file_as_alice(&app, &format!("{}/pimagegroups", image.uri()), body).await;
    let uri = group["uri"].as_str().unwrap().to_string();
    let gid = group["dbId"].as_i64().unwrap();

    let stream = app
        .get(&format!("{uri}/events"), "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let reading = tokio::spawn(read_stream(stream, Duration::from_secs(30)));
    // A ticket of alice's outside the group: not on the group's stream.
    let single = common::publish_json("single", "demo", "demopass", "demo");
    let outside = app
        .publish_created("alice", &image.uri(), single)
        .await
        .db_id;
    let more = json!({"targets": [catalog_target("c-3", "R3")]});
    let grown = file_as_alice(&app, &format!("{uri}/targets"), more).await;
    let ids = ticket_ids(&grown);
    assert_eq!(ids.len(), 1, "{grown:#}");
    let mut ids = [ticket_ids(&group), ids].concat();
    ids.sort();

    let console = Console::login(&app.address, "root", PASSWORD, false)
        .await
        .unwrap();
    let page = console.get(&format!("/console/groups/{gid}")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    for id in &ids {
        let link = format!(r#"href="/console/tickets/{id}""#);
        assert!(html.contains(&link), "target {id} linked: {html}");
    }
    assert!(html.contains("R3") && html.contains(">all<"), "{html}");
    assert!(html.contains("Cancel group"), "{html}");
    let ticket_page = console.get(&format!("/console/tickets/{}", ids[0])).await;
    let ticket_html = ticket_page.text().await.unwrap();
    assert!(ticket_html.contains(&format!(r#"href="/console/groups/{gid}""#)));

    let cancel = format!("/console/groups/{gid}/cancel");
    let forged = console
        .post(&cancel, &[("csrf", "forged"), ("confirm", "yes")])
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let asked = console.post(&cancel, &[("csrf", &console.csrf)]).await;
    assert_eq!(asked.status(), StatusCode::OK, "a confirmation page first");
    assert!(asked
        .text()
        .await
        .unwrap()
        .contains("Yes, cancel the group"));
    let done = console
        .post(&cancel, &[("csrf", &console.csrf), ("confirm", "yes")])
        .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[LOCATION], format!("/console/groups/{gid}"));

    let (seen, ended) = reading.await.unwrap();
    assert!(
        ended,
        "the stream ends once every target is cancelled: {seen:?}"
    );
    let cancelled: Vec<(i64, String)> = ids.iter().map(|id| (*id, "cancelled".into())).collect();
    assert_eq!(last_states(&seen), cancelled, "{seen:?}");
    assert!(seen.iter().all(|(_, _, e)| e.ticket_id != outside));
    let after = console.get(&format!("/console/groups/{gid}")).await;
    let html = after.text().await.unwrap();
    assert!(
        !html.contains("Cancel group"),
        "nothing left to cancel: {html}"
    );
    let again = console
        .post(&cancel, &[("csrf", &console.csrf), ("confirm", "yes")])
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    app.stop().await;
}

/// Under `all`, the target that fails for good withdraws its complete sibling in the same
/// commit: the stream, open meanwhile, sends that withdrawal too before it ends (the
/// sibling was final already, so the group looked final at the failure's event).
#[tokio::test]
async fn a_group_stream_sends_the_withdrawal_that_ends_an_all_group() {
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let body = json!({"policy": "all", "targets": [
        catalog_target("w-1", "R1"), catalog_target("w-2", "R2")]});
    let group = file_as_alice(&app, &format!("{}/pimagegroups", image.uri()), body).await;
    let uri = group["uri"].as_str().unwrap().to_string();
    let [done, failing] = ticket_ids(&group)[..] else {
        panic!("two targets: {group:#}")
    };
    let stream = app.get(&format!("{uri}/events"), "alice").send().await;
    let reading = tokio::spawn(read_stream(stream.unwrap(), Duration::from_secs(30)));

    let outcomes = [
        (
            done,
            claims::Outcome::Published {
                cloud_id: "img-w-1".into(),
                bytes: 4096,
            },
        ),
        (
            failing,
            claims::Outcome::Failed {
                error_message: "refused".into(),
                detail: None,
            },
        ),
    ];
    for (id, outcome) in outcomes {
        let lease = Duration::from_secs(30);
        let claim = claims::claim(&app.pool, id, "host:1", lease, 5)
            .await
            .unwrap();
        let token = claim.unwrap().token;
        claims::finish(&app.pool, id, token, &outcome)
            .await
            .unwrap()
            .unwrap();
    }

    let (seen, ended) = reading.await.unwrap();
    assert!(ended, "{seen:?}");
    let ends = vec![
        (done, "cancelled".to_string()),
        (failing, "error".to_string()),
    ];
    assert_eq!(last_states(&seen), ends, "{seen:?}");
    let withdrawn = &seen.iter().rev().find(|e| e.2.ticket_id == done).unwrap().2;
    assert!(withdrawn.message.starts_with("withdrawn"), "{seen:?}");
    app.stop().await;
}
