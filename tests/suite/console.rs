//! The operator console over HTTP (sessions, CSRF, roles, CSP, secrets) and the client's
//! event stream (`…/pimages/{pitid}/events`, `Last-Event-ID`), against a real API, worker,
//! Postgres, RabbitMQ and the lab cloud. The browser test is `console_browser.rs`.
#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::time::{Duration, Instant};

use common::{app_with_users, publish_json, spawn_app, TestApp, PASSWORD};
use pimage::store::events::TicketEvent;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::StatusCode;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The value of `name="csrf"` in a page.
pub(crate) fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a CSRF field");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn cookie_value(set_cookie: &str) -> (String, String) {
    let pair = set_cookie.split(';').next().unwrap();
    let (n, v) = pair.split_once('=').unwrap();
    (n.to_string(), v.to_string())
}

pub(crate) struct Console {
    base: String,
    http: reqwest::Client,
    cookie: String,
    pub(crate) csrf: String,
    session_token: String,
}

impl Console {
    /// Logs in through the form; `Err(status)` when refused.
    pub(crate) async fn login(
        base: &str,
        login: &str,
        password: &str,
        tls: bool,
    ) -> Result<Console, (StatusCode, String)> {
        let http = no_redirects();
        let form = http
            .get(format!("{base}/console/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), StatusCode::OK);
        let login_cookie = form.headers()[SET_COOKIE].to_str().unwrap().to_string();
        let html = form.text().await.unwrap();
        let csrf = csrf_of(&html);
        let (n, v) = cookie_value(&login_cookie);
        let mut request = http
            .post(format!("{base}/console/login"))
            .header("Cookie", format!("{n}={v}"))
            .form(&[("login", login), ("password", password), ("csrf", &csrf)]);
        if tls {
            request = request.header("X-Forwarded-Proto", "https");
        }
        let answer = request.send().await.unwrap();
        if answer.status() != StatusCode::SEE_OTHER {
            let status = answer.status();
            return Err((status, answer.text().await.unwrap()));
        }
        let set = answer
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|c| c.starts_with("pimage_console="))
            .expect("a session cookie");
        let (n, token) = cookie_value(&set);
        let cookie = format!("{n}={token}");
        let overview = http
            .get(format!("{base}/console"))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        let csrf = csrf_of(&overview.text().await.unwrap());
        Ok(Console {
            base: base.to_string(),
            http,
            cookie,
            csrf,
            session_token: token,
        })
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("Cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("Cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

async fn ticket_state(app: &TestApp, id: i64) -> String {
    sqlx::query_scalar("SELECT state FROM publish_tickets WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// A queued ticket of alice's (no worker runs in these apps).
async fn queued_ticket(app: &TestApp, image_uri: &str, password: &str) -> i64 {
    let body = app
        .publish_created(
            "alice",
            image_uri,
            publish_json("console", "demo", password, "demo"),
        )
        .await;
    body.db_id
}

#[tokio::test]
async fn login_sessions_roles_and_csrf() {
    let (app, image_uri) = app_with_users().await;
    let base = app.address.clone();
    let http = no_redirects();

    // Anonymous: sent to the login page, from every page.
    for path in [
        "/console",
        "/console/tickets",
        "/console/tickets/1",
        "/console/workers",
        "/console/accounts",
        "/console/events",
    ] {
        let answer = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers()[LOCATION], "/console/login", "{path}");
    }

    // A login without the form's CSRF token is refused, even with the right password.
    let refused = http
        .post(format!("{base}/console/login"))
        .form(&[
            ("login", "root"),
            ("password", PASSWORD),
            ("csrf", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await.unwrap().contains("CSRF"));

    // Not an administrator: 403, and no session.
    let (status, page) = Console::login(&base, "alice", PASSWORD, false)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("administrators only"));
    let (status, _) = Console::login(&base, "root", "wrong password", false)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);

    // The session cookie: HttpOnly, SameSite=Strict, expiring, Secure behind TLS only.
    let form = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let login_cookie = cookie_value(form.headers()[SET_COOKIE].to_str().unwrap());
    let csrf = csrf_of(&form.text().await.unwrap());
    for tls in [false, true] {
        let mut request = http
            .post(format!("{base}/console/login"))
            .header("Cookie", format!("{}={}", login_cookie.0, login_cookie.1))
            .form(&[
                ("login", "root"),
                ("password", PASSWORD),
                ("csrf", csrf.as_str()),
            ]);
        if tls {
            request = request.header("X-Forwarded-Proto", "https");
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let set = answer
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|c| c.starts_with("pimage_console="))
            .unwrap();
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=28800",
            "Path=/console",
        ] {
            assert!(set.contains(attribute), "{set}");
        }
        assert_eq!(set.contains("Secure"), tls, "{set}");
    }

    let console = Console::login(&base, "root", PASSWORD, false)
        .await
        .expect("admin logs in");
    let ticket = queued_ticket(&app, &image_uri, "cloud-pass").await;

    // Every page answers with the strict policy.
    for path in [
        "/console".to_string(),
        "/console/tickets".into(),
        "/console/tickets?state=queued&user=alice".into(),
        format!("/console/tickets/{ticket}"),
        "/console/workers".into(),
        "/console/accounts".into(),
        "/console/login".into(),
        "/console/assets/console.js".into(),
    ] {
        let answer = console.get(&path).await;
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let csp = answer.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_string();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        let html = answer.text().await.unwrap();
        assert!(
            !html.contains("<script>") && !html.contains(" style="),
            "{path}: inline script or style"
        );
    }

    // An action without the session's CSRF token is refused and changes nothing.
    for token in ["", "forged", csrf.as_str()] {
        let answer = console
            .post(
                &format!("/console/tickets/{ticket}/cancel"),
                &[("csrf", token), ("confirm", "yes")],
            )
            .await;
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "token {token:?}");
    }
    assert_eq!(ticket_state(&app, ticket).await, "queued");
    // With the token: a confirmation first, then the cancel.
    let ask = console
        .post(
            &format!("/console/tickets/{ticket}/cancel"),
            &[("csrf", console.csrf.as_str())],
        )
        .await;
    assert_eq!(ask.status(), StatusCode::OK);
    assert!(ask.text().await.unwrap().contains("Yes, cancel"));
    assert_eq!(ticket_state(&app, ticket).await, "queued");
    let done = console
        .post(
            &format!("/console/tickets/{ticket}/cancel"),
            &[("csrf", console.csrf.as_str()), ("confirm", "yes")],
        )
        .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(ticket_state(&app, ticket).await, "cancelled");
    // Retry, then delete, the same way.
    console
        .post(
            &format!("/console/tickets/{ticket}/retry"),
            &[("csrf", console.csrf.as_str()), ("confirm", "yes")],
        )
        .await;
    assert_eq!(ticket_state(&app, ticket).await, "queued");
    let gone = console
        .post(
            &format!("/console/tickets/{ticket}/delete"),
            &[("csrf", console.csrf.as_str()), ("confirm", "yes")],
        )
        .await;
    assert_eq!(gone.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        console
            .get(&format!("/console/tickets/{ticket}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Filters that do not parse are a 400 page, not a 500.
    assert_eq!(
        console.get("/console/tickets?state=bogus").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        console.get("/console/tickets?image=-1").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        console.get("/console/tickets/abc").await.status(),
        StatusCode::NOT_FOUND
    );

    // A user no longer administrator: 403 at once, with the same session.
    let set_admin = |admin: bool| {
        sqlx::query("UPDATE users SET is_admin = $1 WHERE login = 'root'")
            .bind(admin)
            .execute(&app.pool)
    };
    set_admin(false).await.unwrap();
    assert_eq!(
        console.get("/console").await.status(),
        StatusCode::FORBIDDEN
    );
    set_admin(true).await.unwrap();
    assert_eq!(console.get("/console").await.status(), StatusCode::OK);

    // A new password (`pimage users add` again) ends the user's console sessions: a stolen
    // cookie does not outlive the password it was made with.
    app.add_user("root", &["migration_publish"], true).await;
    let reset = console.get("/console").await;
    assert_eq!(reset.status(), StatusCode::SEE_OTHER);
    assert_eq!(reset.headers()[LOCATION], "/console/login");
    let console = Console::login(&base, "root", PASSWORD, false)
        .await
        .unwrap();

    // An expired session is anonymous again.
    sqlx::query("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let expired = console.get("/console").await;
    assert_eq!(expired.status(), StatusCode::SEE_OTHER);
    assert_eq!(expired.headers()[LOCATION], "/console/login");

    // Log out: the session row goes.
    let again = Console::login(&base, "root", PASSWORD, false)
        .await
        .unwrap();
    let out = again
        .post("/console/logout", &[("csrf", again.csrf.as_str())])
        .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(again.get("/console").await.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test]
async fn no_page_shows_a_secret() {
    let (app, image_uri) = app_with_users().await;
    let cloud_password = "Cl0ud-pa55word-never-shown";
    let ticket = queued_ticket(&app, &image_uri, cloud_password).await;
    let (_, api_secret) = {
        let (public, secret) = pimage::api::new_api_key();
        let sealed = pimage::secrets::SecretBox::from_base64_key(&app.settings.secrets.key)
            .unwrap()
            .seal(&secret);
        let root = pimage::store::users::find_by_login(&app.pool, "root")
            .await
            .unwrap()
            .unwrap();
        pimage::store::users::add_api_key(&app.pool, root.id, &public, &sealed)
            .await
            .unwrap();
        (public, secret)
    };
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT cloud_password_enc FROM publish_tickets WHERE id = $1")
            .bind(ticket)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // A stored account, its password sealed as the ticket's: the Accounts page lists it.
    sqlx::query(
        "INSERT INTO cloud_accounts (user_id, name, keystone_url, cloud_login, cloud_password_enc)
         SELECT user_id, 'lab', keystone_url, cloud_login, cloud_password_enc
           FROM publish_tickets WHERE id = $1",
    )
    .bind(ticket)
    .execute(&app.pool)
    .await
    .unwrap();
    let console = Console::login(&app.address, "root", PASSWORD, false)
        .await
        .unwrap();
    let secrets = [
        cloud_password.to_string(),
        PASSWORD.to_string(),
        api_secret.expose().to_string(),
        app.settings.secrets.key.expose().to_string(),
        hex::encode(&sealed),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &sealed),
        console.session_token.clone(),
        "password_hash".into(),
        "$argon2".into(),
    ];
    let pages = [
        "/console".to_string(),
        "/console/tickets".into(),
        format!("/console/tickets/{ticket}"),
        format!("/console/tickets/{ticket}/glance"),
        "/console/workers".into(),
        "/console/accounts".into(),
        "/console/login".into(),
    ];
    let mut bodies: Vec<(String, String)> = vec![];
    for path in &pages {
        let answer = console.get(path).await;
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        bodies.push((path.clone(), answer.text().await.unwrap()));
    }
    for action in ["cancel", "retry", "delete"] {
        let path = format!("/console/tickets/{ticket}/{action}");
        let answer = console
            .post(&path, &[("csrf", console.csrf.as_str())])
            .await;
        bodies.push((path, answer.text().await.unwrap()));
    }
    // The live feed: a change of the ticket, as sent to browsers.
    let mut feed = console.get("/console/events?after=0").await;
    let mut text = String::new();
    let until = Instant::now() + Duration::from_secs(5);
    while !text.contains("event: ticket") && Instant::now() < until {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(1), feed.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(text.contains("event: ticket"), "{text}");
    bodies.push(("/console/events".into(), text));
    for (path, body) in &bodies {
        for secret in &secrets {
            assert!(
                !body.contains(secret.as_str()),
                "{path} shows a secret ({} chars)",
                secret.len()
            );
        }
    }
    // The page does show the account's public parts.
    assert!(bodies[2].1.contains("demo"));
    assert_eq!(pages[5], "/console/accounts");
    assert!(bodies[5].1.contains("<td>lab</td>"), "{}", bodies[5].1);
    app.stop().await;
}

/// The events of `ticket` among those a feed sent: (kind, state) each.
fn events_of(events: &[(i64, String, TicketEvent)], ticket: i64) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|(_, name, data)| name == "ticket" && data.ticket_id == ticket)
        .map(|(_, _, data)| (data.kind.clone(), data.state.clone()))
        .collect()
}

fn created_queued() -> (String, String) {
    ("created".into(), "queued".into())
}

/// A ticket's creation is announced with its batch of hand-offs (`outbox::HandOffs`), not by
/// its insert: a console opened before the POST must still be sent the `created` event.
#[tokio::test]
async fn a_new_ticket_reaches_an_open_console_feed() {
    let (app, image_uri) = app_with_users().await;
    let console = Console::login(&app.address, "root", PASSWORD, false)
        .await
        .unwrap();
    // No `after`: live events only, so what arrives was announced, not replayed from the log.
    let feed = console.get("/console/events").await;
    assert_eq!(feed.status(), StatusCode::OK);
    let ticket = queued_ticket(&app, &image_uri, "demo").await;
    let (events, _) = read_stream(feed, Duration::from_secs(5)).await;
    assert_eq!(events_of(&events, ticket), [created_queued()], "{events:?}");
    app.stop().await;
}

/// Tickets stored by an API that died before announcing its batch: the outbox relay (here,
/// the test app's API) announces their creation when it hands them off, unless they changed
/// since: one cancelled meanwhile is not shown as newly queued to a page opened after that.
#[tokio::test]
async fn tickets_left_to_the_outbox_relay_reach_an_open_console_feed() {
    let (app, _) = app_with_users().await;
    let console = Console::login(&app.address, "root", PASSWORD, false)
        .await
        .unwrap();
    let alice = pimage::store::users::find_by_login(&app.pool, "alice")
        .await
        .unwrap()
        .unwrap();
    let file = app.raw_file("relayed.raw", 4096);
    let image = app.register_image("alice", &file, "raw").await;
    let sealed = pimage::secrets::SecretBox::from_base64_key(&app.settings.secrets.key)
        .unwrap()
        .seal(&pimage::secrets::Secret::new("demo"));
    // What the dead API wrote: each ticket and its outbox row, and nothing announced.
    let stored = || async {
        let (ticket, _outbox_id) = pimage::store::tickets::create(
            &app.pool,
            &pimage::store::tickets::NewTicket {
                cloud_password_enc: sealed.clone(),
                bytes_total: image.size_bytes,
                ..common::new_ticket(image.id, alice.id, "relayed")
            },
        )
        .await
        .unwrap();
        ticket.id
    };
    let queued = stored().await;
    let cancelled = stored().await;
    pimage::store::cancel::request_cancel(&app.pool, cancelled)
        .await
        .unwrap();
    // The cancel announced its own change as it committed; the process's listener reads that
    // NOTIFY a moment later, and a feed opened in that moment would get it too (seen on a
    // loaded machine). Past it, only the relay can announce, and its first turn is at 5 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Opened now, live only: what it is sent of the two, only the relay announced. The relay
    // takes rows older than 5 s, every 2 s.
    let feed = console.get("/console/events").await;
    assert_eq!(feed.status(), StatusCode::OK);
    let (events, _) = read_stream(feed, Duration::from_secs(12)).await;
    assert_eq!(events_of(&events, queued), [created_queued()], "{events:?}");
    assert_eq!(events_of(&events, cancelled), [], "{events:?}");
    app.wait_handed_off().await;
    app.stop().await;
}

/// Reads a Server-Sent Events body until it ends (or `within`): (id, event name, data) of
/// each event with an id: the ticket events (a worker's heartbeats have none).
pub(crate) async fn read_stream(
    mut answer: reqwest::Response,
    within: Duration,
) -> (Vec<(i64, String, TicketEvent)>, bool) {
    let mut text = String::new();
    let until = Instant::now() + within;
    let mut ended = false;
    while Instant::now() < until {
        match tokio::time::timeout(until - Instant::now(), answer.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => {
                ended = true;
                break;
            }
            Ok(Err(e)) => panic!("stream broke: {e}"),
            Err(_) => break,
        }
    }
    let events = text
        .split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut name = String::new();
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v);
                }
            }
            // A block cut by the deadline does not parse, and is left out.
            Some((id?, name, serde_json::from_str(data?).ok()?))
        })
        .collect();
    (events, ended)
}

#[tokio::test]
async fn a_client_follows_its_ticket_by_events_and_resumes_with_last_event_id() {
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    app.add_user("bob", &["migration_publish"], false).await;
    app.add_user("carol", &["other"], false).await;
    let file = app.qcow2_file("disk.qcow2", 8);
    let image = app.register_image("alice", &file, "qcow2").await;
    let body = app
        .publish_created(
            "alice",
            &image.uri(),
            publish_json("events", "demo", "demopass", "demo"),
        )
        .await;
    let id = body.db_id;
    let events_path = format!("{}/pimages/{id}/events", image.uri());

    // Same auth as the status route.
    assert_eq!(
        app.client
            .get(app.url(&events_path))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get(&events_path, "bob").send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&events_path, "carol")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    let stream = app.get(&events_path, "alice").send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (seen, ended) = read_stream(stream, Duration::from_secs(120)).await;
    assert!(ended, "the stream ends at the final state: {seen:?}");
    let states: Vec<&str> = seen.iter().map(|(_, _, d)| d.state.as_str()).collect();
    assert_eq!(states.last(), Some(&"complete"), "{states:?}");
    assert!(states.contains(&"running"), "{states:?}");
    assert!(seen
        .iter()
        .all(|(_, name, d)| name == "status" && d.ticket_id == id));
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let percentages: Vec<i64> = seen
        .iter()
        .map(|(_, _, d)| i64::from(d.percentage))
        .collect();
    assert!(
        percentages.windows(2).all(|w| w[0] <= w[1]),
        "{percentages:?}"
    );
    // Polling clients see the same end.
    assert!(
        app.status("alice", &format!("{}/pimages/{id}", image.uri()))
            .await
            .complete
    );

    // Resumed after the first event: exactly what followed it, then the end.
    let (first, _, _) = seen[0];
    let resumed = app
        .get(&events_path, "alice")
        .header("Last-Event-ID", first.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    let (replayed, ended) = read_stream(resumed, Duration::from_secs(10)).await;
    assert!(ended);
    let replayed_ids: Vec<i64> = replayed.iter().map(|e| e.0).collect();
    let seen_after: Vec<i64> = seen[1..].iter().map(|e| e.0).collect();
    // The first connection may have started from an event it merged; what it saw after the
    // first is all in the log, and the log has nothing it did not see but progress steps.
    assert!(
        seen_after.iter().all(|i| replayed_ids.contains(i)),
        "{seen_after:?} ⊄ {replayed_ids:?}"
    );
    assert_eq!(replayed.last().unwrap().2.state, "complete");
    // After the last event: nothing more will come (204 stops an EventSource).
    let last = seen.last().unwrap().0;
    let done = app
        .get(&events_path, "alice")
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::NO_CONTENT);
    // Without Last-Event-ID, an ended ticket's stream is its final status, then the end.
    let (once, ended) = read_stream(
        app.get(&events_path, "alice").send().await.unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert!(ended);
    assert_eq!(once.len(), 1);
    assert_eq!(once[0].2.state, "complete");
    app.stop().await;
}

#[tokio::test]
async fn old_events_of_ended_tickets_and_silent_heartbeats_are_pruned() {
    let (app, image_uri) = app_with_users().await;
    let live = queued_ticket(&app, &image_uri, "pw-live").await;
    let ended = queued_ticket(&app, &image_uri, "pw-ended").await;
    sqlx::query(
        "UPDATE publish_tickets SET state = 'cancelled', finished_at = now() WHERE id = $1",
    )
    .bind(ended)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE ticket_events SET at = now() - interval '8 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    let events_of = |id: i64| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ticket_events WHERE ticket_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
    };
    assert!(events_of(ended).await.unwrap() > 0);
    let week = 7.0 * 24.0 * 3600.0;
    let purged = pimage::store::events::purge_old(&app.pool, week, 1000)
        .await
        .unwrap();
    assert!(purged > 0);
    assert_eq!(
        events_of(ended).await.unwrap(),
        0,
        "an ended ticket's old events go"
    );
    assert!(
        events_of(live).await.unwrap() > 0,
        "a queued ticket keeps its history"
    );

    sqlx::query(
        "INSERT INTO worker_heartbeats (worker, host, pid, version, slots_total, slots_used, beat_at)
         VALUES ('gone:1', 'gone', 1, 'test', 4, 0, now() - interval '2 hours'),
                ('here:2', 'here', 2, 'test', 4, 0, now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        pimage::store::workers::purge_silent(&app.pool, 3600.0)
            .await
            .unwrap(),
        1
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT worker FROM worker_heartbeats")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["here:2"]);
    app.stop().await;
}
