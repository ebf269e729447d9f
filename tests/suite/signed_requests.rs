//! Signed API-key requests (issue 23, finding 3) and concurrent logins of one user (finding
//! 12), against a real API on a fresh Postgres. Requests are signed with `pimage::api::sign`,
//! exactly as uforge-python-sdk 3.8.13 signs them (`UForgeApiKeyAuth`): base64 of
//! HMAC-SHA1(secret, relative URL with `apiKey`, no leading `/`), then `&signature=`.
//!
//! The tests that use passwords run one at a time (`PASSWORD_TESTS`): one of them reads the
//! process-wide count of password checks, which no other test may move meanwhile.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::time::Duration;

use common::{publish_json, spawn_app, spawn_app_with, TestApp};
use pimage::store::users;
use reqwest::{Method, StatusCode};

/// `path` (under /api) as the SDK sends it: `apiKey` added, the relative URL signed.
fn signed(path: &str, (public, secret): &(String, String)) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let relative = format!("{path}{sep}apiKey={public}");
    let signature = pimage::api::sign(secret, &relative);
    let encoded: String = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect();
    format!("{relative}&signature={encoded}")
}

/// Sends `method` to the already signed `url_path`, with `body` as JSON if given.
async fn send(
    app: &TestApp,
    method: Method,
    url_path: &str,
    body: Option<String>,
) -> (StatusCode, String) {
    let mut request = app
        .client
        .request(method, app.url(url_path))
        .header("Accept", "application/json");
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body);
    }
    let resp = request.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// A user's publish body, to the lab cloud.
fn own_cloud(name: &str) -> String {
    publish_json(name, "demo", "demo-password", "demo")
}

/// The same request to another Keystone: what an attacker swaps in.
fn attackers_cloud() -> String {
    own_cloud("stolen").replace("127.0.0.1:5000", "attacker.example:5000")
}

async fn tickets(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// alice, an image of hers (its URI), and an API key of hers.
async fn alice_with_image(app: &TestApp) -> (String, (String, String)) {
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await.uri();
    let key = app.api_key_of("alice", None, None).await;
    (image, key)
}

/// Publishes signed with `key`; the ticket's URI.
async fn publish_signed(app: &TestApp, image: &str, key: &(String, String)) -> String {
    let url = signed(&format!("{image}/pimages"), key);
    let (status, body) = send(app, Method::POST, &url, Some(own_cloud("mine"))).await;
    assert_eq!(status, 201, "{body}");
    let ticket: common::PublishImage = serde_json::from_str(&body).unwrap();
    ticket.uri
}

/// Every captured request replayed with every other method, and (writes) with its own:
/// refused with the answer of any bad signature, and nothing changed.
#[tokio::test]
async fn captured_signed_requests_cannot_be_replayed_as_other_requests() {
    let app = spawn_app(false).await;
    let (image, key) = alice_with_image(&app).await;
    let ticket = publish_signed(&app, &image, &key).await;
    let bad_signature = send(
        &app,
        Method::GET,
        &signed(&ticket, &(key.0.clone(), "x".into())),
        None,
    )
    .await;
    assert_eq!(bad_signature.0, 401);

    // The victim reads its ticket, and the tickets of another image it has not published
    // yet; the attacker captured both URLs.
    let file = app.raw_file("other.raw", 4096);
    let other_image = app.register_image("alice", &file, "raw").await.uri();
    let read_ticket = signed(&ticket, &key);
    let read_list = signed(&format!("{other_image}/pimages"), &key);
    for url in [&read_ticket, &read_list] {
        assert_eq!(send(&app, Method::GET, url, None).await.0, 200);
    }
    // Every other method that has a route on these URLs (the others answer 405).
    let replays = [
        (Method::DELETE, &read_ticket, None),
        (Method::POST, &read_list, Some(attackers_cloud())),
    ];
    let message = |body: &str| {
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        error["localizedErrorMsg"]["message"].clone()
    };
    for (method, url, body) in replays {
        let (status, body) = send(&app, method.clone(), url, body).await;
        assert_eq!(status, 401, "{method} replay of a GET {url}: {body}");
        assert_eq!(
            message(&body),
            message(&bad_signature.1),
            "the answer of a bad signature"
        );
    }
    assert_eq!(tickets(&app).await, 1, "no ticket filed, none deleted");
    assert_eq!(send(&app, Method::GET, &read_ticket, None).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_signed_write_is_single_use() {
    let app = spawn_app(false).await;
    let (image, key) = alice_with_image(&app).await;
    // A publish, replayed with another body, then as a read.
    let publish = signed(&format!("{image}/pimages"), &key);
    let (status, _) = send(&app, Method::POST, &publish, Some(own_cloud("mine"))).await;
    assert_eq!(status, 201);
    let replayed = send(&app, Method::POST, &publish, Some(attackers_cloud())).await;
    assert_eq!(replayed.0, 409, "{}", replayed.1);
    assert_eq!(send(&app, Method::GET, &publish, None).await.0, 401);
    assert_eq!(tickets(&app).await, 1, "the replayed publish filed nothing");
    let attacker_cloud: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM publish_tickets WHERE keystone_url LIKE '%attacker%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(attacker_cloud, 0);
    // A client that means to repeat a write makes its URL unique: the SDK signs every query
    // parameter.
    let again = signed(&format!("{image}/pimages?attempt=2"), &key);
    let (status, body) = send(&app, Method::POST, &again, Some(own_cloud("again"))).await;
    assert_eq!(status, 201, "{body}");

    // A cancel and a delete, each replayed.
    let id: i64 = sqlx::query_scalar("SELECT min(id) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let ticket = format!("{image}/pimages/{id}");
    let cancel = signed(&format!("{ticket}/cancel"), &key);
    assert_eq!(send(&app, Method::DELETE, &cancel, None).await.0, 204);
    assert_eq!(send(&app, Method::DELETE, &cancel, None).await.0, 409);
    let delete = signed(&ticket, &key);
    assert_eq!(send(&app, Method::DELETE, &delete, None).await.0, 204);
    assert_eq!(send(&app, Method::DELETE, &delete, None).await.0, 409);
    assert_eq!(tickets(&app).await, 1, "the second publish only");
    // What Postgres keeps is a digest, never the signature.
    let kept: Vec<Vec<u8>> = sqlx::query_scalar("SELECT digest FROM api_key_signatures")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let signature = pimage::api::sign(&key.1, &format!("{ticket}?apiKey={}", key.0));
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature).unwrap();
    assert!(kept.iter().all(|d| d.len() == 32 && *d != raw));
    app.stop().await;
}

/// hammr's flow: publish, poll the status, cancel, list. No URL is both read and written.
#[tokio::test]
async fn the_hammr_flow_still_works_and_its_polls_write_nothing() {
    let app = spawn_app(false).await;
    let (image, key) = alice_with_image(&app).await;
    let ticket = publish_signed(&app, &image, &key).await;
    let status = signed(&format!("{ticket}/status"), &key);
    let digest_row = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT xmin::text FROM api_key_signatures WHERE method = 'GET'",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(send(&app, Method::GET, &status, None).await.0, 200);
    let first = digest_row().await;
    assert_eq!(first.len(), 1);
    for _ in 0..30 {
        let (code, body) = send(&app, Method::GET, &status, None).await;
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(
        digest_row().await,
        first,
        "polls after the first wrote nothing"
    );
    let cancel = signed(&format!("{ticket}/cancel"), &key);
    assert_eq!(send(&app, Method::DELETE, &cancel, None).await.0, 204);
    for _ in 0..3 {
        let (code, body) = send(&app, Method::GET, &status, None).await;
        assert_eq!(code, 200);
        let body: common::OpStatus = serde_json::from_str(&body).unwrap();
        assert!(body.cancelled, "{body:?}");
        let list = signed("users/alice/pimages", &key);
        assert_eq!(send(&app, Method::GET, &list, None).await.0, 200);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_key_cannot_write_and_an_expired_key_nothing() {
    let app = spawn_app(false).await;
    let (image, _) = alice_with_image(&app).await;
    let read_only = app.api_key_of("alice", Some(&["GET"]), None).await;
    let list = signed("users/alice/pimages", &read_only);
    assert_eq!(send(&app, Method::GET, &list, None).await.0, 200);
    let publish = signed(&format!("{image}/pimages"), &read_only);
    let (status, body) = send(&app, Method::POST, &publish, Some(own_cloud("ro"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("may sign only GET requests, not POST"),
        "{body}"
    );
    assert_eq!(tickets(&app).await, 0);

    let expired = chrono::Utc::now() - chrono::Duration::seconds(1);
    let expired = app.api_key_of("alice", None, Some(expired)).await;
    let (status, body) = send(
        &app,
        Method::GET,
        &signed("users/alice/pimages", &expired),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("has expired"), "{body}");
    app.stop().await;
}

/// Held by each test that checks passwords.
static PASSWORD_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `pimage_password_checks_total` of this test process (every app in it shares the recorder).
async fn password_checks(app: &TestApp) -> u64 {
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("pimage_password_checks_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Finding 12: when a user's remembered credential has expired, its concurrent requests
/// share one check; none is refused as locked, since no login failed.
#[tokio::test]
async fn concurrent_logins_of_one_user_share_one_check_and_never_lock() {
    const REMEMBERED_SECS: u64 = 3;
    let _alone = PASSWORD_TESTS.lock().await;
    // It reads the process-wide count of password checks: no other module's test may
    // check a password meanwhile.
    let _exclusive = common::alone().await;
    let app = spawn_app_with(false, |s| {
        s.api.login_max_failures = 3;
        s.api.credential_cache = Duration::from_secs(REMEMBERED_SECS);
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    for round in 0..2 {
        // Round 0: nothing remembered yet; round 1: the memory has just expired.
        let before = password_checks(&app).await;
        let requests = (0..64).map(|_| app.get("users/alice/pimages", "alice").send());
        let answers = futures::future::join_all(requests).await;
        let mut statuses: Vec<u16> = answers
            .iter()
            .map(|r| r.as_ref().unwrap().status().as_u16())
            .collect();
        statuses.dedup();
        assert_eq!(statuses, [200], "round {round}: every request answered 200");
        assert_eq!(
            password_checks(&app).await - before,
            1,
            "round {round}: one argon2 check for 64 requests"
        );
        tokio::time::sleep(Duration::from_secs(REMEMBERED_SECS) + Duration::from_millis(300)).await;
    }
    // The one wrong password of many requests is one failure.
    let wrong = (0..16).map(|_| {
        app.client
            .get(app.url("users/alice/pimages"))
            .basic_auth("alice", Some("not the password"))
            .send()
    });
    for answer in futures::future::join_all(wrong).await {
        assert_eq!(answer.unwrap().status(), 401);
    }
    let failures: i32 =
        sqlx::query_scalar("SELECT failures FROM login_failures WHERE login = 'alice'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(failures, 1);
    let right = app
        .get("users/alice/pimages", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200, "the right password still opens");
    app.stop().await;
}

#[tokio::test]
async fn the_cli_creates_keys_scoped_to_methods_with_an_expiry() {
    let env = common::processes::Env::new().await;
    env.run_ok(&["migrate"]);
    env.command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", "alice-pw")
        .output()
        .unwrap();
    let created = env.run_ok(&[
        "apikeys",
        "create",
        "--user",
        "alice",
        "--methods",
        "get",
        "--expires-in",
        "30d",
    ]);
    assert!(created.contains("apiKey:"), "{created}");
    env.run_ok(&["apikeys", "create", "--user", "alice"]);
    let listed = env.run_ok(&["apikeys", "list", "--user", "alice", "-f", "json"]);
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(keys[0]["methods"], "GET", "{listed}");
    assert!(keys[0]["expires"].is_string(), "{listed}");
    assert_eq!(keys[1]["methods"], "all", "{listed}");
    assert_eq!(keys[1]["expires"], serde_json::Value::Null, "{listed}");
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&env.database_url())
        .await
        .unwrap();
    let days: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM expires_at - now())::float8 / 86400 FROM api_keys
          WHERE methods = '{GET}'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!((29.9..=30.0).contains(&days), "{days}");
    // Mistakes are named, and create nothing.
    for (option, value, says) in [
        ("--methods", "PATCH", "not one of GET, POST, PUT, DELETE"),
        ("--expires-in", "30", "not a validity such as 30d"),
    ] {
        let out = env.run(&["apikeys", "create", "--user", "alice", option, value]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(keys, 2);
    drop(db);
    env.drop_all().await;
}

/// Under a flood of other users' logins, a user's status poll waits for the password checker
/// (bounded) instead of being refused at once with 429.
#[tokio::test]
async fn a_status_poll_waits_for_the_checker_during_other_users_logins() {
    let _alone = PASSWORD_TESTS.lock().await;
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let others = (0..40).map(|i| {
        app.client
            .get(app.url("users/x/pimages/status"))
            .basic_auth(format!("nobody-{i}"), Some("guess"))
            .send()
    });
    let poll = async {
        // Queued behind the others for the one hashing slot.
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.get("users/alice/pimages/status", "alice")
            .send()
            .await
            .unwrap()
    };
    let (others, poll) = tokio::join!(futures::future::join_all(others), poll);
    let status = poll.status();
    assert_eq!(status, 200, "{}", poll.text().await.unwrap());
    // Checked in turn; past the bounded wait, asked to retry.
    for other in others {
        let status = other.unwrap().status().as_u16();
        assert!([401, 429].contains(&status), "{status}");
    }
    app.stop().await;
}

/// Round two, finding 1: a binding does not expire with time; a read signature aged by hand
/// past any window still cannot be replayed as a write.
#[tokio::test]
async fn an_aged_read_signature_cannot_become_a_write() {
    let app = spawn_app(false).await;
    let (image, key) = alice_with_image(&app).await;
    let read_list = signed(&format!("{image}/pimages"), &key);
    assert_eq!(send(&app, Method::GET, &read_list, None).await.0, 200);
    sqlx::query("UPDATE api_key_signatures SET seen_at = now() - interval '10 years'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = send(&app, Method::POST, &read_list, Some(attackers_cloud())).await;
    assert_eq!(
        status, 401,
        "an aged GET signature replayed as POST: {body}"
    );
    assert_eq!(tickets(&app).await, 0, "nothing filed");
    app.stop().await;
}

/// Round two, finding 2: a signed write used twice is told why, so that a client does not
/// take it for a wrong key.
#[tokio::test]
async fn a_reused_write_signature_says_how_to_repeat_a_write() {
    let app = spawn_app(false).await;
    let (image, key) = alice_with_image(&app).await;
    let publish = signed(&format!("{image}/pimages"), &key);
    assert_eq!(
        send(&app, Method::POST, &publish, Some(own_cloud("mine")))
            .await
            .0,
        201
    );
    let (status, body) = send(&app, Method::POST, &publish, Some(own_cloud("mine"))).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("this signed URL was already used for a POST")
            && body.contains("add any query parameter")
            && body.contains("Basic authentication"),
        "{body}"
    );
    app.stop().await;
}

/// Round two, finding 3: a signed write that was refused (here 400) has not spent its
/// signature: the same signed URL with a valid body then succeeds, and once only.
#[tokio::test]
async fn a_refused_signed_write_can_be_retried() {
    let app = spawn_app(false).await;
    let (image, key) = alice_with_image(&app).await;
    let publish = signed(&format!("{image}/pimages"), &key);
    let (status, body) = send(&app, Method::POST, &publish, Some("{\"not\":1}".into())).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(&app, Method::POST, &publish, Some(own_cloud("mine"))).await;
    assert_eq!(status, 201, "the retry after a 400: {body}");
    let (status, body) = send(&app, Method::POST, &publish, Some(own_cloud("mine"))).await;
    assert_eq!(status, 409, "a successful write is not replayed: {body}");
    assert_eq!(tickets(&app).await, 1);
    app.stop().await;
}

/// Round two, finding 4: a login whose client leaves mid-check (here a client timeout inside
/// the argon2 check, several times) gives its attempt back: with one attempt per window, the
/// right password still opens at once (before, the leaked attempt made it wait 5 s, then 429).
#[tokio::test]
async fn logins_dropped_mid_check_give_their_attempt_back() {
    let _alone = PASSWORD_TESTS.lock().await;
    let app = spawn_app_with(false, |s| {
        s.api.login_max_failures = 1;
        s.api.credential_cache = Duration::ZERO;
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("bob", &["migration_publish"], false).await;
    let started = std::time::Instant::now();
    let bob = app.get("users/bob/pimages", "bob").send().await.unwrap();
    assert_eq!(bob.status(), 200);
    let one_login = started.elapsed();
    for tenths in [3, 5, 7, 3, 5, 7] {
        let requests = (0..4).map(|_| {
            app.get("users/alice/pimages", "alice")
                .timeout(one_login * tenths / 10)
                .send()
        });
        // Most leave mid-check; an answer that beat its timeout changes nothing.
        futures::future::join_all(requests).await;
        // The server finishes the check it started.
        tokio::time::sleep(one_login * 2).await;
    }
    let started = std::time::Instant::now();
    let right = app
        .get("users/alice/pimages", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200, "the right password still opens");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait for a leaked attempt: {:?}",
        started.elapsed()
    );
    app.stop().await;
}

/// Round two, finding 1: bindings live as long as their key, no longer.
#[tokio::test]
async fn signature_bindings_end_with_their_key() {
    let app = spawn_app(false).await;
    let (image, key) = alice_with_image(&app).await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let expiring = app.api_key_of("alice", None, Some(soon)).await;
    for key in [&key, &expiring] {
        let url = signed(&format!("{image}/pimages"), key);
        assert_eq!(send(&app, Method::GET, &url, None).await.0, 200);
    }
    let bindings = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM api_key_signatures")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(bindings().await, 2);
    assert!(users::revoke_api_key(&app.pool, &key.0).await.unwrap());
    assert_eq!(bindings().await, 1, "the revoked key's binding is gone");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(users::purge_signatures(&app.pool).await.unwrap(), 1);
    assert_eq!(bindings().await, 0, "the expired key's binding is gone");
    app.stop().await;
}
