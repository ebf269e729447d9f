//! Publication groups (a pimage extension; UForge clients never see it): one request, several
//! targets, each an ordinary ticket the UForge clients poll, cancel and delete as any other.
//! `POST …/images/{itid}/pimagegroups` files them; `…/pimagegroups/{gid}` aggregates them;
//! `…/targets` adds targets; `…/cancel` cancels the unfinished ones.
//!
//! Where targets share one Keystone project, the first of them uploads and the others copy
//! its image server-side once it is complete (`copies_from`, `worker::copy`): the bytes go
//! once per cloud.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::doc_parts::{CancelErrors, PublishErrors, PublishGroupRequestBody, ReadErrors};
use super::error::ApiError;
use super::extract::{self, PublishToken, UserScope};
use super::group_request::{self, GroupRequest};
use super::params::{GroupPath, ImagePath};
use super::paths;
use super::routes::{file_is_there, new_ticket, over_quota};
use super::wire::{Format, PublishGroup};
use super::AppState;
use crate::store::groups::{self, FiledGroup, Group, NewTarget, Source};
use crate::store::{Image, NewTicket, Ticket, TicketState};

/// `POST …/images/{itid}/pimagegroups`.
#[utoipa::path(
    post,
    path = paths::GROUPS,
    operation_id = "publishGroup",
    summary = "Publish the image to several targets at once: a group of ordinary tickets",
    params(ImagePath),
    request_body(content((PublishGroupRequestBody = "application/json"))),
    responses(
        (status = 201, description = "The group, its tickets queued (or held until the target they copy from completes)",
            headers(("Location" = String)),
            content((PublishGroup = "application/json"), (PublishGroup = "application/xml"))),
        PublishErrors,
    )
)]
pub async fn publish_group(
    State(state): State<AppState>,
    caller: Caller,
    format: Format,
    _: PublishToken,
    UserScope { path, .. }: UserScope<ImagePath>,
    body: Body,
) -> Result<Response, ApiError> {
    let image = extract::image_at(&state, &path).await?;
    let bytes = extract::body_bytes(&state, body).await?;
    let request = group_request::parse(&bytes, true).map_err(|e| ApiError::BadRequest(e.0))?;
    let policy = request.policy;
    let targets = targets_of(&state, &caller, &image, request, &[]).await?;
    file_is_there(&state, &image).await?;
    let owner = targets[0].ticket.user_id;
    let filed = groups::file(
        &state.pool,
        owner,
        image.id,
        policy,
        &targets,
        state.queued_tickets_per_user,
    )
    .await?;
    answer_filed(&state, &image, filed, format, targets.len())
}

/// `POST /api/users/{uid}/pimagegroups/{gid}/targets`.
#[utoipa::path(
    post,
    path = paths::GROUP_TARGETS,
    operation_id = "addGroupTargets",
    summary = "Add targets to a group, finished or not: only they are published",
    params(GroupPath),
    request_body(content((PublishGroupRequestBody = "application/json"))),
    responses(
        (status = 201, description = "The group with its new targets",
            content((PublishGroup = "application/json"), (PublishGroup = "application/xml"))),
        PublishErrors,
    )
)]
pub async fn add_group_targets(
    State(state): State<AppState>,
    caller: Caller,
    format: Format,
    _: PublishToken,
    UserScope { path, .. }: UserScope<GroupPath>,
    body: Body,
) -> Result<Response, ApiError> {
    let (group, children) = group_at(&state, &path).await?;
    let image = image_of(&state, &group, &children).await?;
    let bytes = extract::body_bytes(&state, body).await?;
    let request = group_request::parse(&bytes, false).map_err(|e| ApiError::BadRequest(e.0))?;
    let targets = targets_of(&state, &caller, &image, request, &children).await?;
    file_is_there(&state, &image).await?;
    let filed =
        groups::add_targets(&state.pool, &group, &targets, state.queued_tickets_per_user).await?;
    answer_filed(&state, &image, filed, format, targets.len())
}

/// `GET /api/users/{uid}/pimagegroups/{gid}`.
#[utoipa::path(
    get,
    path = paths::GROUP,
    operation_id = "getGroup",
    summary = "A publication group: its state, bytes and percentage, and each target's ticket",
    params(GroupPath),
    responses(
        (status = 200, description = "The group",
            content((PublishGroup = "application/json"), (PublishGroup = "application/xml"))),
        ReadErrors,
    )
)]
pub async fn get_group(
    State(state): State<AppState>,
    format: Format,
    UserScope { path, .. }: UserScope<GroupPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (group, children) = group_at(&state, &path).await?;
    let (doc, digest) = PublishGroup::document(&group, &children);
    Ok(doc.render_cached(format, &digest, &headers))
}

/// `DELETE /api/users/{uid}/pimagegroups/{gid}/cancel`.
#[utoipa::path(
    delete,
    path = paths::GROUP_CANCEL,
    operation_id = "cancelGroup",
    summary = "Cancel every unfinished target of a group (under policy all, complete ones are withdrawn too)",
    params(GroupPath),
    responses((status = 204, description = "Cancelled, or cancels requested"), CancelErrors)
)]
pub async fn cancel_group(
    State(state): State<AppState>,
    UserScope { path, .. }: UserScope<GroupPath>,
) -> Result<Response, ApiError> {
    let (group, children) = group_at(&state, &path).await?;
    if children.iter().all(|t| t.state.is_final()) {
        return Err(ApiError::Conflict(format!(
            "group {} has no unfinished target to cancel",
            group.id
        )));
    }
    groups::cancel(&state.pool, group.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The group at the path, owned by its `{uid}`, and its tickets.
async fn group_at(state: &AppState, path: &GroupPath) -> Result<(Group, Vec<Ticket>), ApiError> {
    let missing = || {
        ApiError::NotFound(format!(
            "no publication group {} for user '{}'",
            path.gid, path.uid
        ))
    };
    let group = groups::get(&state.pool, path.gid)
        .await?
        .ok_or_else(missing)?;
    if group.owner_login != path.uid {
        return Err(missing());
    }
    let children = groups::children(&state.pool, group.id).await?;
    Ok((group, children))
}

/// The group's image, as a publish finds it.
async fn image_of(state: &AppState, group: &Group, children: &[Ticket]) -> Result<Image, ApiError> {
    let gone = || ApiError::NotFound(format!("the image of group {} was deleted", group.id));
    let first = children.first().ok_or_else(gone)?;
    let path = ImagePath {
        uid: group.owner_login.clone(),
        siid: first.scanned_instance_id,
        sid: first.scan_id,
        itid: group.image_id,
    };
    extract::image_at(state, &path).await.map_err(|_| gone())
}

/// The tickets a request's targets make. Two targets publishing to the same place (of this
/// request, or live siblings) would be the same publish twice: refused. A target that may
/// copy an earlier one's image server-side (`copy_candidate`) copies the first such target
/// that uploads itself: the bytes go once per cloud.
async fn targets_of(
    state: &AppState,
    caller: &Caller,
    image: &Image,
    request: GroupRequest,
    siblings: &[Ticket],
) -> Result<Vec<NewTarget>, ApiError> {
    let mut targets: Vec<NewTarget> = Vec::with_capacity(request.targets.len());
    for (at, target) in request.targets.into_iter().enumerate() {
        let ticket = new_ticket(state, caller, image, target.body).await?;
        let store = target.store;
        if let Some(other) = same_place(&ticket, store.as_deref(), &targets, siblings) {
            return Err(ApiError::BadRequest(format!(
                "target {} publishes where {other} already does (same cloud project, region \
                 and store): name another publishLocation or store",
                at + 1
            )));
        }
        let copies_from = source_of(&ticket, &targets, siblings);
        targets.push(NewTarget {
            ticket,
            store,
            copies_from,
        });
    }
    Ok(targets)
}

/// The earlier target (or live sibling) publishing to `ticket`'s place, named.
fn same_place(
    ticket: &NewTicket,
    store: Option<&str>,
    earlier: &[NewTarget],
    siblings: &[Ticket],
) -> Option<String> {
    let here = (place_of_new(ticket), store);
    if let Some(at) = earlier
        .iter()
        .position(|o| (place_of_new(&o.ticket), o.store.as_deref()) == here)
    {
        return Some(format!("target {}", at + 1));
    }
    siblings
        .iter()
        .filter(|s| !matches!(s.state, TicketState::Error | TicketState::Cancelled))
        .find(|s| (place_of(s), s.glance_store.as_deref()) == here)
        .map(|s| format!("ticket {} of the group", s.id))
}

/// The first earlier target (else live sibling) that uploads and whose image `ticket` may
/// copy server-side.
fn source_of(ticket: &NewTicket, earlier: &[NewTarget], siblings: &[Ticket]) -> Source {
    let mine = place_of_new(ticket);
    if let Some(at) = earlier.iter().position(|o| {
        o.copies_from == Source::None && copy_candidate(&mine, &place_of_new(&o.ticket))
    }) {
        return Source::Filed(at);
    }
    siblings
        .iter()
        .filter(|s| !matches!(s.state, TicketState::Error | TicketState::Cancelled))
        .find(|s| s.copies_from.is_none() && copy_candidate(&mine, &place_of(s)))
        .map_or(Source::None, |s| Source::Ticket(s.id))
}

/// Whether one place may copy the other's image: the same Keystone project as the same user,
/// and either both Glances from the catalog (copy-image in one region, glance-download
/// between two) or the same given Glance (copy-image between its stores).
fn copy_candidate(a: &Place, b: &Place) -> bool {
    a[..4] == b[..4] && a[4] == b[4]
}

/// Where a ticket publishes: a Keystone project as one user, through one Glance (given, or
/// the region's).
type Place<'a> = [Option<&'a str>; 6];

fn place_of_new(t: &NewTicket) -> Place<'_> {
    place(
        [
            &t.keystone_url,
            &t.keystone_domain,
            &t.keystone_project,
            &t.cloud_login,
        ],
        t.glance_url.as_deref(),
        t.publish_location.as_deref(),
    )
}

/// A stored ticket's place as its request gave it: a Glance the worker found in the catalog
/// (recorded with its region) was not given.
fn place_of(t: &Ticket) -> Place<'_> {
    let given = t
        .glance_url
        .as_deref()
        .filter(|_| t.glance_region.is_none());
    place(
        [
            &t.keystone_url,
            &t.keystone_domain,
            &t.keystone_project,
            &t.cloud_login,
        ],
        given,
        t.publish_location.as_deref(),
    )
}

/// A given Glance URL is the Glance, whatever region is named (as the worker resolves it).
fn place<'a>(who: [&'a String; 4], glance: Option<&'a str>, region: Option<&'a str>) -> Place<'a> {
    let [keystone, domain, project, login] = who.map(|s| Some(s.as_str()));
    let region = if glance.is_some() { None } else { region };
    [keystone, domain, project, login, glance, region]
}

/// The 201 of a filed group (its tickets handed to RabbitMQ first), or the quota's 429.
fn answer_filed(
    state: &AppState,
    image: &Image,
    filed: FiledGroup,
    format: Format,
    adding: usize,
) -> Result<Response, ApiError> {
    let (group, created) = match filed {
        FiledGroup::Created(group, created) => (group, created),
        FiledGroup::OverQuota(count) => {
            return Err(over_quota(state, &image.owner_login, count, adding))
        }
    };
    for (ticket, outbox_id) in &created {
        if let Some(outbox_id) = outbox_id {
            state.hand_offs.created(ticket.id, *outbox_id);
        }
    }
    tracing::info!(
        group_id = group.id,
        targets = created.len(),
        "publication group filed"
    );
    let children: Vec<Ticket> = created.into_iter().map(|(t, _)| t).collect();
    let (doc, _) = PublishGroup::document(&group, &children);
    let mut response = doc.render(format, StatusCode::CREATED);
    let location = format!("/api/users/{}/pimagegroups/{}", group.owner_login, group.id);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}
