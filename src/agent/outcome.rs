//! How one cycle ends: the supervisor's answer turned into state, events and an [`Outcome`].

use super::{now_str, Agent, PollRecord};
use crate::events::Event;
use crate::metrics::Poll;
use crate::spec::ConfigHash;
use crate::spec::Finding;
use crate::supervisor::protocol::{ApplyMethod, ApplyOutcome, ApplyResult};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// How one cycle ended; `once` turns it into an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Applied {
        hash: ConfigHash,
        epoch: u32,
    },
    /// The spec is invalid (2) or Envoy refused the config (3).
    Rejected {
        hash: ConfigHash,
        by_envoy: bool,
        errors: Vec<Finding>,
    },
    /// The new config failed at runtime; the previous one serves.
    RolledBack {
        hash: ConfigHash,
    },
    /// The config could not be rendered, handed over or stored (a full or read-only disk, a
    /// validation that could not run): nothing changed, the previous config serves, and every
    /// poll tries again until the fault goes.
    Failed {
        hash: ConfigHash,
        error: String,
    },
    Critical {
        hash: ConfigHash,
    },
    /// The API or the supervisor could not be reached; nothing changed.
    Unreachable(String),
}

impl Outcome {
    /// How a poll that ended so is counted and kept (`status` shows it).
    pub fn poll_record(&self) -> PollRecord {
        let (result, detail) = match self {
            Outcome::Unchanged => (Poll::Unchanged, None),
            Outcome::Applied { hash, epoch } => (
                Poll::Applied,
                Some(format!("config {} in epoch {epoch}", hash.short())),
            ),
            Outcome::Rejected {
                hash,
                by_envoy,
                errors,
            } => {
                let by = if *by_envoy { "Envoy" } else { "validation" };
                let first = errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                let detail = format!("config {} refused by {by}{first}", hash.short());
                (Poll::Rejected, Some(detail))
            }
            Outcome::RolledBack { hash } => (
                Poll::RolledBack,
                Some(format!("config {}; the previous one serves", hash.short())),
            ),
            Outcome::Failed { hash, error } => (
                Poll::Failed,
                Some(format!("config {}: {error}", hash.short())),
            ),
            Outcome::Critical { hash } => (
                Poll::Critical,
                Some(format!("config {}; Envoy is not serving", hash.short())),
            ),
            Outcome::Unreachable(e) => (Poll::Unreachable, Some(e.clone())),
        };
        PollRecord::new(result, detail)
    }
}

impl Agent {
    /// Turns the supervisor's answer into state and events.
    pub(super) fn record(&mut self, out: ApplyOutcome) -> Outcome {
        let now = SystemTime::now();
        if let Some(l) = out.result.counted() {
            self.metrics.applies.inc(l);
        }
        let hash = out.hash.clone();
        match out.result {
            ApplyResult::Applied | ApplyResult::Unchanged => self.applied(out, now),
            ApplyResult::Rejected => {
                let finding = Finding {
                    path: String::new(),
                    message: out.error.unwrap_or_default(),
                };
                if self.state.rejected.as_ref() != Some(&hash) {
                    self.metrics.spec_rejections.inc();
                    self.report(Event::config_rejected(
                        &hash,
                        std::slice::from_ref(&finding),
                        now,
                    ));
                    self.state.rejected = Some(hash.clone());
                }
                Outcome::Rejected {
                    hash,
                    by_envoy: true,
                    errors: vec![finding],
                }
            }
            ApplyResult::RolledBack => {
                let error = with_envoy_lines(out.error.as_deref(), &out.envoy_log);
                self.report(Event::reload_failed(&hash, out.epoch, &error, now));
                Outcome::RolledBack { hash }
            }
            // Nothing reached Envoy: the running config serves.
            ApplyResult::Error => self.failed(hash, out.error.unwrap_or_default()),
            ApplyResult::Critical => {
                // Once per config: a critical supervisor gets the spec again at every poll.
                if self.state.critical.as_ref() != Some(&hash) {
                    self.report(Event::critical_failure(
                        &hash,
                        out.epoch,
                        &with_envoy_lines(out.error.as_deref(), &out.envoy_log),
                        out.restore_error.as_deref().unwrap_or(""),
                        now,
                    ));
                    self.state.critical = Some(hash.clone());
                }
                Outcome::Critical { hash }
            }
        }
    }

    /// The supervisor applied `out` (or had it already): state, metrics, and `config_applied`
    /// once per apply.
    fn applied(&mut self, out: ApplyOutcome, now: SystemTime) -> Outcome {
        let hash = out.hash.clone();
        let epoch = out.epoch.unwrap_or(0);
        self.metrics.set_config(&hash, epoch);
        self.health.applied.store(true, Ordering::Relaxed);
        // Unchanged for the supervisor but not applied as far as this agent knows: an
        // agent killed while handing it over. The supervisor says how it was applied,
        // so the API still hears of it, once.
        let missed = out.result == ApplyResult::Unchanged
            && out.method.is_some()
            && self.state.applied_hash.as_ref() != Some(&hash);
        if out.result == ApplyResult::Applied || missed {
            self.metrics
                .apply_duration
                .observe(out.apply_ms as f64 / 1000.0);
            self.metrics.last_apply.set(
                SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
            self.report(
                Event::config_applied(
                    &hash,
                    out.previous_hash.as_ref(),
                    epoch,
                    out.apply_ms,
                    out.method.unwrap_or(ApplyMethod::HotRestart).as_str(),
                    out.error.as_deref(),
                    now,
                )
                .with_id(out.apply_id.as_deref()),
            );
        }
        self.state.applied_hash = Some(hash.clone());
        self.state.applied_at = Some(now_str());
        self.state.epoch = Some(epoch);
        self.state.rejected = None;
        self.state.failed = None;
        self.state.critical = None;
        Outcome::Applied { hash, epoch }
    }

    /// A config that could not be rendered, handed over or stored: `reload_failed` (the previous
    /// config serves) once per config, however many polls it takes the fault to go.
    pub(super) fn failed(&mut self, hash: ConfigHash, error: String) -> Outcome {
        tracing::error!(%hash, "the config could not be applied; the previous one serves: {error}");
        if self.state.failed.as_ref() != Some(&hash) {
            self.report(Event::reload_failed(
                &hash,
                self.state.epoch,
                &error,
                SystemTime::now(),
            ));
            self.state.failed = Some(hash.clone());
        }
        Outcome::Failed { hash, error }
    }
}

/// An error with the last lines Envoy said about it, one `envoy:` line each: an event's reader
/// sees Envoy's own words (a port in use, a base id another Envoy holds) without the machine.
fn with_envoy_lines(error: Option<&str>, envoy_log: &[String]) -> String {
    let mut error = error.unwrap_or_default().to_owned();
    for line in envoy_log {
        error.push_str("\nenvoy: ");
        error.push_str(line);
    }
    error
}
