//! The admin HTTP server: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (leadership is known and, on the leader, every controller's
//! watch has synced).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use capstan_core::runtime::Readiness;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// `capstan_ready`: what `/readyz` answers, as a gauge (1 ready, 0 not), for the alert
/// on a replica that stays unready.
#[derive(Debug)]
pub struct ReadyCollector(pub Readiness);

impl prometheus_client::collector::Collector for ReadyCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let gauge =
            prometheus_client::metrics::gauge::ConstGauge::new(i64::from(self.0.check().is_ok()));
        gauge.encode(encoder.encode_descriptor(
            "ready",
            "1 when /readyz answers 200 (leadership known and, on the leader, every watch synced)",
            None,
            gauge.metric_type(),
        )?)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Where the admin server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// `/metrics` (and the probes, when `health` is `None`).
    pub metrics: SocketAddr,
    /// `/healthz` and `/readyz` on an address of their own.
    pub health: Option<SocketAddr>,
}

/// Binds the admin server (so that a port clash fails start-up): `/metrics` on
/// `metrics_addr`, the probes there too or on `health_addr`. Returns the addresses and
/// the task serving them until `shutdown`.
pub async fn serve(
    metrics_addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<(Bound, tokio::task::JoinHandle<()>)> {
    let state = AdminState {
        registry,
        readiness,
    };
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    let metrics_app = Router::new().route("/metrics", get(metrics));
    let (metrics_app, health_app) = match health_addr {
        None => (metrics_app.merge(probes), None),
        Some(_) => (metrics_app, Some(probes)),
    };
    let (metrics, metrics_task) = listen(
        metrics_addr,
        metrics_app.with_state(state.clone()),
        shutdown.clone(),
    )
    .await?;
    let (health, health_task) = match (health_addr, health_app) {
        (Some(addr), Some(app)) => {
            let (bound, task) = listen(addr, app.with_state(state), shutdown).await?;
            (Some(bound), Some(task))
        }
        _ => (None, None),
    };
    let task = tokio::spawn(async move {
        let _ = metrics_task.await;
        if let Some(t) = health_task {
            let _ = t.await;
        }
    });
    Ok((Bound { metrics, health }, task))
}

async fn listen(
    addr: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin server to {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok((local, task))
}

/// The text of a scrape in chunks of at most [`CHUNK`] bytes. With 10,000 objects a
/// scrape is megabytes: one growing String would reallocate (and copy) it up to twice
/// its size at every scrape, and glibc keeps such blocks resident once its mmap
/// threshold has risen; fixed-size chunks are reused from its free lists instead.
#[derive(Default)]
struct Chunks(Vec<String>);

const CHUNK: usize = 64 * 1024;

impl std::fmt::Write for Chunks {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        match self.0.last_mut() {
            Some(last) if last.len() + s.len() <= CHUNK => last.push_str(s),
            _ => {
                let mut chunk = String::with_capacity(CHUNK.max(s.len()));
                chunk.push_str(s);
                self.0.push(chunk);
            }
        }
        Ok(())
    }
}

async fn metrics(State(state): State<AdminState>) -> axum::response::Response {
    let mut chunks = Chunks::default();
    match prometheus_client::encoding::text::encode(&mut chunks, &state.registry) {
        Ok(()) => {
            let stream = futures::stream::iter(
                chunks
                    .0
                    .into_iter()
                    .map(|c| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(c))),
            );
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for: {}", waiting.join(", ")),
        ),
    }
}
