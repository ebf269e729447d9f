//! The OpenAPI document of the API, generated with utoipa from the handlers' `#[utoipa::path]`
//! annotations (their parameters are the `params` structs the handlers parse with) and the
//! wire types' schemas, and served at `GET /api/openapi.json`.
//!
//! What no handler states (error answers, login schemes, the publish body's schema) is in
//! `doc_parts`. `tests` hold the document equal to the router's route table
//! (`super::api_routes`).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::admin::{self, ActionDone};
use super::doc_parts::{
    DocumentErrors, ErrorsAndSecuritySchemes, NewAccountBody, PublishGroupRequestBody,
    PublishRequestBody,
};
use super::wire::{
    CredAccount, CredAccounts, ImageDoc, Images, OpStatus, OpStatuses, PublishGroup, PublishImage,
    PublishImages, ScanDoc, ScannedInstanceDoc, ScannedInstances, ServiceStatus, StoredAccount,
    TargetPlatforms, UForgeError,
};
use super::{accounts, catalog, events, groups, routes};

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
        catalog::list_user_images,
        catalog::list_scanned_instances,
        catalog::get_scanned_instance,
        catalog::get_scan,
        routes::list_images,
        routes::get_image,
        catalog::delete_image,
        routes::list_tickets_of_image,
        routes::publish,
        routes::get_ticket,
        routes::delete_ticket,
        routes::get_ticket_status,
        routes::cancel_ticket,
        events::ticket_events,
        routes::list_user_tickets,
        routes::list_user_statuses,
        groups::publish_group,
        groups::get_group,
        groups::add_group_targets,
        groups::cancel_group,
        events::group_events,
        accounts::list_accounts,
        accounts::create_account,
        accounts::get_account,
        accounts::delete_account,
        accounts::list_target_platforms,
        admin::delete_ticket,
        admin::cancel_ticket,
        admin::retry_ticket,
    ),
    components(schemas(
        OpStatus,
        CredAccount,
        PublishImage,
        PublishImages,
        OpStatuses,
        ImageDoc,
        Images,
        ScanDoc,
        ScannedInstanceDoc,
        ScannedInstances,
        ServiceStatus,
        UForgeError,
        PublishRequestBody,
        PublishGroupRequestBody,
        PublishGroup,
        StoredAccount,
        CredAccounts,
        TargetPlatforms,
        NewAccountBody,
        ActionDone,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::super::doc_parts::MEDIA_TYPES;
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
