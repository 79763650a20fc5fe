//! The supervisor: the long-lived parent of every Envoy epoch, in the role of Envoy's own
//! hot-restarter, with validation, rollback and crash recovery.
//!
//! Owns: the Envoy processes, the config store's `current` pointer and the supervisor state file.
//! Does not: render or fetch anything. The agent and the CLI hand it rendered configs over a Unix
//! socket ([`protocol`]); killing or restarting them never touches Envoy.
//!
//! What it does, and why (every "why" was measured with Envoy 1.40, see docs/internals.md):
//! - **apply**: store the config under its hash, `envoy --mode validate` it (unless only its
//!   endpoint lists differ from the running config's), check that the ports it adds can be bound
//!   and that its xDS subscriptions fit the inotify limit. Then, when the
//!   bootstrap and the Envoy binary are unchanged, put its resources into the running epoch
//!   live ([`live`]: xDS files, make before break, confirmed; rolled back when Envoy refuses or
//!   does not confirm; done once Envoy took it, a pool that moved finishing its transition in
//!   this loop afterwards, see [`transition`]). Otherwise hot restart: wait for the previous
//!   parent to finish draining (a new child makes Envoy kill its grandparent at once, cutting
//!   what it still drains), start epoch N+1 from its own xDS directory and wait until
//!   `/server_info` says LIVE with that epoch and every resource is confirmed.
//! - **a child that fails**: by then it has made the parent stop its admin and its listeners, and
//!   left the shared memory marked "initializing". The supervisor clears that stale mark and
//!   starts the *same* epoch number again with the last good config (the dead child never became
//!   a parent), which takes the sockets over and restores admin. If that fails too: full restart.
//! - **Envoy dies**: start epoch 0 with the last good config at once, stale shared memory removed.
//! - **the supervisor dies**: Envoy dies with it (PR_SET_PDEATHSIG, any epoch); a restarted
//!   supervisor starts the current config afresh. Only the agent may come and go freely.
//! - **SIGTERM**: fail health checks, drain listeners gracefully, wait up to the drain time, stop
//!   Envoy, SIGKILL after a deadline.
//!
//! The supervisor must run on a current-thread runtime on the main thread: Envoy's hot-restart
//! children set PR_SET_PDEATHSIG, so they die with the *thread* that spawned them.

mod access_log;
mod apply;
pub mod client;
mod confirm;
mod epochs;
mod live;
mod moving;
pub mod protocol;
mod recovery;
mod server;
mod tickets;
mod transition;

use crate::spec::ConfigHash;
pub use server::bind;
use server::{accept_loop, answer_serving, answer_status};
pub use transition::WARM_FROM;

use crate::envoy::{admin::Admin, process};
use crate::settings::Settings;
use crate::store::{self, ConfigStore};
use protocol::{ApplyOutcome, Request, Response, Status};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// Known-good configs kept on disk: the live one and five backups.
const KEEP_GOOD: usize = 6;
/// How often the admin API is asked whether a new epoch is LIVE.
const LIVE_POLL: Duration = Duration::from_millis(25);
/// How long a process gets after SIGTERM before SIGKILL.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the supervisor remembers across its own restarts (`<state_dir>/supervisor.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    epoch: Option<u32>,
    hash: Option<ConfigHash>,
    pid: Option<u32>,
    /// Known-good hashes, newest first.
    good: Vec<ConfigHash>,
    last_apply: Option<ApplyOutcome>,
}

/// Why starting an epoch failed, with Envoy's last words.
#[derive(Debug)]
struct StartFailure {
    error: String,
    log: Vec<String>,
}

/// Everything the main loop reacts to.
enum Event {
    Request(Request, oneshot::Sender<Response>),
    Exit(process::Exit),
    Retry,
    Watchdog,
    /// Time to check that the socket on disk is still the one listened on.
    SocketCheck,
    /// The settings file, read again (SIGHUP).
    Reload(Box<anyhow::Result<Settings>>),
    /// Time to look at the pools in transition.
    Transitions,
    /// A new window of session-ticket keys.
    Tickets,
    Shutdown(StopKind),
}

/// How often the supervisor checks that its socket is still on disk.
const SOCKET_CHECK: Duration = Duration::from_secs(2);

/// The inode of the socket file at `path`, if there is one.
fn socket_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// How to stop: TERM drains, INT does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    Graceful,
    Fast,
}

pub struct Supervisor {
    settings: Settings,
    store: ConfigStore,
    admin: Admin,
    state_path: PathBuf,
    state: State,
    live: Option<process::Epoch>,
    /// Previous epochs that are still draining.
    old: Vec<process::Epoch>,
    exits_tx: mpsc::UnboundedSender<process::Exit>,
    exits_rx: mpsc::UnboundedReceiver<process::Exit>,
    binary_hot_restart_version: String,
    /// Set while Envoy is down and could not be restored.
    critical: Option<String>,
    retry_at: Option<Instant>,
    backoff: crate::backoff::Backoff,
    /// What `status` answers, published after every change.
    snapshot: watch::Sender<Status>,
    /// The live epoch's exit, when it was seen while waiting for something else.
    live_died: Option<process::Exit>,
    metrics: std::sync::Arc<crate::metrics::SupervisorMetrics>,
    /// The live epoch's xDS files and the resources Envoy confirmed.
    files: Option<live::LiveFiles>,
    /// The Envoy binary the live epoch was started from: another one needs a new process.
    binary_id: Option<BinaryId>,
    /// What the HA track file last said (`Some(true)`: serving), so it is written on changes only.
    track_written: std::cell::Cell<Option<bool>>,
    /// The access log settings the rotation task follows (changed by a reload).
    access_log_tx: watch::Sender<crate::settings::AccessLogSettings>,
    /// Pools moving to new hosts in the live epoch, by pool (see [`transition`]).
    transitions: std::collections::BTreeMap<String, transition::Transition>,
    /// When the transitions are looked at next.
    next_transition_check: Option<Instant>,
    /// The session-ticket keys, and when they next rotate.
    tickets: tickets::Tickets,
    next_tickets: Instant,
}

/// What identifies the Envoy binary on disk (device, inode, size, modification time).
type BinaryId = (u64, u64, u64, i64);

fn binary_id(path: &Path) -> Option<BinaryId> {
    use std::os::unix::fs::MetadataExt;
    let resolved = if path.components().count() == 1 {
        // A bare name is looked up on the PATH, as spawning it does.
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(path))
                .find(|p| p.is_file())
        })?
    } else {
        path.to_path_buf()
    };
    let m = std::fs::metadata(resolved).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime()))
}

/// Runs the supervisor until `shutdown` resolves, then stops Envoy the way it says.
pub async fn run(
    settings: Settings,
    listener: UnixListener,
    shutdown: impl Future<Output = StopKind>,
    mut reloads: mpsc::UnboundedReceiver<anyhow::Result<Settings>>,
) -> anyhow::Result<()> {
    if settings.envoy.ipv6_left_out() {
        tracing::warn!("this kernel has no IPv6: listeners bind 0.0.0.0 only, and IPv6 clients reach nothing (envoy.listen_addresses)");
    }
    let mut sup = Supervisor::new(settings).await?;
    let rotation = tokio::spawn(access_log::run(
        sup.access_log_tx.subscribe(),
        sup.admin.clone(),
        sup.metrics.clone(),
    ));
    sup.resume().await;
    sup.publish();
    // READY once Envoy is LIVE with the current config, or at once when there is none yet (the
    // agent, ordered after this unit, brings the first one).
    crate::systemd::ready();
    sup.notify_status();
    let watchdog = crate::systemd::watchdog_interval();
    let mut next_watchdog = watchdog.map(|d| Instant::now() + d);
    let (req_tx, mut req_rx) = mpsc::channel(16);
    let spawn_accept = {
        let (snapshot, admin, metrics) = (
            sup.snapshot.subscribe(),
            sup.admin.clone(),
            sup.metrics.clone(),
        );
        move |listener| {
            tokio::spawn(accept_loop(
                listener,
                req_tx.clone(),
                snapshot.clone(),
                admin.clone(),
                metrics.clone(),
            ))
        }
    };
    let socket = sup.settings.supervisor.socket.clone();
    let mut socket_ino = socket_inode(&socket);
    let mut accept = spawn_accept(listener);
    let mut socket_check = tokio::time::interval(SOCKET_CHECK);
    socket_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let stop = loop {
        let retry_at = sup.retry_at;
        let transitions_at = sup.next_transition_check;
        let tickets_at = sup.next_tickets;
        let event = tokio::select! {
            kind = &mut shutdown => Event::Shutdown(kind),
            Some((req, reply)) = req_rx.recv() => Event::Request(req, reply),
            Some(exit) = sup.exits_rx.recv() => Event::Exit(exit),
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now).into()), if retry_at.is_some() => Event::Retry,
            _ = tokio::time::sleep_until(next_watchdog.unwrap_or_else(Instant::now).into()), if next_watchdog.is_some() => Event::Watchdog,
            _ = socket_check.tick() => Event::SocketCheck,
            Some(new) = reloads.recv() => Event::Reload(Box::new(new)),
            _ = tokio::time::sleep_until(transitions_at.unwrap_or_else(Instant::now).into()), if transitions_at.is_some() => Event::Transitions,
            _ = tokio::time::sleep_until(tickets_at.into()) => Event::Tickets,
        };
        match event {
            Event::Shutdown(kind) => break kind,
            Event::SocketCheck => {
                // Removed (a cleanup of /run, a mistaken rm) or replaced: nothing can reach the
                // supervisor through it any more, so listen again on a new one. (The loop's
                // bookkeeping below runs on this tick too: it is also what retries an HA track
                // file write that failed.)
                let now = socket_inode(&socket);
                if now.is_none() || now != socket_ino {
                    if let Some(listener) = listen_again(&socket).await {
                        accept.abort();
                        accept = spawn_accept(listener);
                        socket_ino = socket_inode(&socket);
                    }
                }
            }
            other => sup.dispatch(other).await,
        }
        if let Some(d) = watchdog {
            crate::systemd::watchdog();
            next_watchdog = Some(Instant::now() + d);
        }
        sup.after_event().await;
    };
    crate::systemd::stopping();
    // A stop (maintenance, an upgrade) gives the virtual IPs away first: new clients go to a
    // peer while this Envoy drains the connections it has.
    sup.write_track_file(false);
    accept.abort();
    sup.stop(stop).await;
    rotation.abort();
    Ok(())
}

/// A new socket where the old one was, or `None` (logged) when it cannot be bound.
async fn listen_again(socket: &Path) -> Option<UnixListener> {
    match server::bind(socket).await {
        Ok(listener) => {
            tracing::warn!(
                socket = %socket.display(),
                "the supervisor's socket was removed or replaced; listening on a new one"
            );
            Some(listener)
        }
        Err(e) => {
            tracing::error!("cannot listen on the supervisor's socket again: {e:#}");
            None
        }
    }
}

impl Supervisor {
    async fn new(settings: Settings) -> anyhow::Result<Supervisor> {
        let binary_hot_restart_version =
            process::binary_hot_restart_version(&settings.envoy.binary).await?;
        let admin = Admin::new(&settings.envoy.admin_socket)?;
        // Envoy opens the access log when it validates or starts a config: its directory must be
        // there first.
        access_log::prepare_dir(&settings.access_log.path)?;
        let state_path = settings.state_dir.join("supervisor.json");
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "ignoring unreadable state file {}: {e}",
                    state_path.display()
                );
                State::default()
            }),
            Err(_) => State::default(),
        };
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let tickets = tickets::Tickets::load(&settings)?;
        Ok(Supervisor {
            store: ConfigStore::new(&settings.envoy.config_dir),
            admin,
            state_path,
            state,
            live: None,
            old: Vec::new(),
            exits_tx,
            exits_rx,
            binary_hot_restart_version,
            critical: None,
            retry_at: None,
            backoff: crate::backoff::Backoff::new(Duration::from_secs(1), MAX_BACKOFF),
            snapshot: watch::channel(Status::default()).0,
            live_died: None,
            metrics: std::sync::Arc::new(crate::metrics::SupervisorMetrics::new()),
            files: None,
            binary_id: None,
            track_written: std::cell::Cell::new(None),
            access_log_tx: watch::channel(settings.access_log.clone()).0,
            transitions: Default::default(),
            next_transition_check: None,
            next_tickets: tickets.next_rotation(),
            tickets,
            settings,
        })
    }

    /// One event of the loop (all but a stop and the socket check, which the loop itself
    /// handles).
    async fn dispatch(&mut self, event: Event) {
        match event {
            Event::Request(req, reply) => {
                let applied = matches!(req, Request::Apply(_));
                let resp = self.handle(req).await;
                // The client may be gone (killed mid-apply): the work is done all the same.
                let _ = reply.send(resp);
                if applied {
                    // Once the answer is written (its connection's task runs first, on this
                    // one thread), not on the client's time.
                    tokio::task::yield_now().await;
                    release_freed_memory();
                }
            }
            Event::Exit(exit) => self.on_exit(exit).await,
            Event::Retry => self.retry().await,
            Event::Watchdog => {}
            Event::Reload(new) => self.reload(*new).await,
            Event::Transitions => {
                self.next_transition_check = None;
                self.advance_transitions().await;
            }
            Event::Tickets => {
                self.rotate_tickets().await;
                self.next_tickets = self.tickets.next_rotation();
            }
            Event::Shutdown(_) | Event::SocketCheck => {}
        }
    }

    /// The loop's bookkeeping after every event: an epoch that died meanwhile recovered, the
    /// next look at moving pools scheduled, the status published.
    async fn after_event(&mut self) {
        while let Some(exit) = self.live_died.take() {
            self.on_exit(exit).await;
        }
        if self.transitions.is_empty() {
            self.next_transition_check = None;
        } else if self.next_transition_check.is_none() {
            self.next_transition_check = Some(Instant::now() + moving::TRANSITION_POLL);
        }
        self.publish();
        self.notify_status();
    }

    fn save(&self) {
        let result = serde_json::to_vec_pretty(&self.state)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| store::write_private(&self.state_path, &bytes));
        if let Err(e) = result {
            tracing::error!("cannot save the supervisor state: {e:#}");
        }
    }

    /// At start-up: start the current config afresh, or wait for the first apply. Nothing of
    /// ours can still be running: Envoy dies with the supervisor that started it (it sets
    /// PR_SET_PDEATHSIG), so a restarted supervisor always begins at epoch 0.
    async fn resume(&mut self) {
        let Some(hash) = self.store.current() else {
            tracing::info!("no config applied yet; waiting for the first apply");
            return;
        };
        tracing::info!(%hash, "starting the current config");
        if let Err(e) = self.full_restart(&hash, StopKind::Fast).await {
            self.enter_critical(e);
        }
    }

    async fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => answer_status(&self.snapshot.subscribe(), &self.admin).await,
            Request::Metrics => Response::Metrics {
                text: self.metrics.render(),
            },
            Request::Serving => answer_serving(&self.snapshot.borrow()),
            Request::Apply(a) => {
                // Logged on arrival: an operator (and a test) can tell an apply in progress
                // from one never received.
                tracing::info!(hash = %a.hash, force = a.force, "apply requested");
                let span =
                    tracing::info_span!("apply", hash = %a.hash, epoch = tracing::field::Empty);
                let out = self.apply(a).instrument(span).await;
                if let Some(result) = out.result.counted() {
                    self.metrics.applies.inc(result);
                    self.metrics
                        .apply_duration
                        .observe(out.apply_ms as f64 / 1000.0);
                }
                self.state.last_apply = Some(out.clone());
                self.save();
                Response::Apply(out)
            }
        }
    }

    /// Tells systemd what runs (a no-op outside systemd).
    fn notify_status(&self) {
        let status = match (&self.live, &self.critical) {
            (_, Some(c)) => format!("CRITICAL: envoy is not serving: {c}"),
            (Some(e), None) => format!("epoch {}, config {}", e.epoch, e.hash.short()),
            (None, None) => "waiting for the first config".to_owned(),
        };
        crate::systemd::status(&status);
    }

    /// With high availability: tells keepalived, through its track file, whether Envoy serves a
    /// config (0) or not (1). Called on every change of state, so a node whose Envoy stops gives
    /// its virtual IPs away at once instead of at keepalived's next check.
    fn write_track_file(&self, serving: bool) {
        let Some(ha) = &self.settings.ha else { return };
        if self.track_written.get() == Some(serving) {
            return;
        }
        // Written in place, not renamed: keepalived watches the file it was told about. If
        // keepalived made it first (as root), it is replaced: this directory is ours.
        let text = if serving { "0\n" } else { "1\n" };
        let written = std::fs::write(&ha.track_file, text).or_else(|e| {
            if e.kind() != std::io::ErrorKind::PermissionDenied {
                return Err(e);
            }
            std::fs::remove_file(&ha.track_file)?;
            std::fs::write(&ha.track_file, text)
        });
        match written {
            Ok(()) => {
                self.track_written.set(Some(serving));
                tracing::info!(serving, "HA track file {} updated", ha.track_file.display());
            }
            Err(e) => tracing::error!(
                "cannot write the HA track file {}: {e}; keepalived's check will see it within seconds",
                ha.track_file.display()
            ),
        }
    }

    /// Publishes what `status` shows; `envoy_state` is filled in live when asked.
    fn publish(&self) {
        self.write_track_file(self.live.is_some() && self.critical.is_none());
        self.snapshot.send_replace(Status {
            epoch: self.live.as_ref().map(|e| e.epoch),
            hash: self.live.as_ref().map(|e| e.hash.clone()),
            envoy_state: Default::default(),
            envoy_pid: self.live.as_ref().map(|e| e.pid),
            hot_restart_version: Some(self.binary_hot_restart_version.clone()),
            good: self.state.good.clone(),
            last_apply: self.state.last_apply.clone(),
            critical: self.critical.clone(),
            resources: self.files.as_ref().map(|f| f.status.clone()),
            transitions: self.transitions_status(),
        });
    }

    fn prune(&self) {
        let mut keep = self.state.good.clone();
        keep.extend(self.live.iter().chain(&self.old).map(|e| e.hash.clone()));
        if let Err(e) = self.store.prune(&keep) {
            tracing::warn!("{e:#}");
        }
        // xDS directories and stderr files of epochs that no longer run.
        let running: Vec<String> = self
            .live
            .iter()
            .chain(&self.old)
            .map(|e| e.epoch.to_string())
            .collect();
        let gone = |epoch: &str| {
            !epoch.is_empty()
                && epoch.bytes().all(|b| b.is_ascii_digit())
                && !running.iter().any(|r| r == epoch)
        };
        if let Ok(entries) = std::fs::read_dir(live::xds_root(&self.settings)) {
            for e in entries.flatten() {
                if gone(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(live::stderr_dir(&self.settings)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let epoch = name
                    .strip_prefix("envoy-")
                    .and_then(|n| n.strip_suffix(".stderr"));
                if epoch.is_some_and(gone) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    async fn stop(&mut self, how: StopKind) {
        tracing::info!(?how, "supervisor stopping");
        self.stop_all(how).await;
    }
}

/// Debug builds only (the tests' binary): holds the supervisor at a named step while the file
/// `$VPSIE_LB_TEST_HOLD_DIR/<step>` exists, after writing `<step>.reached` beside it, so that a
/// test can kill a process at exactly that step instead of by timing luck. Release builds (the
/// image) compile it to nothing.
#[cfg(debug_assertions)]
async fn hold(step: &str) {
    let Some(dir) = std::env::var_os("VPSIE_LB_TEST_HOLD_DIR").map(PathBuf::from) else {
        return;
    };
    let gate = dir.join(step);
    if !gate.exists() {
        return;
    }
    let _ = std::fs::write(dir.join(format!("{step}.reached")), b"");
    tracing::warn!(step, "held at a test step");
    let deadline = Instant::now() + Duration::from_secs(60);
    while gate.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(not(debug_assertions))]
async fn hold(_step: &str) {}

/// Gives the memory an apply freed back to the system. mimalloc (the binary's allocator) purges
/// a thread's freed pages when that thread next allocates, and the supervisor's one thread is
/// then idle until the next apply: without this, the peak of an apply (the config parsed and
/// split) stays resident.
fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks mimalloc's own heaps; it is safe to call at any time,
    // also when mimalloc is not the global allocator (then it has little or nothing to free).
    unsafe { libmimalloc_sys::mi_collect(true) }
}
