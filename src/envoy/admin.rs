//! A client for Envoy's admin API on its Unix socket: what the supervisor asks a running Envoy.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    client: reqwest::Client,
}

/// What `/server_info` says about the Envoy that holds the admin port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub state: EnvoyState,
    pub restart_epoch: u32,
}

/// Envoy's state: what its admin API says (`LIVE`, `DRAINING`, `PRE_INITIALIZING`,
/// `INITIALIZING`), or why there is no answer (`NOT_RUNNING`, `UNREACHABLE`). On the wire (the
/// supervisor's status, `status --json`) it is that word.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EnvoyState {
    Live,
    Draining,
    PreInitializing,
    Initializing,
    #[default]
    NotRunning,
    Unreachable,
    /// A state this version does not know (a later Envoy's), kept as Envoy said it.
    Other(String),
}

impl EnvoyState {
    pub fn as_str(&self) -> &str {
        match self {
            EnvoyState::Live => "LIVE",
            EnvoyState::Draining => "DRAINING",
            EnvoyState::PreInitializing => "PRE_INITIALIZING",
            EnvoyState::Initializing => "INITIALIZING",
            EnvoyState::NotRunning => "NOT_RUNNING",
            EnvoyState::Unreachable => "UNREACHABLE",
            EnvoyState::Other(s) => s,
        }
    }
}

impl From<String> for EnvoyState {
    fn from(s: String) -> EnvoyState {
        match s.as_str() {
            "LIVE" => EnvoyState::Live,
            "DRAINING" => EnvoyState::Draining,
            "PRE_INITIALIZING" => EnvoyState::PreInitializing,
            "INITIALIZING" => EnvoyState::Initializing,
            "NOT_RUNNING" => EnvoyState::NotRunning,
            "UNREACHABLE" => EnvoyState::Unreachable,
            _ => EnvoyState::Other(s),
        }
    }
}

impl From<EnvoyState> for String {
    fn from(s: EnvoyState) -> String {
        s.as_str().to_owned()
    }
}

impl std::fmt::Display for EnvoyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Deserialize)]
struct RawInfo {
    state: String,
    command_line_options: RawOptions,
}

#[derive(Deserialize)]
struct RawOptions {
    restart_epoch: u32,
}

impl Admin {
    pub fn new(socket: &Path) -> anyhow::Result<Admin> {
        // No connection reuse: after a hot restart a kept-alive connection would still reach the
        // old epoch's admin server, which keeps answering for its old epoch until it exits.
        let client = reqwest::Client::builder()
            .unix_socket(socket)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot build the admin HTTP client")?;
        Ok(Admin {
            // Every request goes to the socket; the host only fills the Host header.
            base: "http://envoy-admin".to_owned(),
            client,
        })
    }

    async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("envoy admin {path}"))?;
        if !r.status().is_success() {
            bail!("envoy admin {path} answered {}", r.status());
        }
        Ok(r.text().await?)
    }

    pub async fn server_info(&self) -> anyhow::Result<ServerInfo> {
        let text = self.get_text("/server_info").await?;
        let raw: RawInfo = serde_json::from_str(&text).context("envoy admin /server_info")?;
        Ok(ServerInfo {
            state: raw.state.into(),
            restart_epoch: raw.command_line_options.restart_epoch,
        })
    }

    pub async fn hot_restart_version(&self) -> anyhow::Result<String> {
        Ok(self
            .get_text("/hot_restart_version")
            .await?
            .trim()
            .to_owned())
    }

    pub async fn post(&self, path: &str) -> anyhow::Result<()> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("envoy admin POST {path}"))?;
        if !r.status().is_success() {
            bail!("envoy admin POST {path} answered {}", r.status());
        }
        Ok(())
    }

    /// Downstream connections open on the customer listeners right now. (`server.total_connections`
    /// would be simpler, but it is only refreshed at each stats flush, every 5 s.)
    pub async fn active_connections(&self) -> anyhow::Result<u64> {
        let text = self
            .get_text("/stats?filter=^listener\\..*\\.downstream_cx_active$")
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with("listener.admin."))
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum())
    }
}

/// What `/config_dump` says that the stats do not: which listeners Envoy refused and why,
/// what is still warming, and the version of each certificate (SDS) it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsState {
    /// Dynamic listeners by name.
    pub listeners: BTreeMap<String, ListenerState>,
    pub warming_clusters: BTreeSet<String>,
    /// Secret name → version.
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerState {
    pub warming: bool,
    /// Envoy's own words when it refused the last update of this listener.
    pub error: Option<String>,
}

mod dump {
    use serde::de::IgnoredAny;
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Dump {
        pub configs: Vec<Part>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Part {
        #[serde(rename = "@type")]
        pub type_url: String,
        pub dynamic_warming_clusters: Vec<Cluster>,
        pub dynamic_listeners: Vec<Listener>,
        pub dynamic_active_secrets: Vec<Secret>,
    }
    #[derive(Deserialize)]
    pub struct Cluster {
        pub cluster: Named,
    }
    #[derive(Deserialize)]
    pub struct Named {
        #[serde(default)]
        pub name: String,
    }
    #[derive(Deserialize)]
    pub struct Listener {
        #[serde(default)]
        pub name: String,
        pub warming_state: Option<IgnoredAny>,
        pub error_state: Option<ErrorState>,
    }
    #[derive(Deserialize)]
    pub struct ErrorState {
        #[serde(default)]
        pub details: String,
    }
    #[derive(Deserialize)]
    pub struct Secret {
        #[serde(default)]
        pub name: String,
        #[serde(default)]
        pub version_info: String,
    }
}

/// Reads the parts of a `/config_dump` answer that [`XdsState`] holds.
pub fn parse_xds_state(text: &str) -> anyhow::Result<XdsState> {
    let d: dump::Dump = serde_json::from_str(text).context("envoy admin /config_dump")?;
    let mut s = XdsState::default();
    for p in d.configs {
        match p.type_url.rsplit('.').next().unwrap_or_default() {
            "ClustersConfigDump" => {
                s.warming_clusters = p
                    .dynamic_warming_clusters
                    .into_iter()
                    .map(|c| c.cluster.name)
                    .collect();
            }
            "ListenersConfigDump" => {
                s.listeners = p
                    .dynamic_listeners
                    .into_iter()
                    .map(|l| {
                        let state = ListenerState {
                            warming: l.warming_state.is_some(),
                            error: l.error_state.map(|e| e.details),
                        };
                        (l.name, state)
                    })
                    .collect();
            }
            "SecretsConfigDump" => {
                s.secrets = p
                    .dynamic_active_secrets
                    .into_iter()
                    .map(|x| (x.name, x.version_info))
                    .collect();
            }
            _ => {}
        }
    }
    Ok(s)
}

/// The cluster names of a `/config_dump?resource=dynamic_warming_clusters` answer.
pub fn parse_warming_clusters(text: &str) -> anyhow::Result<BTreeSet<String>> {
    #[derive(serde::Deserialize)]
    struct Warming {
        #[serde(default)]
        configs: Vec<dump::Cluster>,
    }
    let w: Warming = serde_json::from_str(text).context("envoy admin warming clusters")?;
    Ok(w.configs.into_iter().map(|c| c.cluster.name).collect())
}

impl Admin {
    /// The names of the clusters warming now: their part of the config dump, names only (cheap
    /// at any size: no endpoint is in it).
    pub async fn warming_clusters(&self) -> anyhow::Result<BTreeSet<String>> {
        parse_warming_clusters(
            &self
                .get_text("/config_dump?resource=dynamic_warming_clusters&mask=cluster.name")
                .await?,
        )
    }

    /// The parts of Envoy's config dump that [`XdsState`] holds.
    pub async fn xds_state(&self) -> anyhow::Result<XdsState> {
        parse_xds_state(&self.get_text("/config_dump").await?)
    }
}

/// Envoy's own account of its xDS subscriptions, from `/stats`: each subscription's
/// `version_text` (the version of the last update it accepted) and the counters and gauges
/// that say whether something was rejected or is still warming. Far cheaper than
/// `/config_dump` (no resource is serialised), so it is what an apply polls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsStats {
    /// Stat name → version, e.g. `cluster.web.version_text` → `"1a2b..."`.
    pub versions: BTreeMap<String, String>,
    /// Stat name → value for `*.update_rejected`, the warming gauges and each cluster's
    /// `membership_healthy` / `membership_total`.
    pub numbers: BTreeMap<String, u64>,
}

impl XdsStats {
    /// The version of the subscription whose stat name is `prefix` + `.version_text`.
    pub fn version(&self, prefix: &str) -> Option<&str> {
        self.versions
            .get(&format!("{prefix}.version_text"))
            .map(String::as_str)
    }

    /// The route table `name`'s version (its stat name also carries the listener's prefix).
    pub fn route_version(&self, name: &str) -> Option<&str> {
        let suffix = format!(".rds.{}.version_text", stat_name(name));
        self.versions
            .iter()
            .find(|(k, _)| k.starts_with("http.") && k.ends_with(&suffix))
            .map(|(_, v)| v.as_str())
    }

    pub fn number(&self, name: &str) -> u64 {
        self.numbers.get(name).copied().unwrap_or(0)
    }

    /// A cluster's gauge, e.g. `membership_healthy` of `web/d`.
    pub fn cluster_number(&self, cluster: &str, gauge: &str) -> u64 {
        self.number(&format!("cluster.{}.{gauge}", stat_name(cluster)))
    }

    /// Subscriptions whose rejections grew since `before`. (`update_empty` is no witness:
    /// Envoy counts one for every EDS cluster as it starts.)
    pub fn rejected_since(&self, before: &XdsStats) -> Vec<String> {
        self.numbers
            .iter()
            .filter(|(k, v)| k.ends_with(".update_rejected") && **v > before.number(k))
            .map(|(k, _)| k.to_owned())
            .collect()
    }
}

/// How Envoy writes a resource name into a stat name (`:` becomes `_`).
pub fn stat_name(name: &str) -> String {
    name.replace(':', "_")
}

impl Admin {
    pub async fn xds_stats(&self) -> anyhow::Result<XdsStats> {
        let text = self
            .get_text("/stats?filter=(version_text|update_rejected|warming_clusters|total_listeners_warming|membership_healthy|membership_total)$")
            .await?;
        let mut s = XdsStats::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(": ") else {
                continue;
            };
            if k.ends_with(".version_text") {
                s.versions
                    .insert(k.to_owned(), v.trim().trim_matches('"').to_owned());
            } else if let Ok(n) = v.trim().parse() {
                s.numbers.insert(k.to_owned(), n);
            }
        }
        Ok(s)
    }
}

/// `/clusters?filter=` takes a regular expression (RE2): a cluster name matched as itself.
fn exact(name: &str) -> String {
    let mut re = String::from("^");
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' && c != '/' && c != ':' {
            re.push('\\');
        }
        re.push(c);
    }
    re.push('$');
    re
}

/// Each host of `cluster` in a `/clusters` answer (`address:port`, `[v6]:port`) and whether
/// Envoy counts it healthy (`health_flags::healthy`; anything else is a flag that keeps it out).
pub fn parse_host_health(text: &str, cluster: &str) -> BTreeMap<String, bool> {
    let prefix = format!("{cluster}::");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (host, flags) = rest.split_once("::health_flags::")?;
            Some((host.to_owned(), flags.trim() == "healthy"))
        })
        .collect()
}

impl Admin {
    /// The health of each host of one cluster, from `/clusters` filtered to it (the whole page
    /// costs seconds at 10,000 hosts; one pool's share is read only when the counts in `/stats`
    /// cannot decide).
    pub async fn host_health(&self, cluster: &str) -> anyhow::Result<BTreeMap<String, bool>> {
        let r = self
            .client
            .get(format!("{}/clusters", self.base))
            .query(&[("filter", exact(cluster))])
            .send()
            .await
            .context("envoy admin /clusters")?;
        if !r.status().is_success() {
            bail!("envoy admin /clusters answered {}", r.status());
        }
        Ok(parse_host_health(&r.text().await?, cluster))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_states_travel_as_envoys_words_and_unknown_ones_are_kept() {
        for word in [
            "LIVE",
            "DRAINING",
            "PRE_INITIALIZING",
            "INITIALIZING",
            "NOT_RUNNING",
            "UNREACHABLE",
            "SOMETHING_NEW",
        ] {
            let state: EnvoyState = serde_json::from_str(&format!("\"{word}\"")).unwrap();
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{word}\"")
            );
            assert_eq!(state.to_string(), word);
        }
        assert_eq!(EnvoyState::from("LIVE".to_owned()), EnvoyState::Live);
        assert_eq!(
            EnvoyState::from("SOMETHING_NEW".to_owned()),
            EnvoyState::Other("SOMETHING_NEW".into())
        );
    }

    #[test]
    fn the_config_dump_gives_reasons_warming_and_certificates() {
        let text = r#"{"configs": [
          {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {}},
          {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": "c1",
           "dynamic_warming_clusters": [{"version_info": "c1", "cluster": {"name": "slow"}}]},
          {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
            {"name": "web", "active_state": {"version_info": "l1", "listener": {}}},
            {"name": "extra", "error_state": {"failed_configuration": {},
             "details": "cannot bind '0.0.0.0:81': Address already in use"}}]},
          {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
           "dynamic_active_secrets": [{"name": "c1", "version_info": "s1", "secret": {}}]}
        ]}"#;
        let s = parse_xds_state(text).unwrap();
        assert_eq!(s.warming_clusters, ["slow".to_owned()].into());
        assert_eq!(s.listeners["web"].error, None);
        assert!(s.listeners["extra"]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Address already in use")));
        assert_eq!(s.secrets["c1"], "s1");
    }

    #[test]
    fn the_warming_clusters_are_read_by_name_and_none_is_an_empty_object() {
        // As Envoy 1.40 answers `/config_dump?resource=dynamic_warming_clusters&mask=cluster.name`.
        let text = r#"{"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster",
            "cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "slow"}}]}"#;
        assert_eq!(
            parse_warming_clusters(text).unwrap(),
            ["slow".to_owned()].into()
        );
        assert!(parse_warming_clusters("{}").unwrap().is_empty());
        assert!(parse_warming_clusters("not json").is_err());
    }

    #[test]
    fn host_health_reads_one_cluster_of_the_clusters_page() {
        let text = "web::observability_name::web\n\
            web::127.0.0.1:80::health_flags::healthy\n\
            web::127.0.0.1:80::weight::1\n\
            web::[::1]:81::health_flags::/failed_active_hc/pending_active_hc\n\
            web/a.example::127.0.0.1:82::health_flags::healthy\n";
        let h = parse_host_health(text, "web");
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h["127.0.0.1:80"]);
        assert!(!h["[::1]:81"]);
        assert!(parse_host_health(text, "web/a.example")["127.0.0.1:82"]);
        assert_eq!(exact("web/a.example"), "^web/a\\.example$");
        assert_eq!(exact("redirect:80"), "^redirect:80$");
    }

    #[test]
    fn xds_stats_give_versions_and_rejections() {
        let mut before = XdsStats::default();
        before
            .numbers
            .insert("listener_manager.lds.update_rejected".into(), 1);
        let mut now = before.clone();
        now.versions
            .insert("http.web.rds.redirect_80.version_text".into(), "abc".into());
        now.versions
            .insert("cluster.web/d.version_text".into(), "def".into());
        now.numbers
            .insert("cluster.redirect_80.membership_healthy".into(), 3);
        assert_eq!(now.cluster_number("redirect:80", "membership_healthy"), 3);
        assert_eq!(now.cluster_number("web", "membership_healthy"), 0);
        assert_eq!(now.route_version("redirect:80"), Some("abc"));
        assert_eq!(now.version("cluster.web/d"), Some("def"));
        assert!(now.rejected_since(&before).is_empty());
        now.numbers
            .insert("listener_manager.lds.update_rejected".into(), 2);
        assert_eq!(
            now.rejected_since(&before),
            ["listener_manager.lds.update_rejected"]
        );
        now.numbers.insert("cluster.web.update_empty".into(), 1);
        assert_eq!(now.rejected_since(&before).len(), 1);
    }
}
