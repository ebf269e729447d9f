//! Glance v2: create, upload, read back, delete and find a ticket's images, with a token
//! from `keystone`; every call but the upload within the call timeout, answers read within
//! the bounds of `answer`.

use std::sync::Arc;

use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::answer::{json, within};
use super::error::{check, CloudError};
use super::quota::quota_refusal;
use super::session::Session;
use crate::secrets::Secret;

/// Glance property naming the ticket an image belongs to: a retried job finds its image by it.
pub const TICKET_PROPERTY: &str = "pimage_ticket";
/// Glance property naming the pimage deployment that made the image: the orphan sweep
/// deletes only its own deployment's images.
pub const DEPLOYMENT_PROPERTY: &str = "pimage_deployment";

/// A logged-in session on one project, maybe shared with other tickets (`Sessions`).
#[derive(Clone)]
pub struct Glance {
    /// Set up by `Glance::login` (keystone.rs) or `Sessions::glance` (session.rs).
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
}

impl Glance {
    pub(super) fn timeout(&self) -> std::time::Duration {
        self.session.policy.call_timeout_for(&self.session.base)
    }

    /// Creates an empty (queued) image carrying the ticket and deployment properties, and
    /// `extra` properties (a profile's; they never replace pimage's own).
    pub async fn create_image(
        &self,
        name: &str,
        disk_format: &str,
        public: bool,
        (ticket_key, deployment): (&str, &str),
        extra: &std::collections::BTreeMap<String, String>,
    ) -> Result<GlanceImage, CloudError> {
        let mut body = serde_json::Map::new();
        for (key, value) in extra {
            body.insert(key.clone(), value.clone().into());
        }
        for (key, value) in [
            ("name", name),
            ("disk_format", disk_format),
            ("container_format", "bare"),
            ("visibility", if public { "public" } else { "private" }),
            (TICKET_PROPERTY, ticket_key),
            (DEPLOYMENT_PROPERTY, deployment),
        ] {
            body.insert(key.into(), value.into());
        }
        let url = self.url(&["images"]);
        within(self.timeout(), "Glance, creating the image", async {
            let response = self
                .send("could not reach Glance to create the image", |client, token| {
                    client
                        .post(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                        .json(&body)
                })
                .await?;
            let response = check(response, |status| match status {
                403 if public => "Glance refused to create a public image: this cloud account may not publish \
                                  public images (publish with publicImage=false, or ask the cloud administrator)"
                    .to_string(),
                403 => "Glance refused to create the image (forbidden)".into(),
                400 => format!("Glance refused the image definition (disk format '{disk_format}', name '{name}')"),
                413 => "Glance refused the image: quota exceeded".into(),
                s => format!("Glance failed to create the image (HTTP {s})"),
            })
            .await
            .map_err(quota_refusal)?;
            json(response, "Glance answered the image creation").await
        })
        .await
    }

    /// Streams `body` (exactly `length` bytes) into the image. Sent with a Content-Length and
    /// no `Expect: 100-continue`: Glance behind uwsgi refuses large chunks and never answers 100.
    /// No time limit here: the upload's own watchdog (worker::upload) bounds it.
    pub async fn upload(
        &self,
        image_id: &str,
        body: reqwest::Body,
        length: u64,
    ) -> Result<(), CloudError> {
        let response = self
            .put_bytes(
                image_id,
                "file",
                body,
                length,
                "the upload to Glance was cut off",
            )
            .await?;
        check(response, |status| match status {
            413 => "Glance refused the image data: quota or size limit exceeded".to_string(),
            415 | 400 => {
                "Glance refused the image data: the file does not match its disk format".into()
            }
            403 => "Glance refused the upload (forbidden)".into(),
            409 | 410 => "the image was removed from Glance during the upload".into(),
            s => format!("the upload to Glance failed (HTTP {s})"),
        })
        .await
        .map_err(quota_refusal)
        .map(|_| ())
    }

    /// Streams `body` (exactly `length` bytes) to `…/images/{id}/{target}` (`file` or
    /// `stage`) with the session's current token; the answer is the caller's to check.
    pub(super) async fn put_bytes(
        &self,
        image_id: &str,
        target: &str,
        body: reqwest::Body,
        length: u64,
        cut_off: &str,
    ) -> Result<Response, CloudError> {
        let token = self.session.token().await?;
        self.session
            .client
            .put(self.url(&["images", image_id, target]))
            .header("x-auth-token", token.expose())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length)
            .body(body)
            .send()
            .await
            .map_err(|e| CloudError::sending(cut_off, &e))
    }

    /// Reads an image back (status, checksum, size).
    pub async fn image(&self, image_id: &str) -> Result<GlanceImage, CloudError> {
        let url = self.url(&["images", image_id]);
        let what = format!("Glance, reading image {image_id} back");
        within(self.timeout(), &what, async {
            let unreachable = format!("could not read Glance image {image_id}");
            let response = self
                .send(&unreachable, |client, token| {
                    client
                        .get(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                })
                .await?;
            let response = check(response, |s| {
                format!("could not read Glance image {image_id} (HTTP {s})")
            })
            .await?;
            json(
                response,
                &format!("Glance answered the read of image {image_id}"),
            )
            .await
        })
        .await
    }

    /// Deletes an image; an image that is already gone counts as deleted.
    pub async fn delete_image(&self, image_id: &str) -> Result<(), CloudError> {
        let deleted = self.request_delete(image_id).await;
        // A delete that failed half-way (Glance answered 500) can leave the image in status
        // `deleted`, listed nowhere, and Glance refuses each further delete (400): it is gone.
        if deleted.is_err()
            && self
                .image(image_id)
                .await
                .is_ok_and(|image| matches!(image.status.as_str(), "deleted" | "pending_delete"))
        {
            return Ok(());
        }
        deleted
    }

    async fn request_delete(&self, image_id: &str) -> Result<(), CloudError> {
        let url = self.url(&["images", image_id]);
        let what = format!("Glance, deleting image {image_id}");
        within(self.timeout(), &what, async {
            let unreachable = format!("could not reach Glance to delete image {image_id}");
            let response = self
                .send(&unreachable, |client, token| {
                    client
                        .delete(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                })
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(());
            }
            check(response, |s| {
                format!("Glance refused to delete image {image_id} (HTTP {s})")
            })
            .await
            .map(|_| ())
        })
        .await
    }

    /// The images carrying this ticket's property.
    pub async fn images_of_ticket(&self, ticket_key: &str) -> Result<Vec<GlanceImage>, CloudError> {
        self.images_with(TICKET_PROPERTY, ticket_key).await
    }

    /// The images this pimage deployment made (the first 1000: a sweep's worth).
    pub async fn images_of_deployment(
        &self,
        deployment: &str,
    ) -> Result<Vec<GlanceImage>, CloudError> {
        self.images_with(DEPLOYMENT_PROPERTY, deployment).await
    }

    async fn images_with(
        &self,
        property: &str,
        value: &str,
    ) -> Result<Vec<GlanceImage>, CloudError> {
        #[derive(Deserialize)]
        struct Page {
            images: Vec<GlanceImage>,
        }
        let url = self.url(&["images"]);
        within(self.timeout(), "Glance, listing images", async {
            let response = self
                .send("could not reach Glance to list images", |client, token| {
                    client
                        .get(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                        .query(&[(property, value), ("limit", "1000")])
                })
                .await?;
            let response = check(response, |s| {
                format!("Glance failed to list images (HTTP {s})")
            })
            .await?;
            json::<Page>(response, "Glance answered the image list")
                .await
                .map(|p| p.images)
        })
        .await
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
}
