//! Route handlers: each states what it needs as extractors (`extract`: the format, the
//! caller allowed at `{uid}`, the typed path and query of `params`, the owned image or
//! ticket), calls the store and answers a document. Each one's `#[utoipa::path]` is its
//! operation in the OpenAPI document (`openapi.rs`), its `params(...)` the same structs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::accounts;
use super::auth::Caller;
use super::doc_parts::{
    Cached, CancelErrors, DeleteErrors, PublishErrors, PublishRequestBody, ReadErrors, StatusErrors,
};
use super::error::ApiError;
use super::extract::{self, ApiQuery, OwnedImage, OwnedTicket, PublishToken, UserScope};
use super::idempotency::{Claim, IdempotencyKey};
use super::params::{DeleteQuery, ImageFilter, ImagePath, ScanPath, TicketPath, UserPath};
use super::paths;
use super::publish_request::{self, BodyAccount, BodyError, PublishBody};
use super::wire::{
    AttemptDoc, Document, Format, ImageDoc, Images, OpStatus, OpStatuses, PublishImage,
    PublishImages, ServiceStatus,
};
use super::AppState;
use crate::cloud::{Keystone, OpenStackAccount};
use crate::image_store::Location;
use crate::live::statuses::CachedStatus;
use crate::metrics_catalog;
use crate::store::cancel::{self, CancelOutcome};
use crate::store::tickets::{self, NewTicket};
use crate::store::{attempts, images, Image, Ticket};

/// `GET /api/status`: lets clients check they can talk to the server (no login needed). Its
/// `version` is the UForge version they accept (`api.uforge_version`), not pimage's own.
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
pub async fn service_status(
    State(state): State<AppState>,
    format: Format,
) -> Result<Response, ApiError> {
    let doc = Document::new(
        "serviceStatus",
        ServiceStatus {
            alive: true,
            version: state.uforge_version.to_string(),
        },
    );
    Ok(doc.render(format, StatusCode::OK))
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
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<ScanPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ScanPath { uid, siid, sid } = path;
    let list = images::list_in_scan(&state.pool, &uid, siid, sid)
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
    _caller: Caller,
    format: Format,
    OwnedImage(image): OwnedImage,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (doc, digest) = ImageDoc::document(&image);
    Ok(doc.render_cached(format, &digest, &headers))
}

/// `POST …/images/{itid}/pimages`: store the ticket, hand it to RabbitMQ, answer at once.
#[utoipa::path(
    post,
    path = paths::TICKETS,
    operation_id = "publish",
    summary = "Publish the image to a cloud: stores a ticket and answers at once",
    params(ImagePath, ("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters: a publish sent again with its key within api.idempotency_window answers 200 with the ticket the first one made; the key with another request is a 409")),
    request_body(content(
        (PublishRequestBody = "application/json"), (PublishRequestBody = "application/xml"))),
    responses(
        (status = 201, description = "The ticket, queued",
            headers(("Location" = String), ("ETag" = String, description = "The object's digest, quoted")),
            content((PublishImage = "application/json"), (PublishImage = "application/xml"))),
        (status = 200, description = "The ticket an earlier request with this Idempotency-Key made, as it is now",
            headers(("Location" = String), ("ETag" = String, description = "The object's digest, quoted")),
            content((PublishImage = "application/json"), (PublishImage = "application/xml"))),
        PublishErrors,
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    format: Format,
    _: PublishToken,
    UserScope { path, .. }: UserScope<ImagePath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let image = extract::image_at(&state, &path).await?;
    let bytes = extract::body_bytes(&state, body).await?;
    let request = parse_publish_body(&headers, &bytes)?;
    let key = IdempotencyKey::of(&headers, caller.0.id, image.id, &bytes)?;
    let new = new_ticket(&state, &caller, &image, request).await?;
    file_is_there(&state, &image).await?;
    let (ticket, status) = file_once(&state, key, &image.owner_login, new).await?;
    tracing::info!(ticket_id = ticket.id, image_id = image.id, "ticket stored");
    metrics::counter!(metrics_catalog::PUBLISH_REQUESTS).increment(1);

    let (doc, digest) = PublishImage::document(&ticket);
    let mut response = doc.render(format, status);
    if let Ok(location) = HeaderValue::from_str(&format!("/api/{}", ticket.uri())) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// The ticket a checked publish body asks for: its cloud (a stored account of the image's
/// owner, or the account given, its password sealed now), owned by the image's owner.
pub(super) async fn new_ticket(
    state: &AppState,
    caller: &Caller,
    image: &Image,
    request: PublishBody,
) -> Result<NewTicket, ApiError> {
    let cloud = ticket_cloud(state, &image.owner_login, request.account).await?;
    Ok(NewTicket {
        image_id: image.id,
        user_id: caller_owner_id(state, caller, image).await?,
        display_name: request.display_name.unwrap_or_else(|| image.name.clone()),
        publish_location: request.publish_location,
        public_image: request.public_image,
        account_name: cloud.account_name,
        keystone_url: cloud.keystone_url,
        keystone_version: cloud.keystone_version,
        keystone_domain: request.keystone_domain,
        keystone_project: request.keystone_project,
        glance_url: cloud.glance_url,
        cloud_login: cloud.login,
        cloud_password_enc: cloud.password_enc,
        bytes_total: image.size_bytes,
        cloud_account_id: cloud.account_id,
    })
}

/// A publish of an image whose file is gone is refused at once (409), not queued to fail.
pub(super) async fn file_is_there(state: &AppState, image: &Image) -> Result<(), ApiError> {
    let there = match Location::of(&image.file_path) {
        // A stat of a local file, on the runtime's thread: a hop to the blocking pool (two
        // thread wake-ups) cost more than the call itself on every publish.
        Location::File(path) => std::fs::metadata(path).is_ok(),
        Location::Object { .. } => match state.images.size(&image.file_path).await {
            Ok(_) => true,
            Err(e) if e.is_missing() => false,
            // The workers retry a store that did not answer; the publish stands.
            Err(e) => {
                tracing::warn!(error = %e, "the image store did not answer a publish's check");
                true
            }
        },
    };
    if there {
        return Ok(());
    }
    Err(ApiError::Conflict(format!(
        "image {} ('{}') is not ready to publish: its file is missing from the image store",
        image.id, image.name
    )))
}

/// Stores the ticket (with other requests' in one commit: `filing`) unless its owner has
/// `queued_tickets_per_user` unfinished already (429). Once stored, it is on its way to
/// RabbitMQ: its outbox row promises it, and the filing queued its hand-off.
/// Files the ticket (`201`), or with an Idempotency-Key its earlier request filed, answers
/// with that ticket as it is now (`200`).
async fn file_once(
    state: &AppState,
    key: Option<IdempotencyKey>,
    owner: &str,
    new: NewTicket,
) -> Result<(Ticket, StatusCode), ApiError> {
    let key = match key.map(|k| k.claim(state)) {
        None => None,
        Some(claim) => match claim.await? {
            Claim::File(key) => Some(key),
            Claim::Earlier(id) => {
                let earlier = tickets::get(&state.pool, id).await?;
                let earlier = earlier.ok_or_else(|| {
                    ApiError::NotFound(format!("ticket {id} was deleted meanwhile"))
                })?;
                return Ok((earlier, StatusCode::OK));
            }
        },
    };
    let filed = create_within_quota(state, owner, new).await;
    match (&key, &filed) {
        (Some(key), Ok(ticket)) => key.settle(state, ticket.id).await?,
        (Some(key), Err(_)) => key.release(state).await,
        (None, _) => {}
    }
    Ok((filed?, StatusCode::CREATED))
}

async fn create_within_quota(
    state: &AppState,
    owner: &str,
    new: NewTicket,
) -> Result<Ticket, ApiError> {
    let image_id = new.image_id;
    let filed = state.filer.file(new).await.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some(ACCOUNT_FOREIGN_KEY) => {
            account_deleted_meanwhile()
        }
        // Its image was deleted (`DELETE …/images/{itid}`) after this request found it.
        sqlx::Error::Database(db) if db.constraint() == Some(IMAGE_FOREIGN_KEY) => {
            ApiError::NotFound(format!("image {image_id} was deleted meanwhile"))
        }
        _ => ApiError::from(e),
    })?;
    match filed {
        tickets::Filed::Created(ticket, _) => Ok(*ticket),
        tickets::Filed::OverQuota(unfinished) => Err(over_quota(state, owner, unfinished, 1)),
    }
}

/// The 429 of a publish of `adding` tickets that would take `owner` past the quota.
pub(super) fn over_quota(
    state: &AppState,
    owner: &str,
    unfinished: i64,
    adding: usize,
) -> ApiError {
    let asked = if adding == 1 {
        String::new()
    } else {
        format!(" (this request adds {adding})")
    };
    ApiError::TooManyRequests {
        message: format!(
            "user '{owner}' has {unfinished} tickets queued or running, the most allowed is \
             {}{asked}: wait for some to end (or cancel some), then publish again",
            state.queued_tickets_per_user
        ),
        retry_after: QUOTA_RETRY_AFTER,
    }
}

/// The link of a ticket to the stored account it publishes with.
const ACCOUNT_FOREIGN_KEY: &str = "publish_tickets_cloud_account_id_fkey";
/// The link of a ticket to its image.
const IMAGE_FOREIGN_KEY: &str = "publish_tickets_image_id_fkey";

/// The stored account a publish named, deleted between its read and the ticket's insert (the
/// deletion held the account's row; the insert's foreign key then found it gone).
fn account_deleted_meanwhile() -> ApiError {
    ApiError::Conflict(
        "the cloud account named was deleted while the publish was filed: nothing was stored; \
         publish again with an account that exists"
            .into(),
    )
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

/// Where a ticket publishes and as whom: the account the body gives (its password sealed
/// now), or the stored account of `owner` it names (its sealed password copied).
struct TicketCloud {
    account_id: Option<i64>,
    account_name: Option<String>,
    keystone_url: String,
    keystone_version: String,
    glance_url: Option<String>,
    login: String,
    password_enc: Vec<u8>,
}

/// The cloud of a publish, its URLs refused before anything is stored if this service may
/// not call them.
async fn ticket_cloud(
    state: &AppState,
    owner: &str,
    account: BodyAccount,
) -> Result<TicketCloud, ApiError> {
    let cloud = match account {
        BodyAccount::Given(given) => TicketCloud {
            account_id: None,
            account_name: given.name,
            keystone_url: given.keystone_url,
            keystone_version: "v3".into(),
            glance_url: given.glance_url,
            login: given.login,
            password_enc: state.secrets.seal(&given.password),
        },
        BodyAccount::Stored(reference) => {
            let stored = accounts::stored_account_named(state, owner, &reference).await?;
            TicketCloud {
                account_id: Some(stored.id),
                account_name: Some(stored.name),
                keystone_url: stored.keystone_url,
                keystone_version: stored.keystone_version,
                glance_url: stored.glance_url,
                login: stored.cloud_login,
                password_enc: stored.cloud_password_enc,
            }
        }
    };
    accounts::check_cloud_urls(state, &cloud.keystone_url, cloud.glance_url.as_deref())?;
    Ok(cloud)
}

pub(super) fn parse_publish_body(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<PublishBody, ApiError> {
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
    _caller: Caller,
    format: Format,
    OwnedImage(image): OwnedImage,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
    format: Format,
    OwnedTicket { ticket, .. }: OwnedTicket,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
    format: Format,
    UserScope { path, .. }: UserScope<TicketPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cached = cached_status(&state, &path).await?;
    let status = OpStatus::of(&cached.ticket);
    let digest = status.digest.clone();
    let doc = Document::new("status", status).with_json_field(
        "attempts",
        AttemptDoc::list(&cached.attempts, caller.0.is_admin),
    );
    Ok(doc.render_cached(format, &digest, &headers))
}

/// A ticket and its attempts from the status cache (`live::statuses`), or from Postgres,
/// then kept. A cached ticket is served only on its own path (whose `{uid}` the caller was
/// allowed): the same check `extract::ticket_at` makes in SQL.
async fn cached_status(state: &AppState, path: &TicketPath) -> Result<Arc<CachedStatus>, ApiError> {
    let statuses = state.live.statuses();
    if let Some(cached) = statuses.get(path.pitid) {
        let t = &cached.ticket;
        if t.owner_login == path.uid
            && (t.scanned_instance_id, t.scan_id, t.image_id) == (path.siid, path.sid, path.itid)
        {
            metrics::counter!(metrics_catalog::STATUS_READS, "from" => "memory").increment(1);
            return Ok(cached);
        }
    }
    metrics::counter!(metrics_catalog::STATUS_READS, "from" => "database").increment(1);
    let mark = statuses.mark();
    let ticket = extract::ticket_at(state, path).await?;
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
    OwnedTicket { ticket, .. }: OwnedTicket,
) -> Result<Response, ApiError> {
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
    params(TicketPath, DeleteQuery),
    responses((status = 204, description = "Deleted"), DeleteErrors)
)]
pub async fn delete_ticket(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<DeleteQuery>,
    OwnedTicket { mut ticket, .. }: OwnedTicket,
) -> Result<Response, ApiError> {
    let delete_cloud_image = query.delete_cloud_image;
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
        region: ticket.publish_location.clone(),
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
    let glance = Keystone::login(&account, &state.cloud_policy)
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

#[utoipa::path(
    get,
    path = paths::USER_TICKETS,
    operation_id = "listUserTickets",
    summary = "All tickets of a user",
    params(UserPath, ImageFilter),
    responses(Cached<PublishImages>, ReadErrors)
)]
pub async fn list_user_tickets(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<UserPath>,
    ApiQuery(filter): ApiQuery<ImageFilter>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let list = tickets::list_of_user(&state.pool, &path.uid, filter.img).await?;
    let (doc, digest) = PublishImages::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::USER_STATUSES,
    operation_id = "listUserStatuses",
    summary = "The statuses of all tickets of a user",
    params(UserPath, ImageFilter),
    responses(Cached<OpStatuses>, ReadErrors)
)]
pub async fn list_user_statuses(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<UserPath>,
    ApiQuery(filter): ApiQuery<ImageFilter>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let list = tickets::list_of_user(&state.pool, &path.uid, filter.img).await?;
    let (doc, digest) = OpStatuses::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this method is not allowed on this resource".into())
}
