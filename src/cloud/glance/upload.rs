//! The image's bytes streamed to Glance (`PUT …/file`, or `…/stage` for an import).

use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Response;

use super::copies::unknown_store;
use super::quota::quota_refusal;
use super::Glance;
use crate::cloud::error::{check, CloudError};

impl Glance {
    /// Streams `body` (exactly `length` bytes) into the image. Sent with a Content-Length and
    /// no `Expect: 100-continue`: Glance behind uwsgi refuses large chunks and never answers 100.
    /// No time limit here: the upload's own watchdog (worker::upload) bounds it. `store`: the
    /// Glance store to write to (`x-image-meta-store`); `None`, Glance's default one.
    pub async fn upload(
        &self,
        image_id: &str,
        body: reqwest::Body,
        length: u64,
        store: Option<&str>,
    ) -> Result<(), CloudError> {
        let response = self
            .put_bytes(
                image_id,
                "file",
                (body, length),
                store,
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
        .map_err(|e| unknown_store(e, store))
        .map(|_| ())
    }

    /// Streams `body` (exactly `length` bytes) to `…/images/{id}/{target}` (`file` or
    /// `stage`), into `store` if named, with the session's current token; the answer is the
    /// caller's to check.
    pub(super) async fn put_bytes(
        &self,
        image_id: &str,
        target: &str,
        (body, length): (reqwest::Body, u64),
        store: Option<&str>,
        cut_off: &str,
    ) -> Result<Response, CloudError> {
        let token = self.session.token().await?;
        let mut request = self
            .session
            .client
            .put(self.url(&["images", image_id, target]));
        if let Some(store) = store {
            request = request.header("x-image-meta-store", store);
        }
        request
            .header("x-auth-token", token.expose())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length)
            // Glance's own size header: the size is known before a byte arrives, even where
            // a proxy between re-chunks the body and drops Content-Length.
            .header("x-openstack-image-size", length)
            .body(body)
            .send()
            .await
            .map_err(|e| CloudError::sending(cut_off, &e))
    }
}
