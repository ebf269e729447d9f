//! Glance v2: create, upload, read back, delete and find a ticket's images, through a
//! session logged in by `keystone`.

use osauth::services::IMAGE;
use osauth::Session;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use serde::Deserialize;

use super::error::{check, Cause, CloudError};
use super::CALL_TIMEOUT;

/// Glance property naming the ticket an image belongs to: a retried job finds its image by it.
pub const TICKET_PROPERTY: &str = "pimage_ticket";
/// Glance property naming the pimage deployment that made the image: the orphan sweep
/// deletes only its own deployment's images.
pub const DEPLOYMENT_PROPERTY: &str = "pimage_deployment";

/// A logged-in session on one project.
#[derive(Clone)]
pub struct Glance {
    /// Set up by `Glance::login` (keystone.rs).
    pub(super) session: Session,
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
}

impl Glance {
    /// Creates an empty (queued) image carrying the ticket and deployment properties.
    pub async fn create_image(
        &self,
        name: &str,
        disk_format: &str,
        public: bool,
        (ticket_key, deployment): (&str, &str),
    ) -> Result<GlanceImage, CloudError> {
        let body = serde_json::json!({
            "name": name,
            "disk_format": disk_format,
            "container_format": "bare",
            "visibility": if public { "public" } else { "private" },
            TICKET_PROPERTY: ticket_key,
            DEPLOYMENT_PROPERTY: deployment,
        });
        let response = self
            .session
            .post(IMAGE, &["images"])
            .timeout(CALL_TIMEOUT)
            .header(ACCEPT, "application/json")
            .json(&body)
            .send_unchecked()
            .await
            .map_err(|e| {
                CloudError::from_osauth("could not reach Glance to create the image", &e)
            })?;
        let response = check(response, |status| match status {
            403 if public => "Glance refused to create a public image: this cloud account may not publish \
                              public images (publish with publicImage=false, or ask the cloud administrator)"
                .to_string(),
            403 => "Glance refused to create the image (forbidden)".into(),
            400 => format!("Glance refused the image definition (disk format '{disk_format}', name '{name}')"),
            413 => "Glance refused the image: quota exceeded".into(),
            s => format!("Glance failed to create the image (HTTP {s})"),
        })
        .await?;
        response
            .json::<GlanceImage>()
            .await
            .map_err(|e| CloudError {
                summary: "Glance answered the image creation with something unreadable".into(),
                detail: Some(e.to_string()),
                cause: Cause::BadAnswer,
            })
    }

    /// Streams `body` (exactly `length` bytes) into the image. Sent with a Content-Length and
    /// no `Expect: 100-continue`: Glance behind uwsgi refuses large chunks and never answers 100.
    pub async fn upload(
        &self,
        image_id: &str,
        body: reqwest::Body,
        length: u64,
    ) -> Result<(), CloudError> {
        let response = self
            .session
            .put(IMAGE, &["images", image_id, "file"])
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length)
            .body(body)
            .send_unchecked()
            .await
            .map_err(|e| CloudError::from_osauth("the upload to Glance was cut off", &e))?;
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
        .map(|_| ())
    }

    /// Reads an image back (status, checksum, size) through the `openstack` crate.
    pub async fn image(&self, image_id: &str) -> Result<GlanceImage, CloudError> {
        let cloud = openstack::Cloud::from(self.session.clone());
        let image = cloud.get_image(image_id).await.map_err(|e| {
            CloudError::from_osauth(format!("could not read Glance image {image_id}"), &e)
        })?;
        Ok(GlanceImage {
            id: image.id().clone(),
            status: image.status().to_string(),
            checksum: image.checksum().clone(),
            size: image.size(),
            ticket_key: None,
        })
    }

    /// Deletes an image; an image that is already gone counts as deleted.
    pub async fn delete_image(&self, image_id: &str) -> Result<(), CloudError> {
        let response = self
            .session
            .delete(IMAGE, &["images", image_id])
            .timeout(CALL_TIMEOUT)
            .header(ACCEPT, "application/json")
            .send_unchecked()
            .await
            .map_err(|e| {
                CloudError::from_osauth(
                    format!("could not reach Glance to delete image {image_id}"),
                    &e,
                )
            })?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(response, |s| {
            format!("Glance refused to delete image {image_id} (HTTP {s})")
        })
        .await
        .map(|_| ())
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
        let response = self
            .session
            .get(IMAGE, &["images"])
            .timeout(CALL_TIMEOUT)
            .header(ACCEPT, "application/json")
            .query(&[(property, value), ("limit", "1000")])
            .send_unchecked()
            .await
            .map_err(|e| CloudError::from_osauth("could not reach Glance to list images", &e))?;
        let response = check(response, |s| {
            format!("Glance failed to list images (HTTP {s})")
        })
        .await?;
        response
            .json::<Page>()
            .await
            .map(|p| p.images)
            .map_err(|e| CloudError {
                summary: "Glance answered the image list with something unreadable".into(),
                detail: Some(e.to_string()),
                cause: Cause::BadAnswer,
            })
    }
}
