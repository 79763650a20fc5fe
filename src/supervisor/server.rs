//! The supervisor's Unix socket: who may connect, one JSON line in, one out. Status is answered
//! here without waiting for the loop (it may be busy with an apply); everything else goes to it.

use super::protocol::{self, Request, Response, Status};
use crate::envoy::admin::Admin;
use crate::envoy::admin::EnvoyState;
use crate::store;
use anyhow::Context;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

/// Binds the supervisor's socket (mode 0600), refusing to run beside another supervisor.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another supervisor is already listening on {}; two supervisors would fight over Envoy",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        store::create_private_dir(dir)?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(listener)
}

/// Status is answered here, from the last published snapshot plus a live look at the admin API,
/// so that it never waits behind an apply (which can wait a whole drain time).
pub(super) async fn answer_status(snapshot: &watch::Receiver<Status>, admin: &Admin) -> Response {
    let mut s = snapshot.borrow().clone();
    s.envoy_state = match (s.envoy_pid, admin.server_info().await) {
        (None, _) => EnvoyState::NotRunning,
        (Some(_), Ok(info)) => info.state,
        (Some(_), Err(_)) => EnvoyState::Unreachable,
    };
    Response::Status(Box::new(s))
}

/// From the snapshot alone: see [`Request::Serving`].
pub(super) fn answer_serving(s: &Status) -> Response {
    let reason = match (&s.critical, &s.hash, s.envoy_pid) {
        (Some(c), _, _) => format!("envoy is not serving: {c}"),
        (None, None, _) => "no config is applied yet".to_owned(),
        (None, Some(_), None) => "envoy is not running".to_owned(),
        (None, Some(_), Some(_)) => String::new(),
    };
    Response::Serving {
        serving: reason.is_empty(),
        reason,
    }
}

/// The waits after failed accepts: from 10 ms, doubling, up to 1 s.
fn accept_backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    )
}

/// The next accepted connection. An accept that fails (out of file descriptors, most likely)
/// fails again at once: wait, doubling, instead of spinning a core; the connections already
/// open are served meanwhile.
async fn next_accepted<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut accept: impl FnMut() -> F,
    backoff: &mut crate::backoff::Backoff,
) -> T {
    loop {
        match accept().await {
            Ok(t) => {
                backoff.reset();
                return t;
            }
            Err(e) => {
                let wait = backoff.fail();
                tracing::warn!("cannot accept on the supervisor's socket ({e}); again in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

pub(super) async fn accept_loop(
    listener: UnixListener,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
    snapshot: watch::Receiver<Status>,
    admin: Admin,
    metrics: std::sync::Arc<crate::metrics::SupervisorMetrics>,
) {
    let mut backoff = accept_backoff();
    loop {
        let (stream, _) = next_accepted(|| listener.accept(), &mut backoff).await;
        let requests = requests.clone();
        let (snapshot, admin, metrics) = (snapshot.clone(), admin.clone(), metrics.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read.take(protocol::MAX_LINE as u64)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Err(e) => Response::Error {
                        message: format!("cannot read the request: {e}"),
                    },
                    Ok(Request::Status) => answer_status(&snapshot, &admin).await,
                    Ok(Request::Metrics) => Response::Metrics {
                        text: metrics.render(),
                    },
                    Ok(Request::Serving) => answer_serving(&snapshot.borrow()),
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send((req, tx)).await.is_err() {
                            return;
                        }
                        match rx.await {
                            Ok(r) => r,
                            Err(_) => return,
                        }
                    }
                };
                let Ok(mut out) = serde_json::to_vec(&resp) else {
                    return;
                };
                out.push(b'\n');
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    /// Failed accepts wait 10, 20, 40 ms (Tokio's clock, paused: no real time passes), and a
    /// success starts the waits over.
    #[tokio::test(start_paused = true)]
    async fn a_failing_accept_waits_doubling_instead_of_spinning() {
        let mut backoff = accept_backoff();
        let calls = std::cell::RefCell::new(Vec::new());
        let fail_until = std::cell::Cell::new(4);
        let accept = || {
            calls.borrow_mut().push(Instant::now());
            let n = calls.borrow().len();
            let fail = n < fail_until.get();
            async move {
                if fail {
                    Err("Too many open files")
                } else {
                    Ok(n)
                }
            }
        };
        let start = Instant::now();
        assert_eq!(next_accepted(accept, &mut backoff).await, 4);
        let gaps: Vec<Duration> = calls.borrow().windows(2).map(|w| w[1] - w[0]).collect();
        let ms = Duration::from_millis;
        assert_eq!(gaps, [ms(10), ms(20), ms(40)]);
        assert_eq!(calls.borrow()[0], start);
        // After a success, the next failure waits the first wait again.
        fail_until.set(2);
        calls.borrow_mut().clear();
        assert_eq!(next_accepted(accept, &mut backoff).await, 2);
        let c = calls.borrow();
        assert_eq!(c[1] - c[0], ms(10));
    }
}
