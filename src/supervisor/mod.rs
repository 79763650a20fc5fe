//! The supervisor: the long-lived parent of every Envoy epoch, in the role of Envoy's own
//! hot-restarter, with validation, rollback and crash recovery.
//!
//! Owns: the Envoy processes, the config store's `current` pointer and the supervisor state file.
//! Does not: render or fetch anything. The agent and the CLI hand it rendered configs over a Unix
//! socket ([`protocol`]); killing or restarting them never touches Envoy.
//!
//! What it does, and why (every "why" was measured with Envoy 1.40, see ARCHITECTURE.md):
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
pub mod client;
mod epochs;
mod live;
pub mod protocol;
mod server;
mod tickets;
mod transition;

pub use server::bind;
use server::{accept_loop, answer_serving, answer_status};

use crate::envoy::{self, admin::Admin, process, shm};
use crate::render::{self, CertFile, Rendered};
use crate::settings::Settings;
use crate::store::{self, ConfigStore};
use anyhow::Context;
use nix::sys::signal::Signal;
use protocol::{ApplyMethod, ApplyOutcome, ApplyRequest, ApplyResult, Request, Response, Status};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    hash: Option<String>,
    pid: Option<u32>,
    /// Known-good hashes, newest first.
    good: Vec<String>,
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
    backoff: Duration,
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
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    sup.notify_status();
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
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
            _ = sleep_until(retry_at), if retry_at.is_some() => Event::Retry,
            _ = sleep_until(next_watchdog), if next_watchdog.is_some() => Event::Watchdog,
            _ = socket_check.tick() => Event::SocketCheck,
            Some(new) = reloads.recv() => Event::Reload(Box::new(new)),
            _ = sleep_until(transitions_at), if transitions_at.is_some() => Event::Transitions,
            _ = sleep_until(Some(tickets_at)) => Event::Tickets,
        };
        match event {
            Event::Shutdown(kind) => break kind,
            Event::Request(req, reply) => {
                let resp = sup.handle(req).await;
                // The client may be gone (killed mid-apply): the work is done all the same.
                let _ = reply.send(resp);
            }
            Event::Exit(exit) => sup.on_exit(exit).await,
            Event::Retry => sup.retry().await,
            Event::Watchdog => {}
            Event::Reload(new) => sup.reload(*new).await,
            Event::Transitions => {
                sup.next_transition_check = None;
                sup.advance_transitions().await;
            }
            Event::Tickets => {
                sup.rotate_tickets().await;
                sup.next_tickets = sup.tickets.next_rotation();
            }
            Event::SocketCheck => {
                // Removed (a cleanup of /run, a mistaken rm) or replaced: nothing can reach the
                // supervisor through it any more, so listen again on a new one. (The loop's
                // bookkeeping below runs on this tick too: it is also what retries an HA track
                // file write that failed.)
                let now = socket_inode(&socket);
                if now.is_none() || now != socket_ino {
                    match server::bind(&socket).await {
                        Ok(listener) => {
                            tracing::warn!(
                                socket = %socket.display(),
                                "the supervisor's socket was removed or replaced; listening on a new one"
                            );
                            accept.abort();
                            accept = spawn_accept(listener);
                            socket_ino = socket_inode(&socket);
                        }
                        Err(e) => {
                            tracing::error!("cannot listen on the supervisor's socket again: {e:#}")
                        }
                    }
                }
            }
        }
        if let Some(d) = watchdog {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            next_watchdog = Some(Instant::now() + d);
        }
        while let Some(exit) = sup.live_died.take() {
            sup.on_exit(exit).await;
        }
        if sup.transitions.is_empty() {
            sup.next_transition_check = None;
        } else if sup.next_transition_check.is_none() {
            sup.next_transition_check = Some(Instant::now() + live::TRANSITION_POLL);
        }
        sup.publish();
        sup.notify_status();
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // A stop (maintenance, an upgrade) gives the virtual IPs away first: new clients go to a
    // peer while this Envoy drains the connections it has.
    sup.write_track_file(false);
    accept.abort();
    sup.stop(stop).await;
    rotation.abort();
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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
            backoff: Duration::from_secs(1),
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
                let result = match out.result {
                    ApplyResult::Applied => "applied",
                    ApplyResult::Rejected => "rejected",
                    ApplyResult::RolledBack => "rolled_back",
                    ApplyResult::Critical => "critical",
                    ApplyResult::Error => "error",
                    ApplyResult::Unchanged => "",
                };
                if !result.is_empty() {
                    self.metrics.applies.with_label_values(&[result]).inc();
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
            (Some(e), None) => format!(
                "epoch {}, config {}",
                e.epoch,
                &e.hash[..e.hash.len().min(12)]
            ),
            (None, None) => "waiting for the first config".to_owned(),
        };
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
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
            envoy_state: String::new(),
            envoy_pid: self.live.as_ref().map(|e| e.pid),
            hot_restart_version: Some(self.binary_hot_restart_version.clone()),
            good: self.state.good.clone(),
            last_apply: self.state.last_apply.clone(),
            critical: self.critical.clone(),
            resources: self.files.as_ref().map(|f| f.status.clone()),
            transitions: self.transitions_status(),
        });
    }

    async fn apply(&mut self, req: ApplyRequest) -> ApplyOutcome {
        let started = Instant::now();
        let previous = self.live.as_ref().map(|e| e.hash.clone());
        let mut out = ApplyOutcome {
            result: ApplyResult::Error,
            method: None,
            hash: req.hash.clone(),
            previous_hash: previous.clone(),
            epoch: self.live.as_ref().map(|e| e.epoch),
            apply_ms: 0,
            error: None,
            restore_error: None,
            envoy_log: Vec::new(),
            envoy_us: None,
            apply_id: Some(uuid::Uuid::new_v4().to_string()),
        };
        if !req.force && previous.as_deref() == Some(req.hash.as_str()) {
            out.result = ApplyResult::Unchanged;
            // How it got there, when this supervisor applied it last: a client killed while
            // handing it over learns it now, and can still report it.
            if let Some(last) = self
                .state
                .last_apply
                .as_ref()
                .filter(|l| l.hash == req.hash && l.result == ApplyResult::Applied)
            {
                out.method = last.method;
                out.previous_hash = last.previous_hash.clone();
                out.apply_ms = last.apply_ms;
                out.error = last.error.clone();
                out.apply_id = last.apply_id.clone();
            }
            return out;
        }
        let rendered = Rendered {
            config: req.config,
            files: req
                .files
                .into_iter()
                .map(|f| CertFile {
                    path: f.path,
                    contents: f.contents,
                })
                .collect(),
        };
        let path = match self.store.write(&req.hash, &rendered) {
            Ok(p) => p,
            Err(e) => {
                out.error = Some(format!("{e:#}"));
                return out;
            }
        };
        let stored = started.elapsed();
        let same_binary =
            self.binary_id.is_some() && self.binary_id == binary_id(&self.settings.envoy.binary);
        // An endpoint-only change (what the agent's splice produces: addresses and weights it
        // already judged) differs from the config Envoy runs only in endpoint lists, and that
        // config was validated whole: it goes to Envoy without `envoy --mode validate` (most of
        // a small live apply's time) and without the port check (no listener changed). Envoy
        // still confirms or refuses it, and a refusal is rolled back as always.
        // (Split once: at 10,000 backends reading the stored config back is milliseconds.)
        let live_split = match &self.live {
            Some(e) if same_binary && !req.force => Some(self.split_stored(&req.hash, e.epoch)),
            _ => None,
        };
        let endpoint_only = match (&live_split, &self.files) {
            (Some(Ok(x)), Some(f)) => live::only_endpoints_differ(&f.xds, x),
            _ => false,
        };
        let compared = started.elapsed();
        if endpoint_only {
            tracing::info!("only endpoint lists changed: validation skipped");
        } else {
            if let Err(e) = envoy::validate(&self.settings.envoy.binary, &path).await {
                out.result = match e {
                    envoy::EnvoyError::Rejected(_) => ApplyResult::Rejected,
                    _ => ApplyResult::Error,
                };
                out.error = Some(e.to_string());
                self.prune();
                return out;
            }
            if self.settings.supervisor.preflight_ports {
                if let Err(e) = self.preflight(&rendered.config) {
                    out.result = ApplyResult::RolledBack;
                    out.error = Some(e);
                    self.prune();
                    return out;
                }
            }
        }
        // Live when the running epoch can take it: same bootstrap, same binary.
        let live_epoch = self.live.as_ref().map(|e| e.epoch);
        let split = match live_split {
            Some(x) => x,
            None => self.split_stored(&req.hash, live_epoch.unwrap_or(0)),
        };
        let split = match split.and_then(|x| live::check_inotify(&x).map(|()| x)) {
            Ok(x) => std::sync::Arc::new(x),
            Err(e) => {
                out.result = ApplyResult::RolledBack;
                out.error = Some(e);
                self.prune();
                return out;
            }
        };
        let can_go_live = live_epoch.is_some()
            && same_binary
            && self
                .files
                .as_ref()
                .is_some_and(|f| f.xds.bootstrap_key == split.bootstrap_key);
        if can_go_live {
            if req.force {
                // A forced resync writes every file again, whatever is believed to be there.
                if let Some(f) = &mut self.files {
                    f.written.clear();
                }
            }
            self.apply_live_or_roll_back(&req.hash, &split, &mut out)
                .await;
        } else {
            let started = Instant::now();
            let launched = self.launch(&req.hash).await;
            out.envoy_us = Some(started.elapsed().as_micros() as u64);
            match launched {
                Ok(()) => {
                    out.result = ApplyResult::Applied;
                    out.method = Some(ApplyMethod::HotRestart);
                }
                Err(f) if self.live_exited() => {
                    // The running Envoy died under the hot restart: its child cannot take over
                    // from a parent that is gone, so nothing is restored from it either.
                    out.envoy_log = f.log;
                    self.recover_from_exit(Some(&req.hash), f.error, &mut out)
                        .await;
                }
                Err(f) => {
                    tracing::error!("the new config failed to start: {}", f.error);
                    out.error = Some(f.error);
                    out.envoy_log = f.log;
                    self.restore_into(&mut out).await;
                }
            }
        }
        let applied = started.elapsed();
        self.prune();
        out.epoch = self.live.as_ref().map(|e| e.epoch);
        out.apply_ms = started.elapsed().as_millis() as u64;
        // Where the supervisor's part of an apply goes (Envoy's is `envoy_us`).
        tracing::debug!(
            stored_us = stored.as_micros() as u64,
            split_us = compared.saturating_sub(stored).as_micros() as u64,
            applied_us = applied.as_micros() as u64,
            pruned_us = started.elapsed().as_micros() as u64,
            "apply steps"
        );
        out
    }

    /// Ports the new config listens on that the live one does not must be free: a held port
    /// would make the new epoch fail after it has already taken admin from the old one.
    fn preflight(&self, config: &str) -> Result<(), String> {
        let new_ports = listener_ports(config);
        let live_ports = self
            .live
            .as_ref()
            .and_then(|e| std::fs::read_to_string(self.store.config_path(&e.hash)).ok())
            .map(|c| listener_ports(&c))
            .unwrap_or_default();
        let addr = self.settings.envoy.listen_address;
        for port in new_ports.iter().filter(|p| !live_ports.contains(p)) {
            if let Err(e) = std::net::TcpListener::bind((addr, *port)) {
                return Err(format!(
                    "listener port {port} on {addr} cannot be bound ({e}); another process holds it. The running config keeps serving"
                ));
            }
        }
        Ok(())
    }

    /// Applies `x` inside the running epoch; on failure puts the last confirmed resources back,
    /// and when even that is not confirmed, hot restarts into the last good config.
    async fn apply_live_or_roll_back(
        &mut self,
        hash: &str,
        x: &std::sync::Arc<render::xds::Xds>,
        out: &mut ApplyOutcome,
    ) {
        let before = self.files.as_ref().map(|f| std::sync::Arc::clone(&f.xds));
        let started = Instant::now();
        let result = self.apply_live(x, hash).await;
        out.envoy_us = Some(started.elapsed().as_micros() as u64);
        match result {
            Ok(transitions) => {
                tracing::info!(%hash, moving_pools = transitions.len(), "applied live");
                self.set_transitions(transitions);
                if let Some(f) = &mut self.files {
                    f.status.live_applies += 1;
                }
                out.result = ApplyResult::Applied;
                out.method = Some(ApplyMethod::Live);
                self.metrics
                    .live_applies
                    .with_label_values(&["applied"])
                    .inc();
                self.record_good(hash);
            }
            Err(e) if self.live_exited() => {
                // Not a refusal: Envoy died. The new resources passed validation (or are the
                // validated ones with other endpoint lists), so a fresh Envoy starts with them;
                // nothing is put back into a process that is gone.
                self.recover_from_exit(Some(hash), e, out).await;
            }
            Err(e) => {
                tracing::error!(
                    "the live update failed: {e}; putting the last good resources back"
                );
                out.error = Some(e);
                if let Some(live) = &self.live {
                    out.envoy_log = live.log_tail();
                }
                self.metrics
                    .live_applies
                    .with_label_values(&["rolled_back"])
                    .inc();
                hold("put-back").await;
                let previous = self
                    .live
                    .as_ref()
                    .map(|e| e.hash.clone())
                    .unwrap_or_default();
                let back = match &before {
                    Some(b) => self.apply_live(b, &previous).await,
                    None => Err("nothing to go back to".into()),
                };
                match back {
                    Ok(transitions) => {
                        self.set_transitions(transitions);
                        out.result = ApplyResult::RolledBack;
                    }
                    Err(e2) if self.live_exited() => {
                        // Envoy refused the new resources, then died: the last good config
                        // starts afresh.
                        let why = format!(
                            "{}; then, putting the last good resources back: {e2}",
                            out.error.take().unwrap_or_default()
                        );
                        self.recover_from_exit(None, why, out).await;
                    }
                    Err(e2) => {
                        tracing::error!(
                            "the last good resources were not confirmed either ({e2}); hot restarting into the last good config"
                        );
                        self.restore_into(out).await;
                    }
                }
            }
        }
    }

    /// Whether the live epoch's process has exited (and is not replaced yet).
    fn live_exited(&self) -> bool {
        self.live.as_ref().is_some_and(|e| e.has_exited())
    }

    /// The live Envoy exited in the middle of an apply (a live update, its put-back, a hot
    /// restart): recovered as a crash, at once. Nothing more is waited on the dead process and
    /// no hot restart is tried from it (its child would wait for a parent that is gone). A fresh
    /// epoch 0 starts from the newest config known to be valid: `new` (it passed validation, or
    /// differs from a validated one in endpoint lists only, and Envoy did not refuse it) when
    /// given, else the last good one. `out` says what happened.
    async fn recover_from_exit(&mut self, new: Option<&str>, why: String, out: &mut ApplyOutcome) {
        let dead = self.live.take();
        self.metrics.envoy_up.set(0);
        self.publish();
        if let Some(d) = &dead {
            // Found dead before it was reaped: its exit status follows within a turn of the
            // runtime, and is worth the wait (it says whether it crashed or was killed).
            let _ = tokio::time::timeout(Duration::from_secs(1), d.watch().exited()).await;
        }
        let what = dead
            .as_ref()
            .map_or_else(|| "envoy exited".to_owned(), |d| d.watch().describe());
        if let Some(d) = &dead {
            if out.envoy_log.is_empty() {
                out.envoy_log = d.log_tail();
            }
        }
        let mut errors = vec![format!("{what} during the apply ({why})")];
        if let Some(new) = new {
            tracing::error!("{}; starting a fresh envoy with the new config", errors[0]);
            match self.full_restart(new, StopKind::Fast).await {
                Ok(()) => {
                    out.result = ApplyResult::Applied;
                    out.method = Some(ApplyMethod::Restart);
                    out.error = Some(format!("{}; a fresh envoy serves this config", errors[0]));
                    return;
                }
                Err(e) => {
                    tracing::error!("the new config did not start afresh either: {e}");
                    errors.push(format!("the new config did not start afresh: {e}"));
                }
            }
        }
        let good = self
            .state
            .good
            .iter()
            .find(|h| Some(h.as_str()) != new)
            .cloned()
            .or_else(|| dead.as_ref().map(|d| d.hash.clone()));
        let Some(good) = good else {
            let e = "there is no known-good config to go back to".to_owned();
            out.result = ApplyResult::Critical;
            out.error = Some(errors.join("; "));
            out.restore_error = Some(e.clone());
            self.enter_critical(e);
            return;
        };
        tracing::error!(
            "{}; starting a fresh envoy with the last good config",
            errors.join("; ")
        );
        out.error = Some(errors.join("; "));
        match self.full_restart(&good, StopKind::Fast).await {
            Ok(()) => out.result = ApplyResult::RolledBack,
            Err(e) => {
                out.result = ApplyResult::Critical;
                out.restore_error = Some(e.clone());
                self.enter_critical(e);
            }
        }
    }

    /// Restores the last good config after a failure, and says how that went in `out`.
    async fn restore_into(&mut self, out: &mut ApplyOutcome) {
        match self.restore().await {
            Ok(()) => out.result = ApplyResult::RolledBack,
            Err(e) => {
                out.result = ApplyResult::Critical;
                out.restore_error = Some(e.clone());
                self.enter_critical(e);
            }
        }
    }

    /// After a failed start: bring the last good config back, keeping traffic where possible.
    async fn restore(&mut self) -> Result<(), String> {
        let Some(good) = self
            .live
            .as_ref()
            .map(|e| e.hash.clone())
            .or_else(|| self.state.good.first().cloned())
        else {
            return Err("there is no known-good config to go back to".into());
        };
        // A hot restart needs a parent that runs: a dead one is replaced by a fresh start.
        let parent = self.live.as_ref().filter(|e| !e.has_exited());
        if let Some((live_epoch, watch)) = parent.map(|e| (e.epoch, e.watch())) {
            match shm::clear_initializing(
                self.settings.envoy.base_id,
                &self.binary_hot_restart_version,
            ) {
                Ok(true) => tracing::warn!(
                    "cleared the stale 'initializing' mark the failed epoch left in shared memory"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot check the hot restart shared memory: {e:#}"),
            }
            // The failed child never became a parent, so its epoch number is the one the live
            // parent answers to.
            match self.start(&good, live_epoch + 1, Some(watch)).await {
                Ok((e, files)) => {
                    self.set_live(e, files, &good);
                    return Ok(());
                }
                Err(f) => tracing::error!(
                    "hot restart back to the last good config failed: {}",
                    f.error
                ),
            }
        }
        self.full_restart(&good, StopKind::Fast).await
    }

    /// Stops every epoch and starts `hash` as epoch 0 on clean shared memory.
    async fn full_restart(&mut self, hash: &str, how: StopKind) -> Result<(), String> {
        self.stop_all(how).await;
        if let Err(e) = shm::remove_stale(self.settings.envoy.base_id) {
            tracing::warn!("{e:#}");
        }
        match self.start(hash, 0, None).await {
            Ok((e, files)) => {
                self.set_live(e, files, hash);
                Ok(())
            }
            Err(f) => Err(format!("{} (envoy: {})", f.error, f.log.join(" | "))),
        }
    }

    async fn on_exit(&mut self, exit: process::Exit) {
        if self.live.as_ref().map(|e| e.pid) != Some(exit.pid) {
            self.forget(exit);
            return;
        }
        let Some(dead) = self.live.take() else { return };
        self.metrics.envoy_up.set(0);
        self.publish();
        tracing::error!(
            epoch = dead.epoch,
            pid = dead.pid,
            "the live envoy exited ({}); restarting the last good config. Its last lines: {}",
            describe(&exit.status),
            dead.log_tail().join(" | ")
        );
        if let Err(e) = self.full_restart(&dead.hash, StopKind::Fast).await {
            self.enter_critical(e);
        }
    }

    fn enter_critical(&mut self, error: String) {
        tracing::error!(
            "CRITICAL: envoy is not serving and could not be restored: {error}; retrying in {:?}",
            self.backoff
        );
        self.critical = Some(error);
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn retry(&mut self) {
        self.retry_at = None;
        let Some(hash) = self.state.good.first().cloned() else {
            return;
        };
        if let Err(e) = self.full_restart(&hash, StopKind::Fast).await {
            self.enter_critical(e);
        }
    }

    fn prune(&self) {
        let mut keep = self.state.good.clone();
        keep.extend(self.live.iter().chain(&self.old).map(|e| e.hash.clone()));
        if let Err(e) = self.store.prune(&keep) {
            tracing::warn!("{e:#}");
        }
        // xDS directories of epochs that no longer run.
        let running: Vec<String> = self
            .live
            .iter()
            .chain(&self.old)
            .map(|e| e.epoch.to_string())
            .collect();
        if let Ok(entries) = std::fs::read_dir(live::xds_root(&self.settings)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.bytes().all(|b| b.is_ascii_digit()) && !running.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    async fn stop(&mut self, how: StopKind) {
        tracing::info!(?how, "supervisor stopping");
        self.stop_all(how).await;
    }
}

use process::describe;

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

/// The ports of a rendered config's listeners.
fn listener_ports(config: &str) -> Vec<u16> {
    #[derive(Deserialize)]
    struct Doc {
        static_resources: Res,
    }
    #[derive(Deserialize)]
    struct Res {
        listeners: Vec<L>,
    }
    #[derive(Deserialize)]
    struct L {
        address: A,
    }
    #[derive(Deserialize)]
    struct A {
        socket_address: S,
    }
    #[derive(Deserialize)]
    struct S {
        port_value: u16,
    }
    serde_json::from_str::<Doc>(config)
        .map(|d| {
            d.static_resources
                .listeners
                .into_iter()
                .map(|l| l.address.socket_address.port_value)
                .collect()
        })
        .unwrap_or_default()
}
