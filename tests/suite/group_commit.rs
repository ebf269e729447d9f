//! Group commit of publishes (issue 26): concurrent publishes stored as one statement and one
//! commit (`store::tickets::file_batch`, `api::filing`), each answered only after its own
//! batch committed, each as it would have been alone: its own row back, its own quota count,
//! its own error.

use std::collections::HashSet;

use crate::common::{self, new_ticket, publish_json, spawn_app_with, TestApp};
use pimage::store::tickets::{self, Filed, NewTicket};
use pimage::store::Image;
use reqwest::StatusCode;

/// An app (no worker) with alice, her image, and her user id.
async fn app_with_image(queued_per_user: i64) -> (TestApp, Image, i64) {
    let app = spawn_app_with(false, |s| {
        s.limits.queued_tickets_per_user = queued_per_user;
        s.limits.publishes_per_minute = 10_000;
        s.limits.publish_burst = 10_000;
    })
    .await;
    app.add_user("alice", &[pimage::api::PUBLISH_ENTITLEMENT], false)
        .await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let alice = pimage::store::users::find_by_login(&app.pool, "alice")
        .await
        .unwrap()
        .unwrap();
    (app, image, alice.id)
}

fn created(filed: Result<Filed, sqlx::Error>) -> tickets::Ticket {
    match filed {
        Ok(Filed::Created(ticket, _outbox_id)) => *ticket,
        other => panic!("expected a created ticket, got {other:?}"),
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn a_batch_is_one_commit_and_each_ticket_comes_back_as_it_was_given() {
    let (app, image, alice) = app_with_image(200).await;
    let image = image.id;
    let news: Vec<NewTicket> = (0..20)
        .map(|n| new_ticket(image, alice, &format!("ticket {n}")))
        .collect();
    let filed = tickets::file_batch(&app.pool, &news, 200).await;
    let names: Vec<String> = filed.into_iter().map(|f| created(f).display_name).collect();
    let given: Vec<String> = news.iter().map(|n| n.display_name.clone()).collect();
    assert_eq!(
        names, given,
        "each outcome is its own ticket's, in the order given"
    );
    // `now()` is the transaction's start: one value for the whole batch, one commit.
    let commits = count(
        &app,
        "SELECT count(DISTINCT created_at) FROM publish_tickets",
    )
    .await;
    assert_eq!(commits, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM ticket_outbox").await, 20);
    let events = "SELECT count(*) FROM ticket_events WHERE kind = 'created'";
    assert_eq!(count(&app, events).await, 20);
    app.stop().await;
}

#[tokio::test]
async fn one_bad_ticket_in_a_batch_fails_alone_with_its_own_error() {
    let (app, image, alice) = app_with_image(200).await;
    let image = image.id;
    let mut gone_account = new_ticket(image, alice, "its account was deleted");
    gone_account.cloud_account_id = Some(987_654);
    let news = vec![
        new_ticket(image, alice, "good 1"),
        new_ticket(987_654, alice, "its image was deleted"),
        new_ticket(image, alice, "good 2"),
        gone_account,
    ];
    let mut filed = tickets::file_batch(&app.pool, &news, 200).await.into_iter();
    assert_eq!(created(filed.next().unwrap()).display_name, "good 1");
    let constraint = |f: Option<Result<Filed, sqlx::Error>>| match f.unwrap() {
        Err(sqlx::Error::Database(db)) => db.constraint().map(str::to_owned),
        other => panic!("expected the database's refusal, got {other:?}"),
    };
    assert_eq!(
        constraint(filed.next()).as_deref(),
        Some("publish_tickets_image_id_fkey")
    );
    assert_eq!(created(filed.next().unwrap()).display_name, "good 2");
    assert_eq!(
        constraint(filed.next()).as_deref(),
        Some("publish_tickets_cloud_account_id_fkey")
    );
    assert_eq!(count(&app, "SELECT count(*) FROM publish_tickets").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn the_quota_counts_the_tickets_before_it_in_the_same_batch() {
    let (app, image, alice) = app_with_image(3).await;
    let image = image.id;
    let first = vec![new_ticket(image, alice, "already queued")];
    created(
        tickets::file_batch(&app.pool, &first, 3)
            .await
            .pop()
            .unwrap(),
    );
    let news: Vec<NewTicket> = (0..4)
        .map(|n| new_ticket(image, alice, &format!("batch {n}")))
        .collect();
    let outcomes: Vec<String> = tickets::file_batch(&app.pool, &news, 3)
        .await
        .into_iter()
        .map(|f| match f.unwrap() {
            Filed::Created(t, _) => format!("created {}", t.display_name),
            Filed::OverQuota(n) => format!("over quota at {n}"),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "created batch 0",
            "created batch 1",
            "over quota at 3",
            "over quota at 3"
        ]
    );
    app.stop().await;
}

/// Through the API: concurrent publishes share commits, and each answer is its own ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_commits_and_each_gets_its_own_ticket() {
    let (app, image, _alice) = app_with_image(1000).await;
    let uri = image.uri();
    let answers = futures::future::join_all((0..48).map(|n| {
        let (app, uri) = (&app, &uri);
        async move {
            let name = format!("concurrent {n}");
            let resp = app
                .publish(
                    "alice",
                    uri,
                    "application/json",
                    publish_json(&name, "demo", "demopass", "demo"),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::CREATED);
            let ticket: common::PublishImage = resp.json().await.unwrap();
            (name, ticket)
        }
    }))
    .await;
    for (name, ticket) in &answers {
        let stored = tickets::get(&app.pool, ticket.db_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &stored.display_name, name,
            "the answer is the request's own ticket"
        );
    }
    let ids: HashSet<i64> = answers.iter().map(|(_, t)| t.db_id).collect();
    assert_eq!(ids.len(), 48);
    let commits = count(
        &app,
        "SELECT count(DISTINCT created_at) FROM publish_tickets",
    )
    .await;
    assert!(
        commits < 48,
        "48 concurrent publishes took {commits} commits: none was shared"
    );
    eprintln!("48 concurrent publishes: {commits} commits");
    app.wait_handed_off().await;
    app.stop().await;
}
