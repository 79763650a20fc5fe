//! When Envoy dies or a change fails: the last good config put back, a full restart when that
//! fails too, and the critical state with its retries.

use super::protocol::{ApplyMethod, ApplyOutcome, ApplyResult};
use super::{StopKind, Supervisor};
use crate::envoy::{process, process::describe, shm};
use crate::spec::ConfigHash;
use std::time::{Duration, Instant};

impl Supervisor {
    /// Whether the live epoch's process has exited (and is not replaced yet).
    pub(super) fn live_exited(&self) -> bool {
        self.live.as_ref().is_some_and(|e| e.has_exited())
    }

    /// The live Envoy exited in the middle of an apply (a live update, its put-back, a hot
    /// restart): recovered as a crash, at once. Nothing more is waited on the dead process and
    /// no hot restart is tried from it (its child would wait for a parent that is gone). A fresh
    /// epoch 0 starts from the newest config known to be valid: `new` (it passed validation, or
    /// differs from a validated one in endpoint lists only, and Envoy did not refuse it) when
    /// given, else the last good one. `out` says what happened.
    pub(super) async fn recover_from_exit(
        &mut self,
        new: Option<&ConfigHash>,
        why: String,
        out: &mut ApplyOutcome,
    ) {
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
            .find(|h| Some(*h) != new)
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
    pub(super) async fn restore_into(&mut self, out: &mut ApplyOutcome) {
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
    pub(super) async fn restore(&mut self) -> Result<(), String> {
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
    pub(super) async fn full_restart(
        &mut self,
        hash: &ConfigHash,
        how: StopKind,
    ) -> Result<(), String> {
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

    pub(super) async fn on_exit(&mut self, exit: process::Exit) {
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

    pub(super) fn enter_critical(&mut self, error: String) {
        let wait = self.backoff.fail();
        tracing::error!(
            "CRITICAL: envoy is not serving and could not be restored: {error}; retrying in {wait:?}"
        );
        self.critical = Some(error);
        self.retry_at = Some(Instant::now() + wait);
    }

    pub(super) async fn retry(&mut self) {
        self.retry_at = None;
        let Some(hash) = self.state.good.first().cloned() else {
            return;
        };
        if let Err(e) = self.full_restart(&hash, StopKind::Fast).await {
            self.enter_critical(e);
        }
    }
}
