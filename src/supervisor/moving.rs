//! Pools in transition: a pool that gains hosts while it serves keeps its old hosts until the new
//! ones have passed their first health check. The loop looks at them every [`TRANSITION_POLL`];
//! [`super::transition`] decides, as pure functions, what each look means.

use super::confirm::{stats, WARMING};
use super::transition::{self, Transition, Verdict};
use super::{hold, protocol, Supervisor};
use crate::metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How often the pools in transition are looked at.
pub(super) const TRANSITION_POLL: Duration = Duration::from_millis(10);
/// How often one pool's per-host health may be read (`/clusters`: only when the counts cannot
/// decide, e.g. an old host is down beside the new ones), and how long the counts must have
/// stood still first.
const HOSTS_READ_EVERY: Duration = Duration::from_secs(1);
/// The same, once a transition has been reported as not finished.
const HOSTS_READ_EVERY_STUCK: Duration = Duration::from_secs(30);
impl Supervisor {
    /// One look at the pools in transition (the supervisor's loop calls it every
    /// [`TRANSITION_POLL`] while there are any): a pool whose new hosts all passed their first
    /// check gets its own list (the old hosts go); one that took it is done; one past its
    /// deadline is reported once, and keeps its old hosts.
    pub(super) async fn advance_transitions(&mut self) {
        if self.transitions.is_empty() {
            return;
        }
        let Some(watch) = self.live.as_ref().map(|e| e.watch()) else {
            self.end_transitions(metrics::TransitionEnd::Dropped);
            return;
        };
        hold("transition-check").await;
        let s = match stats(&self.admin, &watch).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("cannot read Envoy's stats for the pools in transition: {e:#}");
                return;
            }
            // Envoy died: its exit is on its way to the loop, which starts a fresh one.
            Err(_) => return,
        };
        // The clusters warming now, read once for every pool whose new object may be among
        // them (names only; `None`: unknown, so still warming).
        let warming = if self.transitions.values().any(|t| t.warming) && s.number(WARMING) > 0 {
            tokio::select! {
                w = self.admin.warming_clusters() => w.ok(),
                _ = watch.exited() => return,
            }
        } else {
            Some(BTreeSet::new())
        };
        let names: Vec<String> = self.transitions.keys().cloned().collect();
        for name in names {
            // Taken out while it is looked at (the admin API and the files are the
            // supervisor's), put back unless it is over.
            let Some(mut t) = self.transitions.remove(&name) else {
                continue;
            };
            // Over once Envoy swapped the new object in: from then on the pool's counts are its
            // own.
            t.warming &= warming.as_ref().is_none_or(|w| w.contains(&name));
            let now = Instant::now();
            let healthy = s.cluster_number(&name, "membership_healthy");
            let moving = healthy != t.healthy || now < t.healthy_since + HOSTS_READ_EVERY;
            if healthy != t.healthy {
                t.healthy = healthy;
                t.healthy_since = now;
            }
            t.unhealthy = s
                .cluster_number(&name, "membership_total")
                .saturating_sub(healthy);
            let overdue = now >= t.deadline && t.stuck.is_none() && t.finishing.is_none();
            // While the new object warms, the counts may be either object's: wait.
            let mut verdict = if t.warming {
                Verdict::Wait
            } else {
                transition::judge(&t, &s, None)
            };
            let mut health = None;
            // Hosts are read one by one only when the counts have stopped moving (new hosts
            // passing one after the other need no per-host look) or the deadline is here.
            if !t.warming
                && ((verdict == Verdict::ReadHosts && !moving && now >= t.next_hosts_read)
                    || overdue)
            {
                health = tokio::select! {
                    h = self.admin.host_health(&name) => h.ok(),
                    _ = watch.exited() => {
                        self.transitions.insert(name, t);
                        return;
                    }
                };
                // A read costs Envoy's main thread time in proportion to the pool (about a
                // second at 10,000 hosts): the next one waits at least twenty times as long,
                // and a transition already reported is looked at this way rarely.
                let floor = if t.stuck.is_some() || overdue {
                    HOSTS_READ_EVERY_STUCK
                } else {
                    HOSTS_READ_EVERY
                };
                t.next_hosts_read = Instant::now() + (now.elapsed() * 20).max(floor);
                verdict = transition::judge(&t, &s, health.as_ref());
            }
            if self
                .act_on(&name, &mut t, verdict, overdue, health.as_ref())
                .await
            {
                self.transitions.insert(name, t);
            }
        }
        self.count_transitions();
    }

    /// What one look decided, done: the pool's own list written, the end counted, or the
    /// transition reported as stuck. Returns whether the transition goes on.
    async fn act_on(
        &mut self,
        name: &str,
        t: &mut Transition,
        verdict: Verdict,
        overdue: bool,
        health: Option<&BTreeMap<String, bool>>,
    ) -> bool {
        match verdict {
            Verdict::Finish => {
                hold("transition-finish").await;
                let put = match &mut self.files {
                    Some(files) => files.put_endpoints(&t.pool, &t.target),
                    None => Err("no live epoch to apply to".into()),
                };
                match put {
                    Ok(_) => t.finishing = Some(t.target.version.clone()),
                    Err(e) => tracing::error!(
                        pool = %name,
                        "cannot write the pool's own endpoint list: {e}; trying again"
                    ),
                }
            }
            Verdict::Done => {
                tracing::info!(
                    pool = %name,
                    new_hosts = t.added.len(),
                    old_hosts_removed = t.removing,
                    took_ms = t.started.elapsed().as_millis() as u64,
                    "pool transition finished"
                );
                self.metrics
                    .transitions_ended
                    .inc(metrics::TransitionEnd::Finished);
                return false;
            }
            Verdict::Wait | Verdict::ReadHosts if overdue => {
                let never = match health {
                    Some(h) => transition::not_passed(t, h),
                    None => t.added.iter().cloned().collect(),
                };
                tracing::error!(
                    pool = %name,
                    config = %t.hash,
                    hosts = ?never,
                    old_hosts_serving = t.removing,
                    "pool transition not finished within {} s: new hosts have not passed their first health check",
                    self.settings.supervisor.confirm_timeout_s
                );
                t.stuck = Some(never);
            }
            Verdict::Wait | Verdict::ReadHosts => {}
        }
        true
    }

    /// Takes the transitions an apply left (the ones it replaced were counted by it).
    pub(super) fn set_transitions(&mut self, t: BTreeMap<String, Transition>) {
        self.transitions = t;
        self.count_transitions();
    }

    /// Ends every transition (a new epoch starts from the configs' own lists).
    pub(super) fn end_transitions(&mut self, why: metrics::TransitionEnd) {
        if !self.transitions.is_empty() {
            self.metrics
                .transitions_ended
                .inc_by(why, self.transitions.len() as u64);
            self.transitions.clear();
        }
        self.count_transitions();
    }

    fn count_transitions(&self) {
        let stuck = self
            .transitions
            .values()
            .filter(|t| t.stuck.is_some())
            .count();
        let m = &self.metrics.transitions;
        m.set(metrics::Transition::Stuck, stuck as i64);
        m.set(
            metrics::Transition::Checking,
            (self.transitions.len() - stuck) as i64,
        );
    }

    /// What `status` shows of the transitions.
    pub(super) fn transitions_status(&self) -> Vec<protocol::TransitionStatus> {
        self.transitions
            .values()
            .map(|t| protocol::TransitionStatus {
                id: t.id.clone(),
                pool: t.pool.clone(),
                config_hash: t.hash.clone(),
                new_hosts: t.added.len(),
                unhealthy: t.unhealthy,
                old_hosts: t.removing,
                age_ms: t.started.elapsed().as_millis() as u64,
                stuck: t.stuck.clone(),
            })
            .collect()
    }
}
