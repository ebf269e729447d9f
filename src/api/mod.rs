//! The HTTP API (axum): routes under `/api` (one table, also the OpenAPI document's), XML or
//! JSON both ways, `uforgeError` errors.
//!
//! `Application::build` binds the listener (port 0 picks a free port, for tests),
//! `run_until_stopped` serves until the shutdown token fires and drains in-flight requests.

mod accounts;
pub mod admin;
mod auth;
mod catalog;
mod console;
mod doc_parts;
mod error;
mod events;
mod extract;
mod filing;
mod group_request;
mod groups;
mod idempotency;
mod image_link;
mod limits;
mod observe;
mod openapi;
mod params;
pub mod publish_request;
mod routes;
pub mod wire;
pub mod xml;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{new_api_key, sign, valid_login, PUBLISH_ENTITLEMENT};
pub use error::ApiError;

use crate::cloud::AddressPolicy;
use crate::config::{LimitSettings, Settings};
use crate::image_store::ImageStore;
use crate::live::{Hub, Listener};
use crate::maintenance::{Maintenance, MaintenanceContext};
use crate::queue::Publisher;
use crate::reconciler::Reconciler;
use crate::secrets::SecretBox;
use crate::{health, outbox};

/// What every handler shares, behind one `Arc`: axum clones the state for each request and
/// extractor, and a clone of the fields themselves (pool, senders, keys) costs far more.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;
    fn deref(&self) -> &SharedState {
        &self.0
    }
}

pub struct SharedState {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub secrets: SecretBox,
    pub auth: Arc<auth::Authenticator>,
    pub cloud_policy: AddressPolicy,
    /// Stored tickets on their way to RabbitMQ, after their request was answered.
    pub hand_offs: outbox::HandOffs,
    /// Publishes stored together, one commit per batch (group commit).
    pub filer: filing::Filer,
    pub max_body_bytes: usize,
    /// Live ticket events and worker heartbeats: one listener, every viewer.
    pub live: Hub,
    /// Open event streams: counted per user, their access re-checked.
    pub streams: Arc<limits::Streams>,
    pub publish_rate: Arc<limits::PublishRate>,
    /// Tickets one user may have queued or running.
    pub queued_tickets_per_user: i64,
    /// What `GET /api/status` answers as `version`: the UForge version clients check.
    pub uforge_version: Arc<str>,
    /// Where image files are (`storage.url`): checked before a publish, served to
    /// web-download.
    pub images: ImageStore,
    /// How long a publish's Idempotency-Key answers with its first ticket.
    pub idempotency_window: std::time::Duration,
}

/// The route templates, shared by the router and the handlers' OpenAPI annotations.
pub(crate) mod paths {
    pub const STATUS: &str = "/api/status";
    pub const OPENAPI: &str = "/api/openapi.json";
    pub const USER_IMAGES: &str = "/api/users/{uid}/images";
    pub const SCANNED_INSTANCES: &str = "/api/users/{uid}/scannedinstances";
    pub const SCANNED_INSTANCE: &str = "/api/users/{uid}/scannedinstances/{siid}";
    pub const SCAN: &str = "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}";
    pub const IMAGES: &str = "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images";
    pub const IMAGE: &str = "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}";
    pub const TICKETS: &str =
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages";
    pub const TICKET: &str =
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}";
    pub const TICKET_STATUS: &str =
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}/status";
    pub const TICKET_CANCEL: &str =
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}/cancel";
    pub const TICKET_EVENTS: &str =
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimages/{pitid}/events";
    pub const USER_TICKETS: &str = "/api/users/{uid}/pimages";
    pub const USER_STATUSES: &str = "/api/users/{uid}/pimages/status";
    pub const ACCOUNTS: &str = "/api/users/{uid}/accounts";
    pub const ACCOUNT: &str = "/api/users/{uid}/accounts/{caid}";
    pub const TARGET_PLATFORMS: &str = "/api/users/{uid}/targetplatforms";
    pub const GROUPS: &str =
        "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images/{itid}/pimagegroups";
    pub const GROUP: &str = "/api/users/{uid}/pimagegroups/{gid}";
    pub const GROUP_TARGETS: &str = "/api/users/{uid}/pimagegroups/{gid}/targets";
    pub const GROUP_CANCEL: &str = "/api/users/{uid}/pimagegroups/{gid}/cancel";
    pub const GROUP_EVENTS: &str = "/api/users/{uid}/pimagegroups/{gid}/events";
    pub const ADMIN_TICKET: &str = "/api/admin/tickets/{id}";
    pub const ADMIN_TICKET_CANCEL: &str = "/api/admin/tickets/{id}/cancel";
    pub const ADMIN_TICKET_RETRY: &str = "/api/admin/tickets/{id}/retry";
}

/// One route of the API.
pub(crate) struct ApiRoute {
    #[cfg_attr(not(test), allow(dead_code))] // Only the document's test reads it.
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(method: Method, path: &'static str, handler: H) -> ApiRoute
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard HTTP method");
    ApiRoute {
        method,
        path,
        handler: on(filter, handler),
    }
}

/// The route table: the router is built from it, and `openapi::tests` hold it equal to the
/// OpenAPI document's operations.
pub(crate) fn api_routes() -> Vec<ApiRoute> {
    use paths::*;
    vec![
        route(Method::GET, STATUS, routes::service_status),
        route(Method::GET, OPENAPI, openapi::serve),
        route(Method::GET, USER_IMAGES, catalog::list_user_images),
        route(
            Method::GET,
            SCANNED_INSTANCES,
            catalog::list_scanned_instances,
        ),
        route(Method::GET, SCANNED_INSTANCE, catalog::get_scanned_instance),
        route(Method::GET, SCAN, catalog::get_scan),
        route(Method::GET, IMAGES, routes::list_images),
        route(Method::GET, IMAGE, routes::get_image),
        route(Method::DELETE, IMAGE, catalog::delete_image),
        route(Method::GET, TICKETS, routes::list_tickets_of_image),
        route(Method::POST, TICKETS, routes::publish),
        route(Method::GET, TICKET, routes::get_ticket),
        route(Method::DELETE, TICKET, routes::delete_ticket),
        route(Method::GET, TICKET_STATUS, routes::get_ticket_status),
        route(Method::DELETE, TICKET_CANCEL, routes::cancel_ticket),
        route(Method::GET, TICKET_EVENTS, events::ticket_events),
        route(Method::GET, USER_TICKETS, routes::list_user_tickets),
        route(Method::GET, USER_STATUSES, routes::list_user_statuses),
        route(Method::POST, GROUPS, groups::publish_group),
        route(Method::GET, GROUP, groups::get_group),
        route(Method::POST, GROUP_TARGETS, groups::add_group_targets),
        route(Method::DELETE, GROUP_CANCEL, groups::cancel_group),
        route(Method::GET, GROUP_EVENTS, events::group_events),
        route(Method::GET, ACCOUNTS, accounts::list_accounts),
        route(Method::POST, ACCOUNTS, accounts::create_account),
        route(Method::GET, ACCOUNT, accounts::get_account),
        route(Method::DELETE, ACCOUNT, accounts::delete_account),
        route(
            Method::GET,
            TARGET_PLATFORMS,
            accounts::list_target_platforms,
        ),
        route(Method::DELETE, ADMIN_TICKET, admin::delete_ticket),
        route(Method::POST, ADMIN_TICKET_CANCEL, admin::cancel_ticket),
        route(Method::POST, ADMIN_TICKET_RETRY, admin::retry_ticket),
    ]
}

pub fn router(state: AppState) -> Router {
    let probes = health::Probes {
        pool: state.pool.clone(),
        publisher: state.publisher.clone(),
        queue_required: false,
    };
    let image_links = image_link::routes(state.clone());
    // Routes on one path merge their methods.
    let console = console::routes(state.clone());
    let api = api_routes()
        .into_iter()
        .fold(Router::new(), |api, route| {
            api.route(route.path, route.handler)
        })
        // Route templates (not raw paths) label the HTTP metrics.
        .route_layer(axum::middleware::from_fn(observe::http_metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // Inside the error rendering: it sees each answer's status.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::release_refused_writes,
        ))
        .layer(axum::middleware::from_fn(error::render_errors))
        .with_state(state);
    api.merge(console)
        .merge(health::routes(probes))
        .merge(image_links)
        .layer(axum::middleware::from_fn(observe::request_span))
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    rescue: (i32, std::time::Duration),
    retention: crate::maintenance::Retention,
    reconciler: Reconciler,
    timeouts: health::ConnectionTimeouts,
}

/// Every listener's connection timeouts and cap (the API's and the worker's).
pub fn connection_timeouts(limits: &LimitSettings) -> health::ConnectionTimeouts {
    health::ConnectionTimeouts {
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
        body: limits.body_timeout,
        max_connections: health::connections_allowed(limits.max_connections),
    }
}

impl Application {
    /// Connects to Postgres (waiting until it answers, then applying migrations) and binds
    /// the listen address. RabbitMQ is not needed yet: tickets wait in the outbox.
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let secrets = SecretBox::new(&settings.secrets.key, &settings.secrets.previous_keys)?;
        let pool = crate::store::connect_waiting(&settings.database).await?;
        let publisher = Arc::new(Publisher::new(settings.amqp.clone(), "pimage-api"));
        let listener = health::bind(settings.api.listen, "api.listen").await?;
        let hand_offs = outbox::HandOffs::start(pool.clone(), publisher.clone());
        let queued_tickets_per_user = settings.limits.queued_tickets_per_user.max(1);
        Ok(Application {
            reconciler: Reconciler::new(pool.clone(), secrets.clone(), &settings.cloud),
            timeouts: connection_timeouts(&settings.limits),
            listener,
            state: AppState(Arc::new(SharedState {
                auth: auth::Authenticator::new(pool.clone(), secrets.clone(), &settings.api),
                filer: filing::Filer::start(
                    pool.clone(),
                    hand_offs.clone(),
                    queued_tickets_per_user,
                ),
                hand_offs,
                pool,
                publisher,
                secrets,
                cloud_policy: AddressPolicy::from(settings.cloud.clone()),
                max_body_bytes: settings.api.max_body_bytes,
                live: Hub::default(),
                streams: limits::Streams::new(&settings.limits),
                publish_rate: Arc::new(limits::PublishRate::new(&settings.limits)),
                queued_tickets_per_user,
                uforge_version: settings.api.uforge_version.as_str().into(),
                images: ImageStore::new(&settings.storage)?,
                idempotency_window: settings.api.idempotency_window,
            })),
            rescue: (
                settings.worker.max_ticket_attempts,
                settings.worker.rescue_interval,
            ),
            retention: crate::maintenance::retention_of(&settings.retention),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves (and runs the outbox relay, the rescuer and the reconciler) until `shutdown`, then finishes
    /// in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "API listening");
        let maintenance = Maintenance::start(
            MaintenanceContext {
                pool: self.state.pool.clone(),
                publisher: self.state.publisher.clone(),
                reconciler: self.reconciler,
                max_ticket_attempts: self.rescue.0,
                interval: self.rescue.1,
                retention: self.retention,
            },
            &shutdown,
        );
        // The process's one Postgres listener, and what it feeds.
        let listener = Listener::new(self.state.pool.clone());
        let user_changes = tokio::spawn(self.state.auth.clone().watch_user_changes(&listener));
        let live = tokio::spawn(self.state.live.clone().run(&listener));
        let listening = tokio::spawn(listener.run(shutdown.clone()));
        let streams = tokio::spawn(
            self.state
                .streams
                .clone()
                .run(self.state.pool.clone(), shutdown.clone()),
        );
        let hand_offs = self.state.hand_offs.clone();
        health::serve_http(
            self.listener,
            router(self.state),
            self.timeouts,
            shutdown.clone(),
        )
        .await;
        // Bounded (outbox::HandOffs::finish); what does not finish, the relay redoes.
        hand_offs.finish().await;
        listening.await?;
        user_changes.await?;
        live.await?;
        streams.await?;
        maintenance.join().await?;
        Ok(())
    }
}
