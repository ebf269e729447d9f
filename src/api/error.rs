//! The API's one error type. Handlers return `ApiError`; `render_errors` turns it into a
//! `uforgeError` document in the negotiated format, with the request's method and path.
//! Details of 5xx errors are logged, never sent.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::wire::{Document, Format, LocalizedMessage, UForgeError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required: give a valid user login and password (HTTP Basic), or a valid apiKey and signature")]
    Unauthorized,
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("this resource is available as application/xml or application/json only")]
    NotAcceptable,
    #[error("{0}")]
    Unavailable(String),
    /// The cloud refused or failed a call made for the request.
    #[error("{0}")]
    CloudFailed(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::CloudFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    pub fn too_many_logins(login: &str, left: std::time::Duration) -> ApiError {
        ApiError::TooManyRequests {
            message: format!(
                "too many failed logins for '{login}': it is locked for {} more seconds",
                left.as_secs().max(1)
            ),
            retry_after: left,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        // Down, restarting or saturated: the client may retry; nothing was stored.
        let unavailable = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            // Connection failures (08…) and shutdowns (57P0…) reported by the server.
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        };
        if unavailable {
            tracing::error!(error = %e, "database unavailable");
            ApiError::Unavailable(
                "the database is unavailable; nothing was stored, retry later".into(),
            )
        } else {
            ApiError::Internal(e.into())
        }
    }
}

/// Carried from the handler to `render_errors` in the response extensions.
#[derive(Clone)]
struct ErrorMessage {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal server error".to_string()
            }
            other => other.to_string(),
        };
        let mut response = status.into_response();
        match &self {
            ApiError::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="pimage""#),
                );
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
            }
            _ => {}
        }
        response
            .extensions_mut()
            .insert(ErrorMessage { status, message });
        response
    }
}

/// axum's own rejections (a path segment that is not UTF-8 once decoded, `%ff`; a query that
/// is not) answer a short text/plain 4xx before any handler runs: they become `uforgeError`s
/// too, with axum's words as the message.
fn is_extractor_rejection(response: &Response) -> bool {
    response.status().is_client_error()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain"))
}

/// axum's rejection texts are one line; more is cut.
const REJECTION_TEXT_LIMIT: usize = 4096;

/// Middleware: writes the body of every `ApiError` response (and of axum's rejections) as a
/// `uforgeError`.
pub async fn render_errors(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    // The path only: the query may hold an API key signature.
    let uri = request.uri().path().to_string();
    let format = Format::from_accept(request.headers()).unwrap_or(Format::Xml);
    let mut response = next.run(request).await;
    let error = match response.extensions_mut().remove::<ErrorMessage>() {
        Some(error) => error,
        None if is_extractor_rejection(&response) => {
            let status = response.status();
            let body = std::mem::take(response.body_mut());
            let text = axum::body::to_bytes(body, REJECTION_TEXT_LIMIT)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&text).trim().to_string();
            let message = match text.is_empty() {
                true => status.canonical_reason().unwrap_or("bad request").into(),
                false => text,
            };
            ErrorMessage { status, message }
        }
        None => return response,
    };
    let doc = Document::new(
        "uforgeError",
        UForgeError {
            localized_error_msg: LocalizedMessage {
                message: error.message,
            },
            request_method: method,
            request_uri: uri,
            status_code: error.status.as_u16(),
            timestamp: chrono::Utc::now(),
        },
    );
    let mut rendered = doc.render(format, error.status);
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}
