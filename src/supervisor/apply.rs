//! An apply: store, validate, preflight, then live or hot restart, rolled back on failure.

use super::protocol::{ApplyMethod, ApplyOutcome, ApplyRequest, ApplyResult};
use super::{binary_id, hold, live, Supervisor};
use crate::envoy;
use crate::metrics::LiveApply;
use crate::render::xds;
use crate::spec::ConfigHash;
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
        let rendered = req.rendered;
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
        // The config is parsed once, here, from what was handed over (at 10,000 backends a
        // parse is milliseconds): the comparison, the port check and the live apply use it.
        let live_epoch = self.live.as_ref().map(|e| e.epoch);
        let split = self.split(&rendered, live_epoch.unwrap_or(0));
        let endpoint_only = match (&split, &self.files) {
            // Only into a running epoch: a config that would start a new process is validated.
            (Ok(x), Some(f)) if live_epoch.is_some() && same_binary && !req.force => {
                live::only_endpoints_differ(&f.xds, x)
            }
            _ => false,
        };
        let compared = started.elapsed();
        if endpoint_only {
            tracing::info!("only endpoint lists changed: validation skipped");
        } else if let Err((result, error)) = self.check_new(&path, split.as_ref().ok()).await {
            out.result = result;
            out.error = Some(error);
            self.prune();
            return out;
        }
        // Live when the running epoch can take it: same bootstrap, same binary.
        let split = split.and_then(|x| live::check_inotify(&x).map(|()| x));
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
                f.forget_written();
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
        new: Option<&xds::Xds>,
    ) -> Result<(), (ApplyResult, String)> {
        if let Err(e) = envoy::validate(&self.settings.envoy.binary, path).await {
            let result = match e {
                envoy::EnvoyError::Rejected(_) => ApplyResult::Rejected,
                _ => ApplyResult::Error,
            };
            return Err((result, e.to_string()));
        }
        if let (true, Some(new)) = (self.settings.supervisor.preflight_ports, new) {
            self.preflight(new)
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
    pub(super) fn preflight(&self, new: &xds::Xds) -> Result<(), String> {
        let new_ports = new.listener_ports();
        let live_ports = self
            .files
            .as_ref()
            .map(|f| f.xds.listener_ports())
            .unwrap_or_default();
        let addrs = self.settings.envoy.listen_addresses();
        let meanwhile = if self.live.is_some() {
            "The running config keeps serving"
        } else {
            "Nothing serves until it is free"
        };
        for port in new_ports.iter().filter(|p| !live_ports.contains(p)) {
            for addr in &addrs {
                if let Err(e) = bind_as_envoy((*addr, *port).into()) {
                    return Err(format!(
                        "listener port {port} on {addr} cannot be bound ({e}); another process holds it. {meanwhile}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies `x` inside the running epoch; on failure puts the last confirmed resources back,
    /// and when even that is not confirmed, hot restarts into the last good config.
    pub(super) async fn apply_live_or_roll_back(
        &mut self,
        hash: &ConfigHash,
        x: &std::sync::Arc<xds::Xds>,
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
                self.metrics.live_applies.inc(LiveApply::Applied);
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
                self.metrics.live_applies.inc(LiveApply::RolledBack);
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

/// Binds (and at once closes) a TCP socket the way Envoy binds a listener: `SO_REUSEADDR`, and
/// an IPv6 socket IPv6 only, so that `::` is not refused for an IPv4 port it would not take.
fn bind_as_envoy(at: std::net::SocketAddr) -> std::io::Result<()> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if at.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if at.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(at),
    )?;
    Ok(())
}
