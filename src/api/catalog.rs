//! What a UForge client reads before it publishes (hammr's `image list`, `image publish --id`,
//! `image delete`, `scan list`): all of a user's images, its scanned instances and their scans,
//! one scan (the publish "source"), and deleting an image none of whose tickets is unfinished.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::doc_parts::{Cached, ImageDeleteErrors, ReadErrors};
use super::error::ApiError;
use super::extract::{ApiQuery, UserScope};
use super::params::{
    ImageFilter, ImagePath, ScanPath, ScannedInstancePath, ScannedInstancesQuery, UserPath,
};
use super::paths;
use super::wire::{Format, Images, ScanDoc, ScannedInstanceDoc, ScannedInstances};
use super::AppState;
use crate::store::images::{self, ImageDeletion};

#[utoipa::path(
    get,
    path = paths::USER_IMAGES,
    operation_id = "listUserImages",
    summary = "All images of a user",
    params(UserPath, ImageFilter),
    responses(Cached<Images>, ReadErrors)
)]
pub async fn list_user_images(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<UserPath>,
    ApiQuery(filter): ApiQuery<ImageFilter>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let list = images::list_of_user(&state.pool, &path.uid, filter.img).await?;
    let (doc, digest) = Images::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::SCANNED_INSTANCES,
    operation_id = "listScannedInstances",
    summary = "The scanned instances of a user (with their scans if includeScans=true)",
    params(UserPath, ScannedInstancesQuery),
    responses(Cached<ScannedInstances>, ReadErrors)
)]
pub async fn list_scanned_instances(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<UserPath>,
    ApiQuery(query): ApiQuery<ScannedInstancesQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = query.name.as_deref();
    let instances = images::scanned_instances_of(&state.pool, &path.uid, None, name).await?;
    // Counted in every answer (`totalScans`), listed only when asked for.
    let ids: Vec<i64> = instances.iter().map(|si| si.id).collect();
    let scans = images::scans_of(&state.pool, &path.uid, &ids).await?;
    let (doc, digest) = ScannedInstances::document(&instances, &scans, query.include_scans);
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::SCANNED_INSTANCE,
    operation_id = "getScannedInstance",
    summary = "One scanned instance, with its scans",
    params(ScannedInstancePath),
    responses(Cached<ScannedInstanceDoc>, ReadErrors)
)]
pub async fn get_scanned_instance(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<ScannedInstancePath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ScannedInstancePath { uid, siid } = path;
    let found = images::scanned_instances_of(&state.pool, &uid, Some(siid), None).await?;
    let instance = found
        .first()
        .ok_or_else(|| ApiError::NotFound(format!("no scanned instance {siid}")))?;
    let scans = images::scans_of(&state.pool, &uid, &[siid]).await?;
    let (doc, digest) = ScannedInstanceDoc::document(instance, &scans);
    Ok(doc.render_cached(format, &digest, &headers))
}

#[utoipa::path(
    get,
    path = paths::SCAN,
    operation_id = "getScan",
    summary = "One scan, with its images",
    params(ScanPath),
    responses(Cached<ScanDoc>, ReadErrors)
)]
pub async fn get_scan(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<ScanPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ScanPath { uid, siid, sid } = path;
    let scan = images::find_scan(&state.pool, &uid, siid, sid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no scan {sid} in scanned instance {siid}")))?;
    let list = images::list_in_scan(&state.pool, &uid, siid, sid)
        .await?
        .unwrap_or_default();
    let (doc, digest) = ScanDoc::document(&scan, &list);
    Ok(doc.render_cached(format, &digest, &headers))
}

/// `DELETE …/images/{itid}`: the image record and its ended tickets (their published cloud
/// images stay in the cloud); refused while a ticket of it is queued or running. The file
/// stays on disk: pimage may have registered it in place, where it is not pimage's.
#[utoipa::path(
    delete,
    path = paths::IMAGE,
    operation_id = "deleteImage",
    summary = "Remove an image and its ended tickets (409 while a ticket of it is queued or running)",
    params(ImagePath),
    responses((status = 204, description = "Deleted"), ImageDeleteErrors)
)]
pub async fn delete_image(
    State(state): State<AppState>,
    _caller: Caller,
    UserScope { path, .. }: UserScope<ImagePath>,
) -> Result<Response, ApiError> {
    let ImagePath {
        uid,
        siid,
        sid,
        itid,
    } = path;
    match images::delete(&state.pool, &uid, (siid, sid, itid)).await? {
        ImageDeletion::Deleted => Ok(StatusCode::NO_CONTENT.into_response()),
        ImageDeletion::NotFound => Err(ApiError::NotFound(format!(
            "no image {itid} in scan {sid} of scanned instance {siid}"
        ))),
        ImageDeletion::Busy(tickets) => {
            let ids: Vec<String> = tickets.iter().map(i64::to_string).collect();
            Err(ApiError::Conflict(format!(
                "image {itid} has publish tickets still queued or running ({}): cancel them, or \
                 wait for them to end, then delete the image",
                ids.join(", ")
            )))
        }
    }
}
