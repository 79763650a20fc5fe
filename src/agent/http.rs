//! The agent's own HTTP server: `/metrics` (the agent's and the supervisor's), `/healthz` and
//! `/readyz`, on a loopback address, with limits a slow client cannot outlast.

use crate::envoy::admin::EnvoyState;
use crate::metrics::AgentMetrics;
use crate::settings::Settings;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What `/healthz` and `/readyz` read, shared with the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix seconds of the loop's last turn.
    pub heartbeat: AtomicU64,
    /// A config has been applied (by this agent or before its restart).
    pub applied: AtomicBool,
}

/// How long the loop may go without a turn before `/healthz` calls it stuck: three polls plus the
/// longest step it can legitimately take (an apply waiting out a drain, with retries).
pub fn stuck_after(settings: &Settings) -> Duration {
    let v = &settings.vpsie;
    Duration::from_secs(
        3 * u64::from(v.poll_interval_s)
            + 3 * u64::from(v.request_timeout_s)
            + crate::envoy::VALIDATE_TIMEOUT.as_secs()
            + u64::from(settings.envoy.parent_shutdown_time_s)
            + 3 * u64::from(settings.supervisor.live_timeout_s)
            + 3 * u64::from(settings.supervisor.confirm_timeout_s)
            + 30,
    )
}

/// Serves `/metrics` (the agent's metrics and the supervisor's), `/healthz` (the loop turns) and
/// `/readyz` (a config is applied and Envoy is LIVE) on `listener`, a loopback address.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    health: Arc<Health>,
    settings: Settings,
) -> anyhow::Result<()> {
    serve(listener, router(metrics, health, &settings)).await
}

/// The three routes.
fn router(metrics: Arc<AgentMetrics>, health: Arc<Health>, settings: &Settings) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let socket = settings.supervisor.socket.clone();
    let stuck = stuck_after(settings);
    let ha = settings.ha.clone();
    let metrics_route = {
        let socket = socket.clone();
        move || async move {
            if let Some(ha) = &ha {
                crate::ha::export(ha, &metrics);
            }
            let mut text = metrics.render();
            match crate::supervisor::protocol::call(
                &socket,
                &crate::supervisor::protocol::Request::Metrics,
                Duration::from_secs(2),
            )
            .await
            {
                Ok(crate::supervisor::protocol::Response::Metrics { text: sup }) => {
                    text.push_str(&sup)
                }
                _ => text.push_str("# the supervisor did not answer; its metrics are missing\n"),
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
        }
    };
    let healthz = {
        let health = health.clone();
        move || async move {
            let now = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let age = now.saturating_sub(health.heartbeat.load(Ordering::Relaxed));
            if age <= stuck.as_secs() {
                (StatusCode::OK, "ok\n".to_owned())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the loop has not turned for {age} s\n"),
                )
            }
        }
    };
    let readyz = move || async move {
        if !health.applied.load(Ordering::Relaxed) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "no config applied yet\n".to_owned(),
            );
        }
        match crate::supervisor::protocol::call(
            &socket,
            &crate::supervisor::protocol::Request::Status,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(crate::supervisor::protocol::Response::Status(s))
                if s.envoy_state == EnvoyState::Live =>
            {
                (StatusCode::OK, "ready\n".to_owned())
            }
            Ok(crate::supervisor::protocol::Response::Status(s)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("envoy is {}\n", s.envoy_state),
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the supervisor does not answer\n".to_owned(),
            ),
        }
    };
    axum::Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Serves `app` on `listener`, within the limits below.
async fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> anyhow::Result<()> {
    // Not axum::serve: it sets no time limits, so a client that opens connections and sends
    // nothing (or its request a byte at a time) would hold them, and their file descriptors, for
    // ever. Here each connection has METRICS_HEAD_TIMEOUT to send a request head and
    // METRICS_CONNECTION_LIFETIME in all, and at most METRICS_CONNECTIONS are served at once (the
    // scrape comes through Envoy, one connection at a time); more wait to be accepted.
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| anyhow::anyhow!("the metrics server stopped: {e}"))?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: let some close before trying again.
                tracing::warn!("the metrics server cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEAD_TIMEOUT);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

/// Connections the metrics server serves at once.
pub const METRICS_CONNECTIONS: usize = 64;
/// How long a metrics connection has to send its request head.
pub const METRICS_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a metrics connection may stay open in all.
pub const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
