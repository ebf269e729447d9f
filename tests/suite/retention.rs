//! Retention (issue 26): finished tickets older than `[retention] finished_tickets` go, with
//! their attempts, events and done cleanups, in bounded batches; recent and unfinished ones
//! stay, and so does one whose image cleanup is pending. A published image stays the user's.

use std::time::Duration;

use crate::common::database::TestDatabase;
use pimage::config::RetentionSettings;
use pimage::rescuer::{self, Retained, Retention};
use pimage::store::{images, retention, tickets, users, NewImage, NewTicket};
use sqlx::PgPool;

async fn migrated_pool() -> (TestDatabase, PgPool) {
    let database = TestDatabase::new().await;
    let pool = PgPool::connect(&database.url()).await.unwrap();
    (database, pool)
}

/// A user and an image to hang tickets on; returns (user id, image id).
async fn owner(pool: &PgPool) -> (i64, i64) {
    let user = users::upsert(pool, "alice", "not-a-hash", false, &[])
        .await
        .unwrap();
    let image = images::register(
        pool,
        &NewImage {
            distribution: None,
            owner_id: user,
            name: "disk",
            file_path: "/nonexistent/disk.raw",
            file_name: "disk.raw",
            format: "raw",
            size_bytes: 4096,
            md5sum: "",
            sha256sum: "",
            sha512sum: "",
        },
    )
    .await
    .unwrap();
    (user, image.id)
}

/// A ticket in `state`, ended `days_ago` (NULL for queued/running), with two attempts and
/// its `created` event plus one more.
async fn ticket(pool: &PgPool, (user, image): (i64, i64), state: &str, days_ago: i64) -> i64 {
    let (ticket, _outbox) = tickets::create(
        pool,
        &NewTicket {
            // No cloud: nothing here may reach the lab.
            keystone_url: "http://keystone.example:5000/v3".into(),
            ..crate::common::new_ticket(image, user, "disk")
        },
    )
    .await
    .unwrap();
    let finished = !matches!(state, "queued" | "running");
    sqlx::query(
        "UPDATE publish_tickets SET state = $2, started_at = now() - make_interval(days => $3 + 1),
             finished_at = CASE WHEN $4 THEN now() - make_interval(days => $3) END,
             cloud_id = CASE WHEN $2 = 'complete' THEN 'img-' || $1 END
          WHERE id = $1",
    )
    .bind(ticket.id)
    .bind(state)
    .bind(days_ago as i32)
    .bind(finished)
    .execute(pool)
    .await
    .unwrap();
    for side in [
        "INSERT INTO ticket_attempts (ticket_id, number, fencing_token, worker, ended_at, outcome)
         SELECT $1, n, n, 'w', now(), 'retried' FROM generate_series(1, 2) n",
        "INSERT INTO ticket_events (ticket_id, kind, state, percentage, bytes_loaded, bytes_total,
             message)
         VALUES ($1, 'changed', 'running', 50, 2048, 4096, 'uploading')",
    ] {
        sqlx::query(side)
            .bind(ticket.id)
            .execute(pool)
            .await
            .unwrap();
    }
    ticket.id
}

async fn count(pool: &PgPool, sql: &str, id: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// (ticket rows, attempts, events) of a ticket.
async fn rows_of(pool: &PgPool, id: i64) -> (i64, i64, i64) {
    (
        count(
            pool,
            "SELECT count(*) FROM publish_tickets WHERE id = $1",
            id,
        )
        .await,
        count(
            pool,
            "SELECT count(*) FROM ticket_attempts WHERE ticket_id = $1",
            id,
        )
        .await,
        count(
            pool,
            "SELECT count(*) FROM ticket_events WHERE ticket_id = $1",
            id,
        )
        .await,
    )
}

const NINETY_DAYS: f64 = 90.0 * 24.0 * 3600.0;

/// The defaults of `[retention]`, as the worker hands them to its rescuer.
fn defaults() -> Retention {
    let r = RetentionSettings::default();
    assert_eq!(r.finished_tickets, Duration::from_secs(90 * 24 * 3600));
    Retention {
        finished_tickets: r.finished_tickets,
        events: r.events,
        batch: r.batch,
        batches_per_round: r.batches_per_round,
        every: r.every,
    }
}

#[tokio::test]
async fn old_finished_tickets_go_with_their_attempts_and_events_and_the_rest_stays() {
    let (_database, pool) = migrated_pool().await;
    let who = owner(&pool).await;
    let old_complete = ticket(&pool, who, "complete", 100).await;
    let old_error = ticket(&pool, who, "error", 95).await;
    let old_cancelled = ticket(&pool, who, "cancelled", 91).await;
    let recent = ticket(&pool, who, "complete", 10).await;
    let queued = ticket(&pool, who, "queued", 0).await;
    let running = ticket(&pool, who, "running", 0).await;
    let pending_cleanup = ticket(&pool, who, "error", 200).await;
    sqlx::query(
        "INSERT INTO image_cleanups (ticket_id, ticket_key, keystone_url, keystone_domain,
             keystone_project, cloud_login, cloud_password_enc)
         SELECT id, ticket_key, keystone_url, keystone_domain, keystone_project, cloud_login,
                cloud_password_enc FROM publish_tickets WHERE id = $1",
    )
    .bind(pending_cleanup)
    .execute(&pool)
    .await
    .unwrap();
    // Queued and running tickets backdated too: only a finish time makes a ticket old.
    sqlx::query("UPDATE publish_tickets SET created_at = now() - interval '1 year'")
        .execute(&pool)
        .await
        .unwrap();

    let forgotten = retention::forget_finished(&pool, NINETY_DAYS, 100)
        .await
        .unwrap();

    assert_eq!(forgotten, 3);
    for gone in [old_complete, old_error, old_cancelled] {
        assert_eq!(rows_of(&pool, gone).await, (0, 0, 0), "ticket {gone}");
    }
    for kept in [recent, queued, running, pending_cleanup] {
        assert_eq!(rows_of(&pool, kept).await, (1, 2, 2), "ticket {kept}");
    }
    // The published image stays the user's: the orphan sweep finds it in kept_images.
    let kept_image: Option<String> = sqlx::query_scalar("SELECT cloud_id FROM kept_images")
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert_eq!(kept_image, Some(format!("img-{old_complete}")));
    assert_eq!(
        retention::forget_finished(&pool, NINETY_DAYS, 100)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_ticket_whose_cleanup_is_done_goes_with_its_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let who = owner(&pool).await;
    let cleaned = ticket(&pool, who, "cancelled", 120).await;
    sqlx::query(
        "INSERT INTO image_cleanups (ticket_id, ticket_key, keystone_url, keystone_domain,
             keystone_project, cloud_login, cloud_password_enc, done_at)
         SELECT id, ticket_key, keystone_url, keystone_domain, keystone_project, cloud_login,
                '', now() - interval '119 days' FROM publish_tickets WHERE id = $1",
    )
    .bind(cleaned)
    .execute(&pool)
    .await
    .unwrap();

    assert_eq!(
        retention::forget_finished(&pool, NINETY_DAYS, 100)
            .await
            .unwrap(),
        1
    );

    assert_eq!(rows_of(&pool, cleaned).await, (0, 0, 0));
    let cleanups: i64 = sqlx::query_scalar("SELECT count(*) FROM image_cleanups")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(cleanups, 0);
}

#[tokio::test]
async fn retention_deletes_in_bounded_batches() {
    let (_database, pool) = migrated_pool().await;
    let who = owner(&pool).await;
    for days in 100..105 {
        ticket(&pool, who, "complete", days).await;
    }
    // The oldest first, at most the limit per statement.
    assert_eq!(
        retention::forget_finished(&pool, NINETY_DAYS, 2)
            .await
            .unwrap(),
        2
    );
    let oldest_left: i64 = sqlx::query_scalar(
        "SELECT extract(day FROM now() - min(finished_at))::bigint FROM publish_tickets",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(oldest_left, 102);
    // A round: `batch` per statement, at most `batches_per_round` statements.
    let settings = Retention {
        batch: 1,
        batches_per_round: 2,
        ..defaults()
    };
    let done = rescuer::apply_retention(&pool, &settings).await.unwrap();
    assert_eq!(done.tickets, 2);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
    let done = rescuer::apply_retention(&pool, &settings).await.unwrap();
    assert_eq!(
        done,
        Retained {
            tickets: 1,
            ..Retained::default()
        }
    );
}

#[tokio::test]
async fn old_events_of_ended_tickets_go_and_live_tickets_keep_theirs() {
    let (_database, pool) = migrated_pool().await;
    let who = owner(&pool).await;
    let ended = ticket(&pool, who, "complete", 10).await;
    let running = ticket(&pool, who, "running", 0).await;
    sqlx::query("UPDATE ticket_events SET at = now() - interval '8 days'")
        .execute(&pool)
        .await
        .unwrap();

    let done = rescuer::apply_retention(&pool, &defaults()).await.unwrap();

    assert_eq!(done.tickets, 0);
    assert_eq!(done.events, 2);
    assert_eq!(rows_of(&pool, ended).await, (1, 2, 0));
    assert_eq!(rows_of(&pool, running).await, (1, 2, 2));
}
