//! The HTTP API (axum): routes under `/api`, XML or JSON both ways, `uforgeError` errors.
//!
//! `Application::build` binds the listener (port 0 picks a free port, for tests),
//! `run_until_stopped` serves until the shutdown token fires and drains in-flight requests.

mod auth;
mod error;
mod observe;
pub mod publish_request;
mod routes;
mod wire;
pub mod xml;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{delete, get};
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{new_api_key, sign, valid_login, PUBLISH_ENTITLEMENT};
pub use error::ApiError;

use crate::cloud::AddressPolicy;
use crate::config::Settings;
use crate::queue::Publisher;
use crate::secrets::SecretBox;
use crate::{health, outbox, rescuer};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub secrets: SecretBox,
    pub auth: Arc<auth::Authenticator>,
    pub cloud_policy: AddressPolicy,
    /// Hand-offs to RabbitMQ still running after their request was answered.
    pub hand_offs: TaskTracker,
    pub max_body_bytes: usize,
}

pub fn router(state: AppState) -> Router {
    let images = "/api/users/{uid}/scannedinstances/{siid}/scans/{sid}/images";
    let probes = health::Probes {
        pool: state.pool.clone(),
        publisher: state.publisher.clone(),
    };
    let api = Router::new()
        .route("/api/status", get(routes::service_status))
        .route("/api/openapi.json", get(routes::openapi))
        .route(images, get(routes::list_images))
        .route(&format!("{images}/{{itid}}"), get(routes::get_image))
        .route(
            &format!("{images}/{{itid}}/pimages"),
            get(routes::list_tickets_of_image).post(routes::publish),
        )
        .route(
            &format!("{images}/{{itid}}/pimages/{{pitid}}"),
            get(routes::get_ticket).delete(routes::delete_ticket),
        )
        .route(
            &format!("{images}/{{itid}}/pimages/{{pitid}}/status"),
            get(routes::get_ticket_status),
        )
        .route(
            &format!("{images}/{{itid}}/pimages/{{pitid}}/cancel"),
            delete(routes::cancel_ticket),
        )
        .route("/api/users/{uid}/pimages", get(routes::list_user_tickets))
        .route(
            "/api/users/{uid}/pimages/status",
            get(routes::list_user_statuses),
        )
        // Route templates (not raw paths) label the HTTP metrics.
        .route_layer(axum::middleware::from_fn(observe::http_metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn(error::render_errors))
        .with_state(state);
    api.merge(health::routes(probes))
        .layer(axum::middleware::from_fn(observe::request_span))
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    rescue: (i32, std::time::Duration),
}

impl Application {
    /// Connects to Postgres (applying migrations) and binds the listen address.
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let secrets = SecretBox::new(&settings.secrets.key, &settings.secrets.previous_keys)?;
        let pool = crate::store::connect_and_migrate(&settings.database).await?;
        let publisher = Arc::new(Publisher::new(settings.amqp.clone(), "pimage-api"));
        let listener = TcpListener::bind(settings.api.listen).await?;
        Ok(Application {
            listener,
            state: AppState {
                auth: auth::Authenticator::new(pool.clone(), secrets.clone(), &settings.api),
                pool,
                publisher,
                secrets,
                cloud_policy: settings.cloud.clone(),
                hand_offs: TaskTracker::new(),
                max_body_bytes: settings.api.max_body_bytes,
            },
            rescue: (
                settings.worker.max_ticket_attempts,
                std::time::Duration::from_secs(settings.worker.rescue_interval_secs.max(1)),
            ),
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

    /// Serves (and runs the outbox relay and the rescuer) until `shutdown`, then finishes
    /// in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay = tokio::spawn(outbox::run_relay(
            self.state.pool.clone(),
            self.state.publisher.clone(),
            shutdown.clone(),
        ));
        let rescuer = tokio::spawn(rescuer::run(
            self.state.pool.clone(),
            self.state.publisher.clone(),
            self.rescue.0,
            self.rescue.1,
            shutdown.clone(),
        ));
        tracing::info!(addr = %self.local_addr(), "API listening");
        let user_changes =
            tokio::spawn(self.state.auth.clone().watch_user_changes(shutdown.clone()));
        let hand_offs = self.state.hand_offs.clone();
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        // Each is bounded (outbox::HAND_OFF_TIMEOUT); what does not finish, the relay redoes.
        hand_offs.close();
        hand_offs.wait().await;
        user_changes.await?;
        relay.await?;
        rescuer.await?;
        Ok(())
    }
}
