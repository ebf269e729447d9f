//! Health and metrics endpoints, served by the API (on its port) and by every worker (on
//! `worker.listen`): `/healthz` (the process is alive), `/readyz` (Postgres and RabbitMQ
//! reachable, migrations applied; the API stays ready without RabbitMQ, degraded, since
//! its outbox keeps the tickets) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics_catalog;
use crate::queue::Publisher;
use crate::store;

/// What readiness depends on.
#[derive(Clone)]
pub struct Probes {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    /// False for the API: without RabbitMQ it still takes tickets (into the outbox).
    pub queue_required: bool,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let seconds = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let upload_seconds = [
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
        ];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(metrics_catalog::HTTP_REQUEST_DURATION.into()),
                &seconds,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(metrics_catalog::UPLOAD_DURATION.into()),
                    &upload_seconds,
                )
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("only this function installs a metrics recorder");
        // Descriptions go to the installed recorder, so they come after it.
        metrics_catalog::describe_all();
        handle
    })
}

pub fn routes(probes: Probes) -> Router {
    prometheus();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

async fn readyz(State(probes): State<Probes>) -> Response {
    let (database, queue) =
        tokio::join!(database_ready(&probes.pool), queue_ready(&probes.publisher));
    let queue_blocks = queue.is_some() && probes.queue_required;
    let queue = match queue {
        None => "ok".to_string(),
        Some(why) if !probes.queue_required => {
            format!("degraded ({why}): tickets wait in the outbox")
        }
        Some(why) => why,
    };
    let body = format!(
        "postgres: {}\nrabbitmq: {queue}\n",
        database.as_deref().unwrap_or("ok"),
    );
    let status = if database.is_none() && !queue_blocks {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// `None` when ready, else why not.
async fn database_ready(pool: &PgPool) -> Option<String> {
    let check = async {
        let applied = sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
        let missing = store::MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count();
        Ok::<usize, sqlx::Error>(missing)
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(0)) => None,
        Ok(Ok(n)) => Some(format!("{n} migrations not applied")),
        Ok(Err(e)) => Some(format!("unreachable: {e}")),
        Err(_) => Some("no answer".into()),
    }
}

async fn queue_ready(publisher: &Publisher) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, publisher.is_reachable()).await {
        Ok(true) => None,
        Ok(false) => Some("unreachable".into()),
        Err(_) => Some("no answer".into()),
    }
}

async fn metrics(State(probes): State<Probes>) -> Response {
    // Gauges read from the source of truth at scrape time.
    if let Ok(rows) = store::tickets::count_by_state(&probes.pool).await {
        for state in ["queued", "running", "complete", "error", "cancelled"] {
            let n = rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            metrics::gauge!(metrics_catalog::TICKETS, "state" => state).set(n as f64);
        }
    }
    if let Ok((pending, oldest)) = store::outbox::lag(&probes.pool).await {
        metrics::gauge!(metrics_catalog::OUTBOX_PENDING).set(pending as f64);
        metrics::gauge!(metrics_catalog::OUTBOX_OLDEST).set(oldest);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// Serves the health routes on `addr` until `shutdown` (the worker's own port).
pub async fn serve(
    addr: SocketAddr,
    probes: Probes,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "health and metrics listening");
    tokio::spawn(async move {
        let _ = axum::serve(listener, routes(probes))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(local)
}
