//! Route handlers: parse and check the request, call the store, answer a document. Each one's
//! `#[utoipa::path]` is its operation in the OpenAPI document (`openapi.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::error::ApiError;
use super::openapi::{
    Cached, CancelErrors, DeleteErrors, DeleteTicketParams, ImagePath, PublishErrors,
    PublishRequestBody, ReadErrors, ScanPath, StatusErrors, TicketPath, UserParams,
};
use super::paths;
use super::publish_request::{self, BodyError, PublishRequest};
use super::wire::{
    AttemptDoc, Document, Format, ImageDoc, Images, OpStatus, OpStatuses, PublishImage,
    PublishImages, ServiceStatus,
};
use super::AppState;
use crate::cloud::{Glance, OpenStackAccount};
use crate::live::statuses::CachedStatus;
use crate::metrics_catalog;
use crate::store::cancel::{self, CancelOutcome};
use crate::store::tickets::{self, NewTicket};
use crate::store::{attempts, images, Image, Ticket};

type PathParams = Path<HashMap<String, String>>;

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    Format::from_accept(headers).ok_or(ApiError::NotAcceptable)
}

/// A path id: a positive 64-bit integer.
fn id_param(params: &HashMap<String, String>, name: &str) -> Result<i64, ApiError> {
    let raw = params.get(name).map(String::as_str).unwrap_or("");
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::BadRequest(format!("{name} must be a positive integer, not '{raw}'"))
    })
}

/// A ticket's path ids: scanned instance, scan, image, ticket.
fn ticket_path(params: &HashMap<String, String>) -> Result<(i64, i64, i64, i64), ApiError> {
    Ok((
        id_param(params, "siid")?,
        id_param(params, "sid")?,
        id_param(params, "itid")?,
        id_param(params, "pitid")?,
    ))
}

fn uid_param(params: &HashMap<String, String>) -> &str {
    params.get("uid").map(String::as_str).unwrap_or("")
}

async fn resolve_image(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Image, ApiError> {
    let uid = uid_param(params);
    caller.authorize(uid)?;
    let (siid, sid, itid) = (
        id_param(params, "siid")?,
        id_param(params, "sid")?,
        id_param(params, "itid")?,
    );
    images::find(&state.pool, uid, siid, sid, itid)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no image {itid} in scan {sid} of scanned instance {siid}"
            ))
        })
}

pub(super) async fn resolve_ticket(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Ticket, ApiError> {
    let uid = uid_param(params);
    caller.authorize(uid)?;
    let path = ticket_path(params)?;
    if let Some(ticket) = tickets::find_at(&state.pool, uid, path).await? {
        return Ok(ticket);
    }
    // Not found: say which part of the path is wrong.
    let image = resolve_image(state, caller, params).await?;
    Err(ApiError::NotFound(format!(
        "no publish ticket {} for image {}",
        path.3, image.id
    )))
}

/// `GET /api/status`: lets clients check they can talk to the server (no login needed).
#[utoipa::path(
    get,
    path = paths::STATUS,
    operation_id = "serviceStatus",
    summary = "Is the service alive (no login)",
    security(()),
    responses(
        (status = 200, description = "OK", content(
            (ServiceStatus = "application/json"), (ServiceStatus = "application/xml"))),
        StatusErrors,
    )
)]
pub async fn service_status(headers: HeaderMap) -> Result<Response, ApiError> {
    let doc = Document::new(
        "serviceStatus",
        ServiceStatus {
            alive: true,
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    Ok(doc.render(format_of(&headers)?, StatusCode::OK))
}

#[utoipa::path(
    get,
    path = paths::IMAGES,
    operation_id = "listImages",
    summary = "The images of a scan",
    params(ScanPath),
    responses(Cached<Images>, ReadErrors)
)]
pub async fn list_images(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let uid = uid_param(&params);
    caller.authorize(uid)?;
    let (siid, sid) = (id_param(&params, "siid")?, id_param(&params, "sid")?);
    let list = images::list_in_scan(&state.pool, uid, siid, sid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no scan {sid} in scanned instance {siid}")))?;
    let (doc, digest) = Images::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::IMAGE,
    operation_id = "getImage",
    summary = "One image",
    params(ImagePath),
    responses(Cached<ImageDoc>, ReadErrors)
)]
pub async fn get_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let image = resolve_image(&state, &caller, &params).await?;
    let (doc, digest) = ImageDoc::document(&image);
    Ok(doc.render_cached(format, &digest, &headers))
}

/// `POST …/images/{itid}/pimages`: store the ticket, hand it to RabbitMQ, answer at once.
#[utoipa::path(
    post,
    path = paths::TICKETS,
    operation_id = "publish",
    summary = "Publish the image to a cloud: stores a ticket and answers at once",
    params(ImagePath),
    request_body(content(
        (PublishRequestBody = "application/json"), (PublishRequestBody = "application/xml"))),
    responses(
        (status = 201, description = "The ticket, queued",
            headers(("Location" = String), ("ETag" = String, description = "The object's digest, quoted")),
            content((PublishImage = "application/json"), (PublishImage = "application/xml"))),
        PublishErrors,
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    state.publish_rate.take(&caller.0.login)?;
    let image = resolve_image(&state, &caller, &params).await?;
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge(state.max_body_bytes)
            } else {
                ApiError::BadRequest(format!("the request body could not be read: {e}"))
            }
        })?;
    let request = parse_publish_body(&headers, &bytes)?;
    check_cloud_addresses(&state, &request)?;
    if tokio::fs::metadata(&image.file_path).await.is_err() {
        return Err(ApiError::Conflict(format!(
            "image {} ('{}') is not ready to publish: its file is missing on the server",
            image.id, image.name
        )));
    }
    let sealed = state.secrets.seal(&request.password);
    let display_name = request
        .display_name
        .clone()
        .unwrap_or_else(|| image.name.clone());
    let (ticket, outbox_id) = create_within_quota(
        &state,
        &image.owner_login,
        &NewTicket {
            image_id: image.id,
            user_id: caller_owner_id(&state, &caller, &image).await?,
            display_name: &display_name,
            public_image: request.public_image,
            account_name: request.account_name.as_deref(),
            keystone_url: &request.keystone_url,
            keystone_version: &request.keystone_version,
            keystone_domain: &request.keystone_domain,
            keystone_project: &request.keystone_project,
            glance_url: request.glance_url.as_deref(),
            cloud_login: &request.login,
            cloud_password_enc: &sealed,
            bytes_total: image.size_bytes,
        },
    )
    .await?;
    tracing::info!(ticket_id = ticket.id, image_id = image.id, "ticket stored");
    metrics::counter!(metrics_catalog::PUBLISH_REQUESTS).increment(1);
    // Handed to RabbitMQ after the answer: the outbox row already promises it (the relay
    // publishes it if this process dies first), and the client need not wait for the
    // broker's confirm.
    state.hand_offs.created(ticket.id, outbox_id);

    let (doc, digest) = PublishImage::document(&ticket);
    let mut response = doc.render(format, StatusCode::CREATED);
    if let Ok(location) = HeaderValue::from_str(&format!("/api/{}", ticket.uri())) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// Stores the ticket unless its owner has `queued_tickets_per_user` unfinished already (429).
async fn create_within_quota(
    state: &AppState,
    owner: &str,
    new: &NewTicket<'_>,
) -> Result<(Ticket, i64), ApiError> {
    let cap = state.queued_tickets_per_user;
    match tickets::create_within_quota(&state.pool, new, cap).await? {
        tickets::Filed::Created(ticket, outbox_id) => Ok((*ticket, outbox_id)),
        tickets::Filed::OverQuota(unfinished) => Err(ApiError::TooManyRequests {
            message: format!(
                "user '{owner}' has {unfinished} tickets queued or running, the most allowed is \
                 {cap}: wait for some to end (or cancel some), then publish again"
            ),
            retry_after: QUOTA_RETRY_AFTER,
        }),
    }
}

/// What a publish refused for too many unfinished tickets is told to wait.
const QUOTA_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The ticket belongs to the image's owner, also when an administrator files it.
async fn caller_owner_id(
    state: &AppState,
    caller: &Caller,
    image: &Image,
) -> Result<i64, ApiError> {
    if caller.0.login == image.owner_login {
        return Ok(caller.0.id);
    }
    crate::store::users::find_by_login(&state.pool, &image.owner_login)
        .await?
        .map(|u| u.id)
        .ok_or_else(|| ApiError::NotFound(format!("no user '{}'", image.owner_login)))
}

/// Refuses, before storing anything, cloud URLs this service may not call.
fn check_cloud_addresses(state: &AppState, request: &PublishRequest) -> Result<(), ApiError> {
    let urls = [
        ("credAccount/keystoneUrl", Some(&request.keystone_url)),
        ("credAccount/glanceUrl", request.glance_url.as_ref()),
    ];
    for (name, url) in urls {
        let Some(Ok(url)) = url.map(|u| url::Url::parse(u)) else {
            continue;
        };
        state
            .cloud_policy
            .check_url(&url)
            .map_err(|why| ApiError::BadRequest(format!("{name} {why}")))?;
    }
    Ok(())
}

fn parse_publish_body(headers: &HeaderMap, body: &[u8]) -> Result<PublishRequest, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    publish_request::parse(content_type, body).map_err(|e| match e {
        BodyError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
        BodyError::Invalid(e) => ApiError::BadRequest(e.0),
    })
}

#[utoipa::path(
    get,
    path = paths::TICKETS,
    operation_id = "listTicketsOfImage",
    summary = "The publish tickets of an image",
    params(ImagePath),
    responses(Cached<PublishImages>, ReadErrors)
)]
pub async fn list_tickets_of_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let image = resolve_image(&state, &caller, &params).await?;
    let list = tickets::list_of_image(&state.pool, image.id).await?;
    let (doc, digest) = PublishImages::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::TICKET,
    operation_id = "getTicket",
    summary = "One publish ticket (cloudId once published)",
    params(TicketPath),
    responses(Cached<PublishImage>, ReadErrors)
)]
pub async fn get_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let ticket = resolve_ticket(&state, &caller, &params).await?;
    let attempts = attempts::of_ticket(&state.pool, ticket.id).await?;
    let (doc, digest) = PublishImage::document(&ticket);
    let doc = doc.with_json_field("attempts", AttemptDoc::list(&attempts, caller.0.is_admin));
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::TICKET_STATUS,
    operation_id = "getTicketStatus",
    summary = "The status of a ticket",
    params(TicketPath),
    responses(Cached<OpStatus>, ReadErrors)
)]
pub async fn get_ticket_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let cached = cached_status(&state, &caller, &params).await?;
    let status = OpStatus::of(&cached.ticket);
    let digest = status.digest.clone();
    let doc = Document::new("status", status).with_json_field(
        "attempts",
        AttemptDoc::list(&cached.attempts, caller.0.is_admin),
    );
    Ok(doc.render_cached(format, &digest, &headers))
}

/// A ticket and its attempts from the status cache (`live::statuses`), or from Postgres,
/// then kept. A cached ticket is served only on its own path, to its owner (or an admin):
/// the same check `resolve_ticket` makes in SQL.
async fn cached_status(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Arc<CachedStatus>, ApiError> {
    let uid = uid_param(params);
    caller.authorize(uid)?;
    let statuses = state.live.statuses();
    let path = ticket_path(params)?;
    if let Some(cached) = statuses.get(path.3) {
        let t = &cached.ticket;
        if t.owner_login == uid
            && (t.scanned_instance_id, t.scan_id, t.image_id) == (path.0, path.1, path.2)
        {
            metrics::counter!(metrics_catalog::STATUS_READS, "from" => "memory").increment(1);
            return Ok(cached);
        }
    }
    metrics::counter!(metrics_catalog::STATUS_READS, "from" => "database").increment(1);
    let mark = statuses.mark();
    let ticket = resolve_ticket(state, caller, params).await?;
    let attempts = attempts::of_ticket(&state.pool, ticket.id).await?;
    let kept = Arc::new(CachedStatus::new(ticket, attempts));
    statuses.fill(mark, kept.clone());
    Ok(kept)
}

/// `DELETE …/pimages/{pitid}/cancel`.
#[utoipa::path(
    delete,
    path = paths::TICKET_CANCEL,
    operation_id = "cancelTicket",
    summary = "Cancel a ticket that has not finished",
    params(TicketPath),
    responses((status = 204, description = "Cancelled, or cancel requested"), CancelErrors)
)]
pub async fn cancel_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
) -> Result<Response, ApiError> {
    let ticket = resolve_ticket(&state, &caller, &params).await?;
    let outcome = cancel::request_cancel(&state.pool, ticket.id).await?;
    // Its caller's next status read sees the cancel, before the NOTIFY arrives.
    state.live.statuses().changed(ticket.id);
    match outcome {
        CancelOutcome::Cancelled | CancelOutcome::Requested => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        CancelOutcome::AlreadyFinished(s) => Err(ApiError::Conflict(format!(
            "publish ticket {} has already ended ({}); there is nothing to cancel",
            ticket.id,
            s.as_str()
        ))),
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!(
            "no publish ticket {}",
            ticket.id
        ))),
    }
}

/// `DELETE …/pimages/{pitid}[?deleteCloudImage=true]`: removes the record. A running upload
/// is cancelled first (its partial image is deleted, by its worker or the reconciler). The
/// published image stays in the cloud unless `deleteCloudImage=true`; if the cloud refuses
/// that, the record is kept.
#[utoipa::path(
    delete,
    path = paths::TICKET,
    operation_id = "deleteTicket",
    summary = "Remove a ticket record (cancels a running one first)",
    params(DeleteTicketParams),
    responses((status = 204, description = "Deleted"), DeleteErrors)
)]
pub async fn delete_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let delete_cloud_image = match query.get("deleteCloudImage").map(|v| v.trim()) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "deleteCloudImage must be true or false, not '{other}'"
            )))
        }
    };
    let mut ticket = resolve_ticket(&state, &caller, &params).await?;
    if !ticket.state.is_final() {
        if let CancelOutcome::AlreadyFinished(_) =
            cancel::request_cancel(&state.pool, ticket.id).await?
        {
            // It ended in this very moment (published, maybe): deleted as an ended ticket.
            ticket = tickets::get(&state.pool, ticket.id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no publish ticket {}", ticket.id)))?;
        }
    }
    // A running ticket's record goes at once; its image, whatever becomes of it, is the
    // reconciler's (the deletion records a cleanup in the same statement).
    let ended = ticket.state.is_final();
    if let (true, true, Some(cloud_id)) = (ended, delete_cloud_image, ticket.cloud_id.as_deref()) {
        delete_cloud_image_of(&state, &ticket, cloud_id).await?;
    }
    tickets::delete(&state.pool, ticket.id).await?;
    state.live.statuses().changed(ticket.id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The cloud account a ticket publishes with, its password opened.
pub(super) fn cloud_account_of(
    ticket: &Ticket,
    password: crate::secrets::Secret,
) -> OpenStackAccount {
    OpenStackAccount {
        keystone_url: ticket.keystone_url.clone(),
        glance_url: ticket.glance_url.clone(),
        user: ticket.cloud_login.clone(),
        password,
        domain: ticket.keystone_domain.clone(),
        project: ticket.keystone_project.clone(),
    }
}

async fn delete_cloud_image_of(
    state: &AppState,
    ticket: &Ticket,
    cloud_id: &str,
) -> Result<(), ApiError> {
    let password = state
        .secrets
        .open(&ticket.cloud_password_enc)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let account = cloud_account_of(ticket, password);
    let glance = Glance::login(&account, &state.cloud_policy)
        .await
        .map_err(|e| {
            ApiError::CloudFailed(format!(
                "the cloud image {cloud_id} was not deleted, and the ticket was kept: {e}"
            ))
        })?;
    glance.delete_image(cloud_id).await.map_err(|e| {
        ApiError::CloudFailed(format!(
            "the cloud image {cloud_id} was not deleted, and the ticket was kept: {e}"
        ))
    })
}

/// The optional `img` filter of the user-level lists: an image id or an image URI.
fn image_filter(query: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = query.get("img").map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let last = raw.trim_end_matches('/').rsplit('/').next().unwrap_or(raw);
    last.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("img must be an image id or image URI, not '{raw}'"))
        })
}

#[utoipa::path(
    get,
    path = paths::USER_TICKETS,
    operation_id = "listUserTickets",
    summary = "All tickets of a user",
    params(UserParams),
    responses(Cached<PublishImages>, ReadErrors)
)]
pub async fn list_user_tickets(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let uid = uid_param(&params);
    caller.authorize(uid)?;
    let list = tickets::list_of_user(&state.pool, uid, image_filter(&query)?).await?;
    let (doc, digest) = PublishImages::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::USER_STATUSES,
    operation_id = "listUserStatuses",
    summary = "The statuses of all tickets of a user",
    params(UserParams),
    responses(Cached<OpStatuses>, ReadErrors)
)]
pub async fn list_user_statuses(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): PathParams,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let uid = uid_param(&params);
    caller.authorize(uid)?;
    let list = tickets::list_of_user(&state.pool, uid, image_filter(&query)?).await?;
    let (doc, digest) = OpStatuses::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this method is not allowed on this resource".into())
}
