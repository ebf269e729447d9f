//! The signed, expiring links through which a cloud's Glance fetches a ticket's image file
//! (`web-download`): `GET /image-links/{ticket}?expires=UNIX&signature=HEX`, no login. The
//! signature (HMAC-SHA256 under a key derived from `secrets.key`, checked in constant time)
//! covers the ticket and the expiry; the answer is that ticket's registered file, streamed
//! with its `Content-Length`, only while the ticket runs. Nothing is ever listed.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::store::{self, TicketState};

use super::{observe, AppState};

/// The route template (outside `/api`: not part of the UForge contract).
pub(super) const PATH: &str = "/image-links/{ticket}";

pub(super) fn routes(state: AppState) -> Router {
    Router::new()
        .route(PATH, get(serve))
        .route_layer(axum::middleware::from_fn(observe::http_metrics))
        .with_state(state)
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this link is not valid or has expired\n",
    )
        .into_response()
}

fn gone() -> Response {
    (StatusCode::NOT_FOUND, "no such image file\n").into_response()
}

async fn serve(
    State(state): State<AppState>,
    Path(ticket): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let (mut expires, mut signature) = (None, None);
    for pair in query.as_deref().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.parse::<u64>().ok(),
            Some(("signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return refused();
    };
    // The signature first: an unsigned request learns nothing, not even whether it exists.
    if !state.secrets.image_link_valid(&ticket, expires, signature) {
        return refused();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if now > expires {
        return refused();
    }
    let Ok(id) = ticket.parse::<i64>() else {
        return gone();
    };
    let file_path = match store::tickets::get(&state.pool, id).await {
        // An ended (or cancelled) ticket's link dies with it.
        Ok(Some(t)) if t.state == TicketState::Running => {
            match store::images::get(&state.pool, t.image_id).await {
                Ok(Some(image)) => image.file_path,
                Ok(None) => return gone(),
                Err(e) => return unavailable(e),
            }
        }
        Ok(_) => return gone(),
        Err(e) => return unavailable(e),
    };
    let (size, chunks) = match state.images.chunks(&file_path).await {
        Ok(found) => found,
        Err(e) if e.is_missing() => return gone(),
        Err(e) => {
            tracing::warn!(error = %e, "image link: the image store did not answer");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response();
        }
    };
    tracing::info!(
        ticket = id,
        bytes = size,
        "serving an image file to web-download"
    );
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

fn unavailable(e: sqlx::Error) -> Response {
    tracing::warn!(error = %e, "image link: Postgres failed");
    (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
}
