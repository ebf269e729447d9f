//! What an administrator does to a ticket by its id: cancel it, delete its record, queue it
//! again. One implementation for the three ways in: the console's buttons, the CLI on the
//! database, and the CLI through these routes (`pimage tickets … --api URL`), so an operator
//! needs no database password.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{Administrator, ApiPath};
use super::params::TicketIdPath;
use super::{paths, AppState};
use crate::store::cancel::{self, CancelOutcome};
use crate::store::{rescue, tickets};

/// An administrator's action on one ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketAction {
    /// Stops a ticket that has not ended (a running upload stops, its image is removed).
    Cancel,
    /// Queues a failed or cancelled ticket again.
    Retry,
    /// Removes the record (a running upload is cancelled first); a published image stays.
    Delete,
}

/// What an action did: a sentence for people and, for a retry, the outbox row the caller
/// hands to RabbitMQ (the API batches it, the CLI sends it).
#[derive(Debug)]
pub struct Applied {
    pub message: String,
    pub requeued: Option<i64>,
}

/// Does `action` to ticket `id`. A ticket that is not there is `NotFound`; one whose state
/// does not allow the action is `Conflict`, saying why.
pub async fn apply(pool: &PgPool, id: i64, action: TicketAction) -> Result<Applied, ApiError> {
    let Some(ticket) = tickets::get(pool, id).await? else {
        return Err(ApiError::NotFound(format!("no ticket {id}")));
    };
    let said = |message: String| Applied {
        message,
        requeued: None,
    };
    match action {
        TicketAction::Cancel => match cancel::request_cancel(pool, id).await? {
            CancelOutcome::Cancelled => {
                Ok(said(format!("ticket {id} cancelled (it had not started)")))
            }
            CancelOutcome::Requested => Ok(said(format!(
                "ticket {id}: cancel requested; its worker stops the upload"
            ))),
            CancelOutcome::AlreadyFinished(state) => Err(ApiError::Conflict(format!(
                "ticket {id} has already ended ({}); there is nothing to cancel",
                state.as_str()
            ))),
            CancelOutcome::NotFound => Err(ApiError::NotFound(format!("no ticket {id}"))),
        },
        TicketAction::Retry => match rescue::retry(pool, id).await? {
            Some(outbox_id) => Ok(Applied {
                message: format!("ticket {id} queued again"),
                requeued: Some(outbox_id),
            }),
            // Read again: another retry or a delete may have come in between.
            None => match tickets::get(pool, id).await? {
                Some(now) => Err(ApiError::Conflict(format!(
                    "ticket {id} is {}: only a failed or cancelled ticket can be retried",
                    now.state.as_str()
                ))),
                None => Err(ApiError::NotFound(format!("no ticket {id}"))),
            },
        },
        TicketAction::Delete => {
            if !ticket.state.is_final() {
                cancel::request_cancel(pool, id).await?;
            }
            // Its image is the reconciler's (a cleanup is recorded with the deletion), or
            // the user's to keep when the ticket was complete.
            if !tickets::delete(pool, id).await? {
                return Err(ApiError::NotFound(format!("no ticket {id}")));
            }
            Ok(said(format!("ticket {id} deleted")))
        }
    }
}

/// What the admin routes answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionDone {
    /// What was done, in a sentence.
    pub message: String,
}

/// `POST /api/admin/tickets/{id}/cancel`.
#[utoipa::path(
    post,
    path = paths::ADMIN_TICKET_CANCEL,
    operation_id = "adminCancelTicket",
    summary = "Cancel any user's ticket that has not ended (administrators)",
    params(TicketIdPath),
    responses((status = 200, body = ActionDone, description = "Cancelled, or cancel requested"), super::doc_parts::AdminErrors)
)]
pub async fn cancel_ticket(
    state: State<AppState>,
    admin: Administrator,
    path: ApiPath<TicketIdPath>,
) -> Result<Response, ApiError> {
    act(state, admin, path, TicketAction::Cancel).await
}

/// `POST /api/admin/tickets/{id}/retry`.
#[utoipa::path(
    post,
    path = paths::ADMIN_TICKET_RETRY,
    operation_id = "adminRetryTicket",
    summary = "Queue any user's failed or cancelled ticket again (administrators)",
    params(TicketIdPath),
    responses((status = 200, body = ActionDone, description = "Queued again"), super::doc_parts::AdminErrors)
)]
pub async fn retry_ticket(
    state: State<AppState>,
    admin: Administrator,
    path: ApiPath<TicketIdPath>,
) -> Result<Response, ApiError> {
    act(state, admin, path, TicketAction::Retry).await
}

/// `DELETE /api/admin/tickets/{id}`.
#[utoipa::path(
    delete,
    path = paths::ADMIN_TICKET,
    operation_id = "adminDeleteTicket",
    summary = "Remove any user's ticket record; a published image stays (administrators)",
    params(TicketIdPath),
    responses((status = 200, body = ActionDone, description = "Deleted"), super::doc_parts::AdminErrors)
)]
pub async fn delete_ticket(
    state: State<AppState>,
    admin: Administrator,
    path: ApiPath<TicketIdPath>,
) -> Result<Response, ApiError> {
    act(state, admin, path, TicketAction::Delete).await
}

async fn act(
    State(state): State<AppState>,
    Administrator(login): Administrator,
    ApiPath(TicketIdPath { id }): ApiPath<TicketIdPath>,
    action: TicketAction,
) -> Result<Response, ApiError> {
    let applied = apply(&state.pool, id, action).await?;
    if let Some(outbox_id) = applied.requeued {
        state.hand_offs.requeued(id, outbox_id);
    }
    // The owner's next status read sees the action, before the NOTIFY arrives.
    state.live.statuses().changed(id);
    tracing::info!(ticket_id = id, by = login, ?action, "administrator action");
    let done = ActionDone {
        message: applied.message,
    };
    Ok((StatusCode::OK, Json(done)).into_response())
}
