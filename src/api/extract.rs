//! What a handler needs from a request, as extractors: the answer format, the typed path and
//! query (`params`), the caller allowed at the path's `{uid}`, the image or ticket at the
//! path. Each refuses with the `ApiError` (and message) the API has always answered.
//!
//! Order of checks, as the API has always answered (axum runs extractors in argument
//! order): login (401), then the format (406), then `{uid}` (403 without the entitlement,
//! 404 for another user's, whatever the ids), then the ids (400), then the resource (404).
//! So handlers list `Caller` first and `Format` right after it; the `Caller` is
//! authenticated once and reused by `UserScope`, `OwnedImage` and `OwnedTicket`.

use std::borrow::Cow;

use axum::extract::{FromRequestParts, Path, Query, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use serde::de::DeserializeOwned;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};
use utoipa::IntoParams;

use super::auth::Caller;
use super::error::ApiError;
use super::params::{ImagePath, TicketPath};
use super::wire::Format;
use super::AppState;
use crate::store::{images, tickets, Image, Ticket};

/// The answer format, from `Accept` (406 when it names neither XML nor JSON).
impl<S: Send + Sync> FromRequestParts<S> for Format {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Format, ApiError> {
        Format::from_accept(&parts.headers).ok_or(ApiError::NotAcceptable)
    }
}

/// A caller who is an administrator (`pimage users add --admin`): 401 without a login, 403
/// for anyone else, and for any request a browser sent (it has an `Origin`). Holds the
/// login, for the log.
pub struct Administrator(pub String);

impl FromRequestParts<AppState> for Administrator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Administrator, ApiError> {
        let user = Caller::from_request_parts(parts, state).await?.0;
        // A browser sends Origin with every POST: one that kept an administrator's Basic
        // login must not be driven by another site's form (the console has its CSRF token).
        if parts.headers.contains_key(axum::http::header::ORIGIN) {
            return Err(ApiError::Forbidden(
                "the administrators' API is not for browsers: use the console".into(),
            ));
        }
        if !user.is_admin {
            return Err(ApiError::Forbidden(format!(
                "user '{}' is not an administrator: only administrators may change other users' tickets by id",
                user.login
            )));
        }
        Ok(Administrator(user.login))
    }
}

/// Typed path parameters; an id that does not parse is a 400 naming it.
pub struct ApiPath<P>(pub P);

impl<P, S> FromRequestParts<S> for ApiPath<P>
where
    P: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiPath<P>, ApiError> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match Path::<P>::from_request_parts(parts, state).await {
            Ok(Path(params)) => Ok(ApiPath(params)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => match e.kind() {
                ErrorKind::DeserializeError {
                    key,
                    value,
                    message,
                } => Err(ApiError::BadRequest(format!(
                    "{key} {message}, not '{value}'"
                ))),
                _ => Err(rejected(e.status(), e.body_text())),
            },
            Err(other) => Err(rejected(other.status(), other.body_text())),
        }
    }
}

/// A rejection of axum's as an `ApiError`: 400 as given, anything else a fault of ours.
fn rejected(status: axum::http::StatusCode, text: String) -> ApiError {
    if status.is_client_error() {
        ApiError::BadRequest(text)
    } else {
        ApiError::Internal(anyhow::anyhow!(text))
    }
}

/// A typed query string; a value that does not parse is a 400 with the parameter's message.
pub struct ApiQuery<Q>(pub Q);

impl<Q, S> FromRequestParts<S> for ApiQuery<Q>
where
    Q: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ApiQuery<Q>, ApiError> {
        let query = last_value_per_key(parts.uri.query().unwrap_or(""));
        let uri = format!("/?{query}")
            .parse::<Uri>()
            .map_err(|e| ApiError::BadRequest(format!("the query string is not valid: {e}")))?;
        let rejection = match Query::try_from_uri(&uri) {
            Ok(Query(query)) => return Ok(ApiQuery(query)),
            Err(rejection) => rejection,
        };
        // The parameter's name, then its own message ("img must be …"): axum's inner error
        // reads "img: must be …", after "Failed to deserialize query string".
        let Some(inner) = std::error::Error::source(&rejection).map(|e| e.to_string()) else {
            return Err(rejected(rejection.status(), rejection.body_text()));
        };
        Err(ApiError::BadRequest(match inner.split_once(": ") {
            Some((name, message)) if !name.contains(' ') => format!("{name} {message}"),
            _ => inner,
        }))
    }
}

/// `query` with each key once, holding its last value (`?img=1&img=2` is `img=2`), as the
/// API has always read a repeated parameter.
fn last_value_per_key(query: &str) -> String {
    let mut pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => pairs.push((key, value)),
        }
    }
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// One token of the caller's publish budget (429 when it is spent), taken after the format
/// and before `{uid}`, the ids and the image are looked at, as it always was.
pub struct PublishToken;

impl FromRequestParts<AppState> for PublishToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        state.publish_rate.take(&caller.0.login)?;
        Ok(PublishToken)
    }
}

/// The caller, allowed to act as the path's `{uid}`, and the typed path `P`.
pub struct UserScope<P> {
    pub caller: Caller,
    pub path: P,
}

impl<P> FromRequestParts<AppState> for UserScope<P>
where
    P: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<UserScope<P>, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        // `{uid}` before the ids, as the answers always were: another user's path is a
        // 404 whatever its ids.
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| rejected(e.status(), e.body_text()))?;
        let uid = raw.iter().find(|(name, _)| *name == "uid").map(|(_, v)| v);
        caller.authorize(uid.unwrap_or(""))?;
        let ApiPath(path) = ApiPath::from_request_parts(parts, state).await?;
        Ok(UserScope { caller, path })
    }
}

/// The image at the path, its owner allowed to the caller.
pub struct OwnedImage(pub Image);

impl FromRequestParts<AppState> for OwnedImage {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let UserScope { path, .. } = UserScope::from_request_parts(parts, state).await?;
        Ok(OwnedImage(image_at(state, &path).await?))
    }
}

/// The ticket at the path, its owner allowed to the caller.
pub struct OwnedTicket {
    pub caller: Caller,
    pub ticket: Ticket,
}

impl FromRequestParts<AppState> for OwnedTicket {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let UserScope { caller, path } = UserScope::from_request_parts(parts, state).await?;
        let ticket = ticket_at(state, &path).await?;
        Ok(OwnedTicket { caller, ticket })
    }
}

/// The request body, at most `max_body_bytes` of it (413 past that).
pub async fn body_bytes(
    state: &AppState,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge(state.max_body_bytes)
            } else {
                ApiError::BadRequest(format!("the request body could not be read: {e}"))
            }
        })
}

/// The image at `path` (whose `{uid}` the caller was allowed), or 404.
pub async fn image_at(state: &AppState, path: &ImagePath) -> Result<Image, ApiError> {
    let ImagePath {
        uid,
        siid,
        sid,
        itid,
    } = path;
    images::find(&state.pool, uid, *siid, *sid, *itid)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no image {itid} in scan {sid} of scanned instance {siid}"
            ))
        })
}

/// The ticket at `path` (whose `{uid}` the caller was allowed), or a 404 that says which
/// part of the path is wrong.
pub async fn ticket_at(state: &AppState, path: &TicketPath) -> Result<Ticket, ApiError> {
    if let Some(ticket) = tickets::find_at(&state.pool, &path.uid, path.ids()).await? {
        return Ok(ticket);
    }
    let image = image_at(state, &path.image()).await?;
    Err(ApiError::NotFound(format!(
        "no publish ticket {} for image {}",
        path.pitid, image.id
    )))
}

/// The `Last-Event-ID` a reconnecting EventSource sends (ignored unless a non-negative
/// integer).
pub struct LastEventId(pub Option<i64>);

impl LastEventId {
    pub fn of(headers: &HeaderMap) -> LastEventId {
        LastEventId(
            headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .filter(|id: &i64| *id >= 0),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(LastEventId::of(&parts.headers))
    }
}

impl IntoParams for LastEventId {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let id = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(0));
        vec![ParameterBuilder::new()
            .name("Last-Event-ID")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Resume after this event: the changes since are sent first",
            ))
            .schema(Some(id))
            .build()]
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;

    use super::*;
    use crate::api::params::{DeleteQuery, ImageFilter};

    /// What the extractors make of `path_and_query` (a ticket's path), as text: the ids and
    /// flags found, or the refusal's message.
    async fn extracted(path_and_query: &str) -> String {
        async fn show(
            path: Result<ApiPath<TicketPath>, ApiError>,
            delete: Result<ApiQuery<DeleteQuery>, ApiError>,
            filter: Result<ApiQuery<ImageFilter>, ApiError>,
        ) -> String {
            match (path, delete, filter) {
                (Ok(ApiPath(p)), Ok(ApiQuery(d)), Ok(ApiQuery(f))) => format!(
                    "{} {:?} {} {:?}",
                    p.uid,
                    p.ids(),
                    d.delete_cloud_image,
                    f.img
                ),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => e.to_string(),
            }
        }
        let app: Router = Router::new().route("/{uid}/{siid}/{sid}/{itid}/{pitid}", get(show));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        reqwest::get(format!("http://{addr}{path_and_query}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn ids_and_flags_are_parsed_and_refusals_name_the_parameter() {
        for (path_and_query, expected) in [
            ("/demo/1/2/3/4", "demo (1, 2, 3, 4) false None"),
            (
                "/demo/1/2/3/4?deleteCloudImage=%20true&img=/api/users/demo/images/7/",
                "demo (1, 2, 3, 4) true Some(7)",
            ),
            (
                "/demo/1/2/3/4?deleteCloudImage=0&img=",
                "demo (1, 2, 3, 4) false None",
            ),
            (
                "/demo/-1/2/3/4",
                "siid must be a positive integer, not '-1'",
            ),
            ("/demo/1/0/3/4", "sid must be a positive integer, not '0'"),
            (
                "/demo/1/2/abc/4",
                "itid must be a positive integer, not 'abc'",
            ),
            (
                "/demo/1/2/3/99999999999999999999",
                "pitid must be a positive integer, not '99999999999999999999'",
            ),
            (
                "/demo/1/2/3/4?deleteCloudImage=maybe",
                "deleteCloudImage must be true or false, not 'maybe'",
            ),
            (
                "/demo/1/2/3/4?img=1&deleteCloudImage=maybe&img=2&deleteCloudImage=1",
                "demo (1, 2, 3, 4) true Some(2)",
            ),
            (
                "/demo/1/2/3/4?img=images/x",
                "img must be an image id or image URI, not 'images/x'",
            ),
        ] {
            assert_eq!(
                extracted(path_and_query).await,
                expected,
                "{path_and_query}"
            );
        }
    }
}
