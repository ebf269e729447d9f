//! The OpenAPI document of the API, generated with utoipa from the handlers' `#[utoipa::path]`
//! annotations and the wire types' schemas, and served at `GET /api/openapi.json`.
//!
//! What annotations share (path parameters, error answers, cached reads) is described once
//! here. `tests` hold the document equal to the router's route table (`super::api_routes`).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::response::Response as ApiResponse;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, Header, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use super::routes;
use super::wire::{
    CredAccount, ImageDoc, Images, OpStatus, OpStatuses, PublishImage, PublishImages,
    ServiceStatus, UForgeError,
};

/// Every answer (and the publish body) comes in both formats.
const MEDIA_TYPES: [&str; 2] = ["application/json", "application/xml"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pimage publish API",
        description = "Publishes UForge machine images to OpenStack clouds (the UForge AppCenter publish API). Answers are XML (default) or JSON by Accept; bodies XML or JSON by Content-Type. Every route but /api/status and /api/openapi.json needs a login and the migration_publish entitlement."
    ),
    servers((url = "/")),
    paths(
        routes::service_status,
        serve,
        routes::list_images,
        routes::get_image,
        routes::list_tickets_of_image,
        routes::publish,
        routes::get_ticket,
        routes::delete_ticket,
        routes::get_ticket_status,
        routes::cancel_ticket,
        super::events::ticket_events,
        routes::list_user_tickets,
        routes::list_user_statuses,
    ),
    components(schemas(
        OpStatus,
        CredAccount,
        PublishImage,
        PublishImages,
        OpStatuses,
        ImageDoc,
        Images,
        ServiceStatus,
        UForgeError,
        PublishRequestBody,
    )),
    security(("basicAuth" = []), ("apiKey" = [], "signature" = [])),
    modifiers(&ErrorsAndSecuritySchemes)
)]
struct ApiDoc;

/// The document as served (built once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document always serialises")
    })
}

/// `GET /api/openapi.json` (no login needed).
#[utoipa::path(
    get,
    path = super::paths::OPENAPI,
    operation_id = "openApi",
    summary = "This document (no login)",
    security(()),
    responses(
        (status = 200, description = "OpenAPI 3 document", body = Object, content_type = "application/json"),
        DocumentErrors,
    )
)]
pub async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(),
    )
        .into_response()
}

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
    /// Keystone domain of the user and project (default: Default).
    #[schema(required = false, max_length = 255)]
    keystone_domain: String,
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    keystone_project: String,
    #[schema(inline)]
    cred_account: CredAccountBody,
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
    #[schema(required = false, max_length = 255)]
    name: String,
    #[schema(required = false, inline)]
    target_platform: TargetPlatformBody,
    #[schema(schema_with = keystone_url)]
    keystone_url: String,
    #[schema(required = false, inline)]
    keystone_version: KeystoneVersion,
    #[schema(required = false, schema_with = glance_url)]
    glance_url: String,
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    login: String,
    /// The cloud password: stored encrypted, never returned.
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
struct ErrorsAndSecuritySchemes;

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
    (409, "Conflict (finished ticket, image not ready)"),
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

/// A path or query parameter, described once for every operation that takes it.
fn parameter(name: &str) -> Parameter {
    let id = |description: &str| {
        json!({"name": name, "in": "path", "required": true, "description": description,
               "schema": {"type": "integer", "format": "int64", "minimum": 1}, "example": 1})
    };
    let value = match name {
        "uid" => json!({"name": name, "in": "path", "required": true,
            "description": "The user's login",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}, "example": "demo"}),
        "siid" => id("Scanned instance id"),
        "sid" => id("Scan id"),
        "itid" => id("Image id"),
        "pitid" => id("Publish ticket id"),
        "img" => json!({"name": name, "in": "query", "required": false,
            "description": "Only this image (its id or URI)", "schema": {"type": "string"}}),
        "Last-Event-ID" => json!({"name": name, "in": "header", "required": false,
            "description": "Resume after this event: the changes since are sent first",
            "schema": {"type": "integer", "format": "int64", "minimum": 0}}),
        "deleteCloudImage" => json!({"name": name, "in": "query", "required": false,
            "description": "Also delete the published image from the cloud",
            "schema": {"type": "boolean"}}),
        other => unreachable!("no parameter named {other}"),
    };
    serde_json::from_value(value).expect("a valid parameter literal")
}

/// Declares a parameter list, for `params(...)`.
macro_rules! parameters {
    ($($(#[$doc:meta])* $name:ident = [$($param:literal),+];)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoParams for $name {
            fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
                [$($param),+].into_iter().map(parameter).collect()
            }
        }
    )+};
}

parameters! {
    /// `users/{uid}/pimages…`.
    UserParams = ["uid", "img"];
    /// `…/scans/{sid}/images`.
    ScanPath = ["uid", "siid", "sid"];
    /// `…/images/{itid}…`.
    ImagePath = ["uid", "siid", "sid", "itid"];
    /// `…/pimages/{pitid}…`.
    TicketPath = ["uid", "siid", "sid", "itid", "pitid"];
    /// `GET …/pimages/{pitid}/events`.
    TicketEventsPath = ["uid", "siid", "sid", "itid", "pitid", "Last-Event-ID"];
    /// `DELETE …/pimages/{pitid}`.
    DeleteTicketParams = ["uid", "siid", "sid", "itid", "pitid", "deleteCloudImage"];
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn parsed() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    /// A 429 comes from failed logins and from the per-user limits (`api::limits`): the
    /// answer every operation refers to says so.
    #[test]
    fn the_429_answer_names_the_login_lockout_and_the_per_user_limits() {
        let doc = parsed();
        let description = doc["components"]["responses"]["E429"]["description"]
            .as_str()
            .unwrap();
        for cause in [
            "failed logins",
            "event streams",
            "unfinished tickets",
            "publishes per minute",
        ] {
            assert!(description.contains(cause), "{description}");
        }
    }

    /// A route added to or removed from the router without its operation fails here.
    #[test]
    fn documents_exactly_the_routes_of_the_router() {
        let routed: BTreeSet<(String, String)> = super::super::api_routes()
            .iter()
            .map(|route| (route.method.to_string(), route.path.to_string()))
            .collect();
        let doc = parsed();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        assert_eq!(routed, documented);
    }

    #[test]
    fn every_path_parameter_is_declared_and_every_reference_resolves() {
        let doc = parsed();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let in_template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, operation) in item.as_object().unwrap() {
                let declared: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, in_template, "{method} {path}");
                assert!(operation["operationId"].is_string(), "{method} {path}");
            }
        }
        // Every `$ref` names a component that exists.
        let text = document();
        for reference in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = reference.split('"').next().unwrap();
            let (kind, name) = target.split_once('/').unwrap();
            assert!(
                doc["components"][kind][name].is_object(),
                "{target} is referenced but not defined"
            );
        }
    }

    #[test]
    fn keeps_what_the_clients_and_the_fuzzer_rely_on() {
        let doc = parsed();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(doc["servers"][0]["url"], "/");
        let publish = &doc["paths"]
            ["/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages"]["post"];
        for media_type in MEDIA_TYPES {
            assert_eq!(
                publish["requestBody"]["content"][media_type]["schema"]["$ref"],
                "#/components/schemas/PublishRequest"
            );
        }
        assert_eq!(publish["parameters"][0]["example"], "demo");
        assert_eq!(publish["parameters"][3]["example"], 1);
        let body = &doc["components"]["schemas"]["PublishRequest"];
        assert_eq!(body["xml"]["name"], "publishImage");
        assert_eq!(body["example"]["credAccount"]["login"], "demo");
        assert_eq!(body["required"], json!(["keystoneProject", "credAccount"]));
        let status = &doc["components"]["schemas"]["Status"];
        assert_eq!(status["properties"]["lastModified"]["format"], "date-time");
        assert_eq!(status["properties"]["dbId"]["format"], "int64");
        assert_eq!(
            doc["security"],
            json!([{"basicAuth": []}, {"apiKey": [], "signature": []}])
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["apiKey"]["in"],
            "query"
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["basicAuth"]["scheme"],
            "basic"
        );
    }
}
