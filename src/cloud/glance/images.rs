//! A ticket's images in Glance: created, read back, deleted, found by property.

use reqwest::header::ACCEPT;
use reqwest::StatusCode;
use serde::Deserialize;

use super::quota::quota_refusal;
use super::{Glance, GlanceImage, DEPLOYMENT_PROPERTY, TICKET_PROPERTY};
use crate::cloud::answer::{json, within};
use crate::cloud::error::{check, CloudError};

impl Glance {
    /// Creates an empty (queued) image carrying the ticket and deployment properties, and
    /// `extra` properties (a profile's; they never replace pimage's own).
    pub async fn create_image(
        &self,
        name: &str,
        disk_format: &str,
        public: bool,
        ticket_key: &str,
        deployment: &str,
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
