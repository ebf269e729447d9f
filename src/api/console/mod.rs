//! The operator console at `/console`: server-rendered pages (maud) for administrators,
//! live through one Server-Sent Events feed (`/console/events`, fed by `live::Hub`).
//!
//! A login form opens a session: a random token in a cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` behind TLS, expiring), only its SHA-256 stored. Every form carries the session's
//! CSRF token (the login form a cookie-bound one), and every answer a strict
//! Content-Security-Policy: scripts and styles only from `/console/assets`, served by pimage.
//! Actions (cancel, retry, delete; a group's cancel) ask for confirmation on a page of their
//! own.

mod group_page;
mod pages;

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::events::{Feed, Scope};
use super::extract::LastEventId;
use super::limits::Access;
use super::{observe, AppState};
use crate::cloud::Keystone;
use crate::secrets::Secret;
use crate::store::console::{self as store, TicketFilter};
use crate::store::{accounts, attempts, events, tickets, workers, TicketState};

/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const SESSION_COOKIE: &str = "pimage_console";
const LOGIN_CSRF_COOKIE: &str = "pimage_console_login";
/// Tickets per page of the list.
pub const PAGE_SIZE: i64 = 50;
/// A worker silent this long is not shown (its heartbeat is every 5 s).
pub const WORKER_STALE_SECS: f64 = 20.0;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's router, nested at `/console` (its own fallback: unknown pages are pages).
pub fn routes(state: AppState) -> Router {
    let pages = Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/tickets", get(ticket_list))
        .route("/tickets/{id}", get(ticket_page))
        .route("/tickets/{id}/glance", get(glance_state))
        .route("/tickets/{id}/{action}", post(ticket_action))
        .route("/groups/{id}", get(group_page::group_page))
        .route("/groups/{id}/summary", get(group_page::group_summary))
        .route("/groups/{id}/cancel", post(group_page::group_cancel))
        .route("/workers", get(worker_page))
        .route("/accounts", get(account_page))
        .route("/events", get(live_feed))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .route("/assets/favicon.svg", get(favicon))
        .route_layer(axum::middleware::from_fn(observe::http_metrics))
        .fallback(|| async { page_error(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state);
    Router::new().nest("/console", pages)
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An error as a page (never a uforgeError document).
fn page_error(status: StatusCode, message: &str) -> Response {
    (status, pages::error_page(status, message)).into_response()
}

struct PageError(Response);

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> PageError {
        tracing::error!(error = %e, "console: database error");
        PageError(page_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database could not be reached; try again in a moment",
        ))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0
    }
}

type PageResult = Result<Response, PageError>;

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Behind a TLS-terminating proxy the cookie is `Secure`.
fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are base64url")
}

/// A signed-in administrator, and the session's CSRF token. Anonymous callers are sent to
/// the login page; a user who is not an administrator (any more) gets 403.
pub struct Admin {
    pub login: String,
    pub csrf: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, Response> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Redirect::to("/console/login").into_response());
        };
        let session = store::session(&state.pool, &token_hash(token))
            .await
            .map_err(|e| PageError::from(e).0)?;
        match session {
            None => Err(Redirect::to("/console/login").into_response()),
            Some(s) if !s.is_admin => Err(page_error(
                StatusCode::FORBIDDEN,
                "the console is for administrators only",
            )),
            Some(s) => Ok(Admin {
                login: s.login,
                csrf: s.csrf_token,
            }),
        }
    }
}

async fn login_form(headers: HeaderMap) -> Response {
    let csrf = random_token();
    let mut response = pages::login(&csrf, None).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, &csrf, 3600, behind_tls(&headers)),
    );
    response
}

#[derive(Deserialize)]
struct LoginForm {
    login: String,
    password: String,
    csrf: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if expected.is_empty() || !same_token(expected, &form.csrf) {
        return Ok(page_error(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong: reload the login page",
        ));
    }
    let user = match state
        .auth
        .by_password(form.login.clone(), Secret::new(form.password))
        .await
    {
        Ok(user) => user,
        Err(ApiError::Unauthorized) => {
            return Ok((
                StatusCode::UNAUTHORIZED,
                pages::login(expected, Some("wrong login or password")),
            )
                .into_response())
        }
        Err(e) => {
            let status = e.status_code();
            return Ok((status, pages::login(expected, Some(&e.to_string()))).into_response());
        }
    };
    if !user.is_admin {
        return Ok(page_error(
            StatusCode::FORBIDDEN,
            "the console is for administrators only",
        ));
    }
    let token = random_token();
    store::create_session(
        &state.pool,
        &token_hash(&token),
        user.id,
        &random_token(),
        SESSION_TTL.as_secs_f64(),
    )
    .await?;
    tracing::info!(login = user.login, "console session opened");
    let mut response = Redirect::to("/console").into_response();
    let secure = behind_tls(&headers);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, SESSION_TTL.as_secs(), secure),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, "", 0, secure),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    #[serde(default)]
    confirm: Option<String>,
}

fn csrf_refused() -> Response {
    page_error(
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or wrong: reload the page and try again",
    )
}

async fn logout(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> PageResult {
    if !same_token(&admin.csrf, &form.csrf) {
        return Ok(csrf_refused());
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        store::end_session(&state.pool, &token_hash(token)).await?;
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, behind_tls(&headers)),
    );
    Ok(response)
}

/// RabbitMQ's figures, or why they are missing; bounded so a stuck broker cannot hold a page.
async fn queue_figures(state: &AppState) -> Result<(u32, u32), String> {
    let read = async {
        let depth = state.publisher.queue_depth().await?;
        let dead = state.publisher.dead_letter_depth().await?;
        Ok::<_, crate::queue::QueueError>((depth, dead))
    };
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok(figures)) => Ok(figures),
        Ok(Err(e)) => Err(format!("RabbitMQ unavailable: {e}")),
        Err(_) => Err("RabbitMQ did not answer within 2 s".into()),
    }
}

async fn overview(State(state): State<AppState>, admin: Admin) -> PageResult {
    let newest = events::newest_id(&state.pool).await?;
    let counts = store::tickets_per_state(&state.pool).await?;
    let running = store::running_per_cloud(&state.pool).await?;
    let running: Vec<(String, i64, u32)> = running
        .into_iter()
        .map(|(cloud, n)| {
            let limit = crate::cloud::upload_limit_for(state.cloud_policy.settings(), &cloud);
            (cloud, n, limit)
        })
        .collect();
    let outbox = crate::store::outbox::lag(&state.pool).await?;
    let hour = store::last_hour(&state.pool).await?;
    let queue = queue_figures(&state).await;
    Ok(pages::overview(&admin, newest, &counts, &running, queue, outbox, &hour).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    user: Option<String>,
    cloud: Option<String>,
    image: Option<String>,
    from: Option<String>,
    to: Option<String>,
    before: Option<String>,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A date (`2026-12-01`) or an RFC 3339 time.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
                .ok()
                .map(|t| t.and_utc())
        })
}

impl ListQuery {
    fn filter(&self) -> Result<TicketFilter, String> {
        let state = match non_empty(&self.state) {
            None => None,
            Some(s) => Some(TicketState::parse(s).ok_or(format!("no state '{s}'"))?),
        };
        let id = |name: &str, v: &Option<String>| -> Result<Option<i64>, String> {
            non_empty(v)
                .map(|raw| {
                    raw.parse::<i64>()
                        .ok()
                        .filter(|id| *id > 0)
                        .ok_or(format!("{name} must be a positive number, not '{raw}'"))
                })
                .transpose()
        };
        let time = |name: &str, v: &Option<String>| -> Result<Option<DateTime<Utc>>, String> {
            non_empty(v)
                .map(|raw| {
                    parse_time(raw).ok_or(format!(
                        "{name} must be a date (YYYY-MM-DD) or a time, not '{raw}'"
                    ))
                })
                .transpose()
        };
        Ok(TicketFilter {
            state,
            user: non_empty(&self.user).map(str::to_string),
            cloud: non_empty(&self.cloud).map(str::to_string),
            image_id: id("image", &self.image)?,
            created_from: time("from", &self.from)?,
            created_to: time("to", &self.to)?,
            before_id: id("before", &self.before)?,
        })
    }
}

async fn ticket_list(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let filter = match query.filter() {
        Ok(f) => f,
        Err(why) => return Ok(page_error(StatusCode::BAD_REQUEST, &why)),
    };
    let newest = events::newest_id(&state.pool).await?;
    let lines = store::tickets(&state.pool, &filter, PAGE_SIZE + 1).await?;
    let more = lines.len() as i64 > PAGE_SIZE;
    let lines = &lines[..lines.len().min(PAGE_SIZE as usize)];
    Ok(pages::ticket_list(&admin, newest, &filter, lines, more).into_response())
}

fn ticket_id(raw: &str) -> Option<i64> {
    raw.parse::<i64>().ok().filter(|id| *id > 0)
}

async fn ticket_page(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> PageResult {
    let Some(id) = ticket_id(&id) else {
        return Ok(page_error(StatusCode::NOT_FOUND, "no such ticket"));
    };
    let newest = events::newest_id(&state.pool).await?;
    let Some(ticket) = tickets::get(&state.pool, id).await? else {
        return Ok(page_error(
            StatusCode::NOT_FOUND,
            &format!("no ticket {id}"),
        ));
    };
    let tries = attempts::of_ticket(&state.pool, id).await?;
    let chart = events::bytes_over_time(&state.pool, id, 120).await?;
    Ok(pages::ticket(&admin, newest, &ticket, &tries, &chart).into_response())
}

/// The Glance image's state, asked of the cloud with the ticket's account (loaded by the
/// ticket page after it is shown, so the page never waits for a cloud).
async fn glance_state(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> PageResult {
    let Some(id) = ticket_id(&id) else {
        return Ok(page_error(StatusCode::NOT_FOUND, "no such ticket"));
    };
    let Some(ticket) = tickets::get(&state.pool, id).await? else {
        return Ok(page_error(
            StatusCode::NOT_FOUND,
            &format!("no ticket {id}"),
        ));
    };
    let Some(cloud_id) = ticket.cloud_id.clone() else {
        return Ok(pages::glance_fragment(None, "no image in the cloud yet").into_response());
    };
    let Ok(password) = state.secrets.open(&ticket.cloud_password_enc) else {
        return Ok(pages::glance_fragment(
            Some(&cloud_id),
            "the stored cloud password cannot be opened",
        )
        .into_response());
    };
    let account = super::routes::cloud_account_of(&ticket, password);
    let status = match Keystone::login(&account, &state.cloud_policy).await {
        Ok(glance) => match glance.image(&cloud_id).await {
            Ok(image) => image.status,
            Err(e) => format!("unknown: {}", e),
        },
        Err(e) => format!("unknown: {}", e),
    };
    Ok(pages::glance_fragment(Some(&cloud_id), &status).into_response())
}

async fn ticket_action(
    State(state): State<AppState>,
    admin: Admin,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    if !same_token(&admin.csrf, &form.csrf) {
        return Ok(csrf_refused());
    }
    let Some(id) = ticket_id(&id) else {
        return Ok(page_error(StatusCode::NOT_FOUND, "no such ticket"));
    };
    let Some(action) = pages::Action::parse(&action) else {
        return Ok(page_error(StatusCode::NOT_FOUND, "no such action"));
    };
    let Some(ticket) = tickets::get(&state.pool, id).await? else {
        return Ok(page_error(
            StatusCode::NOT_FOUND,
            &format!("no ticket {id}"),
        ));
    };
    if form.confirm.as_deref() != Some("yes") {
        return Ok(pages::confirm(&admin, &ticket, action).into_response());
    }
    let applied = match super::admin::apply(&state.pool, id, action.into()).await {
        Ok(applied) => applied,
        Err(ApiError::NotFound(why)) => return Ok(page_error(StatusCode::NOT_FOUND, &why)),
        Err(ApiError::Conflict(why)) => return Ok(page_error(StatusCode::CONFLICT, &why)),
        Err(other) => {
            tracing::error!(ticket_id = id, error = %other, "console: the action failed");
            let status = match other {
                ApiError::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => other.status_code(),
            };
            let why = "the action could not be done; try again in a moment";
            return Ok(page_error(status, why));
        }
    };
    if let Some(outbox_id) = applied.requeued {
        state.hand_offs.requeued(id, outbox_id);
    }
    tracing::info!(
        ticket_id = id,
        by = admin.login,
        ?action,
        "administrator action from the console"
    );
    // The next status read sees the action, before the NOTIFY arrives.
    state.live.statuses().changed(id);
    let back = match action {
        pages::Action::Delete => "/console/tickets".to_string(),
        _ => format!("/console/tickets/{id}"),
    };
    Ok(Redirect::to(&back).into_response())
}

async fn worker_page(State(state): State<AppState>, admin: Admin) -> PageResult {
    let rows = workers::live(&state.pool, WORKER_STALE_SECS).await?;
    Ok(pages::workers(&admin, &rows).into_response())
}

async fn account_page(State(state): State<AppState>, admin: Admin) -> PageResult {
    let rows = accounts::list_all(&state.pool, None).await?;
    Ok(pages::accounts(&admin, &rows).into_response())
}

#[derive(Deserialize)]
struct FeedQuery {
    after: Option<i64>,
}

/// Every ticket event and worker heartbeat, from the page's render on (`after`) or from the
/// browser's `Last-Event-ID` when it reconnects.
async fn live_feed(
    State(state): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
    LastEventId(last_event_id): LastEventId,
    Query(query): Query<FeedQuery>,
) -> Response {
    // `Admin` found the session, so the cookie is there. Not counted: administrators only.
    let session = token_hash(cookie(&headers, SESSION_COOKIE).unwrap_or(""));
    let pass = match state.streams.open(Access::Session(session), None) {
        Ok(pass) => pass,
        Err(e) => return page_error(e.status_code(), &e.to_string()),
    };
    let feed = Feed::new(state.pool.clone(), &state.live, Scope::All, true).held_by(pass);
    let after = last_event_id.or(query.after);
    match after {
        Some(id) => feed.resume_after(id).into_response(),
        None => feed.into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("console.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("console.js"))
}

async fn favicon() -> Response {
    asset("image/svg+xml", include_str!("favicon.svg"))
}
