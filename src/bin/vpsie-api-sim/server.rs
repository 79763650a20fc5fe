//! Runs the sim: binds every listener first (so the ready line means everything is up), serves
//! until `stop` resolves, then stops every server and waits for them within a deadline.
//!
//! One shutdown mechanism: a `watch` flag every server listens to, and a `JoinSet` holding every
//! server task, so none outlives `run` and a server that fails on its own ends the run.

use crate::api::{self, Sim};
use crate::args::Config;
use crate::conn::{self, Conn};
use crate::events;
use crate::faults::Faults;
use crate::upstream;
use anyhow::{anyhow, Context};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How long a graceful stop waits for requests in flight (a `delay` fault may hold one).
const GRACE: Duration = Duration::from_secs(5);

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Requests in flight finish (at most [`GRACE`]).
    Graceful,
    /// Everything stops now.
    Fast,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))
}

/// Resolves once the stop flag is set (or its sender is gone, which also means "stop").
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

pub async fn run(config: Config, stop: impl Future<Output = Stop>) -> anyhow::Result<()> {
    let api_listener = bind(config.listen, "the API").await?;
    let api_addr = api_listener
        .local_addr()
        .context("cannot read the API listener's address")?;
    let mut http_upstreams = Vec::new();
    for (name, addr) in config.upstreams {
        let l = bind(addr, &format!("upstream {name}")).await?;
        http_upstreams.push((name, l));
    }
    let mut tcp_upstreams = Vec::new();
    for (name, addr) in config.tcp_upstreams {
        let l = bind(addr, &format!("tcp upstream {name}")).await?;
        tcp_upstreams.push((name, l));
    }
    let log = events::Log::open(config.events_file.as_deref()).await?;
    for (id, path) in &config.lbs {
        info!(lb = id, spec = %path.display(), "serving load balancer");
    }
    let sim = Arc::new(Sim {
        token: config.token,
        lbs: config.lbs,
        faults: Faults::default(),
        events: tokio::sync::Mutex::new(log),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let app = api::router(sim).into_make_service_with_connect_info::<Conn>();
    let rx = stop_rx.clone();
    tasks.spawn(async move {
        axum::serve(conn::Listener::new(api_listener), app)
            .with_graceful_shutdown(stopped(rx))
            .await
            .context("the API server failed")
    });
    for (name, listener) in http_upstreams {
        info!(upstream = name, addr = ?listener.local_addr().ok(), "http upstream");
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            upstream::serve_http(name.clone(), listener, stopped(rx))
                .await
                .with_context(|| format!("upstream {name} failed"))
        });
    }
    for (name, listener) in tcp_upstreams {
        info!(upstream = name, addr = ?listener.local_addr().ok(), "tcp upstream");
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            upstream::serve_tcp(name, listener, stopped(rx)).await;
            Ok(())
        });
    }

    // The line tests and scripts wait for: everything above is bound and served from here on.
    println!(
        "vpsie-api-sim (development stand-in, not the real API) listening on http://{api_addr}"
    );

    let kind = tokio::select! {
        kind = stop => kind,
        // No server ends unless told to; one that does has failed, and the sim is not whole.
        Some(ended) = tasks.join_next() => {
            let _ = stop_tx.send(true);
            return Err(match ended {
                Ok(Err(e)) => e,
                Ok(Ok(())) => anyhow!("a server stopped on its own"),
                Err(e) => anyhow!("a server task died: {e}"),
            });
        }
    };
    info!(?kind, "stopping");
    let _ = stop_tx.send(true);
    if kind == Stop::Fast {
        tasks.shutdown().await;
        return Ok(());
    }
    let drained = tokio::time::timeout(GRACE, async {
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("while stopping: {e:#}"),
                Err(e) => warn!("while stopping, a server task died: {e}"),
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            "requests still in flight after {} s; stopping anyway",
            GRACE.as_secs()
        );
        tasks.shutdown().await;
    }
    Ok(())
}
