//! The agent's loop: poll, resync, managed certificates, event delivery and the watchdog.

use super::{now_str, serve_metrics, Agent, FLUSH_DEADLINE};
use crate::acme;
use crate::settings::Settings;
use std::future::Future;
use std::time::{Duration, Instant};

/// Envoy's version from `envoy --version` (`... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`).
pub fn parse_envoy_version(text: &str) -> Option<String> {
    let after = text.split("version: ").nth(1)?;
    after.split('/').nth(1).map(str::to_owned)
}

pub(super) async fn envoy_version(settings: &Settings) -> String {
    match crate::envoy::process::query(&settings.envoy.binary, "--version").await {
        Ok(o) => parse_envoy_version(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => {
            tracing::warn!("cannot tell Envoy's version: {e:#}");
            None
        }
    }
    .unwrap_or_else(|| "unknown".into())
}

/// What the loop waits for.
enum Wake {
    Poll,
    Resync,
    /// A managed certificate or a pending challenge changed.
    Certificates,
    Events,
    Watchdog,
    Stop,
}

/// Tells systemd how the agent is doing (a no-op outside systemd).
fn notify_status(agent: &Agent) {
    let status = match (&agent.state.applied_hash, agent.state.epoch) {
        (Some(h), Some(e)) => format!("epoch {e}, config {}", h.short()),
        _ => "no config applied yet".to_owned(),
    };
    crate::systemd::status(&status);
}

/// Runs the agent until `stop` resolves. `resync` yields on SIGHUP.
pub async fn run(
    mut agent: Agent,
    stop: impl Future<Output = ()>,
    mut resync: tokio::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let addr = (agent.settings.metrics.address, agent.settings.metrics.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("metrics.port: cannot listen on {}:{}: {e}", addr.0, addr.1)
    })?;
    let server = tokio::spawn(serve_metrics(
        listener,
        agent.metrics(),
        agent.health(),
        agent.settings.clone(),
    ));
    agent.started().await;
    agent.beat();
    let manager = tokio::spawn(acme::run(agent.certs.clone(), agent.settings.clone()));
    let certs_changed = agent.certs.changed.clone();
    tokio::pin!(stop);
    let interval = Duration::from_secs(agent.settings.vpsie.poll_interval_s.into());
    // The watchdog is pinged from the loop itself, so a stuck loop stops pinging.
    let watchdog = crate::systemd::watchdog_interval();
    let mut next_watchdog = watchdog.map(|d| Instant::now() + d);
    let mut next_poll = Instant::now();
    let mut ready = false;
    loop {
        let events_at = agent.next_event_attempt;
        let wake = tokio::select! {
            _ = &mut stop => Wake::Stop,
            _ = tokio::time::sleep_until(next_poll.into()) => Wake::Poll,
            Some(()) = resync.recv() => Wake::Resync,
            _ = certs_changed.notified() => Wake::Certificates,
            _ = tokio::time::sleep_until(events_at.unwrap_or_else(Instant::now).into()), if events_at.is_some() => Wake::Events,
            _ = tokio::time::sleep_until(next_watchdog.unwrap_or_else(Instant::now).into()), if next_watchdog.is_some() => Wake::Watchdog,
        };
        match wake {
            Wake::Stop => break,
            Wake::Poll | Wake::Resync => {
                let force = matches!(wake, Wake::Resync);
                let outcome = agent.cycle(force).await;
                tracing::debug!(?outcome, "cycle done");
                next_poll = Instant::now() + crate::backoff::jitter(interval, 0.1);
                agent.flush_events().await;
                if !ready {
                    // READY once the first reconcile is done, whatever it found.
                    crate::systemd::ready();
                    ready = true;
                }
                notify_status(&agent);
            }
            Wake::Certificates => {
                let outcome = agent.refresh().await;
                tracing::debug!(?outcome, "managed certificates changed");
                agent.flush_events().await;
                notify_status(&agent);
            }
            Wake::Events => {
                agent.flush_events().await;
            }
            Wake::Watchdog => {}
        }
        if let Some(d) = watchdog {
            crate::systemd::watchdog();
            next_watchdog = Some(Instant::now() + d);
        }
    }
    crate::systemd::stopping();
    // The current step has finished; deliver what is queued, within a deadline.
    let _ = tokio::time::timeout(FLUSH_DEADLINE, async {
        while !agent.queue.is_empty() {
            if agent.flush_events().await == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
    agent.save();
    manager.abort();
    server.abort();
    tracing::info!(queued = agent.queue.len(), "agent stopped");
    Ok(())
}

impl Agent {
    /// Sends queued events, oldest first, until the queue is empty or the API fails; backs off
    /// after a failure. Returns how many were delivered.
    pub async fn flush_events(&mut self) -> usize {
        let mut sent = 0;
        while let Some(event) = self.queue.peek().cloned() {
            let started = Instant::now();
            let sent_result = self.api.post_event(&event).await;
            self.metrics.api_request_duration.observe(
                crate::metrics::ApiOp::Event,
                started.elapsed().as_secs_f64(),
            );
            match sent_result {
                Ok(()) => {
                    self.metrics.events_sent.inc();
                    if let Err(e) = self.queue.pop() {
                        // Delivered all the same; the file catches up later (save_pending).
                        tracing::error!("{e:#}");
                    }
                    sent += 1;
                    self.state.last_event_sent =
                        Some(format!("{} at {}", event.kind.as_str(), now_str()));
                    self.event_backoff.reset();
                    self.next_event_attempt = None;
                }
                Err(e) => {
                    let wait = self.event_backoff.fail();
                    tracing::warn!(
                        queued = self.queue.len(),
                        "cannot deliver events yet ({e}); retrying in {wait:?}"
                    );
                    self.next_event_attempt = Some(Instant::now() + wait);
                    break;
                }
            }
        }
        if sent > 0 {
            self.save();
        }
        self.count_queue();
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_versions() {
        let out = "\n/x/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_envoy_version(out).as_deref(), Some("1.40.0"));
        assert_eq!(parse_envoy_version("garbage"), None);
    }
}
