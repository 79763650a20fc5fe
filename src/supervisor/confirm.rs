//! Whether Envoy took what was written: the versions each xDS subscription accepted, read from
//! its admin API step by step, a rejection with Envoy's own words, and every wait raced against
//! the death of the Envoy it is about.

use crate::envoy::admin::{self, Admin, XdsState, XdsStats};
use crate::envoy::process::ExitWatch;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How often Envoy's stats are read while waiting for a step: often at first (a small update
/// is taken within milliseconds), then less, since each read is work for Envoy's main thread.
const CONFIRM_POLL: Duration = Duration::from_millis(5);
const CONFIRM_POLL_FIRST: Duration = Duration::from_millis(1);
const CONFIRM_FAST_FOR: Duration = Duration::from_millis(30);
/// How many clusters are warming (its names are in the config dump).
pub(super) const WARMING: &str = "cluster_manager.warming_clusters";
/// What must hold in Envoy for a step to count as done: the version each subscription accepted
/// last (every file's version is a digest of its content), nothing warming.
#[derive(Debug, Default)]
pub(super) struct Expect {
    pub(super) cds: Option<String>,
    pub(super) lds: Option<String>,
    /// The RTDS layer (listeners' connection limits and the access log's keys).
    pub(super) runtime: Option<String>,
    /// Cluster name → the version of its EDS file.
    pub(super) endpoints: BTreeMap<String, String>,
    pub(super) routes: BTreeMap<String, String>,
    /// Certificates are checked in the config dump (rotations are rare).
    pub(super) secrets: BTreeMap<String, String>,
}

impl Expect {
    /// What is still missing; empty when everything holds.
    fn missing(&self, s: &XdsStats) -> Vec<String> {
        let mut missing = Vec::new();
        let mut want = |what: String, have: Option<&str>, v: &str| {
            if have != Some(v) {
                missing.push(format!("{what} at {v} (envoy: {})", have.unwrap_or("none")));
            }
        };
        if let Some(v) = &self.cds {
            want("clusters".into(), s.version("cluster_manager.cds"), v);
        }
        if let Some(v) = &self.lds {
            want("listeners".into(), s.version("listener_manager.lds"), v);
        }
        if let Some(v) = &self.runtime {
            want("runtime".into(), s.version("runtime"), v);
        }
        for (name, v) in &self.endpoints {
            let stat = format!("cluster.{}", admin::stat_name(name));
            want(format!("endpoints of {name}"), s.version(&stat), v);
        }
        for (name, v) in &self.routes {
            want(format!("routes {name}"), s.route_version(name), v);
        }
        for gauge in [WARMING, "listener_manager.total_listeners_warming"] {
            if s.number(gauge) > 0 {
                missing.push(format!("{gauge} = {}", s.number(gauge)));
            }
        }
        missing
    }

    fn secrets_missing(&self, d: &XdsState) -> Vec<String> {
        self.secrets
            .iter()
            .filter(|(name, v)| d.secrets.get(*name) != Some(*v))
            .map(|(name, v)| format!("certificate {name} at {v}"))
            .collect()
    }
}

/// Envoy's words for what it rejected: the listeners' error states from its config dump.
fn rejection_details(d: &XdsState) -> String {
    let errors: Vec<String> = d
        .listeners
        .iter()
        .filter_map(|(name, l)| Some(format!("listener {name}: {}", l.error.as_ref()?)))
        .collect();
    if errors.is_empty() {
        "see Envoy's log below".to_owned()
    } else {
        errors.join("; ")
    }
}

/// Sleeps `d`, unless the watched Envoy exits first: then fails at once, saying so. Every wait on
/// Envoy goes through here, so a dead process is never waited on as if it were a slow one.
pub(super) async fn pause(watch: &ExitWatch, d: Duration) -> Result<(), String> {
    if watch.has_exited() {
        return Err(watch.describe());
    }
    tokio::select! {
        _ = watch.exited() => Err(watch.describe()),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

/// Envoy's xDS stats, unless the watched Envoy exits first (an admin request to a busy Envoy can
/// take seconds).
pub(super) async fn stats(
    admin: &admin::Admin,
    watch: &ExitWatch,
) -> Result<anyhow::Result<XdsStats>, String> {
    tokio::select! {
        s = admin.xds_stats() => Ok(s),
        _ = watch.exited() => Err(watch.describe()),
    }
}

/// Asks Envoy whether it took what was written: one epoch's admin API, until a deadline, and
/// never past that epoch's death.
pub(super) struct Confirm<'a> {
    pub(super) admin: &'a Admin,
    pub(super) watch: &'a ExitWatch,
    pub(super) deadline: Instant,
    /// For the message: how long it was given.
    pub(super) timeout: Duration,
    /// Clusters that may still be warming when a step is done: pools moved as new cluster
    /// objects, which serve from their old object until the warm is over.
    pub(super) warming_ok: BTreeSet<String>,
}

impl Confirm<'_> {
    /// Envoy's xDS stats before an apply: rejections are counted from here (Envoy may refuse a
    /// file before it is first asked). A busy Envoy may not answer at once; a dead one ends it.
    pub(super) async fn baseline(&self) -> Result<XdsStats, String> {
        loop {
            match stats(self.admin, self.watch).await? {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= self.deadline => {
                    return Err(format!("cannot read Envoy's xDS state: {e:#}"))
                }
                Err(_) => pause(self.watch, CONFIRM_POLL).await?,
            }
        }
    }

    /// Waits until Envoy reports `expect`, a rejection (counted from `baseline`), or the
    /// deadline. Envoy's own reason comes with a rejection.
    pub(super) async fn until(&self, expect: &Expect, baseline: &XdsStats) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let mut missing = match stats(self.admin, self.watch).await? {
                Ok(s) => {
                    let rejected = s.rejected_since(baseline);
                    if !rejected.is_empty() {
                        let details = match self.admin.xds_state().await {
                            Ok(d) => rejection_details(&d),
                            Err(e) => format!("{e:#}"),
                        };
                        return Err(format!(
                            "envoy rejected the update ({}): {details}",
                            rejected.join(", ")
                        ));
                    }
                    let mut missing = expect.missing(&s);
                    if !self.warming_ok.is_empty() && s.number(WARMING) > 0 {
                        missing.retain(|m| !m.starts_with(WARMING));
                        match self.admin.warming_clusters().await {
                            Ok(w) => missing.extend(
                                w.difference(&self.warming_ok)
                                    .map(|c| format!("cluster {c} warm")),
                            ),
                            Err(e) => missing.push(format!("{e:#}")),
                        }
                    }
                    missing
                }
                Err(e) => vec![format!("{e:#}")],
            };
            if missing.is_empty() && !expect.secrets.is_empty() {
                missing = match self.admin.xds_state().await {
                    Ok(d) => expect.secrets_missing(&d),
                    Err(e) => vec![format!("{e:#}")],
                };
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= self.deadline {
                return Err(self.overdue(missing).await);
            }
            let poll = if started.elapsed() < CONFIRM_FAST_FOR {
                CONFIRM_POLL_FIRST
            } else {
                CONFIRM_POLL
            };
            pause(self.watch, poll).await?;
        }
    }

    /// What is still missing at the deadline, with what is still warming (the counts alone do
    /// not say which).
    async fn overdue(&self, mut missing: Vec<String>) -> String {
        if let Ok(d) = self.admin.xds_state().await {
            missing.extend(
                d.warming_clusters
                    .iter()
                    .map(|c| format!("cluster {c} warm")),
            );
            missing.extend(
                d.listeners
                    .iter()
                    .filter(|(_, l)| l.warming)
                    .map(|(n, _)| format!("listener {n} warm")),
            );
        }
        format!(
            "envoy did not confirm the update within {} s; still waiting for: {}",
            self.timeout.as_secs(),
            missing.join(", ")
        )
    }
}
