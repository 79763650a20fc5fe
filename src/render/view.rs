//! The view the templates render from: plain data, already shaped like Envoy's config, built
//! from the normalised spec. Templates never see the spec or the wire types.
//!
//! Every decision about how a spec maps onto Envoy (policies, hash keys, names, timeouts) is made
//! here, in Rust, where it can be tested; the templates only lay it out.

use super::edge::{Edge, RuntimeKey};
use crate::spec::Rule;
use serde::Serialize;
use std::path::PathBuf;

mod build;
pub use build::{build, cluster_name, redirect_listener_name};

impl View {
    /// Every `ADDRESS:PORT` a listener on `port` binds, as its rendered config must say.
    pub fn listen_targets(&self, port: u16) -> Vec<Option<String>> {
        std::iter::once(&self.listen_address)
            .chain(&self.additional_addresses)
            .map(|a| Some(format!("{a}:{port}")))
            .collect()
    }
}

#[derive(Debug, Serialize)]
pub struct View {
    pub node_id: String,
    pub admin_socket: String,
    /// Every listener's address (`envoy.listen_addresses`' first)...
    pub listen_address: String,
    /// ... and the others, bound by the same listener (`additional_addresses`): each socket of
    /// one family (an IPv6 one is IPv6 only), so an IPv4 client is an IPv4 address everywhere.
    pub additional_addresses: Vec<String>,
    /// Where every listener's access log goes (`access_log.path`).
    pub access_log_path: String,
    /// Whether the logged path keeps its query string (`access_log.query_string`).
    pub access_log_query: bool,
    pub max_connections: u32,
    /// What Envoy's edge guide asks of a proxy facing the internet (see [`Edge`]).
    pub edge: Edge,
    /// Runtime keys the config sets: each listener's share of `max_connections`
    /// ([`listener_limit`]) and the edge's runtime-only limits ([`RuntimeKey::edge`]).
    pub runtime: Vec<RuntimeKey>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// The scrape port, when `metrics.allowed_cidrs` names anyone allowed to scrape.
    pub metrics: Option<Metrics>,
}

#[derive(Debug, Serialize)]
pub struct Metrics {
    pub listener_name: String,
    pub port: u16,
    pub cidrs: Vec<Cidr>,
    pub admin_cluster: String,
    pub admin_socket: String,
    pub agent_cluster: String,
    pub agent_address: String,
    pub agent_port: u16,
}

#[derive(Debug, Serialize)]
pub struct Cidr {
    pub address: String,
    pub prefix_len: u8,
}

#[derive(Debug, Serialize)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    pub tls_inspector: bool,
    pub chains: Vec<Chain>,
    pub http: Option<Http>,
    pub tcp: Option<Tcp>,
}

/// One filter chain. On https listeners there is one per domain with its own certificate (picked
/// by SNI) and a last one, without `server_names`, for everything else. A rule with source lists
/// has, for each of these, one chain per allowed source entry and one that refuses the rest
/// (see [`super::sources`]).
#[derive(Debug, Serialize)]
pub struct Chain {
    pub server_names: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Sources this chain serves; empty: any.
    pub sources: Vec<Cidr>,
    /// Set on a refusing chain.
    pub refuse: Option<Refusal>,
}

/// A refusing chain proxies to a cluster that does not exist, so Envoy closes each connection
/// at once, before reading a byte, and counts it as `tcp.<stat_prefix>.downstream_cx_no_route`.
#[derive(Debug, Serialize)]
pub struct Refusal {
    pub stat_prefix: String,
    /// Holds `:`, which no rule or domain id can: never a real cluster.
    pub cluster: String,
}

impl Chain {
    fn any(server_names: Vec<String>, tls: Option<TlsFiles>) -> Chain {
        Chain {
            server_names,
            tls,
            sources: Vec::new(),
            refuse: None,
        }
    }
}

/// The stat prefix under which Envoy counts a rule's refused connections
/// (`tcp.<prefix>.downstream_cx_no_route`; Prometheus: `envoy_tcp_downstream_cx_no_route` with
/// `envoy_tcp_prefix`). Rule ids cannot hold `/`, so it is no tcp rule's own prefix (Envoy
/// turns `:` into `_`, which a rule id may hold, and a `.` would split the tag).
pub fn refused_stat_prefix(rule: &str) -> String {
    format!("refused/{rule}")
}

/// A rule's chains: each group (server names and certificate) as it is without source lists,
/// or split by source as the lists say.
fn chains(rule: &Rule, groups: Vec<(Vec<String>, Option<TlsFiles>)>) -> Vec<Chain> {
    let Some(ranges) = super::sources::serving_ranges(&rule.sources, groups.len()) else {
        return groups
            .into_iter()
            .map(|(names, tls)| Chain::any(names, tls))
            .collect();
    };
    let mut out = Vec::with_capacity(groups.len() * (ranges.len() + 1));
    for (names, tls) in groups {
        for r in &ranges {
            out.push(Chain {
                server_names: names.clone(),
                tls: tls.clone(),
                sources: r
                    .iter()
                    .map(|n| Cidr {
                        address: n.network().to_string(),
                        prefix_len: n.prefix_len(),
                    })
                    .collect(),
                refuse: None,
            });
        }
        out.push(Chain {
            server_names: names,
            tls: None,
            sources: Vec::new(),
            refuse: Some(Refusal {
                stat_prefix: refused_stat_prefix(&rule.id),
                cluster: format!("refused:{}", rule.id),
            }),
        });
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub cert_path: String,
    pub key_path: String,
    pub min_version: &'static str,
    pub max_version: &'static str,
    pub alpn: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct Http {
    /// ACME HTTP-01 is answered here (the listener on the redirect port, when the spec has
    /// managed certificates): every virtual host answers the pending tokens and 404 for any
    /// other path under the challenge prefix, before its own routes.
    pub acme: bool,
    pub challenges: Vec<Challenge>,
    pub stat_prefix: String,
    pub route_name: String,
    pub idle_timeout: String,
    /// Whether any virtual host uses sticky sessions (the filter is then in the chain).
    pub sticky: bool,
    pub vhosts: Vec<Vhost>,
}

/// One pending HTTP-01 challenge: the exact path and the key authorization it answers.
#[derive(Debug, Serialize)]
pub struct Challenge {
    pub path: String,
    pub body: String,
}

/// Where HTTP-01 challenges are asked for (RFC 8555, 8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, Serialize)]
pub struct Vhost {
    pub name: String,
    pub domains: Vec<String>,
    pub action: Action,
    pub sticky_cookie: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Route {
        cluster: String,
        timeout: String,
        hash_source_ip: bool,
    },
    /// 301 to https on this port; `port` is left out for 443.
    Redirect { port: Option<u16> },
    /// No pool serves this host.
    NotFound,
}

#[derive(Debug, Serialize)]
pub struct Tcp {
    pub stat_prefix: String,
    pub cluster: String,
    pub idle_timeout: String,
    pub hash_source_ip: bool,
}

#[derive(Debug, Serialize)]
pub struct Cluster {
    pub name: String,
    pub connect_timeout: String,
    pub lb_policy: &'static str,
    pub health: HealthCheck,
    pub proxy_protocol: Option<&'static str>,
    pub upstream_tls: bool,
    /// HTTP/2 to the backends (http2 rules): protocol options, h2 health checks, ALPN h2.
    pub http2: bool,
    pub sni: Option<String>,
    pub outlier: Option<OutlierView>,
    /// Slow start window, with the policy's config block it goes in.
    pub slow_start: Option<SlowStart>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Serialize)]
pub struct SlowStart {
    /// `round_robin_lb_config` or `least_request_lb_config`.
    pub config: &'static str,
    pub window: String,
}

#[derive(Debug, Serialize)]
pub struct HealthCheck {
    pub timeout: String,
    pub interval: String,
    pub fast_interval: String,
    /// A new host's first check comes within this (`FIRST_CHECK_SPREAD_MS` in view/build.rs).
    pub initial_jitter: String,
    pub rise: u32,
    pub fall: u32,
    pub http_path: Option<String>,
    pub http_host: Option<String>,
    /// Answers counted healthy, as Envoy's half-open ranges `[start, end)`.
    pub statuses: Vec<StatusRange>,
}

#[derive(Debug, Serialize)]
pub struct StatusRange {
    pub start: u16,
    pub end: u16,
}

/// Passive health checking of a pool.
#[derive(Debug, Serialize)]
pub struct OutlierView {
    pub consecutive_5xx: u32,
    pub ejection_time: String,
}

/// One backend. Serialised as `[address, port, weight]` rather than a keyed object: a pool can
/// hold 10,000 of them and the template context copies every one (`make bench`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    pub weight: u32,
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.address, self.port, self.weight).serialize(s)
    }
}

/// A file the config refers to by path: written mode 0600 next to the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CertFile {
    pub path: PathBuf,
    pub contents: String,
}
