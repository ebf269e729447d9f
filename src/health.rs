//! Health and metrics endpoints, served by the API (on its port) and by every worker (on
//! `worker.listen`): `/healthz` (the process is alive), `/readyz` (Postgres and RabbitMQ
//! reachable, migrations applied; the API stays ready without RabbitMQ, degraded, since
//! its outbox keeps the tickets) and `/metrics` (Prometheus text format).
//!
//! `serve_http` serves every listener (API and worker) with header-read, body and idle
//! timeouts, and a cap on open connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
        metrics::gauge!(metrics_catalog::BUILD_INFO, "version" => VERSION).set(1.0);
        handle
    })
}

pub fn routes(probes: Probes) -> Router {
    prometheus();
    Router::new()
        .route(
            "/healthz",
            get(|| async { format!("ok\npimage {VERSION}\n") }),
        )
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
    match tokio::time::timeout(CHECK_TIMEOUT, store::migrations_missing(pool)).await {
        Ok(Ok(Some(0))) => None,
        Ok(Ok(Some(n))) => Some(format!("{n} migrations not applied")),
        Ok(Ok(None)) => Some("no pimage schema".into()),
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
    if let Ok(rows) = store::console::tickets_per_state(&probes.pool).await {
        for state in ["queued", "running", "complete", "error", "cancelled"] {
            let n = rows
                .iter()
                .find(|(s, ..)| s == state)
                .map_or(0, |(_, n, _)| *n);
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

/// Binds `addr`, naming it and the setting that chose it when that fails: a second process on
/// one host finds the port taken, and the OS's "Address already in use" names neither.
pub async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let variable = format!("PIMAGE__{}", setting.to_uppercase().replace('.', "__"));
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}, set by {setting} ({variable}; port 0 picks a free one)")
    })
}

/// Serves the health routes on `addr` until `shutdown` (the worker's own port).
pub async fn serve(
    addr: SocketAddr,
    probes: Probes,
    timeouts: ConnectionTimeouts,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = bind(addr, "worker.listen").await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "health and metrics listening");
    tokio::spawn(serve_http(listener, routes(probes), timeouts, shutdown));
    Ok(local)
}

/// How long a connection may take to send a request's head and body, and to move any byte
/// at all; and how many connections a listener serves at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    /// From the connection's opening, or its previous answer's end, to a whole request head.
    pub header_read: Duration,
    /// No byte read or written for this long (a stalled body, an answer not read): closed.
    pub idle: Duration,
    /// From a request's head to the end of its body (a body trickled byte by byte: cut).
    pub body: Duration,
    /// Past this many open connections, a new one is closed at once.
    pub max_connections: usize,
}

/// Descriptors kept free for everything else the process opens (its database pool,
/// RabbitMQ, cloud calls, files).
const RESERVED_DESCRIPTORS: usize = 256;

/// `wanted` connections at most, and fewer than the process's soft open-file limit: past
/// that limit `accept` fails and the process could open nothing else either.
pub fn connections_allowed(wanted: usize) -> usize {
    let wanted = wanted.max(1);
    match open_file_limit() {
        Some(limit) => wanted.min(limit.saturating_sub(RESERVED_DESCRIPTORS).max(1)),
        None => wanted,
    }
}

/// The soft RLIMIT_NOFILE, read from /proc (the crate forbids the unsafe `getrlimit`).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// pimage's own version: in every answer's `Server` header, `/healthz` and `pimage_build_info`.
/// (`GET /api/status` answers the UForge version clients check instead.)
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const SERVER: &str = concat!("pimage/", env!("CARGO_PKG_VERSION"));

/// Serves `app` (HTTP/1.1) on `listener` until `shutdown`, then lets in-flight requests end.
/// `axum::serve` has no timeouts: one client could hold every file descriptor with
/// connections that send nothing. Here each connection gets every one of `timeouts`, and
/// past `timeouts.max_connections` new connections are closed at once.
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    timeouts: ConnectionTimeouts,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(timeouts.max_connections.max(1)));
    let body_timeout = timeouts.body;
    let app = app
        .layer(axum::middleware::map_request(
            move |request: Request| async move {
                request.map(|body| Body::new(BodyDeadline::new(body, body_timeout)))
            },
        ))
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                let server = HeaderValue::from_static(SERVER);
                response.headers_mut().insert(header::SERVER, server);
                response
            },
        ));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Accepted then dropped (closed) when full: left in the backlog, it would wait
        // unanswered, and the client could not tell a full server from a slow one.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("connection refused: the listener serves its most");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(stream, app.clone(), timeouts, shutdown.clone());
        connections.spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    timeouts: ConnectionTimeouts,
    shutdown: CancellationToken,
) {
    let activity = Activity::default();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    // Dropping the connection closes its socket.
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = activity.idle_for(timeouts.idle) => return,
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = activity.idle_for(timeouts.idle) => {}
    }
}

/// When a connection last moved a byte (milliseconds since it opened).
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until((last + idle).into()).await;
        }
    }
}

/// A stream that notes in `activity` each read or write that moved bytes.
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that fails once `timeout` has passed since its head arrived, however
/// steadily its bytes trickle in (the idle timeout sees each byte as activity).
struct BodyDeadline {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl BodyDeadline {
    fn new(inner: Body, timeout: Duration) -> BodyDeadline {
        BodyDeadline {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl hyper::body::Body for BodyDeadline {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
        if !self.inner.is_end_stream() && self.deadline.as_mut().poll(cx).is_ready() {
            let why = format!(
                "the request body did not arrive whole within {} seconds",
                self.timeout.as_secs()
            );
            return Poll::Ready(Some(Err(why.into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
