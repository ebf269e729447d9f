//! Security (docs/SECURITY.md): every route against every access rule, API keys, the
//! failed-login lock, hostile bodies and ids, cloud addresses users may not point at, and no
//! secret in any log line, answer, metric or database row.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::time::{Duration, Instant};

use common::processes::{
    free_port, get_json_at, sigterm_and_wait, wait_final_at, wait_for_api, Env,
};
use common::{
    app_with_users, publish_json, spawn_app, spawn_app_with, DemoCloud, TestApp, PASSWORD,
};
use pimage::store::users;
use reqwest::Method;

/// Every route of the API: method, path under /api (with `{instance}`, `{scan}`, `{image}`,
/// `{ticket}` and `{new_image}` (an image of its own) filled per call), the status a permitted
/// caller gets, and its OpenAPI path template.
const ROUTES: [(&str, &str, u16, &str); 16] = [
    ("GET", "users/alice/images", 200, "/api/users/{uid}/images"),
    (
        "GET",
        "users/alice/scannedinstances",
        200,
        "/api/users/{uid}/scannedinstances",
    ),
    (
        "GET",
        "{instance}",
        200,
        "/api/users/{uid}/scannedinstances/{siid}",
    ),
    (
        "GET",
        "{scan}",
        200,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}",
    ),
    (
        "DELETE",
        "{new_image}",
        204,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}",
    ),
    (
        "GET",
        "{scan}/images",
        200,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images",
    ),
    (
        "GET",
        "{image}",
        200,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}",
    ),
    (
        "GET",
        "{image}/pimages",
        200,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages",
    ),
    (
        "POST",
        "{image}/pimages",
        201,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages",
    ),
    (
        "GET",
        "{ticket}",
        200,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}",
    ),
    (
        "DELETE",
        "{ticket}",
        204,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}",
    ),
    (
        "GET",
        "{ticket}/status",
        200,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}/status",
    ),
    (
        "GET",
        "{ticket}/events",
        200,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}/events",
    ),
    (
        "DELETE",
        "{ticket}/cancel",
        204,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}/cancel",
    ),
    (
        "GET",
        "users/alice/pimages",
        200,
        "/api/users/{uid}/pimages",
    ),
    (
        "GET",
        "users/alice/pimages/status",
        200,
        "/api/users/{uid}/pimages/status",
    ),
];

/// The cloud-account routes (method, success status, template): their access rules are
/// checked in `accounts::every_account_route_against_the_access_rules`.
pub const ACCOUNT_ROUTES: [(&str, u16, &str); 5] = [
    ("GET", 200, "/api/users/{uid}/accounts"),
    ("POST", 201, "/api/users/{uid}/accounts"),
    ("GET", 200, "/api/users/{uid}/accounts/{caid}"),
    ("DELETE", 204, "/api/users/{uid}/accounts/{caid}"),
    ("GET", 200, "/api/users/{uid}/targetplatforms"),
];

/// The publication-group routes (method, success status, template): their access rules are
/// checked in `groups::every_group_route_against_the_access_rules`.
pub const GROUP_ROUTES: [(&str, u16, &str); 5] = [
    (
        "POST",
        201,
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimagegroups",
    ),
    ("GET", 200, "/api/users/{uid}/pimagegroups/{gid}"),
    ("POST", 201, "/api/users/{uid}/pimagegroups/{gid}/targets"),
    ("DELETE", 204, "/api/users/{uid}/pimagegroups/{gid}/cancel"),
    ("GET", 200, "/api/users/{uid}/pimagegroups/{gid}/events"),
];

/// An administrator's routes (method, success status, template): their access rules are
/// checked in `cli::ticket_changes_go_through_the_api_as_an_administrator`.
pub const ADMIN_ROUTES: [(&str, u16, &str); 3] = [
    ("DELETE", 200, "/api/admin/tickets/{id}"),
    ("POST", 200, "/api/admin/tickets/{id}/cancel"),
    ("POST", 200, "/api/admin/tickets/{id}/retry"),
];

/// Who calls, and how.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Anonymous,
    WrongPassword,
    UnknownUser,
    BadSignature,
    NoEntitlement,
    OtherUser,
    Owner,
    OwnerByApiKey,
    Admin,
}

/// The status each caller must get, given the route's success status.
fn expected(caller: Caller, ok: u16) -> u16 {
    match caller {
        Caller::Anonymous | Caller::WrongPassword | Caller::UnknownUser | Caller::BadSignature => {
            401
        }
        Caller::NoEntitlement => 403,
        Caller::OtherUser => 404,
        Caller::Owner | Caller::OwnerByApiKey | Caller::Admin => ok,
    }
}

const PUBLISH_BODY: &str = include_str!("../fixtures/publish-request.canonical.xml");

async fn api_key_for(app: &TestApp, login: &str) -> (String, String) {
    let user = users::find_by_login(&app.pool, login)
        .await
        .unwrap()
        .unwrap();
    let (public, secret) = pimage::api::new_api_key();
    let sealed = pimage::secrets::SecretBox::from_base64_key(&app.settings.secrets.key)
        .unwrap()
        .seal(&secret);
    users::add_api_key(&app.pool, user.id, &public, &sealed)
        .await
        .unwrap();
    (public, secret.expose().to_string())
}

/// `path` (under /api, maybe with a query) signed as the SDK signs it.
fn signed(path: &str, public: &str, secret: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let relative = format!("{path}{sep}apiKey={public}");
    let signature = pimage::api::sign(secret, &relative);
    let encoded: String = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect();
    format!("{relative}&signature={encoded}")
}

#[tokio::test]
async fn every_route_against_every_access_rule() {
    let (app, image_uri) = app_with_users().await;
    let scan = image_uri.rsplit_once("/images/").unwrap().0.to_string();
    let instance = scan.rsplit_once("/scans/").unwrap().0.to_string();
    let callers = [
        Caller::Anonymous,
        Caller::WrongPassword,
        Caller::UnknownUser,
        Caller::BadSignature,
        Caller::NoEntitlement,
        Caller::OtherUser,
        Caller::Owner,
        Caller::OwnerByApiKey,
        Caller::Admin,
    ];
    let mut checked = 0;
    for (method, template, ok, _) in ROUTES {
        // A key of its own per route: GET and POST of `{image}/pimages` are one URL, so one
        // signature, and a signature serves only the method it was first seen with (issue 23,
        // finding 3: `tests/suite/signed_requests.rs` replays it).
        let (public, secret) = api_key_for(&app, "alice").await;
        for caller in callers {
            // A fresh ticket for every call of a ticket's route: DELETE routes consume theirs
            // (and only these: the per-user publish limits stay out of this table).
            let ticket = if template.contains("{ticket}") {
                let resp = app
                    .publish("alice", &image_uri, "application/xml", PUBLISH_BODY.into())
                    .await;
                assert_eq!(resp.status(), 201);
                let body: common::PublishImage = resp.json().await.unwrap();
                body.uri.clone()
            } else {
                String::new()
            };
            let new_image = if template.contains("{new_image}") {
                let file = app.raw_file(&format!("{checked}.raw"), 1024);
                app.register_image("alice", &file, "raw").await.uri()
            } else {
                String::new()
            };
            let path = template
                .replace("{new_image}", &new_image)
                .replace("{instance}", &instance)
                .replace("{scan}", &scan)
                .replace("{ticket}", &ticket)
                .replace("{image}", &image_uri);
            let url_path = match caller {
                Caller::OwnerByApiKey => signed(&path, &public, &secret),
                Caller::BadSignature => signed(&path, &public, "not-the-secret"),
                _ => path.clone(),
            };
            let mut request = app
                .client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&url_path),
                )
                .header("Accept", "application/json");
            request = match caller {
                Caller::Anonymous | Caller::OwnerByApiKey | Caller::BadSignature => request,
                Caller::WrongPassword => request.basic_auth("alice", Some("not the password")),
                Caller::UnknownUser => request.basic_auth("nobody", Some(PASSWORD)),
                Caller::NoEntitlement => request.basic_auth("carol", Some(PASSWORD)),
                Caller::OtherUser => request.basic_auth("bob", Some(PASSWORD)),
                Caller::Owner => request.basic_auth("alice", Some(PASSWORD)),
                Caller::Admin => request.basic_auth("root", Some(PASSWORD)),
            };
            if method == "POST" {
                request = request
                    .header("Content-Type", "application/xml")
                    .body(PUBLISH_BODY);
            }
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            // An event stream of a queued ticket stays open: its status is the answer.
            let body = if template.ends_with("/events") && status == 200 {
                drop(resp);
                String::new()
            } else {
                resp.text().await.unwrap()
            };
            assert_eq!(
                status,
                expected(caller, ok),
                "{method} {path} as {caller:?}: {body}"
            );
            if status >= 400 {
                let error: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(error["statusCode"], status, "a uforgeError: {body}");
            }
            // Wrong passwords count towards the lock; this table is about access rules.
            sqlx::query("DELETE FROM login_failures")
                .execute(&app.pool)
                .await
                .unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * callers.len());
    // bob's attempts changed nothing of alice's.
    let remaining: i64 =
        sqlx::query_scalar("SELECT count(*) FROM publish_tickets WHERE cancel_requested")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        remaining, 3,
        "only owner, API key and admin cancelled (one each)"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        total, 45,
        "45 set up (5 ticket routes, 9 callers) + 3 published - 3 deleted, by permitted callers only"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_and_lists_exactly_the_routes() {
    let app = spawn_app(false).await;
    let resp = app
        .client
        .get(app.url("openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "served without a login");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let all_routes = ROUTES
        .iter()
        .map(|(m, _, ok, p)| (*m, *ok, *p))
        .chain(ACCOUNT_ROUTES)
        .chain(GROUP_ROUTES)
        .chain(ADMIN_ROUTES);
    let mut routes: Vec<(String, String)> = all_routes
        .clone()
        .map(|(m, _, p)| (m.to_string(), p.to_string()))
        .chain([
            ("GET".into(), "/api/status".into()),
            ("GET".into(), "/api/openapi.json".into()),
        ])
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);
    // Every documented success status is the one the route answers.
    for (method, ok, path) in all_routes {
        let responses = &doc["paths"][path][method.to_lowercase()]["responses"];
        assert!(
            responses.get(ok.to_string()).is_some(),
            "{method} {path} documents {ok}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn api_keys_from_the_cli_sign_requests_and_can_be_revoked() {
    let env = Env::new().await;
    env.run_ok(&["migrate"]);
    env.command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", "alice-pw")
        .output()
        .unwrap();
    let created = env.run_ok(&["apikeys", "create", "--user", "alice"]);
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {created}"))
            .trim()
            .to_string()
    };
    let (public, secret) = (field("apiKey:"), field("secretKey:"));
    // The secret is shown once: never by `list`, never stored in clear.
    let listed = env.run_ok(&["apikeys", "list", "--user", "alice"]);
    assert!(
        listed.contains(&public) && !listed.contains(&secret),
        "{listed}"
    );
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&env.database_url())
        .await
        .unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT secret_enc FROM api_keys")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));

    let port = free_port();
    let api = env.spawn(&["api"], Some(port), "api");
    let base = format!("http://127.0.0.1:{port}/api");
    wait_for_api(&base).await;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}/{path}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        get(signed("users/alice/pimages", &public, &secret)).await,
        200
    );
    // Other query parameters are signed too.
    let with_query = signed("users/alice/pimages/status?img=1", &public, &secret);
    assert_eq!(get(with_query.clone()).await, 200);
    // Changing anything the signature covers fails: path, query, key.
    assert_eq!(get(with_query.replace("img=1", "img=2")).await, 401);
    assert_eq!(
        get(with_query.replace("users/alice", "users/bob")).await,
        401
    );
    assert_eq!(
        get(signed("users/alice/pimages", "0000", &secret)).await,
        401
    );
    assert_eq!(
        get(signed("users/alice/pimages", &public, "guess")).await,
        401
    );

    assert!(env
        .run_ok(&["apikeys", "revoke", &public])
        .contains("revoked"));
    assert_eq!(
        get(signed("users/alice/pimages", &public, &secret)).await,
        401
    );
    let again = env.run(&["apikeys", "revoke", &public]);
    assert!(!again.status.success());
    sigterm_and_wait(api, "pimage api", Duration::from_secs(20)).await;
    env.drop_all().await;
}

#[tokio::test]
async fn failed_logins_lock_the_login_name_known_or_not_then_unlock() {
    let app = spawn_app_with(false, |s| {
        s.api.login_max_failures = 3;
        s.api.login_lockout = Duration::from_secs(2);
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    let call = |login: &'static str, password: &'static str| {
        app.client
            .get(app.url(&format!("users/{login}/pimages")))
            .basic_auth(login, Some(password))
            .send()
    };
    for login in ["alice", "nobody"] {
        assert_eq!(call(login, "bad").await.unwrap().status(), 401);
        assert_eq!(call(login, "bad").await.unwrap().status(), 401);
        // The third failure locks the name: the same answer for a user and a non-user.
        let locked = call(login, "bad").await.unwrap();
        assert_eq!(locked.status(), 429, "{login}");
        assert!(
            locked.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        assert!(locked
            .text()
            .await
            .unwrap()
            .contains("too many failed logins"));
    }
    // While locked, even the right password is not checked.
    assert_eq!(call("alice", PASSWORD).await.unwrap().status(), 429);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(call("alice", PASSWORD).await.unwrap().status(), 200);
    // After a success, two more failures do not lock.
    assert_eq!(call("alice", "bad").await.unwrap().status(), 401);
    assert_eq!(call("alice", "bad").await.unwrap().status(), 401);
    assert_eq!(call("alice", PASSWORD).await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_changed_user_is_forgotten_at_once() {
    let app = spawn_app(false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let get = |password: &'static str| {
        app.client
            .get(app.url("users/alice/pimages"))
            .basic_auth("alice", Some(password))
            .send()
    };
    assert_eq!(get(PASSWORD).await.unwrap().status(), 200);
    assert_eq!(get(PASSWORD).await.unwrap().status(), 200, "remembered");
    let hash = pimage::secrets::hash_password(&pimage::secrets::Secret::new("new-password"));
    users::upsert(
        &app.pool,
        "alice",
        &hash,
        false,
        &["migration_publish".into()],
    )
    .await
    .unwrap();
    // Heard through Postgres NOTIFY: at once, give or take the notice's trip.
    let started = Instant::now();
    while get(PASSWORD).await.unwrap().status() != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the old password still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get("new-password").await.unwrap().status(), 200);
    // Entitlements too: without migration_publish, 403 at once.
    users::upsert(&app.pool, "alice", &hash, false, &[])
        .await
        .unwrap();
    let started = Instant::now();
    while get("new-password").await.unwrap().status() != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the old entitlements still work"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn hostile_bodies_and_ids_get_4xx_and_store_nothing() {
    let (app, image_uri) = app_with_users().await;
    let post = |body: String, content_type: &'static str| {
        app.client
            .post(app.url(&format!("{image_uri}/pimages")))
            .basic_auth("alice", Some(PASSWORD))
            .header("Content-Type", content_type)
            .header("Accept", "application/json")
            .body(body)
            .send()
    };
    // The billion laughs: lol9 would expand to 10^9 "lol"s.
    let entities: String = (1..10)
        .map(|i| {
            let previous = if i == 1 {
                String::new()
            } else {
                (i - 1).to_string()
            };
            format!(
                r#"<!ENTITY lol{i} "{}">"#,
                format!("&lol{previous};").repeat(10)
            )
        })
        .collect();
    let laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">{entities}]><publishImage>&lol9;</publishImage>"#
    );
    let external = r#"<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><publishImage><displayName>&x;</displayName></publishImage>"#;
    let deep_xml = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
    let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let big_json = format!(r#"{{"displayName":"{}"}}"#, "x".repeat(100_000));
    let cases: Vec<(String, &str, u16, &str)> = vec![
        (laughs, "application/xml", 400, "DTD"),
        (external.into(), "application/xml", 400, "DTD"),
        (deep_xml, "application/xml", 400, "deeper"),
        (deep_json, "application/json", 400, "deeper than 32"),
        (big_json, "application/json", 413, "larger than"),
        (
            "{\"credAccount\":".into(),
            "application/json",
            400,
            "malformed JSON",
        ),
        ("<publishImage>".into(), "application/xml", 400, ""),
    ];
    for (body, content_type, status, needle) in cases {
        let resp = post(body.clone(), content_type).await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{}",
            &body[..body.len().min(80)]
        );
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{text}");
    }
    // Display names: too long or with control characters are refused; anything else is kept.
    let with_name = |name: &str| {
        let mut v: serde_json::Value =
            serde_json::from_str(&publish_json("x", "demo", "demopass", "demo")).unwrap();
        v["displayName"] = name.into();
        v.to_string()
    };
    for bad in ["a\u{0}b", "line\nbreak", "bell\u{7}", &"n".repeat(256)] {
        let resp = post(with_name(bad), "application/json").await.unwrap();
        assert_eq!(resp.status(), 400, "{bad:?}");
    }
    // Ids and logins: not numbers, negative, overflowing, SQL: 400 or 404, never 500.
    let scan = image_uri.rsplit_once("/images/").unwrap().0;
    for (path, status) in [
        (format!("{scan}/images/1%27%20OR%20%271%27=%271"), 400),
        (format!("{scan}/images/-1"), 400),
        (format!("{scan}/images/9223372036854775808"), 400),
        (format!("{scan}/images/1e3"), 400),
        (
            "users/alice%27%3B%20DROP%20TABLE%20users%3B--/pimages".into(),
            404,
        ),
        ("users/%00/pimages".into(), 404),
        // A NUL in a query Postgres would be given (found in review: it was a 500).
        ("users/alice/scannedinstances?name=a%00b".into(), 400),
        (
            format!("users/alice/scannedinstances?name={}", "n".repeat(256)),
            400,
        ),
    ] {
        for user in ["alice", "root"] {
            let resp = app.get(&path, user).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), status, "{path} as {user}");
        }
    }
    // SQL in a login is just a wrong login.
    let resp = app
        .client
        .get(app.url("users/alice/pimages"))
        .basic_auth("alice' OR '1'='1", Some("x' OR '1'='1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((tickets, users), (0, 4), "nothing stored, nothing dropped");
    app.stop().await;
}

#[tokio::test]
async fn cloud_urls_that_point_inside_are_refused() {
    let app = spawn_app_with(true, |s| s.cloud.allow_loopback = false).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let body = |keystone: &str, glance: &str| {
        let mut v: serde_json::Value =
            serde_json::from_str(&publish_json("x", "demo", "demopass", "demo")).unwrap();
        v["credAccount"]["keystoneUrl"] = keystone.into();
        v["credAccount"]["glanceUrl"] = glance.into();
        v.to_string()
    };
    for (keystone, glance, needle) in [
        (
            "http://169.254.169.254/latest",
            "http://10.0.0.1:9292",
            "link-local",
        ),
        (
            "http://[::ffff:a9fe:a9fe]/",
            "http://10.0.0.1:9292",
            "link-local",
        ),
        (
            "http://127.0.0.1:5000/v3",
            "http://10.0.0.1:9292",
            "loopback",
        ),
        (
            "http://10.0.0.1:5000/v3",
            "http://127.0.0.1:9292",
            "glanceUrl",
        ),
        (
            "http://user:pw@keystone.example.com/v3",
            "http://10.0.0.1:9292",
            "credentials",
        ),
    ] {
        let resp = app
            .publish(
                "alice",
                &image.uri(),
                "application/json",
                body(keystone, glance),
            )
            .await;
        assert_eq!(resp.status(), 400, "{keystone}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{text}");
    }
    // A name is checked where it resolves: `localhost` passes the API, not the worker.
    let ticket = app
        .publish_created(
            "alice",
            &image.uri(),
            body("http://localhost:5000/v3", "http://localhost:9292"),
        )
        .await;
    let status = app
        .wait_final("alice", ticket.uri.as_str(), Duration::from_secs(120))
        .await;
    assert!(status.error, "{status:?}");
    // Permanent, said plainly, and not retried.
    let message = status.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("may not call Keystone") && message.contains("loopback"),
        "{status:?}"
    );
    assert!(!message.contains("gave up retrying"), "{status:?}");
    app.stop().await;
}

/// A full publish, and a failed one, by real processes logging at debug level: neither the
/// cloud password nor the user's password appears in a log line, an answer, a metric, or a
/// database row.
#[tokio::test]
async fn no_secret_in_logs_answers_metrics_or_rows() {
    const USER_PASSWORD: &str = "Us3r-pa55word-9c1e";
    const CLOUD_PASSWORD: &str = "demopass"; // the lab's demo user
    const WRONG_CLOUD_PASSWORD: &str = "Wr0ng-cl0ud-pa55-4b7d";
    let mut env = Env::new().await;
    env.set("RUST_LOG", "debug");
    env.set("PIMAGE__LOG__FORMAT", "json");
    env.run_ok(&["migrate"]);
    env.command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", USER_PASSWORD)
        .output()
        .unwrap();
    let uri = env.register_raw_image("alice", &vec![3u8; 1_000_000]);
    let metrics_port = free_port();
    let port = free_port();
    let api = env.spawn(&["api"], Some(port), "api");
    let worker = env
        .command(&["worker"])
        .env(
            "PIMAGE__WORKER__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.dir.join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/api");
    wait_for_api(&base).await;
    let client = reqwest::Client::new();
    let mut answers = String::new();
    let mut cloud_ids = vec![];
    for (password, complete) in [(CLOUD_PASSWORD, true), (WRONG_CLOUD_PASSWORD, false)] {
        let resp = client
            .post(format!("{base}/{}/pimages", uri.trim()))
            .basic_auth("alice", Some(USER_PASSWORD))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(publish_json("secret test", "demo", password, "demo"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let ticket: common::PublishImage = resp.json().await.unwrap();
        assert!(ticket.cred_account.secrets_missing);
        let ticket_uri = ticket.uri.clone();
        let status = wait_final_at(
            &base,
            ("alice", USER_PASSWORD),
            &ticket_uri,
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(status.complete, complete, "{status:?}");
        for accept in ["application/json", "application/xml"] {
            for path in [
                ticket_uri.clone(),
                format!("{ticket_uri}/status"),
                "users/alice/pimages".into(),
            ] {
                let text = client
                    .get(format!("{base}/{path}"))
                    .basic_auth("alice", Some(USER_PASSWORD))
                    .header("Accept", accept)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                answers.push_str(&text);
            }
        }
        let full: common::PublishImage =
            get_json_at(&base, ("alice", USER_PASSWORD), &ticket_uri).await;
        if let Some(id) = full.cloud_id {
            cloud_ids.push(id);
        }
    }
    for url in [
        format!("http://127.0.0.1:{port}/metrics"),
        format!("http://127.0.0.1:{metrics_port}/metrics"),
    ] {
        answers.push_str(&reqwest::get(url).await.unwrap().text().await.unwrap());
    }
    sigterm_and_wait(api, "pimage api", Duration::from_secs(20)).await;
    sigterm_and_wait(worker, "pimage worker", Duration::from_secs(30)).await;

    let logs = std::fs::read_to_string(env.dir.join("api.log")).unwrap()
        + &std::fs::read_to_string(env.dir.join("worker.log")).unwrap();
    assert!(logs.lines().count() > 20, "debug logs were written: {logs}");
    assert!(logs.contains("ticket_id"), "the logs cover the tickets");
    let dump = std::process::Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--data-only",
            &env.db_name,
        ])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let rows = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(rows.contains("secret test"), "the dump holds the tickets");
    let basic = base64_of(&format!("alice:{USER_PASSWORD}"));
    for secret in [USER_PASSWORD, CLOUD_PASSWORD, WRONG_CLOUD_PASSWORD, &basic] {
        for (what, text) in [
            ("logs", &logs),
            ("answers and metrics", &answers),
            ("database", &rows),
        ] {
            assert!(!text.contains(secret), "{secret:?} found in the {what}");
        }
    }
    let cloud = DemoCloud::login().await;
    for id in cloud_ids {
        cloud.delete(&id).await;
    }
    env.drop_all().await;
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Valid names reach Glance exactly as sent, in XML (escaped) and in JSON: Unicode, quotes,
/// markup characters, SQL, and the longest name allowed.
#[tokio::test]
async fn display_names_reach_glance_intact() {
    let mut app = spawn_app(false).await;
    app.start_worker();
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 65536);
    let image = app.register_image("alice", &file, "raw").await;
    let names = [
        "Ünïcødé 画像 \"double\" 'single' <b>bold</b> & more".to_string(),
        "x'); DROP TABLE publish_tickets; --".to_string(),
        "é".repeat(255),
    ];
    let cloud = DemoCloud::login().await;
    for name in &names {
        let escaped = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let xml = PUBLISH_BODY.replace(
            "<displayName>Example published image</displayName>",
            &format!("<displayName>{escaped}</displayName>"),
        );
        assert_ne!(xml, PUBLISH_BODY, "the fixture names its image");
        for (content_type, body) in [
            ("application/xml", xml),
            (
                "application/json",
                publish_json(name, "demo", "demopass", "demo"),
            ),
        ] {
            let resp = app.publish("alice", &image.uri(), content_type, body).await;
            assert_eq!(resp.status(), 201, "{name} as {content_type}");
            let ticket: common::PublishImage = resp.json().await.unwrap();
            assert_eq!(ticket.display_name, name.as_str());
            let uri = ticket.uri.clone();
            let status = app.wait_final("alice", &uri, Duration::from_secs(90)).await;
            assert!(status.complete, "{status:?}");
            let done = app.ticket("alice", &uri).await;
            let cloud_id = done.cloud_id.as_deref().unwrap();
            let glance = cloud.image(cloud_id).await.unwrap();
            assert_eq!(glance["name"], name.as_str(), "{content_type}");
            cloud.delete(cloud_id).await;
        }
    }
    app.stop().await;
}

/// Security round two (docs/SECURITY.md, "Authentication, round two").
fn basic_get(app: &TestApp, login: &str, password: &str) -> reqwest::RequestBuilder {
    app.client
        .get(app.url(&format!("users/{login}/pimages")))
        .basic_auth(login, Some(password))
}

#[tokio::test]
async fn a_remembered_password_does_not_pass_the_lock() {
    let app = spawn_app_with(false, |s| {
        s.api.login_max_failures = 3;
        s.api.credential_cache = Duration::from_secs(600);
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    assert_eq!(
        basic_get(&app, "alice", PASSWORD)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for expected in [401, 401, 429] {
        let status = basic_get(&app, "alice", "guess")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, expected);
    }
    // Remembered from before the lock, and still refused while it holds.
    assert_eq!(
        basic_get(&app, "alice", PASSWORD)
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_guesses_check_at_most_the_limit_and_a_success_lifts_nothing() {
    const LIMIT: usize = 10;
    let app = spawn_app_with(false, |s| {
        s.api.login_max_failures = LIMIT as i32;
        s.api.credential_cache = Duration::ZERO;
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    let guesses = (0..40).map(|i| basic_get(&app, "alice", &format!("guess-{i}")).send());
    let right = basic_get(&app, "alice", PASSWORD).send();
    let (guesses, right) = tokio::join!(futures::future::join_all(guesses), right);
    let statuses: Vec<u16> = guesses
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= LIMIT,
        "{checked} wrong passwords checked: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    assert!([200, 429].contains(&right.unwrap().status().as_u16()));
    // Failed checks of the window, as the lock counts them (a right password gives its
    // attempt back).
    let failures = || async {
        sqlx::query_scalar::<_, i32>("SELECT failures FROM login_failures WHERE login = 'alice'")
            .fetch_one(&app.pool)
            .await
            .unwrap() as usize
    };
    assert!(failures().await <= LIMIT, "{} checked", failures().await);
    // Guess on until locked: never more than LIMIT wrong passwords checked in all.
    let mut more = 0;
    while basic_get(&app, "alice", "one-more")
        .send()
        .await
        .unwrap()
        .status()
        == 401
    {
        more += 1;
        assert!(more <= LIMIT, "more than {LIMIT} failures checked");
    }
    assert!(failures().await <= LIMIT, "{} checked", failures().await);
    assert_eq!(
        basic_get(&app, "alice", PASSWORD)
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    app.stop().await;
}

#[tokio::test]
async fn an_administrator_asking_for_an_unknown_user_gets_404() {
    let (app, _) = app_with_users().await;
    for path in ["users/nobody/pimages", "users/nobody/pimages/status"] {
        let resp = app.get(path, "root").send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.text().await.unwrap().contains("uforgeError"));
    }
    let scan = "users/nobody/scannedinstances/1/scans/1/images";
    assert_eq!(app.get(scan, "root").send().await.unwrap().status(), 404);
    // A user with no tickets is still an empty list.
    let resp = app.get("users/bob/pimages", "root").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

/// VmRSS and VmHWM of a process, in MiB.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn a_login_flood_keeps_the_api_small_and_answering() {
    let env = Env::new().await;
    env.run_ok(&["migrate"]);
    env.command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let port = free_port();
    let api = env.spawn(&["api"], Some(port), "api");
    let base = format!("http://127.0.0.1:{port}/api");
    wait_for_api(&base).await;
    let client = reqwest::Client::new();
    let alice = || {
        client
            .get(format!("{base}/users/alice/pimages"))
            .basic_auth("alice", Some(PASSWORD))
            .send()
    };
    assert_eq!(alice().await.unwrap().status(), 200);
    let (before, _) = memory_of(api.id());

    // 120 at once, unknown names, three rounds.
    let flood = futures::future::join_all((0..120).map(|i| {
        let client = client.clone();
        let base = base.clone();
        async move {
            for round in 0..3 {
                let status = client
                    .get(format!("{base}/users/x/pimages"))
                    .basic_auth(format!("nobody-{i}-{round}"), Some("guess"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert!([401, 429].contains(&status.as_u16()), "{status}");
            }
        }
    }));
    let watch = async {
        let mut slowest = Duration::ZERO;
        let mut peak = 0;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let started = Instant::now();
            assert_eq!(alice().await.unwrap().status(), 200);
            slowest = slowest.max(started.elapsed());
            peak = peak.max(memory_of(api.id()).0);
        }
        (slowest, peak)
    };
    let (_, (slowest, peak)) = tokio::join!(flood, watch);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, high_water) = memory_of(api.id());
    eprintln!("RSS MiB: before {before}, during {peak}, after {after}, high water {high_water}; slowest login {slowest:?}");
    assert!(high_water < 128, "high water {high_water} MiB");
    assert!(after < 128, "after {after} MiB");
    assert!(slowest < Duration::from_secs(1), "a login took {slowest:?}");
    sigterm_and_wait(api, "pimage api", Duration::from_secs(20)).await;
    env.drop_all().await;
}

#[tokio::test]
async fn secrets_rotate_reseals_everything_and_old_values_keep_opening() {
    use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
    use base64::Engine;
    use pimage::secrets::{Secret, SecretBox};
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (old_key, new_key) = (b64(&[11u8; 32]), b64(&[22u8; 32]));
    let mut env = Env::new().await;
    env.set("PIMAGE__SECRETS__KEY", &old_key);
    env.run_ok(&["migrate"]);
    env.command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let created = env.run_ok(&["apikeys", "create", "--user", "alice"]);
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let (public, secret) = (field("apiKey:"), field("secretKey:"));
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&env.database_url())
        .await
        .unwrap();
    // A key sealed the way it was before key ids (nonce || ciphertext), under the old key.
    let legacy_secret = "legacy-api-key-secret";
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&[11u8; 32]).unwrap();
    let nonce = aes_gcm::Aes256Gcm::generate_nonce(&mut OsRng);
    let mut legacy = nonce.to_vec();
    legacy.extend(cipher.encrypt(&nonce, legacy_secret.as_bytes()).unwrap());
    sqlx::query(
        "INSERT INTO api_keys (user_id, public_key, secret_enc)
         SELECT id, 'legacy-public', $1 FROM users WHERE login = 'alice'",
    )
    .bind(&legacy)
    .execute(&mut db)
    .await
    .unwrap();
    let uri = env.register_raw_image("alice", &vec![5u8; 4096]);

    // Every process gets the new key, the old one kept; then the rotation runs while the
    // API serves.
    env.set("PIMAGE__SECRETS__PREVIOUS_KEYS", &old_key);
    env.set("PIMAGE__SECRETS__KEY", &new_key);
    let port = free_port();
    let api = env.spawn(&["api"], Some(port), "api");
    let base = format!("http://127.0.0.1:{port}/api");
    wait_for_api(&base).await;
    let client = reqwest::Client::new();
    let signed_get = |public: String, secret: String| {
        let client = client.clone();
        let url = format!("{base}/{}", signed("users/alice/pimages", &public, &secret));
        async move { client.get(url).send().await.unwrap().status() }
    };
    let resp = client
        .post(format!("{base}/{}/pimages", uri.trim()))
        .basic_auth("alice", Some(PASSWORD))
        .header("Content-Type", "application/json")
        .body(publish_json("rotated", "demo", "cloud-pw-rotated", "demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // A ticket sealed under the old key, as an API not yet restarted would write it.
    sqlx::query(
        "INSERT INTO publish_tickets (image_id, user_id, display_name, public_image, keystone_url,
             keystone_version, keystone_domain, keystone_project, cloud_login, cloud_password_enc, message)
         SELECT image_id, user_id, display_name, public_image, keystone_url, keystone_version,
                keystone_domain, keystone_project, cloud_login, $1, message FROM publish_tickets",
    )
    .bind(SecretBox::from_base64_key(&Secret::new(&old_key)).unwrap().seal(&Secret::new("cloud-pw-old")))
    .execute(&mut db)
    .await
    .unwrap();
    // A stored cloud account through the API (sealed under the new key), and one sealed under
    // the old key.
    let resp = client
        .post(format!("{base}/users/alice/accounts"))
        .basic_auth("alice", Some(PASSWORD))
        .header("Content-Type", "application/json")
        .body(
            serde_json::json!({"name": "lab", "keystoneUrl": common::keystone_url(),
                "login": "demo", "password": "demopass"})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    sqlx::query(
        "INSERT INTO cloud_accounts (user_id, name, keystone_url, cloud_login, cloud_password_enc)
         SELECT id, 'old', 'http://127.0.0.1:5000/v3', 'demo', $1 FROM users WHERE login = 'alice'",
    )
    .bind(
        SecretBox::from_base64_key(&Secret::new(&old_key))
            .unwrap()
            .seal(&Secret::new("account-pw-old")),
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(signed_get(public.clone(), secret.clone()).await, 200);
    assert_eq!(
        signed_get("legacy-public".into(), legacy_secret.into()).await,
        200
    );

    let rotated = env.run_ok(&["secrets", "rotate", "--batch", "1"]);
    assert!(
        rotated.contains("ticket cloud passwords: 1 re-sealed"),
        "{rotated}"
    );
    assert!(
        rotated.contains("API-key secrets: 2 re-sealed"),
        "{rotated}"
    );
    // Idempotent: nothing left to do.
    let again = env.run_ok(&["secrets", "rotate"]);
    assert!(
        again.contains("ticket cloud passwords: 0 re-sealed"),
        "{again}"
    );
    assert!(again.contains("API-key secrets: 0 re-sealed"), "{again}");
    assert!(
        rotated.contains("stored cloud account passwords: 1 re-sealed"),
        "{rotated}"
    );
    assert!(
        again.contains("stored cloud account passwords: 0 re-sealed"),
        "{again}"
    );
    assert_eq!(signed_get(public.clone(), secret.clone()).await, 200);
    sigterm_and_wait(api, "pimage api", Duration::from_secs(20)).await;

    // Everything opens under the new key alone.
    let new_only = SecretBox::from_base64_key(&Secret::new(&new_key)).unwrap();
    let header = new_only.current_header();
    let mut passwords: Vec<String> = vec![];
    for sealed in sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT cloud_password_enc FROM publish_tickets ORDER BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
    {
        assert!(sealed.starts_with(&header));
        passwords.push(new_only.open(&sealed).unwrap().expose().to_string());
    }
    assert_eq!(passwords, ["cloud-pw-rotated", "cloud-pw-old"]);
    let account_passwords: Vec<String> = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT cloud_password_enc FROM cloud_accounts ORDER BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
    .iter()
    .map(|sealed| new_only.open(sealed).unwrap().expose().to_string())
    .collect();
    assert_eq!(account_passwords, ["demopass", "account-pw-old"]);
    let api_secrets: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT secret_enc FROM api_keys ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let opened: Vec<String> = api_secrets
        .iter()
        .map(|s| new_only.open(s).unwrap().expose().to_string())
        .collect();
    assert_eq!(opened, [secret.clone(), legacy_secret.to_string()]);
    env.vars
        .retain(|(k, _)| k != "PIMAGE__SECRETS__PREVIOUS_KEYS");
    let port = free_port();
    let api = env.spawn(&["api"], Some(port), "api-new-key-only");
    let base_new = format!("http://127.0.0.1:{port}/api");
    wait_for_api(&base_new).await;
    let url = format!(
        "{base_new}/{}",
        signed("users/alice/pimages", &public, &secret)
    );
    assert_eq!(client.get(url).send().await.unwrap().status(), 200);
    sigterm_and_wait(api, "pimage api", Duration::from_secs(20)).await;

    // A key nobody configured: the rotation says which rows, and fails.
    env.vars.retain(|(k, _)| k != "PIMAGE__SECRETS__KEY");
    env.set("PIMAGE__SECRETS__KEY", b64(&[33u8; 32]));
    env.set("PIMAGE__SECRETS__PREVIOUS_KEYS", b64(&[44u8; 32]));
    let failed = env.run(&["secrets", "rotate"]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("open under no configured key"), "{stderr}");
    env.drop_all().await;
}

/// Terminal injection: cloud URLs with control or invisible characters are refused (as text
/// fields are), and whatever `pimage tickets list|show` prints is escaped, even texts stored
/// before the check or written by a cloud.
#[tokio::test]
async fn control_characters_never_reach_the_terminal() {
    let (app, image_uri) = app_with_users().await;
    let with_urls = |keystone: &str, glance: &str| {
        let mut v: serde_json::Value =
            serde_json::from_str(&publish_json("x", "demo", "demopass", "demo")).unwrap();
        v["credAccount"]["keystoneUrl"] = keystone.into();
        v["credAccount"]["glanceUrl"] = glance.into();
        v.to_string()
    };
    let cases = [
        (
            "application/json",
            with_urls("http://127.0.0.1:5000/v3\u{1b}[2J", "http://127.0.0.1:9292"),
            "keystoneUrl contains a control or invisible character (U+001B)",
        ),
        (
            "application/json",
            with_urls("http://127.0.0.1:5000/v3", "http://127.0.0.1:9292/\u{202e}"),
            "glanceUrl contains a control or invisible character (U+202E)",
        ),
        (
            "application/xml",
            PUBLISH_BODY.replace(
                "http://127.0.0.1:9292",
                "http://127.0.0.1:9292/&#x1b;]0;owned&#x7;",
            ),
            "glanceUrl contains a control or invisible character (U+001B)",
        ),
    ];
    for (content_type, body, needle) in cases {
        let resp = app.publish("alice", &image_uri, content_type, body).await;
        assert_eq!(resp.status(), 400, "{needle}");
        let error: serde_json::Value = resp.json().await.unwrap();
        let message = error["localizedErrorMsg"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    let ticket = app
        .publish_created(
            "alice",
            &image_uri,
            with_urls("http://127.0.0.1:5000/v3", "http://127.0.0.1:9292"),
        )
        .await;
    let id = ticket.uri.as_str().rsplit('/').next().unwrap().to_string();
    // As a row stored before the check, and a cloud's answer, would hold them.
    sqlx::query(
        "UPDATE publish_tickets SET keystone_url = $1, message = $2, detailed_error_msg = $2 \
         WHERE id = $3",
    )
    .bind("http://127.0.0.1:5000/v3\u{1b}]0;owned\u{7}")
    .bind("failed\u{1b}[2J\u{1b}[31m\r\nok \u{202e}gpj.exe \u{9b}1m")
    .bind(id.parse::<i64>().unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::processes::BIN)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PIMAGE_ENV", "dev")
            .env("PIMAGE__DATABASE__URL", app.settings.database.url.expose())
            .env("PIMAGE__AMQP__QUEUE", &app.settings.amqp.queue)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Every format: the texts escaped as the table shows them (JSON would pass C1 controls
    // and bidirectional overrides, YAML the latter).
    for format in ["table", "json", "yaml", "value"] {
        let shown = cli(&["tickets", "show", &id, "-f", format]);
        let listed = cli(&["tickets", "list", "-f", format]);
        for out in [&shown, &listed] {
            let bad: Vec<char> = out
                .chars()
                .filter(|&c| {
                    (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c)
                })
                .collect();
            assert!(bad.is_empty(), "{bad:?} printed in {out}");
            let message = r"failed\u{1b}[2J\u{1b}[31m\u{d}\u{a}ok \u{202e}gpj.exe \u{9b}1m";
            // JSON writes the backslash of `\u{…}` as `\\`.
            let in_json = message.replace('\\', r"\\");
            assert!(
                out.contains(message) || out.contains(&in_json),
                "{format}: {out}"
            );
        }
        let keystone = r"http://127.0.0.1:5000/v3\u{1b}]0;owned\u{7}";
        let in_json = keystone.replace('\\', r"\\");
        assert!(
            shown.contains(keystone) || shown.contains(&in_json),
            "{shown}"
        );
        if format == "value" {
            // A line per ticket: a newline in a text cannot fake another.
            assert_eq!(listed.lines().count(), 1, "{listed}");
        }
    }
    app.stop().await;
}

/// A path segment that is not UTF-8 once decoded is refused by axum before any handler: the
/// answer is still a `uforgeError` in the format asked for.
#[tokio::test]
async fn undecodable_paths_answer_a_uforge_error() {
    let (app, image_uri) = app_with_users().await;
    let scan = image_uri.rsplit_once("/images/").unwrap().0;
    for path in [format!("{scan}/images/%ff"), "users/%ff%fe/pimages".into()] {
        let json = app
            .get(&path, "alice")
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(json.status(), 400, "{path}");
        assert_eq!(json.headers()["content-type"], "application/json", "{path}");
        let error: serde_json::Value = json.json().await.unwrap();
        assert_eq!(error["statusCode"], 400, "{error}");
        // The path as sent, still percent-encoded.
        assert!(
            error["requestUri"].as_str().unwrap().contains("%ff"),
            "{error}"
        );
        let message = error["localizedErrorMsg"]["message"].as_str().unwrap();
        assert!(message.contains("UTF-8"), "{message}");
        let xml = app.get(&path, "alice").send().await.unwrap();
        assert_eq!(xml.status(), 400);
        assert_eq!(xml.headers()["content-type"], "application/xml");
        let text = xml.text().await.unwrap();
        assert!(
            text.contains("<ns0:uforgeError ") && text.contains("UTF-8"),
            "{text}"
        );
        common::assert_valid_xml(&text);
    }
    app.stop().await;
}

/// `xsi:type` names the target class: a body typed for another cloud is refused, not quietly
/// published to OpenStack.
#[tokio::test]
async fn a_body_typed_for_another_target_is_refused() {
    let (app, image_uri) = app_with_users().await;
    for (from, to) in [
        ("ns0:CredAccountOpenStack", "ns0:CredAccountAws"),
        ("ns0:PublishImageOpenStack", "ns0:PublishImageAzure"),
    ] {
        let body = PUBLISH_BODY.replace(from, to);
        let resp = app
            .publish("alice", &image_uri, "application/xml", body)
            .await;
        assert_eq!(resp.status(), 400, "{to}");
        let error: serde_json::Value = resp.json().await.unwrap();
        let message = error["localizedErrorMsg"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("xsi:type '{to}'")) && message.contains("only OpenStack"),
            "{message}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    // The OpenStack types, as the canonical body writes them, are still accepted.
    let resp = app
        .publish("alice", &image_uri, "application/xml", PUBLISH_BODY.into())
        .await;
    assert_eq!(resp.status(), 201);
    app.stop().await;
}
