//! Cloud accounts stored per user (`…/users/{uid}/accounts`), as hammr 3.8.13 uses them:
//! created once the real Keystone accepted the password, listed and read without it, named
//! by a publish instead of a password, deleted unless a ticket in flight uses it.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::time::Duration;

use common::processes::Env;
use common::{
    app_with_users, assert_valid_xml, glance_url, keystone_url, spawn_app, spawn_app_with,
    DemoCloud, TestApp, PASSWORD,
};
use pimage::api::wire::{CredAccounts, PublishImage, StoredAccount};
use pimage::secrets::SecretBox;
use reqwest::StatusCode;

const DEMO_PASSWORD: &str = "demopass";

/// The account hammr's `account create` sends (`fill_openstack`, then the target platform's
/// name), as pyxb writes it.
fn account_xml(name: &str, keystone: &str, password: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><ns1:credAccount xmlns:ns1="http://www.usharesoft.com/uforge" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ns1:CredAccountOpenStack"><name>{name}</name><targetPlatform><name>OpenStack</name></targetPlatform><glanceUrl>{glance}</glanceUrl><keystoneUrl>{keystone}</keystoneUrl><login>demo</login><password>{password}</password><keystoneVersion>v3</keystoneVersion></ns1:credAccount>"#,
        glance = glance_url()
    )
}

fn account_json(name: &str, keystone: &str, password: &str) -> String {
    serde_json::json!({
        "name": name,
        "targetPlatform": {"name": "OpenStack"},
        "glanceUrl": glance_url(),
        "keystoneUrl": keystone,
        "keystoneVersion": "v3",
        "login": "demo",
        "password": password,
    })
    .to_string()
}

async fn post_account(
    app: &TestApp,
    user: &str,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("users/{user}/accounts")))
        .basic_auth(user, Some(PASSWORD))
        .header("Content-Type", content_type)
        .header("Accept", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Creates the account `name` of `user` on the demo cloud; returns it as answered.
async fn create_account(app: &TestApp, user: &str, name: &str) -> StoredAccount {
    let body = account_json(name, &keystone_url(), DEMO_PASSWORD);
    let resp = post_account(app, user, "application/json", body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.unwrap()
}

async fn get_text(app: &TestApp, user: &str, path: &str, accept: &str) -> (StatusCode, String) {
    let resp = app
        .get(path, user)
        .header("Accept", accept)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn stored_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cloud_accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_account_is_stored_once_keystone_accepts_it_and_never_shown_with_its_password() {
    let (app, _) = app_with_users().await;
    // As hammr sends it: XML, the SDK's prefix and xsi:type.
    let resp = post_account(
        &app,
        "alice",
        "application/xml",
        account_xml("lab-xml", &keystone_url(), DEMO_PASSWORD),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(resp.headers()["content-type"], "application/xml");
    let xml = resp.text().await.unwrap();
    assert_valid_xml(&xml);
    assert!(
        xml.contains(r#"xsi:type="ns0:CredAccountOpenStack""#),
        "{xml}"
    );
    assert!(
        xml.contains("<secretsMissing>true</secretsMissing>"),
        "{xml}"
    );
    assert!(xml.contains("<name>lab-xml</name>") && xml.contains("<login>demo</login>"));
    assert!(
        !xml.contains("<password>") && !xml.contains(DEMO_PASSWORD),
        "{xml}"
    );
    assert!(
        location.starts_with("/api/users/alice/accounts/"),
        "{location}"
    );

    let json = create_account(&app, "alice", "lab-json").await;
    assert_eq!(json.name, "lab-json");
    assert_eq!(json.target_platform.name, "OpenStack");
    assert_eq!(json.target_platform.kind, "openstack");
    assert_eq!(json.keystone_version, "v3");
    assert!(json.secrets_missing);

    // The list and each account, in both formats: never the password.
    let (status, list_xml) =
        get_text(&app, "alice", "users/alice/accounts", "application/xml").await;
    assert_eq!(status, StatusCode::OK);
    assert_valid_xml(&list_xml);
    assert_eq!(
        list_xml.matches("ns0:CredAccountOpenStack").count(),
        2,
        "{list_xml}"
    );
    let (_, list_json) = get_text(&app, "alice", "users/alice/accounts", "application/json").await;
    let list: CredAccounts = serde_json::from_str(&list_json).unwrap();
    let names: Vec<&str> = list
        .cred_accounts
        .cred_account
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!((list.total, names), (2, vec!["lab-json", "lab-xml"]));
    let one = location.trim_start_matches("/api/");
    let (status, one_xml) = get_text(&app, "alice", one, "application/xml").await;
    assert_eq!(status, StatusCode::OK);
    assert_valid_xml(&one_xml);
    let (_, one_json) = get_text(&app, "alice", one, "application/json").await;
    for answer in [&list_xml, &list_json, &one_xml, &one_json] {
        assert!(!answer.contains(DEMO_PASSWORD), "{answer}");
        assert!(!answer.contains("\"password\"") && !answer.contains("<password>"));
    }

    // In the database only sealed, and it opens to the password given.
    let sealed: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT cloud_password_enc FROM cloud_accounts ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let secrets = SecretBox::from_base64_key(&app.settings.secrets.key).unwrap();
    for value in &sealed {
        assert!(!value
            .windows(DEMO_PASSWORD.len())
            .any(|w| w == DEMO_PASSWORD.as_bytes()));
        assert_eq!(secrets.open(value).unwrap().expose(), DEMO_PASSWORD);
    }

    // The platforms hammr looks the account type up in.
    let (status, platforms) = get_text(
        &app,
        "alice",
        "users/alice/targetplatforms",
        "application/xml",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_valid_xml(&platforms);
    assert!(
        platforms.contains("<name>OpenStack</name><type>openstack</type>"),
        "{platforms}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refused_login_or_an_unreachable_keystone_stores_nothing() {
    let (app, _) = app_with_users().await;
    let refused = post_account(
        &app,
        "alice",
        "application/json",
        account_json("wrong", &keystone_url(), "not-the-password"),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("Keystone refused the login for 'demo'"),
        "{text}"
    );
    assert!(
        text.contains("requires authentication"),
        "Keystone's reason: {text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");

    // A closed port: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = post_account(
        &app,
        "alice",
        "application/xml",
        account_xml(
            "gone",
            &format!("http://127.0.0.1:{closed}/v3"),
            DEMO_PASSWORD,
        ),
    )
    .await;
    assert_eq!(unreachable.status(), StatusCode::BAD_REQUEST);
    let text = unreachable.text().await.unwrap();
    assert!(text.contains("could not reach Keystone at"), "{text}");
    assert_valid_xml(&text);

    let v2 = account_json("old", &keystone_url(), DEMO_PASSWORD).replace("\"v3\"", "\"v2.0\"");
    let resp = post_account(&app, "alice", "application/json", v2).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("only Keystone v3"));
    assert_eq!(stored_count(&app).await, 0);
    app.stop().await;

    // An address the policy forbids is refused before any call.
    let strict = spawn_app_with(false, |s| s.cloud.allow_loopback = false).await;
    strict
        .add_user("alice", &["migration_publish"], false)
        .await;
    let resp = post_account(
        &strict,
        "alice",
        "application/json",
        account_json("local", &keystone_url(), DEMO_PASSWORD),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text = resp.text().await.unwrap();
    assert!(text.contains("credAccount/keystoneUrl"), "{text}");
    assert_eq!(stored_count(&strict).await, 0);
    strict.stop().await;
}

#[tokio::test]
async fn an_account_is_its_owners_and_its_name_is_unique_per_owner() {
    let (app, _) = app_with_users().await;
    let alices = create_account(&app, "alice", "lab").await;
    let path = format!("users/alice/accounts/{}", alices.db_id);
    assert_eq!(
        get_text(&app, "bob", &path, "application/json").await.0,
        StatusCode::NOT_FOUND
    );
    let as_bobs = format!("users/bob/accounts/{}", alices.db_id);
    assert_eq!(
        get_text(&app, "bob", &as_bobs, "application/json").await.0,
        StatusCode::NOT_FOUND
    );
    let resp = app
        .client
        .delete(app.url(&as_bobs))
        .basic_auth("bob", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let again = post_account(
        &app,
        "alice",
        "application/json",
        account_json("lab", &keystone_url(), DEMO_PASSWORD),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(again
        .text()
        .await
        .unwrap()
        .contains("already has a cloud account named 'lab'"));
    // Another user may use the same name.
    let bobs = create_account(&app, "bob", "lab").await;
    assert_ne!(bobs.db_id, alices.db_id);
    let (_, bobs_list) = get_text(&app, "bob", "users/bob/accounts", "application/json").await;
    let list: CredAccounts = serde_json::from_str(&bobs_list).unwrap();
    assert_eq!(list.total, 1);
    assert_eq!(stored_count(&app).await, 2);
    app.stop().await;
}

/// A publish body whose account is named, not given: `account` is its `credAccount`.
fn publish_naming(account: serde_json::Value) -> String {
    serde_json::json!({
        "displayName": "stored account",
        "keystoneDomain": "Default",
        "keystoneProject": "demo",
        "credAccount": account,
    })
    .to_string()
}

/// The ticket's sealed password and account link.
async fn ticket_row(app: &TestApp, ticket: &PublishImage) -> (Vec<u8>, Option<i64>) {
    sqlx::query_as("SELECT cloud_password_enc, cloud_account_id FROM publish_tickets WHERE id = $1")
        .bind(ticket.db_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_publish_names_a_stored_account_by_uri_db_id_or_name() {
    let (app, image_uri) = app_with_users().await;
    let account = create_account(&app, "alice", "lab").await;
    create_account(&app, "bob", "bobs-lab").await;
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT cloud_password_enc FROM cloud_accounts WHERE id = $1")
            .bind(account.db_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    for reference in [
        serde_json::json!({"uri": account.uri}),
        serde_json::json!({"dbId": account.db_id}),
        serde_json::json!({"name": "lab"}),
    ] {
        let resp = app
            .publish(
                "alice",
                &image_uri,
                "application/json",
                publish_naming(reference.clone()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{reference}");
        let ticket: PublishImage = resp.json().await.unwrap();
        assert_eq!(ticket.cred_account.name.as_deref(), Some("lab"));
        assert_eq!(ticket.cred_account.keystone_url, keystone_url());
        assert_eq!(ticket.cred_account.login, "demo");
        assert_eq!(ticket.keystone_project, "demo");
        // The sealed bytes copied: the worker opens them as it always did.
        assert_eq!(
            ticket_row(&app, &ticket).await,
            (sealed.clone(), Some(account.db_id))
        );
    }

    // As hammr sends it: the stored account as served, without a password, in XML.
    let (_, served) = get_text(&app, "alice", &account.uri, "application/xml").await;
    let cred_account = served
        .split_once("?>").unwrap().1
        .replace("ns0:credAccount", "credAccount")
        .replace(r#" xmlns:ns0="http://www.usharesoft.com/uforge" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#, "");
    let body = format!(
        r#"<ns1:publishImage xmlns:ns1="http://www.usharesoft.com/uforge" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ns1:PublishImageOpenStack">{cred_account}<keystoneDomain>Default</keystoneDomain><keystoneProject>demo</keystoneProject><displayName>from hammr</displayName></ns1:publishImage>"#
    );
    let resp = app
        .publish("alice", &image_uri, "application/xml", body)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Another user's account is no account of the caller's; nothing is filed.
    for (reference, named) in [
        (serde_json::json!({"name": "bobs-lab"}), "named 'bobs-lab'"),
        (
            serde_json::json!({"uri": "users/bob/accounts/1"}),
            "at 'users/bob/accounts/1'",
        ),
    ] {
        let resp = app
            .publish(
                "alice",
                &image_uri,
                "application/json",
                publish_naming(reference),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(&format!("no cloud account {named} for user 'alice'")),
            "{text}"
        );
    }
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tickets, 4);
    // With a password, the body's account is used as before, linked to none.
    let given = common::publish_json("given", "demo", DEMO_PASSWORD, "demo");
    let ticket: PublishImage = app
        .publish("alice", &image_uri, "application/json", given)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ticket_row(&app, &ticket).await.1, None);
    app.stop().await;
}

/// Another user's account is never found, by its `dbId` or `uri`; and a body naming one of
/// the caller's accounts while saying another cloud is refused, not sent to the stored one
/// (both found in review).
#[tokio::test]
async fn a_publish_reaches_neither_another_users_account_nor_another_cloud() {
    let (app, image_uri) = app_with_users().await;
    create_account(&app, "alice", "lab").await;
    let bobs = create_account(&app, "bob", "bobs-lab").await;
    for reference in [
        serde_json::json!({"dbId": bobs.db_id}),
        serde_json::json!({"uri": bobs.uri}),
    ] {
        let resp = app
            .publish(
                "alice",
                &image_uri,
                "application/json",
                publish_naming(reference.clone()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{reference}");
    }
    let elsewhere = serde_json::json!({"name": "lab", "keystoneUrl": "http://127.0.0.1:5999/v3"});
    let resp = app
        .publish(
            "alice",
            &image_uri,
            "application/json",
            publish_naming(elsewhere),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("the stored cloud account 'lab' has keystoneUrl")
            && text.contains("not 'http://127.0.0.1:5999/v3'"),
        "{text}"
    );
    let same = serde_json::json!({"name": "lab", "keystoneUrl": keystone_url(), "login": "demo"});
    let resp = app
        .publish(
            "alice",
            &image_uri,
            "application/json",
            publish_naming(same),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tickets, 1, "only the last publish was filed");
    app.stop().await;
}

#[tokio::test]
async fn an_account_a_ticket_in_flight_uses_is_not_deleted() {
    let (app, image_uri) = app_with_users().await;
    let account = create_account(&app, "alice", "lab").await;
    let resp = app
        .publish(
            "alice",
            &image_uri,
            "application/json",
            publish_naming(serde_json::json!({"name": "lab"})),
        )
        .await;
    let ticket: PublishImage = resp.json().await.unwrap();
    let delete = || async {
        app.client
            .delete(app.url(&account.uri))
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .await
            .unwrap()
    };
    let refused = delete().await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("used by 1 queued or running publish ticket"),
        "{text}"
    );

    app.cancel("alice", &ticket.uri).await;
    assert_eq!(delete().await.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get_text(&app, "alice", &account.uri, "application/json")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(delete().await.status(), StatusCode::NOT_FOUND);
    // The ended ticket keeps its record, no longer linked.
    assert_eq!(ticket_row(&app, &ticket).await.1, None);
    app.stop().await;
}

#[tokio::test]
async fn a_stored_account_publishes_into_the_real_glance() {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("stored.raw", 1 << 20);
    let image = app.register_image("alice", &file, "raw").await;
    create_account(&app, "alice", "lab").await;
    let body =
        publish_naming(serde_json::json!({"name": "lab", "targetPlatform": {"name": "OpenStack"}}));
    let ticket = app.publish_created("alice", &image.uri(), body).await;
    let status = app
        .wait_final("alice", &ticket.uri, Duration::from_secs(180))
        .await;
    assert!(status.complete, "{status:?}");
    let done = app.ticket("alice", &ticket.uri).await;
    let cloud_id = done
        .cloud_id
        .clone()
        .expect("a published ticket names its image");
    let cloud = DemoCloud::login().await;
    let glance_image = cloud
        .image(&cloud_id)
        .await
        .expect("the image is in Glance");
    assert_eq!(glance_image["status"], "active");
    cloud.delete(&cloud_id).await;
    app.stop().await;
}

#[tokio::test]
async fn pimage_accounts_list_shows_no_secret() {
    let (app, _) = app_with_users().await;
    create_account(&app, "alice", "alice-lab").await;
    create_account(&app, "bob", "bob-lab").await;
    let env = Env::of_app(&app, vec![]);
    let all = env.run_ok(&["accounts", "list"]);
    assert!(
        all.contains("alice-lab") && all.contains("bob-lab"),
        "{all}"
    );
    assert!(
        all.contains(&keystone_url()) && all.contains("demo"),
        "{all}"
    );
    assert!(!all.contains(DEMO_PASSWORD), "{all}");
    let bobs = env.run_ok(&["accounts", "list", "--user", "bob"]);
    assert!(
        bobs.contains("bob-lab") && !bobs.contains("alice-lab"),
        "{bobs}"
    );
    app.stop().await;
}

/// Every account route (the table the OpenAPI test holds to the document): no login 401,
/// without the entitlement 403, another user's 404, the owner and an administrator allowed.
#[tokio::test]
async fn every_account_route_against_the_access_rules() {
    let (app, _) = app_with_users().await;
    let mut checked = 0;
    for (method, ok, template) in crate::security::ACCOUNT_ROUTES {
        for (caller, expected) in [
            (None, 401),
            (Some("carol"), 403),
            (Some("bob"), 404),
            (Some("alice"), ok),
            (Some("root"), ok),
        ] {
            // A fresh account for every call: DELETE consumes its own, POST needs a new name.
            let account = create_account(&app, "alice", &format!("lab-{checked}")).await;
            let path = template
                .trim_start_matches("/api/")
                .replace("{uid}", "alice")
                .replace("{caid}", &account.db_id.to_string());
            let mut request = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&path),
                )
                .header("Accept", "application/json");
            if let Some(login) = caller {
                request = request.basic_auth(login, Some(PASSWORD));
            }
            if method == "POST" {
                request = request
                    .header("Content-Type", "application/json")
                    .body(account_json(
                        &format!("new-{checked}"),
                        &keystone_url(),
                        DEMO_PASSWORD,
                    ));
            }
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert_eq!(status, expected, "{method} {path} as {caller:?}: {body}");
            assert!(!body.contains(DEMO_PASSWORD), "{body}");
            checked += 1;
        }
    }
    assert_eq!(checked, 25);
    app.stop().await;
}

/// A publish that read the account just before it was deleted: the insert waits on the
/// deletion's lock, then finds the account gone, and says so (409, nothing stored).
#[tokio::test]
async fn a_publish_racing_the_deletion_of_its_account_is_a_conflict() {
    let (app, image_uri) = app_with_users().await;
    let account = create_account(&app, "alice", "lab").await;
    let mut deletion = app.pool.begin().await.unwrap();
    sqlx::query("DELETE FROM cloud_accounts WHERE id = $1")
        .bind(account.db_id)
        .execute(&mut *deletion)
        .await
        .unwrap();
    let body = publish_naming(serde_json::json!({"name": "lab"}));
    let publish = app.publish("alice", &image_uri, "application/json", body);
    let commit = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        deletion.commit().await.unwrap();
    };
    let (resp, ()) = tokio::join!(publish, commit);
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("was deleted while the publish was filed"),
        "{text}"
    );
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tickets, 0);
    app.stop().await;
}

/// Each account create calls the Keystone the caller names and tells whether the password
/// worked: it spends the publish budget (429 past it), so no user guesses cloud passwords,
/// or probes addresses, at will (found in review).
#[tokio::test]
async fn account_creates_spend_the_publish_budget() {
    let app = spawn_app_with(false, |s| {
        s.limits.publish_burst = 2;
        s.limits.publishes_per_minute = 1;
    })
    .await;
    app.add_user("alice", &["migration_publish"], false).await;
    let closed = format!("http://127.0.0.1:{}/v3", common::processes::free_port());
    for expected in [
        StatusCode::BAD_REQUEST,
        StatusCode::BAD_REQUEST,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let body = account_json("guess", &closed, "guess");
        let resp = post_account(&app, "alice", "application/json", body).await;
        assert_eq!(resp.status(), expected);
    }
    assert_eq!(stored_count(&app).await, 0);
    app.stop().await;
}
