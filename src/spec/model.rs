//! The normalised load-balancer model: what the rest of the agent works from.
//!
//! Every default and every inherited value (LB-wide -> rule -> domain) is already applied, every
//! list is in canonical order, and every value has passed validation. Nothing here knows about
//! JSON field names of the API or about Envoy. Serialising this model (serde_json, field order as
//! declared) is the canonical form that `config_hash` is computed over.

use ipnet::IpNet;
use serde::Serialize;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    pub id: String,
    pub name: String,
    pub max_connections: u32,
    /// Sorted by `front_port` (unique).
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
    /// HTTP/1.1 and HTTP/2 at the front (cleartext prior knowledge, or TLS with ALPN when the
    /// rule has `tls`), HTTP/2 to the backends: what gRPC needs end to end.
    Http2,
    Tcp,
}

impl Scheme {
    /// Rules that speak HTTP at the front: host routing, sticky cookies, HTTP health checks.
    pub fn is_http(self) -> bool {
        matches!(self, Scheme::Http | Scheme::Https | Scheme::Http2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendScheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Roundrobin,
    Leastconn,
    Random,
    Source,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1.2")]
    V1_2,
    #[serde(rename = "TLSv1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Alpn {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Alpn {
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: String,
    pub scheme: Scheme,
    pub front_port: u16,
    pub proxy_protocol: ProxyProtocol,
    pub timeouts: Timeouts,
    /// The default certificate. Optional on https rules (absent: the domains get managed
    /// certificates) and on http2 rules (then the front is TLS); never on http and tcp rules.
    pub tls: Option<Tls>,
    /// Only ever true on https rules: plain HTTP for every host not claimed by a domain answers 301.
    pub redirect_http: bool,
    /// The default pool: every host that no domain claims. May be empty when domains exist.
    pub pool: Pool,
    /// Sorted by `id`. Empty on tcp rules.
    pub domains: Vec<Domain>,
    /// Who may connect to the rule's port.
    pub sources: Sources,
}

/// `allowedSources` / `deniedSources`: each sorted, without duplicates, host bits zero.
/// Both empty: everyone may connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sources {
    /// Empty: everyone not denied.
    pub allowed: Vec<IpNet>,
    /// Refused even when inside an allowed entry.
    pub denied: Vec<IpNet>,
}

impl Sources {
    /// Whether anyone is refused at all.
    pub fn restricts(&self) -> bool {
        !self.allowed.is_empty() || !self.denied.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    pub connect_s: u32,
    /// 0 = no limit.
    pub idle_s: u32,
    /// 0 = no limit. Not used by tcp rules; http2 rules default to 0 (gRPC streams are long).
    pub request_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Domain {
    pub id: String,
    pub host: Host,
    pub tls: Option<Tls>,
    /// A domain of an https rule without tls, itself without tls: its certificate is obtained
    /// by ACME for `host` (never a wildcard) and filled into `tls` before rendering.
    pub managed: bool,
    pub redirect_http: bool,
    pub pool: Pool,
}

/// A lower-case DNS name, possibly a `*.` wildcard (`name` then holds the part after `*.`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Host {
    pub wildcard: bool,
    pub name: String,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub back_port: u16,
    pub backend_scheme: BackendScheme,
    pub algorithm: Algorithm,
    pub health: Health,
    /// Cookie name when sticky sessions are on.
    pub sticky_cookie: Option<String>,
    /// Passive health checking; `None`: off.
    pub outlier: Option<Outlier>,
    /// A new or recovered backend's share ramps up over this many seconds (0: off; only ever
    /// set under roundrobin and leastconn).
    pub slow_start_s: u32,
    /// Sorted by `id` (unique in the pool).
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// `None`: TCP connect check. `Some(path)`: HTTP GET of this path.
    pub http_path: Option<String>,
    pub interval_ms: u32,
    pub fast_interval_ms: u32,
    pub rise: u32,
    pub fall: u32,
    /// HTTP check answers counted healthy, inclusive ranges (default 200-399).
    pub statuses: Vec<(u16, u16)>,
}

/// Passive health checking: a backend is ejected after `consecutive_5xx` 5xx answers or
/// connect failures in a row, for `ejection_time_s` each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub ejection_time_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub id: String,
    pub address: BackendAddress,
    /// The backend's own port, or the pool's `back_port`.
    pub port: u16,
    pub weight: u32,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendAddress {
    Ip(IpAddr),
    /// Lower-case RFC 1123 host name, resolved by Envoy through DNS.
    Name(String),
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddress::Ip(ip) => write!(f, "{ip}"),
            BackendAddress::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tls {
    pub id: String,
    /// Re-encoded from the parsed DER blocks: leaf first, then chain. Nothing but certificates.
    pub certificate_pem: String,
    /// Re-encoded from the parsed DER key.
    pub private_key_pem: String,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub alpn: Vec<Alpn>,
    /// Unix seconds; the leaf's notAfter. Derived from the certificate, so not hashed twice.
    #[serde(skip)]
    pub not_after: i64,
}

impl Spec {
    /// Every TLS block of the spec with where it sits, in canonical order.
    pub fn certificates(&self) -> impl Iterator<Item = &Tls> {
        self.rules.iter().flat_map(|r| {
            r.tls
                .iter()
                .chain(r.domains.iter().filter_map(|d| d.tls.as_ref()))
        })
    }

    /// The names that need a managed certificate, sorted.
    pub fn managed_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.domains.iter())
            .filter(|d| d.managed)
            .map(|d| d.host.to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn backend_count(&self) -> usize {
        self.rules
            .iter()
            .map(|r| {
                r.pool.backends.len()
                    + r.domains
                        .iter()
                        .map(|d| d.pool.backends.len())
                        .sum::<usize>()
            })
            .sum()
    }
}
