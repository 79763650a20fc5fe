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
    /// `LIVE`, `DRAINING`, `PRE_INITIALIZING` or `INITIALIZING`.
    pub state: String,
    pub restart_epoch: u32,
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
            state: raw.state,
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

/// What the running Envoy holds of its dynamic configuration, read from `/config_dump`: the
/// version of every dynamic resource, what is still warming, and any rejection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsState {
    pub lds_version: String,
    pub cds_version: String,
    /// Active listeners by name: their version, or the reason the last update was rejected.
    pub listeners: BTreeMap<String, ListenerState>,
    pub active_clusters: BTreeSet<String>,
    pub warming_clusters: BTreeSet<String>,
    /// Cluster name → what its endpoints are ([`endpoints_fingerprint`]).
    pub endpoints: BTreeMap<String, String>,
    pub routes: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub warming_secrets: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerState {
    /// The version of the active listener (none while a new one is still warming).
    pub active: Option<String>,
    pub warming: bool,
    /// Envoy's own words when it refused the last update of this listener.
    pub error: Option<String>,
}

/// A cluster's endpoints (address, port, weight) as one comparable string, in any order.
pub fn endpoints_fingerprint<'a>(eps: impl Iterator<Item = (&'a str, u32, u32)>) -> String {
    let mut v: Vec<String> = eps.map(|(a, p, w)| format!("{a}:{p}/{w}")).collect();
    v.sort_unstable();
    v.join(" ")
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
        pub version_info: String,
        pub dynamic_active_clusters: Vec<Cluster>,
        pub dynamic_warming_clusters: Vec<Cluster>,
        pub dynamic_endpoint_configs: Vec<Endpoints>,
        pub dynamic_listeners: Vec<Listener>,
        pub dynamic_route_configs: Vec<Route>,
        pub dynamic_active_secrets: Vec<Secret>,
        pub dynamic_warming_secrets: Vec<Secret>,
    }
    #[derive(Deserialize)]
    pub struct Named {
        pub name: String,
    }
    #[derive(Deserialize)]
    pub struct Cluster {
        pub cluster: Named,
    }
    #[derive(Deserialize)]
    pub struct Endpoints {
        pub endpoint_config: EndpointConfig,
    }
    #[derive(Deserialize)]
    pub struct EndpointConfig {
        pub cluster_name: String,
        #[serde(default)]
        pub endpoints: Vec<Locality>,
    }
    #[derive(Deserialize)]
    pub struct Locality {
        #[serde(default)]
        pub lb_endpoints: Vec<LbEndpoint>,
    }
    #[derive(Deserialize)]
    pub struct LbEndpoint {
        pub endpoint: Endpoint,
        pub load_balancing_weight: Option<u32>,
    }
    #[derive(Deserialize)]
    pub struct Endpoint {
        pub address: Address,
    }
    #[derive(Deserialize)]
    pub struct Address {
        pub socket_address: Option<SocketAddress>,
    }
    #[derive(Deserialize)]
    pub struct SocketAddress {
        pub address: String,
        #[serde(default)]
        pub port_value: u32,
    }
    #[derive(Deserialize)]
    pub struct Listener {
        pub name: String,
        pub active_state: Option<Versioned>,
        pub warming_state: Option<IgnoredAny>,
        pub error_state: Option<ErrorState>,
    }
    #[derive(Deserialize)]
    pub struct Versioned {
        #[serde(default)]
        pub version_info: String,
    }
    #[derive(Deserialize)]
    pub struct ErrorState {
        #[serde(default)]
        pub details: String,
    }
    #[derive(Deserialize)]
    pub struct Route {
        #[serde(default)]
        pub version_info: String,
        pub route_config: Named,
    }
    #[derive(Deserialize)]
    pub struct Secret {
        pub name: String,
        #[serde(default)]
        pub version_info: String,
    }
}

/// Reads the parts of a `/config_dump?include_eds` answer that say what is applied.
pub fn parse_xds_state(text: &str) -> anyhow::Result<XdsState> {
    let d: dump::Dump = serde_json::from_str(text).context("envoy admin /config_dump")?;
    let mut s = XdsState::default();
    for p in d.configs {
        let kind = p.type_url.rsplit('.').next().unwrap_or_default();
        match kind {
            "ClustersConfigDump" => {
                s.cds_version = p.version_info;
                s.active_clusters = p
                    .dynamic_active_clusters
                    .into_iter()
                    .map(|c| c.cluster.name)
                    .collect();
                s.warming_clusters = p
                    .dynamic_warming_clusters
                    .into_iter()
                    .map(|c| c.cluster.name)
                    .collect();
            }
            "EndpointsConfigDump" => {
                // Envoy keeps no version per EDS resource (its dump says ""): what it holds
                // is compared by content instead.
                s.endpoints = p
                    .dynamic_endpoint_configs
                    .into_iter()
                    .map(|e| {
                        let eps = e.endpoint_config.endpoints.iter().flat_map(|l| {
                            l.lb_endpoints.iter().filter_map(|le| {
                                let sa = le.endpoint.address.socket_address.as_ref()?;
                                Some((
                                    sa.address.as_str(),
                                    sa.port_value,
                                    le.load_balancing_weight.unwrap_or(1),
                                ))
                            })
                        });
                        (
                            e.endpoint_config.cluster_name.clone(),
                            endpoints_fingerprint(eps),
                        )
                    })
                    .collect();
            }
            "ListenersConfigDump" => {
                s.lds_version = p.version_info;
                s.listeners = p
                    .dynamic_listeners
                    .into_iter()
                    .map(|l| {
                        (
                            l.name,
                            ListenerState {
                                active: l.active_state.map(|a| a.version_info),
                                warming: l.warming_state.is_some(),
                                error: l.error_state.map(|e| e.details),
                            },
                        )
                    })
                    .collect();
            }
            "RoutesConfigDump" => {
                s.routes = p
                    .dynamic_route_configs
                    .into_iter()
                    .map(|r| (r.route_config.name, r.version_info))
                    .collect();
            }
            "SecretsConfigDump" => {
                s.secrets = p
                    .dynamic_active_secrets
                    .into_iter()
                    .map(|x| (x.name, x.version_info))
                    .collect();
                s.warming_secrets = p
                    .dynamic_warming_secrets
                    .into_iter()
                    .map(|x| x.name)
                    .collect();
            }
            _ => {}
        }
    }
    Ok(s)
}

impl Admin {
    /// The dynamic configuration the running Envoy holds.
    pub async fn xds_state(&self) -> anyhow::Result<XdsState> {
        parse_xds_state(&self.get_text("/config_dump?include_eds").await?)
    }

    /// The last lines of a text the admin serves that match `filter` (stats of xDS updates).
    pub async fn stats(&self, filter: &str) -> anyhow::Result<String> {
        self.get_text(&format!("/stats?filter={filter}")).await
    }
}

mod clusters {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Clusters {
        #[serde(default)]
        pub cluster_statuses: Vec<Cluster>,
    }
    #[derive(Deserialize)]
    pub struct Cluster {
        pub name: String,
        #[serde(default)]
        pub host_statuses: Vec<Host>,
    }
    #[derive(Deserialize)]
    pub struct Host {
        pub address: super::dump::Address,
        #[serde(default)]
        pub health_status: Health,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Health {
        pub pending_active_hc: bool,
    }
}

impl Admin {
    /// Hosts (`address:port`) of each cluster whose first active health check has not finished.
    pub async fn hosts_pending_first_check(
        &self,
    ) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
        let text = self.get_text("/clusters?format=json").await?;
        let c: clusters::Clusters = serde_json::from_str(&text).context("envoy admin /clusters")?;
        Ok(c.cluster_statuses
            .into_iter()
            .map(|c| {
                let pending = c
                    .host_statuses
                    .into_iter()
                    .filter(|h| h.health_status.pending_active_hc)
                    .filter_map(|h| {
                        let sa = h.address.socket_address?;
                        Some(format!("{}:{}", sa.address, sa.port_value))
                    })
                    .collect();
                (c.name, pending)
            })
            .collect())
    }
}
