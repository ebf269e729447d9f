//! The parts of the OpenAPI document that are no handler's own: the publish body's schema
//! (with its example), the shared error answers (`E{status}`), cached reads, the login
//! schemes. Handlers' annotations name these; `openapi` assembles the document. A leaf: it
//! imports no handler module, so handlers and the document do not import each other.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde_json::json;
use utoipa::openapi::response::Response as ApiResponse;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, Header, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{IntoResponses, Modify, ToSchema};

/// Every answer (and the publish body) comes in both formats.
pub const MEDIA_TYPES: [&str; 2] = ["application/json", "application/xml"];

/// The body of `POST …/pimages` as documented. `publish_request` parses it (leniently: unknown
/// fields are ignored, booleans may be strings); this type only describes it.
#[derive(ToSchema)]
#[schema(
    as = PublishRequest,
    rename_all = "camelCase",
    description = "publishImage: where to publish (an OpenStack cloud account) and as what. Unknown fields are ignored.",
    xml(name = "publishImage", namespace = "http://www.usharesoft.com/uforge", prefix = "ns0"),
    example = json!({
        "displayName": "demo image",
        "publicImage": false,
        "keystoneDomain": "Default",
        "keystoneProject": "demo",
        "credAccount": {
            "targetPlatform": {"name": "openstack"},
            "keystoneUrl": "http://127.0.0.1:5000/v3",
            "glanceUrl": "http://127.0.0.1:9292",
            "keystoneVersion": "v3",
            "login": "demo",
            "password": "demopass"
        }
    })
)]
#[allow(dead_code)] // Never built: it exists for its schema.
pub struct PublishRequestBody {
    /// Name of the image in Glance (default: the image's name). No control characters.
    #[schema(required = false, max_length = 255)]
    display_name: String,
    #[schema(required = false)]
    public_image: bool,
    /// The catalog region whose Glance receives the image, whatever `cloud.region` says;
    /// when the account gives a glanceUrl, that Glance is used. A region the catalog does not
    /// list ends the ticket in error, naming the regions it does list.
    #[schema(required = false, max_length = 255)]
    publish_location: String,
    /// Keystone domain of the user and project (default: Default).
    #[schema(required = false, max_length = 255)]
    keystone_domain: String,
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    keystone_project: String,
    #[schema(inline)]
    cred_account: CredAccountBody,
}

/// The body of `POST …/pimagegroups` and `…/pimagegroups/{gid}/targets` (a pimage extension,
/// JSON only): each target is a publish body (`PublishRequestBody`) with an optional `store`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "policy": "all",
    "targets": [
        {"keystoneProject": "demo", "publishLocation": "RegionOne", "credAccount": {"name": "lab"}},
        {"keystoneProject": "demo", "publishLocation": "RegionOne", "store": "cold",
         "credAccount": {"name": "lab"}},
        {"keystoneProject": "demo", "publishLocation": "RegionTwo", "credAccount": {"name": "lab"}}
    ]
}))]
#[allow(dead_code)] // Never built: it exists for its schema.
pub struct PublishGroupRequestBody {
    /// `all` (default; the group completes only when every target does, and one failing for
    /// good ends the others, complete ones withdrawn) or `each` (targets stand alone). Not
    /// allowed when adding targets: they take the group's.
    #[schema(required = false, pattern = "^(all|each)$")]
    policy: String,
    /// Each an ordinary publish body and a Glance store; two to the same place are refused.
    #[schema(min_items = 1, max_items = 16)]
    targets: Vec<GroupTargetBody>,
}

/// One target of a group: a publish body and the Glance store it goes to.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Never built: it exists for its schema.
pub struct GroupTargetBody {
    #[serde(flatten)]
    publish: PublishRequestBody,
    /// The Glance store (`GET /v2/info/stores`) the image goes to; default: the Glance's
    /// default store. A target in the same Keystone project as an earlier one gets its image
    /// by a server-side copy once that one is complete (copy-image within one Glance,
    /// glance-download between regions), where the cloud offers it.
    #[schema(required = false, pattern = "^[A-Za-z0-9_.-]{1,255}$")]
    store: String,
}

/// A cloud URL as `publish_request` accepts it.
fn cloud_url(example: &str) -> Schema {
    schema(json!({
        "type": "string",
        "maxLength": 2048,
        "pattern": r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._/-]*)?$",
        "example": example,
    }))
}

fn keystone_url() -> Schema {
    cloud_url("http://127.0.0.1:5000/v3")
}

fn glance_url() -> Schema {
    cloud_url("http://127.0.0.1:9292")
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // Never built: it exists for its schema.
struct CredAccountBody {
    /// The account's name; without a password, names one of the user's stored accounts.
    #[schema(required = false, max_length = 255)]
    name: String,
    /// A stored account's URI (`users/{uid}/accounts/{caid}`): it is used, its password
    /// stays on the server.
    #[schema(required = false)]
    uri: String,
    /// A stored account's id, used like `uri`.
    #[schema(required = false, minimum = 1)]
    db_id: i64,
    #[schema(required = false, inline)]
    target_platform: TargetPlatformBody,
    /// Required unless a stored account is named.
    #[schema(required = false, schema_with = keystone_url)]
    keystone_url: String,
    #[schema(required = false, inline)]
    keystone_version: KeystoneVersion,
    #[schema(required = false, schema_with = glance_url)]
    glance_url: String,
    /// Required unless a stored account is named.
    #[schema(required = false, min_length = 1, max_length = 255, pattern = r"\S")]
    login: String,
    /// The cloud password: stored encrypted, never returned. Required unless `uri`, `dbId`
    /// or `name` names a stored account (`…/users/{uid}/accounts`).
    #[schema(required = false, min_length = 1, max_length = 1024, format = Password, write_only)]
    password: String,
}

/// The body of `POST …/users/{uid}/accounts`: an OpenStack account, as hammr's `account
/// create` sends it. Its password is tried with one unscoped Keystone v3 login (user domain
/// Default) before it is stored.
#[derive(ToSchema)]
#[schema(
    as = CredAccountRequest,
    rename_all = "camelCase",
    xml(name = "credAccount", namespace = "http://www.usharesoft.com/uforge", prefix = "ns0")
)]
#[allow(dead_code)] // Never built: it exists for its schema.
pub struct NewAccountBody {
    /// Unique among the user's accounts.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    name: String,
    #[schema(required = false, inline)]
    target_platform: TargetPlatformBody,
    #[schema(schema_with = keystone_url)]
    keystone_url: String,
    #[schema(required = false, inline)]
    keystone_version: KeystoneVersion,
    #[schema(required = false, schema_with = glance_url)]
    glance_url: String,
    /// A user of Keystone's Default domain.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    login: String,
    /// Stored encrypted, never returned.
    #[schema(min_length = 1, max_length = 1024, format = Password, write_only)]
    password: String,
}

#[derive(ToSchema)]
#[allow(dead_code)] // Never built: it exists for its schema.
struct TargetPlatformBody {
    #[schema(required = false, inline)]
    name: Platform,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Never built: it exists for its schema.
enum Platform {
    OpenStack,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Never built: it exists for its schema.
enum KeystoneVersion {
    V3,
}

/// Adds what utoipa has no attribute for: the shared error answers and the login schemes;
/// and undoes two defaults: the module's name as every operation's tag, and `security(())`
/// written `[{}]` (an optional login) where these operations take none (`[]`).
pub struct ErrorsAndSecuritySchemes;

/// Every error answer: a `uforgeError` document (`E{status}` in the components).
const ERROR_ANSWERS: [(u16, &str); 12] = [
    (
        400,
        "Malformed request or invalid field (the message names it)",
    ),
    (
        401,
        "Missing or wrong credentials (WWW-Authenticate: Basic)",
    ),
    (403, "The user lacks the migration_publish entitlement"),
    (404, "No such resource (or another user's)"),
    (405, "Method not allowed"),
    (406, "Accept names neither XML nor JSON"),
    (
        409,
        "Conflict (finished ticket, image not ready, image with tickets queued or running, \
         account name taken or account in use)",
    ),
    (413, "Body too large"),
    (415, "Content-Type is neither XML nor JSON"),
    (
        429,
        "Too many requests (Retry-After): failed logins for this login, or the user's open \
         event streams, unfinished tickets or publishes per minute past their limits",
    ),
    (502, "The cloud refused a call made for the request"),
    (503, "Database or queue unreachable; nothing was stored"),
];

impl Modify for ErrorsAndSecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let no_login = SecurityRequirement::default();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                operation.tags = None;
                if operation.security.as_deref() == Some(std::slice::from_ref(&no_login)) {
                    operation.security = Some(vec![]);
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        for (status, description) in ERROR_ANSWERS {
            let mut answer = both_formats(ResponseBuilder::new().description(description), {
                Ref::from_schema_name("UForgeError")
            });
            let header = match status {
                401 => Some(("WWW-Authenticate", schema(json!({"type": "string"})))),
                429 => Some(("Retry-After", schema(json!({"type": "integer"})))),
                _ => None,
            };
            if let Some((name, header_schema)) = header {
                answer = answer.header(name, Header::new(header_schema));
            }
            components
                .responses
                .insert(format!("E{status}"), answer.build().into());
        }
        components.add_security_scheme(
            "basicAuth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "apiKey",
                "The public key of an API key (pimage apikeys create)",
            ))),
        );
        components.add_security_scheme(
            "signature",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "signature",
                "base64(HMAC-SHA1(secret key, the URL after /api/ with apiKey and without signature))",
            ))),
        );
    }
}

fn schema(value: serde_json::Value) -> Schema {
    serde_json::from_value(value).expect("a valid schema literal")
}

/// `response` with `body` in JSON and in XML.
fn both_formats(
    response: ResponseBuilder,
    body: impl Into<RefOr<Schema>> + Clone,
) -> ResponseBuilder {
    MEDIA_TYPES.iter().fold(response, |response, media_type| {
        response.content(*media_type, Content::new(Some(body.clone())))
    })
}

/// Declares a set of error answers, for `responses(...)`: references to `E{status}`.
macro_rules! error_answers {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal),+];)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
                [$($status),+]
                    .into_iter()
                    .map(|status: u16| {
                        let name = format!("E{status}");
                        (status.to_string(), Ref::from_response_name(name).into())
                    })
                    .collect()
            }
        }
    )+};
}

error_answers! {
    /// Of `GET /api/openapi.json`.
    DocumentErrors = [405];
    /// Of `GET /api/status`.
    StatusErrors = [405, 406];
    /// Of a read behind a login.
    ReadErrors = [400, 401, 403, 404, 405, 406, 429, 503];
    /// Of `POST …/pimages`.
    PublishErrors = [400, 401, 403, 404, 405, 406, 409, 413, 415, 429, 503];
    /// Of `DELETE …/pimages/{pitid}`.
    DeleteErrors = [400, 401, 403, 404, 405, 406, 429, 502, 503];
    /// Of `DELETE …/pimages/{pitid}/cancel`.
    CancelErrors = [400, 401, 403, 404, 405, 406, 409, 429, 503];
    /// Of `DELETE …/images/{itid}`.
    ImageDeleteErrors = [400, 401, 403, 404, 405, 406, 409, 429, 503];
    /// Of `POST …/accounts`.
    AccountCreateErrors = [400, 401, 403, 404, 405, 406, 409, 413, 415, 429, 503];
    /// Of `/api/admin/tickets/{id}…`.
    AdminErrors = [400, 401, 403, 404, 405, 409, 429, 503];
    /// Of `DELETE …/accounts/{caid}`.
    AccountDeleteErrors = [400, 401, 403, 404, 405, 406, 409, 429, 503];
}

/// The `ETag` every object answer carries.
fn etag_header() -> Header {
    let mut etag = Header::new(schema(json!({"type": "string"})));
    etag.description = Some("The object's digest, quoted".into());
    etag
}

/// A cached read of a `T`: `200` with its `ETag`, or `304` when `If-None-Match` names it.
pub struct Cached<T>(PhantomData<T>);

impl<T: ToSchema> IntoResponses for Cached<T> {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        let found = ResponseBuilder::new()
            .description("OK")
            .header("ETag", etag_header());
        let not_modified = ResponseBuilder::new()
            .description("Not modified (If-None-Match matched the ETag)")
            .header("ETag", etag_header());
        BTreeMap::from([
            (
                "200".into(),
                both_formats(found, Ref::from_schema_name(T::name()))
                    .build()
                    .into(),
            ),
            ("304".into(), not_modified.build().into()),
        ])
    }
}
