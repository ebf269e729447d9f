//! Who is calling (HTTP Basic against the users table) and what they may reach.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;

use super::error::ApiError;
use super::AppState;
use crate::secrets::{self, Secret};
use crate::store::{users, User};

/// The entitlement every publish route needs.
pub const PUBLISH_ENTITLEMENT: &str = "migration_publish";

/// An authenticated caller.
pub struct Caller(pub User);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let (login, password) = basic_credentials(parts).ok_or(ApiError::Unauthorized)?;
        let user = users::find_by_login(&state.pool, &login).await?;
        // Verify against a dummy hash for unknown users too, so timing does not reveal them.
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.clone());
        let valid = tokio::task::spawn_blocking(move || secrets::verify_password(&password, &hash))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        match user {
            Some(user) if valid => Ok(Caller(user)),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| secrets::hash_password(&Secret::new("no such user")));

fn basic_credentials(parts: &Parts) -> Option<(String, Secret)> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (login, password) = decoded.split_once(':')?;
    Some((login.to_string(), Secret::new(password)))
}

impl Caller {
    /// May this caller publish as `uid`? Another user's resources look absent (404).
    pub fn authorize(&self, uid: &str) -> Result<(), ApiError> {
        let user = &self.0;
        if !user.has_entitlement(PUBLISH_ENTITLEMENT) {
            return Err(ApiError::Forbidden(format!(
                "user '{}' lacks the entitlement {PUBLISH_ENTITLEMENT}",
                user.login
            )));
        }
        if user.login != uid && !user.is_admin {
            return Err(ApiError::NotFound(format!("no user '{uid}'")));
        }
        Ok(())
    }
}
