//! An apply: store, validate, preflight, then live or hot restart, rolled back on failure.

use super::protocol::{ApplyMethod, ApplyOutcome, ApplyRequest, ApplyResult};
use super::{binary_id, hold, live, Supervisor};
use crate::envoy;
use crate::render::{self, CertFile, Rendered};
use crate::spec::ConfigHash;
use serde::Deserialize;
use std::time::Instant;

impl Supervisor {
    pub(super) async fn apply(&mut self, req: ApplyRequest) -> ApplyOutcome {
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
        if !req.force && previous.as_ref() == Some(&req.hash) {
            self.unchanged(&mut out);
            return out;
        }
        let rendered = rendered_of(req.config, req.files);
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
        } else if let Err((result, error)) = self.check_new(&path, &rendered.config).await {
            out.result = result;
            out.error = Some(error);
            self.prune();
            return out;
        }
        // Live when the running epoch can take it: same bootstrap, same binary.
        let live_epoch = self.live.as_ref().map(|e| e.epoch);
        let split = live_split
            .unwrap_or_else(|| self.split_stored(&req.hash, live_epoch.unwrap_or(0)))
            .and_then(|x| live::check_inotify(&x).map(|()| x));
        let split = match split {
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
            // A forced resync writes every file again, whatever is believed to be there.
            if let (true, Some(f)) = (req.force, &mut self.files) {
                f.written.clear();
            }
            self.apply_live_or_roll_back(&req.hash, &split, &mut out)
                .await;
        } else {
            self.hot_restart_into(&req.hash, &mut out).await;
        }
        let applied = started.elapsed();
        self.prune();
        out.epoch = self.live.as_ref().map(|e| e.epoch);
        out.apply_ms = started.elapsed().as_millis() as u64;
        // Where the supervisor's part of an apply goes (Envoy's is `envoy_us`).
        let us = |d: std::time::Duration| d.as_micros() as u64;
        tracing::debug!(
            stored_us = us(stored),
            split_us = us(compared.saturating_sub(stored)),
            applied_us = us(applied),
            pruned_us = us(started.elapsed()),
            "apply steps"
        );
        out
    }

    /// The config asked for already runs: say how it got there, when this supervisor applied it
    /// last (a client killed while handing it over learns it now, and can still report it).
    fn unchanged(&self, out: &mut ApplyOutcome) {
        out.result = ApplyResult::Unchanged;
        if let Some(last) = self
            .state
            .last_apply
            .as_ref()
            .filter(|l| l.hash == out.hash && l.result == ApplyResult::Applied)
        {
            out.method = last.method;
            out.previous_hash = last.previous_hash.clone();
            out.apply_ms = last.apply_ms;
            out.error = last.error.clone();
            out.apply_id = last.apply_id.clone();
        }
    }

    /// `envoy --mode validate` on the stored config, then the port check: how it failed, if it
    /// did.
    async fn check_new(
        &self,
        path: &std::path::Path,
        config: &str,
    ) -> Result<(), (ApplyResult, String)> {
        if let Err(e) = envoy::validate(&self.settings.envoy.binary, path).await {
            let result = match e {
                envoy::EnvoyError::Rejected(_) => ApplyResult::Rejected,
                _ => ApplyResult::Error,
            };
            return Err((result, e.to_string()));
        }
        if self.settings.supervisor.preflight_ports {
            self.preflight(config)
                .map_err(|e| (ApplyResult::RolledBack, e))?;
        }
        Ok(())
    }

    /// A new epoch for `hash` by hot restart; on failure the last good config is put back.
    async fn hot_restart_into(&mut self, hash: &ConfigHash, out: &mut ApplyOutcome) {
        let started = Instant::now();
        let launched = self.launch(hash).await;
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
                self.recover_from_exit(Some(hash), f.error, out).await;
            }
            Err(f) => {
                tracing::error!("the new config failed to start: {}", f.error);
                out.error = Some(f.error);
                out.envoy_log = f.log;
                self.restore_into(out).await;
            }
        }
    }

    /// Ports the new config listens on that the live one does not must be free: a held port
    /// would make the new epoch fail after it has already taken admin from the old one.
    pub(super) fn preflight(&self, config: &str) -> Result<(), String> {
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
    pub(super) async fn apply_live_or_roll_back(
        &mut self,
        hash: &ConfigHash,
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
                let previous = self.live.as_ref().map(|e| e.hash.clone());
                let back = match (&before, previous) {
                    (Some(b), Some(previous)) => self.apply_live(b, &previous).await,
                    _ => Err("nothing to go back to".into()),
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
}

/// The rendered config as the protocol carries it, as the store keeps it.
fn rendered_of(config: String, files: Vec<super::protocol::FileData>) -> Rendered {
    Rendered {
        config,
        files: files
            .into_iter()
            .map(|f| CertFile {
                path: f.path,
                contents: f.contents,
            })
            .collect(),
    }
}

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
