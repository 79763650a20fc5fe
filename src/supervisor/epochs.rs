//! Envoy epochs: starting one (hot restart or fresh), waiting until it is LIVE, waiting for old
//! ones to exit, draining and stopping them. The loop in `mod.rs` decides when; this does it.

use super::{
    binary_id, hold, live, StartFailure, StopKind, Supervisor, KEEP_GOOD, KILL_DEADLINE, LIVE_POLL,
};
use crate::envoy::admin::EnvoyState;
use crate::envoy::process::{self, describe};
use crate::metrics;
use crate::render::xds;
use crate::spec::ConfigHash;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

impl Supervisor {
    /// Starts the config as the next epoch: a hot restart when Envoy runs, else a fresh start.
    pub(super) async fn launch(&mut self, hash: &ConfigHash) -> Result<(), StartFailure> {
        let Some(live_epoch) = self.live.as_ref().map(|e| e.epoch) else {
            return self
                .full_restart(hash, StopKind::Fast)
                .await
                .map_err(|error| StartFailure {
                    error,
                    log: Vec::new(),
                });
        };
        match self.admin.hot_restart_version().await {
            Ok(v) if v == self.binary_hot_restart_version => {}
            Ok(v) => {
                tracing::warn!(
                    running = %v,
                    binary = %self.binary_hot_restart_version,
                    "the Envoy binary changed its hot restart version; doing a controlled full restart"
                );
                return self
                    .full_restart(hash, StopKind::Graceful)
                    .await
                    .map_err(|error| StartFailure {
                        error,
                        log: Vec::new(),
                    });
            }
            Err(e) => tracing::warn!("cannot read the running hot restart version: {e:#}"),
        }
        self.wait_old_exited().await;
        // Never a hot restart from a parent that is gone: the caller recovers it as a crash.
        let parent = match &self.live {
            Some(live) if !live.has_exited() => live.watch(),
            Some(live) => {
                return Err(StartFailure {
                    error: format!("{} before the hot restart", live.watch().describe()),
                    log: live.log_tail(),
                })
            }
            None => {
                return Err(StartFailure {
                    error: "envoy exited before the hot restart".into(),
                    log: Vec::new(),
                })
            }
        };
        let (e, files) = self.start(hash, live_epoch + 1, Some(parent)).await?;
        self.set_live(e, files, hash);
        Ok(())
    }

    /// Spawns one epoch from the stored config `hash`, its xDS files written afresh into the
    /// epoch's own directory, and waits until it is LIVE with every resource active. On failure
    /// the process is gone and reaped. A hot restart names its `parent`: if that exits before
    /// the child is LIVE, the child can never take over, and the start fails at once.
    pub(super) async fn start(
        &mut self,
        hash: &ConfigHash,
        epoch: u32,
        parent: Option<process::ExitWatch>,
    ) -> Result<(process::Epoch, live::LiveFiles), StartFailure> {
        let fail = |error: String| StartFailure {
            error,
            log: Vec::new(),
        };
        let x = std::sync::Arc::new(self.split_stored(hash, epoch).map_err(fail)?);
        // The runtime layer follows the supervisor's settings and the config's own keys, and the
        // session-ticket keys are those of this time: neither is one of the config's files.
        let own = [
            xds::runtime_file(&self.settings.access_log, &x.runtime),
            self.tickets.current_file(),
        ];
        let files = live::LiveFiles::create(&x, hash, &self.settings, own).map_err(fail)?;
        let path = x.dir.join("bootstrap.json");
        let binary = binary_id(&self.settings.envoy.binary);
        if let Some(p) = &parent {
            hold("hot-restart-spawn").await;
            // The last moment to find the parent gone without leaving a child waiting for it.
            if p.has_exited() {
                return Err(fail(format!(
                    "{} before epoch {epoch} was started",
                    p.describe()
                )));
            }
        }
        let e = process::spawn(
            &self.settings,
            &path,
            (epoch, hash),
            &live::stderr_path(&self.settings, epoch),
            self.exits_tx.clone(),
        )
        .map_err(|err| fail(format!("{err:#}")))?;
        tracing::Span::current().record("epoch", epoch);
        tracing::info!(epoch, pid = e.pid, "started envoy epoch");
        let timeout = Duration::from_secs(self.settings.supervisor.live_timeout_s.into());
        let result = match self.wait_live(&e, timeout, parent.as_ref()).await {
            Ok(()) => {
                if parent.is_some() {
                    hold("hot-restart-live").await;
                }
                self.confirm_started(&x, &e.watch())
                    .await
                    .map_err(|err| (err, false))
            }
            Err(failed) => Err(failed),
        };
        match result {
            Ok(()) => {
                self.binary_id = binary;
                Ok((e, files))
            }
            Err((error, exited)) => {
                if !exited {
                    e.signal(Signal::SIGKILL);
                    self.wait_exit(e.pid, KILL_DEADLINE).await;
                }
                let log = e.log_tail();
                let error = match process::diagnose(&log, self.settings.envoy.base_id) {
                    Some(why) => format!("{error}: {why}"),
                    None => error,
                };
                Err(StartFailure { error, log })
            }
        }
    }

    pub(super) fn set_live(
        &mut self,
        e: process::Epoch,
        files: live::LiveFiles,
        hash: &ConfigHash,
    ) {
        tracing::info!(epoch = e.epoch, pid = e.pid, %hash, "envoy epoch is LIVE");
        let kind = if e.epoch == 0 {
            metrics::Restart::Full
        } else {
            metrics::Restart::Hot
        };
        self.metrics.envoy_restarts.inc(kind);
        self.metrics.envoy_up.set(1);
        self.metrics.envoy_epoch.set(e.epoch.into());
        if let Some(prev) = self.live.replace(e) {
            self.old.push(prev);
        }
        self.files = Some(files);
        // A new epoch starts from the configs' own lists: nothing is held any more.
        self.end_transitions(metrics::TransitionEnd::Dropped);
        let live = self.live.as_ref();
        self.state.epoch = live.map(|e| e.epoch);
        self.state.pid = live.map(|e| e.pid);
        self.record_good(hash);
    }

    /// `hash` serves now (a new epoch or a live update): it becomes the newest good config.
    pub(super) fn record_good(&mut self, hash: &ConfigHash) {
        if let Some(live) = &mut self.live {
            live.hash = hash.to_owned();
        }
        if let Some(f) = &mut self.files {
            f.status.hash = hash.to_owned();
        }
        self.state.hash = Some(hash.to_owned());
        self.metrics.set_resources(hash);
        self.state.good.retain(|h| h != hash);
        self.state.good.insert(0, hash.to_owned());
        self.state.good.truncate(KEEP_GOOD);
        if let Err(err) = self.store.set_current(hash) {
            tracing::error!("cannot switch the current config: {err:#}");
        }
        self.critical = None;
        self.retry_at = None;
        self.backoff.reset();
        self.save();
        self.publish();
    }

    /// Waits until the admin API reports this epoch LIVE; fails when the process exits first or
    /// the time runs out (the flag says whether the process is already gone and reaped). Exits
    /// of other (old) epochs seen meanwhile are handled on the way.
    pub(super) async fn wait_live(
        &mut self,
        e: &process::Epoch,
        timeout: Duration,
        parent: Option<&process::ExitWatch>,
    ) -> Result<(), (String, bool)> {
        let deadline = Instant::now() + timeout;
        let parent_gone = |p: &process::ExitWatch| {
            (
                format!(
                    "{} before epoch {} was LIVE: the new epoch cannot take over",
                    p.describe(),
                    e.epoch
                ),
                false,
            )
        };
        loop {
            if let Ok(info) = self.admin.server_info().await {
                if info.restart_epoch == e.epoch && info.state == EnvoyState::Live {
                    return Ok(());
                }
            }
            // Asked after LIVE: a parent that dies once its child has taken over costs nothing.
            if let Some(p) = parent.filter(|p| p.has_exited()) {
                return Err(parent_gone(p));
            }
            if Instant::now() >= deadline {
                return Err((
                    format!("epoch {} did not become LIVE within {timeout:?}", e.epoch),
                    false,
                ));
            }
            tokio::select! {
                Some(exit) = self.exits_rx.recv() => {
                    if exit.pid == e.pid {
                        return Err((
                            format!("epoch {} exited before it was LIVE ({})", e.epoch, describe(&exit.status)),
                            true,
                        ));
                    }
                    self.forget(exit);
                }
                _ = tokio::time::sleep(LIVE_POLL) => {}
                _ = parent_exited(parent) => {}
            }
        }
    }

    /// Waits for one process to exit, handling other exits on the way.
    pub(super) async fn wait_exit(&mut self, pid: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.exits_rx.recv()).await {
                Ok(Some(exit)) if exit.pid == pid => {
                    self.forget(exit);
                    return true;
                }
                Ok(Some(exit)) => self.forget(exit),
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// The previous parent must be gone before the next hot restart, or Envoy cuts it short.
    /// Returns early when the live epoch exits meanwhile: there is then no hot restart to do.
    pub(super) async fn wait_old_exited(&mut self) {
        let grace = Duration::from_secs(u64::from(self.settings.envoy.parent_shutdown_time_s) + 5);
        let live = self.live.as_ref().map(|e| e.watch());
        while let Some(pid) = self.old.first().map(|e| e.pid) {
            let exited = tokio::select! {
                exited = self.wait_exit(pid, grace) => exited,
                _ = parent_exited(live.as_ref()) => return,
            };
            if !exited {
                tracing::warn!(
                    pid,
                    "an old epoch outlived its parent shutdown time; killing it"
                );
                if let Some(e) = self.old.iter().find(|e| e.pid == pid) {
                    e.signal(Signal::SIGKILL);
                }
                self.wait_exit(pid, KILL_DEADLINE).await;
                self.old.retain(|e| e.pid != pid);
            }
        }
    }

    /// Drops a process that exited from the books.
    pub(super) fn forget(&mut self, exit: process::Exit) {
        if let Some(i) = self.old.iter().position(|e| e.pid == exit.pid) {
            let e = self.old.remove(i);
            tracing::info!(
                epoch = e.epoch,
                pid = e.pid,
                "old envoy epoch exited ({})",
                describe(&exit.status)
            );
        } else if self.live.as_ref().map(|e| e.pid) == Some(exit.pid) {
            // The live epoch died while something else was being waited for: the main loop
            // handles it right after the current step, so it is never lost.
            self.live_died = Some(exit);
        }
    }

    /// Waits until every one of `pids` has exited; returns those still running at the deadline.
    pub(super) async fn wait_all_exit(
        &mut self,
        mut pids: Vec<u32>,
        timeout: Duration,
    ) -> Vec<u32> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pids.is_empty() {
            match tokio::time::timeout_at(deadline, self.exits_rx.recv()).await {
                Ok(Some(exit)) => {
                    pids.retain(|p| *p != exit.pid);
                    self.forget(exit);
                }
                Ok(None) | Err(_) => break,
            }
        }
        pids
    }

    /// Stops every epoch this supervisor runs: drained first when `how` is graceful.
    pub(super) async fn stop_all(&mut self, how: StopKind) {
        let mut all: Vec<process::Epoch> = self.old.drain(..).collect();
        all.extend(self.live.take());
        self.metrics.envoy_up.set(0);
        self.publish();
        if all.is_empty() {
            return;
        }
        if how == StopKind::Graceful {
            self.drain().await;
        }
        for e in &all {
            e.signal(Signal::SIGTERM);
        }
        // One that has already exited (a crash) is not waited for: its exit may have been
        // taken off the channel already.
        let pids = all
            .iter()
            .filter(|e| !e.has_exited())
            .map(|e| e.pid)
            .collect();
        let stubborn = self.wait_all_exit(pids, KILL_DEADLINE).await;
        for e in all.iter().filter(|e| stubborn.contains(&e.pid)) {
            tracing::warn!(pid = e.pid, "envoy did not stop after SIGTERM; killing it");
            e.signal(Signal::SIGKILL);
        }
        self.wait_all_exit(stubborn, KILL_DEADLINE).await;
        self.live_died = None;
        self.state.pid = None;
        self.save();
    }

    /// Fails health checks, drains listeners gracefully and waits until no connection is left
    /// or the drain time is over.
    pub(super) async fn drain(&self) {
        for path in ["/healthcheck/fail", "/drain_listeners?graceful"] {
            if let Err(e) = self.admin.post(path).await {
                tracing::warn!("{e:#}");
            }
        }
        let deadline =
            Instant::now() + Duration::from_secs(self.settings.envoy.drain_time_s.into());
        while Instant::now() < deadline {
            match self.admin.active_connections().await {
                Ok(0) | Err(_) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Resolves when `watch`'s process exits; never without one.
async fn parent_exited(watch: Option<&process::ExitWatch>) {
    match watch {
        Some(w) => w.exited().await,
        None => std::future::pending().await,
    }
}
