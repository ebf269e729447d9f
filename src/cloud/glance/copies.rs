//! Server-side copies: Glance copies an image itself, from one of its stores to others
//! (`copy-image`) or from another region's Glance through the token's catalog
//! (`glance-download`), so its bytes are sent once per cloud; the stores a Glance offers;
//! an image's data removed from one store. The wait for the copies is the caller's
//! (`GlanceImage::in_store`, `os_glance_failed_import`).

use reqwest::header::ACCEPT;
use reqwest::StatusCode;
use serde::Deserialize;

use super::quota::quota_refusal;
use super::Glance;
use crate::cloud::answer::{json, within};
use crate::cloud::error::{check, Cause, CloudError};

/// A store Glance offers (`GET /v2/info/stores`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlanceStore {
    pub id: String,
    /// Where an upload naming no store goes.
    pub is_default: bool,
}

/// What removing an image's data from one store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDelete {
    Deleted,
    /// Nothing to remove: the image, or its data in that store, is not there (any more).
    Gone,
    /// Glance keeps an image's only location: the store holds the last copy, so the
    /// image must be deleted instead.
    LastLocation,
}

/// Glance 33's refusal to remove an image's only location (403): "Cannot delete image data
/// from the only store containing it. Consider deleting the image instead."
const ONLY_STORE: &str = "only store containing it";
/// glance_store's answer naming a store Glance does not have ("Store for identifier X not
/// found"), a 400 on an upload, a 409 on an import.
const UNKNOWN_STORE: &str = "Store for identifier";

#[derive(Deserialize)]
struct StoresInfo {
    stores: Vec<StoreEntry>,
}

#[derive(Deserialize)]
struct StoreEntry {
    id: String,
    /// Glance 33 answers the string "true" (and omits it on the others); a boolean is taken too.
    #[serde(default)]
    default: Option<serde_json::Value>,
}

impl StoreEntry {
    fn into_store(self) -> GlanceStore {
        let is_default = match &self.default {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        GlanceStore {
            id: self.id,
            is_default,
        }
    }
}

/// Names the store in a refusal whose answer says Glance has no store of that name.
pub(super) fn unknown_store(e: CloudError, store: Option<&str>) -> CloudError {
    match store {
        Some(store)
            if e.detail
                .as_deref()
                .is_some_and(|d| d.contains(UNKNOWN_STORE)) =>
        {
            CloudError {
                summary: format!("Glance has no store named '{store}'"),
                ..e
            }
        }
        _ => e,
    }
}

impl Glance {
    /// The stores this Glance offers; empty for a Glance with a single unnamed store
    /// (no `enabled_backends`: it answers 404).
    pub async fn stores(&self) -> Result<Vec<GlanceStore>, CloudError> {
        let url = self.url(&["info", "stores"]);
        within(self.timeout(), "Glance, reading its stores", async {
            let response = self
                .send("could not reach Glance to read its stores", |c, token| {
                    c.get(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                })
                .await?;
            if matches!(
                response.status(),
                StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
            ) {
                return Ok(vec![]);
            }
            let response = check(response, |s| {
                format!("Glance failed to tell its stores (HTTP {s})")
            })
            .await?;
            json::<StoresInfo>(response, "Glance answered its stores")
                .await
                .map(|i| i.stores.into_iter().map(StoreEntry::into_store).collect())
        })
        .await
    }

    /// Asks Glance to copy an active image into `stores` (`copy-image`); it copies in the
    /// background, the image staying active. `all_must_succeed`: a store that fails undoes
    /// the copies to the others (else Glance lists it in `os_glance_failed_import`).
    pub async fn copy_to_stores(
        &self,
        image_id: &str,
        stores: &[&str],
        all_must_succeed: bool,
    ) -> Result<(), CloudError> {
        let body = serde_json::json!({
            "method": {"name": "copy-image"},
            "stores": stores,
            "all_stores_must_succeed": all_must_succeed,
        });
        let named = stores.join(", ");
        self.import_call(
            image_id,
            &body,
            "copying the image",
            |status| match status {
                403 => {
                    "Glance refused to copy the image: the cloud does not let this account copy \
                    images between stores (Glance's copy_image policy)"
                        .to_string()
                }
                409 => format!(
                    "Glance refused to copy image {image_id}: an import already runs on it, it is \
                 not active, or a store of '{named}' is unknown"
                ),
                400 => format!(
                "Glance refused to copy image {image_id} to '{named}': it is already in one of \
                 them, or the cloud does not offer copy-image"
            ),
                404 => format!("image {image_id} is no longer in Glance"),
                s => format!("Glance failed to start copying image {image_id} (HTTP {s})"),
            },
        )
        .await
    }

    /// Asks this Glance to fetch its (queued) image `image_id` from image `source_image_id`
    /// of the Glance of region `source_region` (`glance-download`, through the public
    /// endpoints of the token's catalog), into `store` if named. Glance imports in the
    /// background: the image turns active, or back to queued with the failure in
    /// `os_glance_failed_import`.
    pub async fn import_from_region(
        &self,
        image_id: &str,
        source_region: &str,
        source_image_id: &str,
        store: Option<&str>,
    ) -> Result<(), CloudError> {
        let mut body = serde_json::json!({"method": {
            "name": "glance-download",
            "glance_region": source_region,
            "glance_image_id": source_image_id,
            "glance_service_interface": "public",
        }});
        if let Some(store) = store {
            body["stores"] = serde_json::json!([store]);
        }
        let doing = format!("importing the image from region {source_region}");
        self.import_call(image_id, &body, &doing, |status| match status {
            403 => "Glance refused the glance-download import (forbidden)".to_string(),
            409 => format!(
                "Glance refused to import into image {image_id}: it is not queued, an import \
                 already runs on it, or the store is unknown"
            ),
            400 => format!(
                "Glance refused the glance-download import from region {source_region}: the \
                 cloud must offer glance-download, and the source image id be a UUID"
            ),
            404 => format!("image {image_id} is no longer in Glance"),
            s => format!("Glance failed to start the glance-download import (HTTP {s})"),
        })
        .await
        .map_err(|e| unknown_store(e, store))
    }

    /// `POST …/images/{id}/import` with `body`, refusals as `refused` says.
    async fn import_call(
        &self,
        image_id: &str,
        body: &serde_json::Value,
        doing: &str,
        refused: impl FnOnce(u16) -> String,
    ) -> Result<(), CloudError> {
        let url = self.url(&["images", image_id, "import"]);
        within(self.timeout(), &format!("Glance, {doing}"), async {
            let unreachable = format!("could not reach Glance for {doing}");
            let response = self
                .send(&unreachable, |c, token| {
                    c.post(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                        .json(body)
                })
                .await?;
            check(response, refused)
                .await
                .map_err(quota_refusal)
                .map(|_| ())
        })
        .await
    }

    /// Removes the image's data from `store` (`DELETE /v2/stores/{store}/{id}`), the image
    /// staying in its other stores.
    pub async fn delete_from_store(
        &self,
        image_id: &str,
        store: &str,
    ) -> Result<StoreDelete, CloudError> {
        match self.request_store_delete(image_id, store).await? {
            // Glance refuses an image with one location before it looks for `store`: the
            // image in one other store is not the last copy in this one.
            StoreDelete::LastLocation if !self.image(image_id).await?.in_store(store) => {
                Ok(StoreDelete::Gone)
            }
            done => Ok(done),
        }
    }

    async fn request_store_delete(
        &self,
        image_id: &str,
        store: &str,
    ) -> Result<StoreDelete, CloudError> {
        let url = self.url(&["stores", store, image_id]);
        let what = format!("Glance, removing image {image_id} from store {store}");
        within(self.timeout(), &what, async {
            let unreachable = format!("could not reach Glance to remove image {image_id}");
            let response = self
                .send(&unreachable, |c, token| {
                    c.delete(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                })
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(StoreDelete::Gone);
            }
            let refused = check(response, |status| match status {
                403 => "Glance refused to remove the image from one store: the cloud does not \
                        let this account remove image locations (delete_image_location policy)"
                    .to_string(),
                409 => format!(
                    "Glance refused to remove image {image_id} from store {store}: the image is \
                     not active, or the store is unknown or in use"
                ),
                s => format!(
                    "Glance failed to remove image {image_id} from store {store} (HTTP {s})"
                ),
            })
            .await;
            match refused {
                Ok(_) => Ok(StoreDelete::Deleted),
                Err(e) if is_last_location(&e) => Ok(StoreDelete::LastLocation),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

fn is_last_location(e: &CloudError) -> bool {
    matches!(e.cause, Cause::Http { status: 403, .. })
        && e.detail.as_deref().is_some_and(|d| d.contains(ONLY_STORE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16, message: &str) -> CloudError {
        CloudError {
            summary: "refused".into(),
            detail: Some(format!("HTTP {status}: {message}")),
            cause: Cause::Http {
                status,
                retry_after: None,
            },
        }
    }

    #[test]
    fn the_default_store_is_told_as_glance_33_says_it_or_as_a_boolean() {
        let stores: StoresInfo = serde_json::from_str(
            r#"{"stores": [{"id": "fast", "default": "true"}, {"id": "cold"},
                           {"id": "b", "default": true}, {"id": "c", "default": "false"}]}"#,
        )
        .unwrap();
        let defaults: Vec<(String, bool)> = stores
            .stores
            .into_iter()
            .map(|s| s.into_store())
            .map(|s| (s.id, s.is_default))
            .collect();
        assert_eq!(
            defaults,
            [("fast", true), ("cold", false), ("b", true), ("c", false)]
                .map(|(id, d)| (id.to_string(), d))
        );
    }

    #[test]
    fn only_the_only_store_refusal_is_the_last_location() {
        let last = "Cannot delete image data from the only store containing it. Consider \
                    deleting the image instead.";
        assert!(is_last_location(&refusal(403, last)));
        assert!(!is_last_location(&refusal(403, "Policy doesn't allow it")));
        assert!(!is_last_location(&refusal(409, last)));
    }

    #[test]
    fn an_unknown_store_is_named() {
        let e = refusal(400, "Store for identifier nope not found");
        assert_eq!(
            unknown_store(e.clone(), Some("nope")).summary,
            "Glance has no store named 'nope'"
        );
        assert_eq!(unknown_store(e, None).summary, "refused");
        let other = refusal(400, "bad disk format");
        assert_eq!(unknown_store(other, Some("nope")).summary, "refused");
    }
}
