//! What the API sends: one struct per schema type, fields in schema order (inherited
//! fields first), serialised as JSON directly and as XML through `xml::to_xml`. Each derives
//! its OpenAPI schema (`openapi.rs`); `Option` fields are always sent (`null`), so required.
//! A few fields are JSON-only extras (`Document::with_json_field`): the XML answers keep to
//! the UForge schema.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde::Serialize;
use utoipa::ToSchema;

use super::xml;
use crate::store::attempts::Attempt;
use crate::store::{Image, Ticket, TicketState};

/// The answer format, from `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xml,
    Json,
}

impl Format {
    /// XML where `Accept` is absent or accepts anything; `None` when it accepts neither.
    pub fn from_accept(headers: &HeaderMap) -> Option<Format> {
        let Some(accept) = headers.get(header::ACCEPT) else {
            return Some(Format::Xml);
        };
        let accept = accept.to_str().ok()?;
        // Media ranges in order of preference (q values, then position).
        let mut ranges: Vec<(f32, usize, String)> = accept
            .split(',')
            .enumerate()
            .map(|(i, part)| {
                let mut params = part.split(';');
                let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
                let q = params
                    .filter_map(|p| {
                        p.trim()
                            .strip_prefix("q=")
                            .and_then(|q| q.parse::<f32>().ok())
                    })
                    .next()
                    .unwrap_or(1.0);
                (q, i, media)
            })
            .filter(|(q, _, media)| *q > 0.0 && !media.is_empty())
            .collect();
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranges
            .into_iter()
            .find_map(|(_, _, media)| match media.as_str() {
                "application/xml" | "text/xml" | "*/*" | "application/*" => Some(Format::Xml),
                "application/json" => Some(Format::Json),
                _ => None,
            })
    }
}

/// A document ready to send: the root element name and the serialisable body.
pub struct Document<T: Serialize> {
    pub root: &'static str,
    pub body: T,
    /// Fields added to the JSON form only.
    json_fields: Vec<(&'static str, serde_json::Value)>,
}

impl<T: Serialize> Document<T> {
    pub fn new(root: &'static str, body: T) -> Document<T> {
        Document {
            root,
            body,
            json_fields: Vec::new(),
        }
    }

    /// Adds a field to the JSON answer, not to the XML one (the UForge schema has no place
    /// for it).
    pub fn with_json_field(mut self, name: &'static str, value: impl Serialize) -> Document<T> {
        let value = serde_json::to_value(value).expect("wire types always serialise");
        self.json_fields.push((name, value));
        self
    }

    pub fn render(&self, format: Format, status: StatusCode) -> Response {
        let mut value = serde_json::to_value(&self.body).expect("wire types always serialise");
        match format {
            // Exactly `application/xml`: the UForge SDK compares the header verbatim.
            Format::Xml => (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/xml"),
                )],
                xml::to_xml(self.root, &value),
            )
                .into_response(),
            Format::Json => {
                if let Some(object) = value.as_object_mut() {
                    for (name, extra) in &self.json_fields {
                        object.insert((*name).to_string(), extra.clone());
                    }
                }
                (
                    status,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    value.to_string(),
                )
                    .into_response()
            }
        }
    }

    /// A `200` with an `ETag`, or `304` when the client's `If-None-Match` names it.
    pub fn render_cached(&self, format: Format, digest: &str, request: &HeaderMap) -> Response {
        // The ETag is the object's digest (the contract); `Vary: Accept` keeps caches from
        // mixing its XML and JSON forms.
        let etag = format!("\"{digest}\"");
        let matches = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let mut response = if matches {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            self.render(format, StatusCode::OK)
        };
        if let Ok(v) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, v);
        }
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept"));
        response
    }
}

pub fn digest_of(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn ticket_digest(t: &Ticket) -> String {
    digest_of(&[&t.id.to_string(), &t.updated_at.to_rfc3339()])
}

fn image_digest(i: &Image) -> String {
    digest_of(&[&i.id.to_string(), &i.updated_at.to_rfc3339()])
}

/// `OpStatus`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Status)]
pub struct OpStatus {
    pub created: DateTime<Utc>,
    pub db_id: i64,
    pub digest: String,
    pub last_modified: DateTime<Utc>,
    #[schema(minimum = 0)]
    pub bytes_loaded: i64,
    #[schema(minimum = 0)]
    pub bytes_total: i64,
    pub cancelled: bool,
    pub complete: bool,
    pub detailed_error: bool,
    #[schema(required = true)]
    pub detailed_error_msg: Option<String>,
    pub error: bool,
    #[schema(required = true)]
    pub error_message: Option<String>,
    #[schema(required = true)]
    pub eta: Option<DateTime<Utc>>,
    pub message: String,
    pub parent_uri: String,
    #[schema(minimum = 0, maximum = 100)]
    pub percentage: i32,
    pub published: bool,
    /// A duration carried as a date after the epoch, as UForge's Java server writes it.
    #[schema(required = true)]
    pub total_time: Option<DateTime<Utc>>,
    pub uri: String,
}

impl OpStatus {
    pub fn of(t: &Ticket) -> OpStatus {
        let total_time = t
            .finished_at
            .zip(t.started_at.or(Some(t.created_at)))
            .map(|(end, start)| DateTime::<Utc>::UNIX_EPOCH + (end - start));
        OpStatus {
            created: t.created_at,
            db_id: t.id,
            digest: ticket_digest(t),
            last_modified: t.updated_at,
            bytes_loaded: t.bytes_loaded,
            bytes_total: t.bytes_total,
            cancelled: t.state == TicketState::Cancelled,
            complete: t.state == TicketState::Complete,
            detailed_error: t.detailed_error_msg.is_some(),
            detailed_error_msg: t.detailed_error_msg.clone(),
            error: t.state == TicketState::Error,
            error_message: t.error_message.clone(),
            eta: t.eta,
            message: t.message.clone(),
            parent_uri: t.uri(),
            percentage: t.percentage,
            published: t.state == TicketState::Complete,
            total_time,
            uri: format!("{}/status", t.uri()),
        }
    }
}

/// `secretsMissing` is always `true`: answers never carry the cloud password.
fn always_true() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Boolean)
        .enum_values(Some([true]))
        .build()
}

/// `TargetPlatform` (only its name and type are known here).
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetPlatform {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `CredAccountOpenStack`, without the password.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CredAccountAnswer)]
pub struct CredAccount {
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(inline)]
    pub target_platform: TargetPlatform,
    #[schema(schema_with = always_true)]
    pub secrets_missing: bool,
    #[schema(required = true)]
    pub glance_url: Option<String>,
    pub keystone_url: String,
    pub login: String,
    pub keystone_version: String,
}

/// One attempt at a ticket, in the JSON answers only (`attempts`; not in the UForge schema,
/// so not in the OpenAPI document either). `outcome` is `null` while it runs: then
/// published, failed, cancelled, retried, lost or released. `worker` is an opaque id;
/// only administrators get `workerHost` (host:pid, a container id in compose).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptDoc {
    pub number: i32,
    pub worker: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_host: Option<String>,
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub bytes_sent: i64,
}

impl AttemptDoc {
    /// The attempts as `caller_is_admin` may see them.
    pub fn list(attempts: &[Attempt], caller_is_admin: bool) -> Vec<AttemptDoc> {
        attempts
            .iter()
            .map(|a| AttemptDoc {
                number: a.number,
                worker: a.worker_ref.clone(),
                worker_host: caller_is_admin.then(|| a.worker.clone()),
                started: a.started_at,
                ended: a.ended_at,
                outcome: a.outcome.clone(),
                error: a.error.clone(),
                bytes_sent: a.bytes_sent,
            })
            .collect()
    }
}

/// `PublishImageOpenStack`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishImage {
    pub created: DateTime<Utc>,
    pub db_id: i64,
    pub digest: String,
    pub last_modified: DateTime<Utc>,
    pub status: OpStatus,
    pub parent_uri: String,
    pub cred_account: CredAccount,
    pub name: String,
    pub status_uri: String,
    pub uri: String,
    #[schema(required = true)]
    pub cloud_id: Option<String>,
    pub image_uri: String,
    pub keystone_domain: String,
    pub keystone_project: String,
    pub display_name: String,
    pub public_image: bool,
}

impl PublishImage {
    pub fn of(t: &Ticket) -> PublishImage {
        PublishImage {
            created: t.created_at,
            db_id: t.id,
            digest: ticket_digest(t),
            last_modified: t.updated_at,
            status: OpStatus::of(t),
            parent_uri: t.image_uri(),
            cred_account: CredAccount {
                name: t.account_name.clone(),
                target_platform: TargetPlatform {
                    name: "openstack",
                    kind: "openstack",
                },
                secrets_missing: true,
                glance_url: t.glance_url.clone(),
                keystone_url: t.keystone_url.clone(),
                login: t.cloud_login.clone(),
                keystone_version: t.keystone_version.clone(),
            },
            name: t.display_name.clone(),
            status_uri: format!("{}/status", t.uri()),
            uri: t.uri(),
            // Only a published ticket names its cloud image: before that the id is internal.
            cloud_id: (t.state == TicketState::Complete)
                .then(|| t.cloud_id.clone())
                .flatten(),
            image_uri: t.image_uri(),
            keystone_domain: t.keystone_domain.clone(),
            keystone_project: t.keystone_project.clone(),
            display_name: t.display_name.clone(),
            public_image: t.public_image,
        }
    }

    pub fn document(t: &Ticket) -> (Document<PublishImage>, String) {
        (
            Document::new("publishImage", PublishImage::of(t)),
            ticket_digest(t),
        )
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishImageList {
    pub publish_image: Vec<PublishImage>,
}

/// `PublishImages`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishImages {
    pub total: usize,
    #[schema(inline)]
    pub publish_images: PublishImageList,
}

impl PublishImages {
    pub fn document(tickets: &[Ticket]) -> (Document<PublishImages>, String) {
        let digests: Vec<String> = tickets.iter().map(ticket_digest).collect();
        let digest = digest_of(&digests.iter().map(String::as_str).collect::<Vec<_>>());
        let body = PublishImages {
            total: tickets.len(),
            publish_images: PublishImageList {
                publish_image: tickets.iter().map(PublishImage::of).collect(),
            },
        };
        (Document::new("publishImages", body), digest)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpStatusList {
    pub status: Vec<OpStatus>,
}

/// `OpStatuses`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Statuses)]
pub struct OpStatuses {
    pub total: usize,
    #[schema(inline)]
    pub statuses: OpStatusList,
}

impl OpStatuses {
    pub fn document(tickets: &[Ticket]) -> (Document<OpStatuses>, String) {
        let digests: Vec<String> = tickets.iter().map(ticket_digest).collect();
        let digest = digest_of(&digests.iter().map(String::as_str).collect::<Vec<_>>());
        let body = OpStatuses {
            total: tickets.len(),
            statuses: OpStatusList {
                status: tickets.iter().map(OpStatus::of).collect(),
            },
        };
        (Document::new("statuses", body), digest)
    }
}

/// `ImageFormat` (its name from the schema's enumeration).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageFormat {
    pub name: &'static str,
}

/// The schema's format name for a Glance disk format.
fn format_name(disk_format: &str) -> &'static str {
    match disk_format {
        "qcow2" => "qcow2",
        "vhd" => "vhd",
        "vmdk" => "openstackvmdk",
        "vdi" => "openstackvdi",
        "vhdx" => "openstackvhd",
        "iso" => "ISO",
        _ => "raw",
    }
}

/// `Image`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Image)]
pub struct ImageDoc {
    pub created: DateTime<Utc>,
    pub db_id: i64,
    pub digest: String,
    pub last_modified: DateTime<Utc>,
    pub md5sum: String,
    pub sha256sum: String,
    pub size: i64,
    pub parent_uri: String,
    pub base_publish_images_uri: String,
    pub file_name: String,
    pub file_size: i64,
    #[schema(inline)]
    pub format: ImageFormat,
    pub image_created: bool,
    pub name: String,
    pub uri: String,
}

impl ImageDoc {
    pub fn of(i: &Image) -> ImageDoc {
        ImageDoc {
            created: i.created_at,
            db_id: i.id,
            digest: image_digest(i),
            last_modified: i.updated_at,
            md5sum: i.md5sum.clone(),
            sha256sum: i.sha256sum.clone(),
            size: i.size_bytes,
            parent_uri: format!(
                "users/{}/scannedinstances/{}/scans/{}",
                i.owner_login, i.scanned_instance_id, i.scan_id
            ),
            base_publish_images_uri: format!("{}/pimages", i.uri()),
            file_name: i.file_name.clone(),
            file_size: i.size_bytes,
            format: ImageFormat {
                name: format_name(&i.format),
            },
            image_created: true,
            name: i.name.clone(),
            uri: i.uri(),
        }
    }

    pub fn document(i: &Image) -> (Document<ImageDoc>, String) {
        (Document::new("image", ImageDoc::of(i)), image_digest(i))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageList {
    pub image: Vec<ImageDoc>,
}

/// `Images`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Images {
    pub total: usize,
    #[schema(inline)]
    pub images: ImageList,
}

impl Images {
    pub fn document(images: &[Image]) -> (Document<Images>, String) {
        let digests: Vec<String> = images.iter().map(image_digest).collect();
        let digest = digest_of(&digests.iter().map(String::as_str).collect::<Vec<_>>());
        let body = Images {
            total: images.len(),
            images: ImageList {
                image: images.iter().map(ImageDoc::of).collect(),
            },
        };
        (Document::new("images", body), digest)
    }
}

/// `ServiceStatus`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceStatus {
    pub alive: bool,
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LocalizedMessage {
    pub message: String,
}

/// `UForgeError`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UForgeError {
    #[schema(inline)]
    pub localized_error_msg: LocalizedMessage,
    pub request_method: String,
    pub request_uri: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status_code: u16,
    pub timestamp: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Option<Format> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        Format::from_accept(&h)
    }

    #[test]
    fn negotiates_the_answer_format() {
        assert_eq!(Format::from_accept(&HeaderMap::new()), Some(Format::Xml));
        assert_eq!(accept("*/*"), Some(Format::Xml));
        assert_eq!(accept("application/json"), Some(Format::Json));
        assert_eq!(
            accept("text/html, application/json;q=0.9"),
            Some(Format::Json)
        );
        assert_eq!(
            accept("application/xml;q=0.5, application/json"),
            Some(Format::Json)
        );
        assert_eq!(
            accept("application/json;q=0, application/xml"),
            Some(Format::Xml)
        );
        assert_eq!(accept("text/html"), None);
    }
}
