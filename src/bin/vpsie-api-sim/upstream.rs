//! Backends that say who they are, for demos and tests: an HTTP one answering every request with
//! 200, body NAME and `x-backend: NAME`, and a TCP one writing NAME and closing. They do nothing
//! else (no health endpoints, no TLS): the test suite has richer upstreams of its own.

use axum::http::{HeaderName, StatusCode};
use axum::Router;
use std::future::Future;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub async fn serve_http(
    name: String,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().fallback(move || {
        let name = name.clone();
        async move {
            (
                StatusCode::OK,
                [(HeaderName::from_static("x-backend"), name.clone())],
                name,
            )
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

pub async fn serve_tcp(name: String, listener: TcpListener, stop: impl Future<Output = ()>) {
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    let name = name.clone();
                    conns.spawn(async move {
                        // A client that went away already is no concern of a demo backend.
                        let _ = stream.write_all(name.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
                Err(e) => {
                    tracing::warn!(upstream = name, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow with every one served.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Connections in flight only write a few bytes; let them finish (the caller bounds the wait).
    while conns.join_next().await.is_some() {}
}
