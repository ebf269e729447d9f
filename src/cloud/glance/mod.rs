//! Glance v2, with a token from `keystone`; every call but the upload within the call
//! timeout, answers read within the bounds of `answer`. One concern per file:
//! `images` (create, read back, delete, find a ticket's images), `upload` (the bytes),
//! `import` (interoperable import), `quota` (refusals and the pre-check), `copies`
//! (server-side copies: between stores, from another region; the stores offered).
//!
//! This file: the `Glance` session, how its requests are sent, and the image Glance
//! describes.

mod copies;
mod images;
mod import;
mod quota;
mod upload;

use std::sync::Arc;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::error::CloudError;
use super::session::Session;
use crate::secrets::Secret;

pub use copies::{GlanceStore, StoreDelete};

/// Glance property naming the ticket an image belongs to: a retried job finds its image by it.
pub const TICKET_PROPERTY: &str = "pimage_ticket";
/// Glance property naming the pimage deployment that made the image: the orphan sweep
/// deletes only its own deployment's images.
pub const DEPLOYMENT_PROPERTY: &str = "pimage_deployment";

/// A logged-in session on one project, maybe shared with other tickets (`Sessions`).
#[derive(Clone)]
pub struct Glance {
    /// Set up by `Keystone::login` (keystone.rs) or `Sessions::glance` (session.rs).
    pub(super) session: Arc<Session>,
}

/// Glance's v2 API under an endpoint given with or without its version (`/v2/`, ending in
/// a slash so that paths append).
pub(super) fn glance_v2(mut url: url::Url) -> url::Url {
    let path = url.path().trim_end_matches('/').to_string();
    let versioned = path.ends_with("/v2") || path.ends_with("/v2.0");
    url.set_path(&if versioned {
        format!("{path}/")
    } else {
        format!("{path}/v2/")
    });
    url.set_query(None);
    url
}

impl Glance {
    /// Glance's v2 endpoint this session calls.
    pub fn endpoint(&self) -> &url::Url {
        &self.session.base
    }

    /// The catalog region of this Glance, when the catalog gave it (not a given URL).
    pub fn region(&self) -> Option<&str> {
        self.session.region.as_deref()
    }

    pub(super) fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.session.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends the request `build` makes with a fresh token (renewed before it expires: an
    /// upload may outlast one); on a 401 (a revoked token), logs in again once and sends it
    /// anew.
    pub(super) async fn send(
        &self,
        unreachable: &str,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Result<Response, CloudError> {
        let (session, build) = (&self.session, &build);
        let send = |token: Secret| async move {
            build(&session.client, token.expose())
                .send()
                .await
                .map_err(|e| CloudError::sending(unreachable, &e))
        };
        let token = session.token().await?;
        let response = send(token.clone()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        send(session.renew(&token).await?).await
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct GlanceImage {
    pub id: String,
    pub status: String,
    pub checksum: Option<String>,
    pub size: Option<u64>,
    /// The ticket property, when the image carries one.
    #[serde(rename = "pimage_ticket", default)]
    pub ticket_key: Option<String>,
    /// Glance's multihash (`sha512` by default), when it reports one.
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    /// Stores an import failed for (comma-separated), set by Glance's import flow.
    #[serde(default)]
    pub os_glance_failed_import: Option<String>,
    /// Stores an import still writes to.
    #[serde(default)]
    pub os_glance_importing_to_stores: Option<String>,
    /// The import task holding the image (set when the import is accepted, removed at its end).
    #[serde(default)]
    pub os_glance_import_task: Option<String>,
    /// The stores holding the image's data, comma-separated (a Glance with several stores).
    #[serde(default)]
    pub stores: Option<String>,
}

impl GlanceImage {
    /// Whether Glance lists `store` among the stores holding the image's data.
    pub fn in_store(&self, store: &str) -> bool {
        !store.is_empty()
            && self
                .stores
                .as_deref()
                .is_some_and(|stores| stores.split(',').any(|s| s.trim() == store))
    }
}

impl Glance {
    pub(super) fn timeout(&self) -> std::time::Duration {
        self.session.policy.call_timeout_for(&self.session.base)
    }

    /// The profile that applies to this Glance, if any.
    pub fn profile(&self) -> Option<&crate::config::CloudProfile> {
        self.session.policy.profile_for(&self.session.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glance_endpoints_with_or_without_their_version_lead_to_v2() {
        let v2 = |u: &str| glance_v2(url::Url::parse(u).unwrap()).to_string();
        assert_eq!(v2("http://g:9292"), "http://g:9292/v2/");
        assert_eq!(v2("http://g:9292/"), "http://g:9292/v2/");
        assert_eq!(v2("http://g/image/v2"), "http://g/image/v2/");
        assert_eq!(v2("http://g/image/v2.0/"), "http://g/image/v2.0/");
    }

    #[test]
    fn an_image_is_in_the_stores_glance_lists_and_no_other() {
        let image = |stores: Option<&str>| -> GlanceImage {
            serde_json::from_value(serde_json::json!({
                "id": "i", "status": "active", "checksum": null, "size": null, "stores": stores,
            }))
            .unwrap()
        };
        let both = image(Some("fast,cold"));
        assert!(both.in_store("fast") && both.in_store("cold"));
        assert!(!both.in_store("col") && !both.in_store("fast,cold"));
        assert!(!image(None).in_store("fast"));
        assert!(!image(Some("")).in_store(""));
    }
}
