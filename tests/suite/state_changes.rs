//! What each state change writes (docs/ARCHITECTURE.md "What each state change writes"): the
//! store function that makes the change writes its event row (announced on
//! `pimage_ticket_events`) and its image cleanup, in its own transaction, with no trigger.

use std::time::Duration;

use crate::common::database::TestDatabase;
use base64::Engine;
use pimage::secrets::{Secret, SecretBox};
use pimage::store::cancel::{self, CancelOutcome};
use pimage::store::claims::{self, Outcome, Progress};
use pimage::store::events::{TicketEvent, TICKET_EVENTS_CHANNEL};
use pimage::store::sealed::{self, SealedColumn};
use pimage::store::{cleanups, images, rescue, tickets, users, NewImage, NewTicket};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

/// A fresh migrated database (the harness's template clone) and a pool on it. Bind the guard
/// before the pool (`let (_database, pool) = ...`): the pool closes first, then the database
/// is dropped, even when the test panics.
async fn migrated_pool() -> (TestDatabase, PgPool) {
    let database = TestDatabase::new().await;
    let pool = PgPool::connect(&database.url()).await.unwrap();
    (database, pool)
}

/// A queued ticket of a new user and image.
async fn queued_ticket(pool: &PgPool) -> i64 {
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
    let (ticket, _outbox) = tickets::create(
        pool,
        &NewTicket {
            // No cloud: nothing here may reach the lab.
            keystone_url: "http://keystone.example:5000/v3".into(),
            ..crate::common::new_ticket(image.id, user, "disk")
        },
    )
    .await
    .unwrap();
    ticket.id
}

async fn count(pool: &PgPool, sql: &str, id: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn events_of(pool: &PgPool, id: i64) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT kind, state, old_state FROM ticket_events WHERE ticket_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

const CLEANUPS: &str = "SELECT count(*) FROM image_cleanups WHERE ticket_key = \
                        (SELECT ticket_key FROM publish_tickets WHERE id = $1)";

/// The event announced next on `pimage_ticket_events`.
async fn announced(listener: &mut PgListener) -> TicketEvent {
    let notice = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("an event announced")
        .unwrap();
    serde_json::from_str(notice.payload()).unwrap()
}

#[tokio::test]
async fn the_migrations_leave_no_trigger_that_writes_rows() {
    let (_database, pool) = migrated_pool().await;
    let writers: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
          WHERE NOT t.tgisinternal AND p.prosrc ~* '(insert\\s+into|delete\\s+from|update\\s+\\w+\\s+set)'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(writers, Vec::<String>::new());
}

#[tokio::test]
async fn create_writes_one_created_event_and_announces_none() {
    let (_database, pool) = migrated_pool().await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(TICKET_EVENTS_CHANNEL).await.unwrap();
    let id = queued_ticket(&pool).await;
    assert_eq!(
        events_of(&pool, id).await,
        [("created".into(), "queued".into(), None)]
    );
    let none = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(none.is_err(), "a creation was announced by its insert");
}

#[tokio::test]
async fn finishing_in_error_writes_one_cleanup_and_one_announced_event() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(TICKET_EVENTS_CHANNEL).await.unwrap();
    let failed = Outcome::Failed {
        error_message: "Glance said no".into(),
        detail: None,
    };
    claims::finish(&pool, id, claim.token, &failed)
        .await
        .unwrap();
    assert_eq!(count(&pool, CLEANUPS, id).await, 1);
    let events = events_of(&pool, id).await;
    assert_eq!(events.len(), 3, "created, claimed, failed: {events:?}");
    assert_eq!(
        events[2],
        ("changed".into(), "error".into(), Some("running".into()))
    );
    let notice = announced(&mut listener).await;
    assert_eq!(notice.ticket_id, id);
    assert_eq!(notice.state, "error");
    assert_eq!(notice.old_state.as_deref(), Some("running"));
}

#[tokio::test]
async fn publishing_writes_an_event_and_no_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let published = Outcome::Published {
        cloud_id: "img-1".into(),
        bytes: 4096,
    };
    claims::finish(&pool, id, claim.token, &published)
        .await
        .unwrap();
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
    assert_eq!(events_of(&pool, id).await.last().unwrap().1, "complete");
}

#[tokio::test]
async fn a_progress_write_or_lease_extension_that_changes_nothing_visible_writes_no_event() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let progress = Progress {
        message: "uploading".into(),
        bytes_loaded: 10,
        bytes_total: 4096,
        percentage: 1,
        eta: None,
    };
    for _ in 0..3 {
        claims::report_progress(&pool, id, claim.token, &progress, Duration::from_secs(30))
            .await
            .unwrap();
        claims::extend_lease(&pool, id, claim.token, Duration::from_secs(30))
            .await
            .unwrap();
    }
    // created, claimed, the first progress write.
    assert_eq!(events_of(&pool, id).await.len(), 3);
}

#[tokio::test]
async fn deleting_a_running_ticket_writes_its_cleanup_and_an_announced_deleted_event() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let key: Uuid = sqlx::query_scalar("SELECT ticket_key FROM publish_tickets WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(TICKET_EVENTS_CHANNEL).await.unwrap();
    assert!(tickets::delete(&pool, id).await.unwrap());
    let cleanups: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT ticket_id FROM image_cleanups WHERE ticket_key = $1")
            .bind(key)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(cleanups, [None]);
    let events = events_of(&pool, id).await;
    assert_eq!(
        events.last().unwrap(),
        &("deleted".into(), "running".into(), None)
    );
    assert_eq!(announced(&mut listener).await.kind, "deleted");
    assert!(!tickets::delete(&pool, id).await.unwrap());
}

#[tokio::test]
async fn deleting_a_published_ticket_keeps_its_image() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let published = Outcome::Published {
        cloud_id: "img-kept".into(),
        bytes: 4096,
    };
    claims::finish(&pool, id, claim.token, &published)
        .await
        .unwrap();
    assert!(tickets::delete(&pool, id).await.unwrap());
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kept_images WHERE cloud_id = 'img-kept'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, 1);
    let cleanups: i64 = sqlx::query_scalar("SELECT count(*) FROM image_cleanups")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(cleanups, 0);
}

type Event = (String, String, Option<String>);

fn changed(state: &str, old_state: &str) -> Event {
    ("changed".into(), state.into(), Some(old_state.into()))
}

const CREATED_CLAIMED: [(&str, &str, Option<&str>); 2] = [
    ("created", "queued", None),
    ("changed", "running", Some("queued")),
];

/// The events written since the ticket's creation and first claim (those two checked).
async fn events_after_claim(pool: &PgPool, id: i64) -> Vec<Event> {
    let events = events_of(pool, id).await;
    let first: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .take(2)
        .map(|(k, s, o)| (k.as_str(), s.as_str(), o.as_deref()))
        .collect();
    assert_eq!(first, CREATED_CLAIMED, "{events:?}");
    events[2..].to_vec()
}

/// A claim whose lease has already expired (leased for 0 s), as if its worker were lost.
async fn claimed_and_lost(pool: &PgPool, id: i64) -> claims::Claim {
    let claim = claims::claim(pool, id, "host:1", Duration::ZERO, 5)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    claim
}

#[tokio::test]
async fn cancelling_a_queued_ticket_that_never_ran_writes_its_event_and_no_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(TICKET_EVENTS_CHANNEL).await.unwrap();
    assert_eq!(
        cancel::request_cancel(&pool, id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        events_of(&pool, id).await,
        [
            ("created".into(), "queued".into(), None),
            changed("cancelled", "queued")
        ]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
    let notice = announced(&mut listener).await;
    assert_eq!(notice.state, "cancelled");
    assert_eq!(notice.old_state.as_deref(), Some("queued"));
}

#[tokio::test]
async fn cancelling_a_queued_ticket_that_had_run_writes_its_event_and_its_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    claimed_and_lost(&pool, id).await;
    let rescued = rescue::rescue_expired(&pool, 5).await.unwrap();
    assert_eq!(rescued.requeued.len(), 1);
    assert_eq!(
        cancel::request_cancel(&pool, id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("queued", "running"), changed("cancelled", "queued")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 1);
}

#[tokio::test]
async fn cancelling_a_running_ticket_writes_its_event_and_leaves_the_cleanup_to_its_end() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cancel::request_cancel(&pool, id).await.unwrap(),
        CancelOutcome::Requested
    );
    // The message changes ("cancel requested, ..."): visible, so an event.
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("running", "running")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

#[tokio::test]
async fn rescuing_a_lost_ticket_requeues_it_with_an_event_and_no_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    claimed_and_lost(&pool, id).await;
    let rescued = rescue::rescue_expired(&pool, 5).await.unwrap();
    assert_eq!(
        rescued.requeued.iter().map(|r| r.0).collect::<Vec<_>>(),
        [id]
    );
    assert!(rescued.gave_up.is_empty());
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("queued", "running")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

#[tokio::test]
async fn rescuing_a_ticket_out_of_attempts_ends_it_in_error_with_its_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    claimed_and_lost(&pool, id).await;
    let rescued = rescue::rescue_expired(&pool, 1).await.unwrap();
    assert_eq!(rescued.gave_up, [id]);
    assert!(rescued.requeued.is_empty());
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("error", "running")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 1);
}

#[tokio::test]
async fn rescuing_a_lost_ticket_whose_cancel_was_requested_cancels_it_with_its_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    claimed_and_lost(&pool, id).await;
    assert_eq!(
        cancel::request_cancel(&pool, id).await.unwrap(),
        CancelOutcome::Requested
    );
    let rescued = rescue::rescue_expired(&pool, 5).await.unwrap();
    assert!(rescued.requeued.is_empty() && rescued.gave_up.is_empty());
    assert_eq!(
        events_after_claim(&pool, id).await,
        [
            changed("running", "running"),
            changed("cancelled", "running")
        ]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 1);
}

#[tokio::test]
async fn retrying_a_failed_ticket_requeues_it_with_an_event_and_no_new_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    let failed = Outcome::Failed {
        error_message: "Glance said no".into(),
        detail: None,
    };
    claims::finish(&pool, id, claim.token, &failed)
        .await
        .unwrap();
    assert!(rescue::retry(&pool, id).await.unwrap().is_some());
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("error", "running"), changed("queued", "error")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 1, "only the failure's");
    assert!(rescue::retry(&pool, id).await.unwrap().is_none());
    assert_eq!(events_of(&pool, id).await.len(), 4);
}

#[tokio::test]
async fn a_claim_of_a_ticket_out_of_attempts_gives_it_up_with_its_event_and_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    claimed_and_lost(&pool, id).await;
    // `claim` finds it expired but out of attempts: `give_up_in`.
    assert!(
        claims::claim(&pool, id, "host:2", Duration::from_secs(30), 1)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("error", "running")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 1);
}

#[tokio::test]
async fn claim_next_gives_up_a_queued_ticket_out_of_attempts_with_its_event_and_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    claimed_and_lost(&pool, id).await;
    rescue::rescue_expired(&pool, 5).await.unwrap();
    // Queued again with one attempt used; the limit lowered to 1: `give_up_queued`.
    let next = claims::claim_next(&pool, "host:2", Duration::from_secs(30), 1, |_| 8)
        .await
        .unwrap();
    assert!(next.claim.is_none());
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("queued", "running"), changed("error", "queued")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 1);
}

#[tokio::test]
async fn marking_a_queued_ticket_waiting_for_a_full_cloud_writes_one_event() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let host: String = sqlx::query_scalar("SELECT cloud_host FROM publish_tickets WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    // A limit of 0: the cloud is full with none running.
    assert_eq!(
        claims::mark_waiting(&pool, &[(host.clone(), 0)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(claims::mark_waiting(&pool, &[(host, 0)]).await.unwrap(), 0);
    assert_eq!(
        events_of(&pool, id).await,
        [
            ("created".into(), "queued".into(), None),
            changed("queued", "queued")
        ]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

#[tokio::test]
async fn setting_the_cloud_id_writes_one_event_and_no_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    assert!(claims::set_cloud_id(&pool, id, claim.token, "img-1")
        .await
        .unwrap());
    // The same id again changes nothing visible.
    assert!(claims::set_cloud_id(&pool, id, claim.token, "img-1")
        .await
        .unwrap());
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("running", "running")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

#[tokio::test]
async fn releasing_a_claim_requeues_it_with_an_event_and_no_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    assert!(claims::release(&pool, id, claim.token)
        .await
        .unwrap()
        .is_some());
    assert!(claims::release(&pool, id, claim.token)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        events_after_claim(&pool, id).await,
        [changed("queued", "running")]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

#[tokio::test]
async fn a_cleanup_done_marks_its_row_and_clears_the_cloud_id_with_an_event() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
        .await
        .unwrap()
        .unwrap();
    claims::set_cloud_id(&pool, id, claim.token, "img-partial")
        .await
        .unwrap();
    let failed = Outcome::Failed {
        error_message: "Glance said no".into(),
        detail: None,
    };
    claims::finish(&pool, id, claim.token, &failed)
        .await
        .unwrap();
    let taken = cleanups::take_due(&pool).await.unwrap().unwrap();
    assert_eq!(taken.cleanup.ticket_id, Some(id));
    taken.done(true).await.unwrap();
    let done: Vec<bool> = sqlx::query_scalar(
        "SELECT done_at IS NOT NULL FROM image_cleanups WHERE ticket_key = \
         (SELECT ticket_key FROM publish_tickets WHERE id = $1)",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(done, [true]);
    assert_eq!(
        events_after_claim(&pool, id).await,
        [
            changed("running", "running"),
            changed("error", "running"),
            changed("error", "error")
        ]
    );
    let cloud_id: Option<String> =
        sqlx::query_scalar("SELECT cloud_id FROM publish_tickets WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(cloud_id, None);
}

#[tokio::test]
async fn claim_next_claims_with_its_event_and_no_cleanup() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let next = claims::claim_next(&pool, "host:1", Duration::from_secs(30), 5, |_| 8)
        .await
        .unwrap();
    assert_eq!(next.claim.map(|c| c.ticket.id), Some(id));
    assert_eq!(events_after_claim(&pool, id).await, []);
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

#[tokio::test]
async fn requeueing_a_lost_message_writes_an_outbox_row_and_no_event() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    // Queued for long with no outbox row: its message was lost.
    sqlx::query("UPDATE publish_tickets SET updated_at = now() - interval '1 hour' WHERE id = $1;")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM ticket_outbox WHERE ticket_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let requeued = rescue::requeue_lost(&pool, 0, 10).await.unwrap();
    assert_eq!(requeued.iter().map(|r| r.0).collect::<Vec<_>>(), [id]);
    assert_eq!(
        events_of(&pool, id).await,
        [("created".into(), "queued".into(), None)]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

#[tokio::test]
async fn resealing_a_ticket_password_writes_no_event() {
    let (_database, pool) = migrated_pool().await;
    let id = queued_ticket(&pool).await;
    let key = |byte: u8| Secret::new(base64::engine::general_purpose::STANDARD.encode([byte; 32]));
    let old = SecretBox::from_base64_key(&key(1)).unwrap();
    sqlx::query("UPDATE publish_tickets SET cloud_password_enc = $2 WHERE id = $1")
        .bind(id)
        .bind(old.seal(&Secret::new("cloud-pw")))
        .execute(&pool)
        .await
        .unwrap();
    let rotated = SecretBox::new(&key(2), &[key(1)]).unwrap();
    let report = sealed::reseal_column(&pool, &rotated, SealedColumn::TicketCloudPasswords, 10)
        .await
        .unwrap();
    assert_eq!(report.resealed, 1);
    assert_eq!(
        events_of(&pool, id).await,
        [("created".into(), "queued".into(), None)]
    );
    assert_eq!(count(&pool, CLEANUPS, id).await, 0);
}

/// A cancel's message says an image was removed only when one was: a worker cancelled before
/// it created the image says so, and the cleanup that then finds nothing keeps that message
/// (it used to say "the partial image was removed from the cloud"; issue 31, item 7).
#[tokio::test]
async fn a_cancel_says_an_image_was_removed_only_when_one_existed() {
    let (_database, pool) = migrated_pool().await;
    let message = |id: i64| {
        let pool = pool.clone();
        async move { tickets::get(&pool, id).await.unwrap().unwrap().message }
    };
    for (cloud_id, at_cancel, after_cleanup) in [
        (
            None,
            "cancelled before an image was created in the cloud",
            "cancelled before an image was created in the cloud",
        ),
        (
            Some("img-partial"),
            "cancelled; removing the partial image from the cloud",
            "cancelled; the partial image was removed from the cloud",
        ),
    ] {
        let id = queued_ticket(&pool).await;
        let claim = claims::claim(&pool, id, "host:1", Duration::from_secs(30), 5)
            .await
            .unwrap()
            .unwrap();
        if let Some(cloud_id) = cloud_id {
            claims::set_cloud_id(&pool, id, claim.token, cloud_id)
                .await
                .unwrap();
        }
        claims::finish(&pool, id, claim.token, &Outcome::Cancelled)
            .await
            .unwrap();
        assert_eq!(message(id).await, at_cancel);
        let taken = cleanups::take_due(&pool).await.unwrap().unwrap();
        assert_eq!(taken.cleanup.ticket_id, Some(id));
        taken.done(cloud_id.is_some()).await.unwrap();
        assert_eq!(message(id).await, after_cleanup);
    }
}
