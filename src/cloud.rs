//! OpenStack: Keystone v3 login (osauth), Glance v2 image create / upload / delete through
//! the osauth session, and reading an image back with the `openstack` crate.

use std::time::Duration;

use osauth::common::IdOrName;
use osauth::identity::Password;
use osauth::services::IMAGE;
use osauth::{ErrorKind, Session};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use serde::Deserialize;

use crate::secrets::Secret;

/// Glance property naming the ticket an image belongs to: a retried job finds its image by it.
pub const TICKET_PROPERTY: &str = "pimage_ticket";

/// Where and as whom to publish (a `CredAccountOpenStack` plus the project scope).
#[derive(Debug, Clone)]
pub struct OpenStackAccount {
    pub keystone_url: String,
    pub glance_url: Option<String>,
    pub user: String,
    pub password: Secret,
    pub domain: String,
    pub project: String,
}

/// A failure talking to the cloud: `summary` is for the user, `detail` is the cloud's answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{summary}")]
pub struct CloudError {
    pub summary: String,
    pub detail: Option<String>,
    pub kind: Option<ErrorKind>,
}

impl CloudError {
    fn new(summary: impl Into<String>, err: &osauth::Error) -> CloudError {
        CloudError {
            summary: summary.into(),
            detail: Some(err.to_string()),
            kind: Some(err.kind()),
        }
    }
}

/// A logged-in session on one project.
#[derive(Clone)]
pub struct Glance {
    session: Session,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GlanceImage {
    pub id: String,
    pub status: String,
    pub checksum: Option<String>,
    pub size: Option<u64>,
}

impl Glance {
    /// Logs in to Keystone v3 (user in `domain`, scoped to `project` in the same domain).
    pub async fn login(account: &OpenStackAccount) -> Result<Glance, CloudError> {
        let who = format!(
            "user '{}' in domain '{}' for project '{}'",
            account.user, account.domain, account.project
        );
        let auth = Password::new(
            &account.keystone_url,
            account.user.clone(),
            account.password.expose(),
            account.domain.clone(),
        )
        .map_err(|e| {
            CloudError::new(
                format!("invalid keystoneUrl '{}'", account.keystone_url),
                &e,
            )
        })?
        .with_project_scope(
            IdOrName::from_name(account.project.clone()),
            IdOrName::from_name(account.domain.clone()),
        );
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A few calls per ticket: a fresh connection each costs nothing next to the upload,
            // and never races a server (uwsgi http-socket) that closes idle connections.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| CloudError {
                summary: "could not set up an HTTP client".into(),
                detail: Some(e.to_string()),
                kind: None,
            })?;
        let mut session = Session::new_with_client(client, auth).await.map_err(|e| {
            let summary = match e.kind() {
                ErrorKind::AuthenticationFailed => format!(
                    "Keystone refused the login of {who}: wrong cloud password or user name, \
                     or the project does not exist or the user has no role in it"
                ),
                ErrorKind::AccessDenied => format!("Keystone denied access to {who}"),
                ErrorKind::ResourceNotFound => format!(
                    "no Keystone v3 identity service at '{}' (check keystoneUrl)",
                    account.keystone_url
                ),
                _ => format!(
                    "could not log in to Keystone at '{}' as {who}",
                    account.keystone_url
                ),
            };
            CloudError::new(summary, &e)
        })?;
        if let Some(url) = &account.glance_url {
            let url = url::Url::parse(url).map_err(|e| CloudError {
                summary: format!("invalid glanceUrl '{url}'"),
                detail: Some(e.to_string()),
                kind: None,
            })?;
            session.set_endpoint_override(IMAGE, url);
        }
        Ok(Glance { session })
    }

    /// Creates an empty (queued) image carrying the ticket property.
    pub async fn create_image(
        &self,
        name: &str,
        disk_format: &str,
        public: bool,
        ticket_key: &str,
    ) -> Result<GlanceImage, CloudError> {
        let body = serde_json::json!({
            "name": name,
            "disk_format": disk_format,
            "container_format": "bare",
            "visibility": if public { "public" } else { "private" },
            TICKET_PROPERTY: ticket_key,
        });
        self.session
            .post(IMAGE, &["images"])
            .header(ACCEPT, "application/json")
            .json(&body)
            .fetch::<GlanceImage>()
            .await
            .map_err(|e| {
                let summary = match e.kind() {
                    ErrorKind::AccessDenied if public => {
                        "Glance refused to create a public image: this cloud account may not \
                         publish public images (publish it with publicImage=false, or ask the \
                         cloud administrator)"
                            .to_string()
                    }
                    ErrorKind::AccessDenied => {
                        "Glance refused to create the image (forbidden)".into()
                    }
                    ErrorKind::InvalidInput => {
                        format!("Glance refused the image definition (disk format '{disk_format}')")
                    }
                    _ => "Glance could not create the image".into(),
                };
                CloudError::new(summary, &e)
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
        self.session
            .put(IMAGE, &["images", image_id, "file"])
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let summary = match e.kind() {
                    ErrorKind::InvalidInput | ErrorKind::IncompatibleApiVersion => {
                        "Glance refused the image data (does the file match its format?)"
                            .to_string()
                    }
                    ErrorKind::AccessDenied => {
                        "Glance refused the upload (forbidden or quota)".into()
                    }
                    _ => "the upload to Glance failed".into(),
                };
                CloudError::new(summary, &e)
            })
    }

    /// Reads an image back (status, checksum, size) through the `openstack` crate.
    pub async fn image(&self, image_id: &str) -> Result<GlanceImage, CloudError> {
        let cloud = openstack::Cloud::from(self.session.clone());
        let image = cloud
            .get_image(image_id)
            .await
            .map_err(|e| CloudError::new(format!("could not read Glance image {image_id}"), &e))?;
        Ok(GlanceImage {
            id: image.id().clone(),
            status: image.status().to_string(),
            checksum: image.checksum().clone(),
            size: image.size(),
        })
    }

    /// Deletes an image; an image that is already gone counts as deleted.
    pub async fn delete_image(&self, image_id: &str) -> Result<(), CloudError> {
        match self
            .session
            .delete(IMAGE, &["images", image_id])
            .header(ACCEPT, "application/json")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::ResourceNotFound => Ok(()),
            Err(e) => Err(CloudError::new(
                format!("could not delete Glance image {image_id}"),
                &e,
            )),
        }
    }

    /// Ids of the images carrying this ticket's property.
    pub async fn images_of_ticket(&self, ticket_key: &str) -> Result<Vec<GlanceImage>, CloudError> {
        #[derive(Deserialize)]
        struct Page {
            images: Vec<GlanceImage>,
        }
        self.session
            .get(IMAGE, &["images"])
            .header(ACCEPT, "application/json")
            .query(&[(TICKET_PROPERTY, ticket_key)])
            .fetch::<Page>()
            .await
            .map(|p| p.images)
            .map_err(|e| CloudError::new("could not list Glance images", &e))
    }
}
