//! What the API sends: one struct per schema type, fields in schema order (inherited
//! fields first), serialised as JSON directly and as XML through `xml::to_xml`. Each derives
//! its OpenAPI schema (`openapi.rs`); `Option` fields are always sent (`null`), so required.
//! A few fields are JSON-only extras (`Document::with_json_field`): the XML answers keep to
//! the UForge schema.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::xml;
use crate::store::accounts::CloudAccount;
use crate::store::attempts::Attempt;
use crate::store::groups::{Group, GroupPolicy};
use crate::store::images::{Scan, ScannedInstance};
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

/// A list's digest: of its items' digests, in order.
fn digest_of_each<T>(items: &[T], digest: impl Fn(&T) -> String) -> String {
    let digests: Vec<String> = items.iter().map(digest).collect();
    digest_of(&digests.iter().map(String::as_str).collect::<Vec<_>>())
}

fn ticket_digest(t: &Ticket) -> String {
    digest_of(&[&t.id.to_string(), &t.updated_at.to_rfc3339()])
}

fn image_digest(i: &Image) -> String {
    digest_of(&[&i.id.to_string(), &i.updated_at.to_rfc3339()])
}

/// `OpStatus`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetPlatform {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `CredAccountOpenStack`, without the password.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, Deserialize)]
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    /// The region asked for, when one was (UForge's field for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_location: Option<String>,
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
                    name: "openstack".into(),
                    kind: "openstack".into(),
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
            publish_location: t.publish_location.clone(),
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

/// A publication group (a pimage extension): its targets' tickets, each an ordinary
/// `publishImage`, and their aggregate.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishGroup {
    pub db_id: i64,
    pub uri: String,
    pub image_uri: String,
    pub created: DateTime<Utc>,
    /// `all` or `each`.
    pub policy: String,
    /// queued, running, complete, partial (`each`: some targets failed), error or cancelled.
    pub state: String,
    #[schema(minimum = 0, maximum = 100)]
    pub percentage: i32,
    pub bytes_loaded: i64,
    pub bytes_total: i64,
    pub total: usize,
    pub complete: usize,
    #[schema(inline)]
    pub targets: GroupTargetList,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupTargetList {
    pub target: Vec<GroupTarget>,
}

/// One target of a group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupTarget {
    /// queued, running, complete, error or cancelled.
    pub state: String,
    /// The Glance store asked for (none: the Glance's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The target whose image this one copies server-side (`dbId`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies_from: Option<i64>,
    #[schema(required = true)]
    pub cloud_id: Option<String>,
    pub publish_image: PublishImage,
}

impl PublishGroup {
    pub fn document(group: &Group, children: &[Ticket]) -> (Document<PublishGroup>, String) {
        let digest = digest_of_each(children, ticket_digest);
        let count = |state| children.iter().filter(|t| t.state == state).count();
        let sum = |f: fn(&Ticket) -> i64| children.iter().map(f).sum::<i64>();
        let percentage = match children.len() {
            0 => 0,
            n => children.iter().map(|t| t.percentage).sum::<i32>() / n as i32,
        };
        let body = PublishGroup {
            db_id: group.id,
            uri: format!("users/{}/pimagegroups/{}", group.owner_login, group.id),
            image_uri: children.first().map(Ticket::image_uri).unwrap_or_default(),
            created: group.created_at,
            policy: group.policy.as_str().into(),
            state: group_state(group.policy, children).into(),
            percentage,
            bytes_loaded: sum(|t| t.bytes_loaded),
            bytes_total: sum(|t| t.bytes_total),
            total: children.len(),
            complete: count(TicketState::Complete),
            targets: GroupTargetList {
                target: children.iter().map(GroupTarget::of).collect(),
            },
        };
        (Document::new("publishGroup", body), digest)
    }
}

impl GroupTarget {
    fn of(t: &Ticket) -> GroupTarget {
        let publish_image = PublishImage::of(t);
        GroupTarget {
            state: t.state.as_str().into(),
            store: t.glance_store.clone(),
            copies_from: t.copies_from,
            cloud_id: publish_image.cloud_id.clone(),
            publish_image,
        }
    }
}

/// A group's state from its targets': unfinished while any is; `complete` when all are;
/// under `each`, `partial` when some completed and others did not.
fn group_state(policy: GroupPolicy, children: &[Ticket]) -> &'static str {
    let has = |state| children.iter().any(|t| t.state == state);
    let all = |state| children.iter().all(|t| t.state == state);
    if has(TicketState::Running) || (has(TicketState::Queued) && !all(TicketState::Queued)) {
        "running"
    } else if all(TicketState::Queued) && !children.is_empty() {
        "queued"
    } else if all(TicketState::Complete) {
        "complete"
    } else if policy == GroupPolicy::Each && has(TicketState::Complete) {
        "partial"
    } else if has(TicketState::Error) {
        "error"
    } else {
        "cancelled"
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishImageList {
    pub publish_image: Vec<PublishImage>,
}

/// `PublishImages`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishImages {
    pub total: usize,
    #[schema(inline)]
    pub publish_images: PublishImageList,
}

impl PublishImages {
    pub fn document(tickets: &[Ticket]) -> (Document<PublishImages>, String) {
        let digest = digest_of_each(tickets, ticket_digest);
        let body = PublishImages {
            total: tickets.len(),
            publish_images: PublishImageList {
                publish_image: tickets.iter().map(PublishImage::of).collect(),
            },
        };
        (Document::new("publishImages", body), digest)
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpStatusList {
    pub status: Vec<OpStatus>,
}

/// `OpStatuses`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Statuses)]
pub struct OpStatuses {
    pub total: usize,
    #[schema(inline)]
    pub statuses: OpStatusList,
}

impl OpStatuses {
    pub fn document(tickets: &[Ticket]) -> (Document<OpStatuses>, String) {
        let digest = digest_of_each(tickets, ticket_digest);
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageFormat {
    pub name: String,
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

/// The UForge target format an image of this Glance disk format is published as: its name
/// (hammr matches it to a publish file's builder `type`) and its format's name (hammr calls
/// `publish_<name>`). UForge has no OpenStack target for the other formats: they are named
/// for what they are ("OpenStack RAW"), with the QCOW2 format's name, whose hammr publisher
/// is the same OpenStack one; the image's `format` keeps the real format.
fn target_format(disk_format: &str) -> (String, &'static str) {
    match disk_format {
        "qcow2" => ("OpenStack QCOW2".into(), "openstackqcow2"),
        "vhd" | "vhdx" => ("OpenStack VHD".into(), "openstackvhd"),
        "vmdk" => ("OpenStack VMDK".into(), "openstackvmdk"),
        "vdi" => ("OpenStack VDI".into(), "openstackvdi"),
        other => (
            format!("OpenStack {}", other.to_uppercase()),
            "openstackqcow2",
        ),
    }
}

/// `TargetFormat` (what hammr reads of it).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetFormat {
    pub name: String,
    #[schema(inline)]
    pub format: ImageFormat,
    #[serde(rename = "type")]
    pub kind: String,
    pub cred_account_type: String,
}

impl TargetFormat {
    fn of(disk_format: &str) -> TargetFormat {
        let (name, format) = target_format(disk_format);
        TargetFormat {
            name,
            format: ImageFormat {
                name: format.into(),
            },
            kind: "cloud".into(),
            cred_account_type: "openstack".into(),
        }
    }
}

/// The status of something pimage holds complete (a registered image, a scan): UForge's
/// "generated", so hammr lists it as done and lets it be published.
fn complete_status(
    db_id: i64,
    at: DateTime<Utc>,
    digest: String,
    bytes: i64,
    owner_uri: String,
) -> OpStatus {
    OpStatus {
        created: at,
        db_id,
        digest,
        last_modified: at,
        bytes_loaded: bytes,
        bytes_total: bytes,
        cancelled: false,
        complete: true,
        detailed_error: false,
        detailed_error_msg: None,
        error: false,
        error_message: None,
        eta: None,
        message: "complete".into(),
        parent_uri: owner_uri.clone(),
        percentage: 100,
        published: false,
        total_time: None,
        // No status route of its own: its holder's.
        uri: owner_uri,
    }
}

/// `Image`: a registered file, complete and uncompressed (ready to publish, not to
/// download). `version` is always "1" (a registered file has no versions); `revision` is its
/// place among its scan's images.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    pub status: OpStatus,
    pub parent_uri: String,
    pub base_publish_images_uri: String,
    pub compress: bool,
    pub file_name: String,
    pub file_size: i64,
    #[schema(inline)]
    pub format: ImageFormat,
    #[schema(inline)]
    pub target_format: TargetFormat,
    pub image_created: bool,
    pub name: String,
    pub revision: i64,
    pub uri: String,
    pub version: String,
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
            status: complete_status(i.id, i.updated_at, image_digest(i), i.size_bytes, i.uri()),
            parent_uri: format!(
                "users/{}/scannedinstances/{}/scans/{}",
                i.owner_login, i.scanned_instance_id, i.scan_id
            ),
            base_publish_images_uri: format!("{}/pimages", i.uri()),
            compress: false,
            file_name: i.file_name.clone(),
            file_size: i.size_bytes,
            format: ImageFormat {
                name: format_name(&i.format).to_string(),
            },
            target_format: TargetFormat::of(&i.format),
            image_created: true,
            name: i.name.clone(),
            revision: i.revision,
            uri: i.uri(),
            version: "1".into(),
        }
    }

    pub fn document(i: &Image) -> (Document<ImageDoc>, String) {
        (Document::new("image", ImageDoc::of(i)), image_digest(i))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub image: Vec<ImageDoc>,
}

/// `Images`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Images {
    pub total: usize,
    #[schema(inline)]
    pub images: ImageList,
}

impl Images {
    pub fn document(images: &[Image]) -> (Document<Images>, String) {
        let digest = digest_of_each(images, image_digest);
        let body = Images {
            total: images.len(),
            images: ImageList {
                image: images.iter().map(ImageDoc::of).collect(),
            },
        };
        (Document::new("images", body), digest)
    }
}

fn scan_digest(s: &Scan) -> String {
    digest_of(&[&s.id.to_string(), &s.created_at.to_rfc3339()])
}

/// `Scan`: a scan pimage holds is complete. `images` only in the answer of one scan.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Scan)]
pub struct ScanDoc {
    pub created: DateTime<Utc>,
    pub db_id: i64,
    pub digest: String,
    pub last_modified: DateTime<Utc>,
    pub images_uri: String,
    pub name: String,
    pub scanned: bool,
    pub scanned_instance_uri: String,
    pub status: OpStatus,
    pub uri: String,
    #[schema(inline, required = true)]
    pub images: Option<ImageList>,
}

impl ScanDoc {
    pub fn of(s: &Scan, images: Option<&[Image]>) -> ScanDoc {
        ScanDoc {
            created: s.created_at,
            db_id: s.id,
            digest: scan_digest(s),
            last_modified: s.created_at,
            images_uri: format!("{}/images", s.uri()),
            name: s.name.clone(),
            scanned: true,
            scanned_instance_uri: format!(
                "users/{}/scannedinstances/{}",
                s.owner_login, s.scanned_instance_id
            ),
            status: complete_status(s.id, s.created_at, scan_digest(s), 0, s.uri()),
            uri: s.uri(),
            images: images.map(|list| ImageList {
                image: list.iter().map(ImageDoc::of).collect(),
            }),
        }
    }

    /// One scan with its images; the digest covers both.
    pub fn document(s: &Scan, images: &[Image]) -> (Document<ScanDoc>, String) {
        let mut parts = vec![scan_digest(s)];
        parts.extend(images.iter().map(image_digest));
        let digest = digest_of(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        (Document::new("scan", ScanDoc::of(s, Some(images))), digest)
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScanList {
    pub scan: Vec<ScanDoc>,
}

/// `Distribution`: the operating system of a scanned instance (schema order).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DistributionDoc {
    pub arch: String,
    pub name: String,
    pub version: String,
}

/// `ScannedInstance`. Its `scans` only when asked for (`includeScans`, or one instance);
/// `distribution` only when known (registered with `--os`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ScannedInstance)]
pub struct ScannedInstanceDoc {
    pub created: DateTime<Utc>,
    pub db_id: i64,
    pub digest: String,
    pub last_modified: DateTime<Utc>,
    #[schema(inline, required = true)]
    pub distribution: Option<DistributionDoc>,
    pub name: String,
    pub parent_uri: String,
    pub overlay_included: bool,
    #[schema(inline, required = true)]
    pub scans: Option<ScanList>,
    pub scans_uri: String,
    pub total_scans: usize,
    pub uri: String,
}

impl ScannedInstanceDoc {
    /// `si` and its scans (those of `scans` that are its), listed when `with_scans`.
    fn of(si: &ScannedInstance, scans: &[Scan], with_scans: bool) -> ScannedInstanceDoc {
        let own: Vec<&Scan> = scans
            .iter()
            .filter(|s| s.scanned_instance_id == si.id)
            .collect();
        ScannedInstanceDoc {
            created: si.created_at,
            db_id: si.id,
            digest: instance_digest(si, &own),
            last_modified: si.created_at,
            distribution: si.distribution().map(|d| DistributionDoc {
                arch: d.arch,
                name: d.name,
                version: d.version,
            }),
            name: si.name.clone(),
            parent_uri: format!("users/{}", si.owner_login),
            overlay_included: false,
            scans: with_scans.then(|| ScanList {
                scan: own.iter().map(|s| ScanDoc::of(s, None)).collect(),
            }),
            scans_uri: format!("{}/scans", si.uri()),
            total_scans: own.len(),
            uri: si.uri(),
        }
    }

    pub fn document(
        si: &ScannedInstance,
        scans: &[Scan],
    ) -> (Document<ScannedInstanceDoc>, String) {
        let doc = ScannedInstanceDoc::of(si, scans, true);
        let digest = doc.digest.clone();
        (Document::new("scannedInstance", doc), digest)
    }
}

fn instance_digest(si: &ScannedInstance, scans: &[&Scan]) -> String {
    let mut parts = vec![si.id.to_string(), si.created_at.to_rfc3339()];
    parts.extend(scans.iter().map(|s| scan_digest(s)));
    digest_of(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScannedInstanceList {
    pub scanned_instance: Vec<ScannedInstanceDoc>,
}

/// `ScannedInstances`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScannedInstances {
    pub total: usize,
    #[schema(inline)]
    pub scanned_instances: ScannedInstanceList,
}

impl ScannedInstances {
    pub fn document(
        instances: &[ScannedInstance],
        scans: &[Scan],
        with_scans: bool,
    ) -> (Document<ScannedInstances>, String) {
        let docs: Vec<ScannedInstanceDoc> = instances
            .iter()
            .map(|si| ScannedInstanceDoc::of(si, scans, with_scans))
            .collect();
        let mut parts: Vec<&str> = docs.iter().map(|d| d.digest.as_str()).collect();
        parts.push(if with_scans { "scans" } else { "" });
        let digest = digest_of(&parts);
        let body = ScannedInstances {
            total: docs.len(),
            scanned_instances: ScannedInstanceList {
                scanned_instance: docs,
            },
        };
        (Document::new("scannedInstances", body), digest)
    }
}

/// `ServiceStatus`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceStatus {
    pub alive: bool,
    pub version: String,
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

// ---- Cloud accounts (issue 25): `…/users/{uid}/accounts`, `…/targetplatforms` ----------

fn account_digest(a: &CloudAccount) -> String {
    digest_of(&[&a.id.to_string(), &a.updated_at.to_rfc3339()])
}

/// The one target platform: its name (as hammr's account files name it) and type.
pub const OPENSTACK_PLATFORM: (&str, &str) = ("OpenStack", "openstack");

/// `CredAccountOpenStack` as stored: never its password (`secretsMissing` is always true).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = StoredCredAccount)]
pub struct StoredAccount {
    pub created: DateTime<Utc>,
    pub db_id: i64,
    pub digest: String,
    pub last_modified: DateTime<Utc>,
    pub name: String,
    pub parent_uri: String,
    pub uri: String,
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

impl StoredAccount {
    pub fn of(a: &CloudAccount) -> StoredAccount {
        StoredAccount {
            created: a.created_at,
            db_id: a.id,
            digest: account_digest(a),
            last_modified: a.updated_at,
            name: a.name.clone(),
            parent_uri: format!("users/{}", a.owner_login),
            uri: a.uri(),
            target_platform: TargetPlatform {
                name: OPENSTACK_PLATFORM.0.into(),
                kind: OPENSTACK_PLATFORM.1.into(),
            },
            secrets_missing: true,
            glance_url: a.glance_url.clone(),
            keystone_url: a.keystone_url.clone(),
            login: a.cloud_login.clone(),
            keystone_version: a.keystone_version.clone(),
        }
    }

    pub fn document(a: &CloudAccount) -> (Document<StoredAccount>, String) {
        (
            Document::new("credAccount", StoredAccount::of(a)),
            account_digest(a),
        )
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredAccountList {
    pub cred_account: Vec<StoredAccount>,
}

/// `CredAccounts`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredAccounts {
    pub total: usize,
    #[schema(inline)]
    pub cred_accounts: CredAccountList,
}

impl CredAccounts {
    pub fn document(accounts: &[CloudAccount]) -> (Document<CredAccounts>, String) {
        let digest = digest_of_each(accounts, account_digest);
        let body = CredAccounts {
            total: accounts.len(),
            cred_accounts: CredAccountList {
                cred_account: accounts.iter().map(StoredAccount::of).collect(),
            },
        };
        (Document::new("credAccounts", body), digest)
    }
}

/// `TargetPlatform`, as the platform list shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = TargetPlatformEntry)]
pub struct PlatformEntry {
    pub db_id: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub access: bool,
    pub active: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetPlatformList {
    pub target_platform: Vec<PlatformEntry>,
}

/// `TargetPlatforms`: OpenStack, the one platform pimage publishes to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetPlatforms {
    pub total: usize,
    #[schema(inline)]
    pub target_platforms: TargetPlatformList,
}

impl TargetPlatforms {
    pub fn document() -> Document<TargetPlatforms> {
        let openstack = PlatformEntry {
            db_id: 1,
            name: OPENSTACK_PLATFORM.0.into(),
            kind: OPENSTACK_PLATFORM.1.into(),
            access: true,
            active: true,
        };
        let body = TargetPlatforms {
            total: 1,
            target_platforms: TargetPlatformList {
                target_platform: vec![openstack],
            },
        };
        Document::new("targetPlatforms", body)
    }
}

// ---- end of cloud accounts --------------------------------------------------------------

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
