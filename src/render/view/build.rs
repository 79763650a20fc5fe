//! How a normalised spec becomes the [`View`]: names, policies, timeouts, health checks and
//! endpoints, decided here so that the templates only lay them out.

use super::{
    chains, Action, CertFile, Chain, Challenge, Cidr, Cluster, Endpoint, HealthCheck, Http,
    Listener, Metrics, OutlierView, SlowStart, StatusRange, Tcp, TlsFiles, Vhost, View,
    CHALLENGE_PREFIX,
};
use crate::render::edge::{listener_limit, Edge, RuntimeKey};
use crate::render::Challenges;
use crate::resolve::Resolved;
use crate::settings::Settings;
use crate::spec::{
    Algorithm, BackendAddress, BackendScheme, Pool, ProxyProtocol, Rule, Scheme, Spec, Tls,
    TlsVersion,
};
use sha2::{Digest, Sha256};

/// Listener name of the shared plain-HTTP redirect listener. Rule ids cannot hold `:`, so it
/// cannot collide with a rule's listener.
pub fn redirect_listener_name(port: u16) -> String {
    format!("redirect:{port}")
}

/// Cluster name of a pool: the rule id, or `rule/domain` for a domain's pool. Neither holds a
/// dot, so Envoy's stat tag extraction sees the whole name as `envoy_cluster_name`.
pub fn cluster_name(rule: &str, domain: Option<&str>) -> String {
    match domain {
        None => rule.to_owned(),
        Some(d) => format!("{rule}/{d}"),
    }
}

fn secs(s: u32) -> String {
    format!("{s}s")
}

fn millis(ms: u32) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

fn lb_policy(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Roundrobin => "ROUND_ROBIN",
        Algorithm::Leastconn => "LEAST_REQUEST",
        Algorithm::Random => "RANDOM",
        Algorithm::Source | Algorithm::RingHash => "RING_HASH",
        Algorithm::Maglev => "MAGLEV",
    }
}

/// Consistent-hash policies need a key; the client's address is the one every scheme has.
fn hashes_source(a: Algorithm) -> bool {
    matches!(
        a,
        Algorithm::Source | Algorithm::RingHash | Algorithm::Maglev
    )
}

fn tls_version(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::V1_2 => "TLSv1_2",
        TlsVersion::V1_3 => "TLSv1_3",
    }
}

/// The certificate and key files the view names, each written once.
struct CertFiles {
    dir: std::path::PathBuf,
    files: Vec<CertFile>,
}

impl CertFiles {
    /// The files of `tls`, named by content, so a renewed certificate never overwrites the one
    /// a running epoch uses.
    fn add(&mut self, tls: &Tls) -> TlsFiles {
        let mut h = Sha256::new();
        h.update(tls.certificate_pem.as_bytes());
        h.update(tls.private_key_pem.as_bytes());
        let tag = &hex::encode(h.finalize())[..16];
        let cert_path = self.dir.join(format!("{}-{tag}.crt", tls.id));
        let key_path = self.dir.join(format!("{}-{tag}.key", tls.id));
        for (path, contents) in [
            (&cert_path, &tls.certificate_pem),
            (&key_path, &tls.private_key_pem),
        ] {
            if !self.files.iter().any(|f: &CertFile| &f.path == path) {
                self.files.push(CertFile {
                    path: path.clone(),
                    contents: contents.clone(),
                });
            }
        }
        TlsFiles {
            cert_path: cert_path.to_string_lossy().into_owned(),
            key_path: key_path.to_string_lossy().into_owned(),
            min_version: tls_version(tls.min_version),
            max_version: tls_version(tls.max_version),
            alpn: tls.alpn.iter().map(|a| a.as_str()).collect(),
        }
    }
}

/// The plain-HTTP listener on `envoy.redirect_port`: https rules' redirects, and the ACME
/// CA's HTTP-01 challenges (on whichever listener holds the port).
fn redirect_port(
    spec: &Spec,
    settings: &Settings,
    challenges: &Challenges,
    listeners: &mut Vec<Listener>,
    mut redirect_vhosts: Vec<Vhost>,
) {
    let acme = spec
        .rules
        .iter()
        .any(|r| r.domains.iter().any(|d| d.managed));
    let port = settings.envoy.redirect_port;
    let port_held = listeners.iter().any(|l| l.port == port);
    if !redirect_vhosts.is_empty() || (acme && !port_held) {
        // Hosts no https rule claims get a 404 rather than whatever a wildcard would say.
        if !redirect_vhosts
            .iter()
            .any(|v| v.domains.iter().any(|d| d == "*"))
        {
            redirect_vhosts.push(Vhost {
                name: "default".into(),
                domains: vec!["*".into()],
                action: Action::NotFound,
                sticky_cookie: None,
            });
        }
        let name = redirect_listener_name(port);
        listeners.push(Listener {
            name: name.clone(),
            port,
            tls_inspector: false,
            chains: vec![Chain::any(vec![], None)],
            http: Some(Http {
                acme: false,
                challenges: Vec::new(),
                stat_prefix: format!("redirect_{port}"),
                route_name: name,
                idle_timeout: secs(60),
                sticky: false,
                vhosts: redirect_vhosts,
            }),
            tcp: None,
        });
    }
    if acme {
        // The plain-HTTP listener on the redirect port answers the CA (validation checked that
        // whatever holds the port speaks plain HTTP).
        if let Some(http) = listeners
            .iter_mut()
            .find(|l| l.port == port)
            .and_then(|l| l.http.as_mut())
        {
            http.acme = true;
            http.challenges = challenges
                .iter()
                .map(|(token, key_auth)| Challenge {
                    path: format!("{CHALLENGE_PREFIX}{token}"),
                    body: key_auth.clone(),
                })
                .collect();
        }
    }
}

/// Builds the view and the certificate files it refers to.
/// `resolved` holds the addresses each backend host name may use (the agent resolved and
/// judged them): a name becomes one endpoint per address, and none when it has none. Envoy
/// itself never resolves a name.
pub fn build(
    spec: &Spec,
    settings: &Settings,
    resolved: &Resolved,
    challenges: &Challenges,
) -> (View, Vec<CertFile>) {
    let mut certs = CertFiles {
        dir: settings.cert_dir(),
        files: Vec::new(),
    };

    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut redirect_vhosts = Vec::new();
    for rule in &spec.rules {
        push_clusters(rule, &mut clusters, resolved);
        let listener = match rule.scheme {
            Scheme::Tcp => Listener {
                name: rule.id.clone(),
                port: rule.front_port,
                tls_inspector: false,
                chains: chains(rule, vec![(vec![], None)]),
                http: None,
                tcp: Some(Tcp {
                    stat_prefix: rule.id.clone(),
                    cluster: cluster_name(&rule.id, None),
                    idle_timeout: secs(rule.timeouts.idle_s),
                    hash_source_ip: hashes_source(rule.pool.algorithm),
                }),
            },
            Scheme::Http | Scheme::Https | Scheme::Http2 => {
                let mut groups = Vec::new();
                // https rules, and http2 rules with a certificate, have a TLS front, where SNI
                // picks the chain.
                let tls_front = rule.scheme == Scheme::Https || rule.tls.is_some();
                if tls_front {
                    for d in &rule.domains {
                        if let Some(tls) = &d.tls {
                            groups.push((vec![d.host.to_string()], Some(certs.add(tls))));
                        }
                    }
                    if let Some(tls) = &rule.tls {
                        groups.push((vec![], Some(certs.add(tls))));
                    }
                    if groups.is_empty() {
                        // Every name waits for its managed certificate: the rule goes live
                        // when one exists (its redirects too), and the rest of the spec serves
                        // meanwhile.
                        continue;
                    }
                } else {
                    groups.push((vec![], None));
                }
                if rule.scheme == Scheme::Https {
                    redirect_vhosts.extend(redirects(rule));
                }
                Listener {
                    name: rule.id.clone(),
                    port: rule.front_port,
                    tls_inspector: tls_front,
                    chains: chains(rule, groups),
                    http: Some(http(rule)),
                    tcp: None,
                }
            }
        };
        listeners.push(listener);
    }
    redirect_port(spec, settings, challenges, &mut listeners, redirect_vhosts);
    let share = listener_limit(spec.max_connections, listeners.len());
    let mut runtime: Vec<RuntimeKey> = listeners
        .iter()
        .map(|l| RuntimeKey::listener_limit(&l.name, share))
        .collect();
    let metrics = metrics_view(settings);
    if let Some(m) = &metrics {
        runtime.push(RuntimeKey::listener_limit(
            &m.listener_name,
            METRICS_CONNECTIONS,
        ));
    }
    runtime.extend(RuntimeKey::edge());
    let listen = settings.envoy.listen_addresses();
    let view = View {
        node_id: spec.id.clone(),
        admin_socket: settings.envoy.admin_socket.to_string_lossy().into_owned(),
        listen_address: listen.first().map_or_else(String::new, |a| a.to_string()),
        additional_addresses: listen.iter().skip(1).map(|a| a.to_string()).collect(),
        access_log_path: settings.access_log.path.to_string_lossy().into_owned(),
        access_log_query: settings.access_log.query_string,
        max_connections: spec.max_connections,
        edge: Edge::new(settings),
        runtime,
        listeners,
        clusters,
        metrics,
    };
    (view, certs.files)
}

/// The scrape port's own limit: it is outside the global cap (`ignore_global_conn_limit`), so a
/// flood of customer connections never blinds monitoring, and a scraper needs a few at most.
const METRICS_CONNECTIONS: u32 = 100;

/// The scrape port's listener and its two loopback clusters. Names hold `:`, which rule ids
/// cannot, so they never collide with a rule's listener or cluster.
fn metrics_view(settings: &Settings) -> Option<Metrics> {
    let m = &settings.metrics;
    let cidrs: Vec<Cidr> = m
        .allowed_cidrs
        .iter()
        .filter_map(|c| crate::settings::parse_cidr(c).ok())
        .map(|net| Cidr {
            address: net.addr().to_string(),
            prefix_len: net.prefix_len(),
        })
        .collect();
    if cidrs.is_empty() {
        return None;
    }
    Some(Metrics {
        listener_name: format!("metrics:{}", m.scrape_port),
        port: m.scrape_port,
        cidrs,
        admin_cluster: "admin:metrics".into(),
        admin_socket: settings.envoy.admin_socket.to_string_lossy().into_owned(),
        agent_cluster: "agent:metrics".into(),
        agent_address: m.address.to_string(),
        agent_port: m.port,
    })
}

fn http(rule: &Rule) -> Http {
    let route = |pool: &Pool, domain: Option<&str>| Action::Route {
        cluster: cluster_name(&rule.id, domain),
        timeout: secs(rule.timeouts.request_s),
        hash_source_ip: hashes_source(pool.algorithm),
    };
    let mut vhosts: Vec<Vhost> = rule
        .domains
        .iter()
        .map(|d| Vhost {
            name: d.id.clone(),
            domains: vec![d.host.to_string()],
            action: route(&d.pool, Some(&d.id)),
            sticky_cookie: d.pool.sticky_cookie.clone(),
        })
        .collect();
    vhosts.push(Vhost {
        name: "default".into(),
        domains: vec!["*".into()],
        action: if rule.pool.backends.is_empty() {
            Action::NotFound
        } else {
            route(&rule.pool, None)
        },
        sticky_cookie: rule.pool.sticky_cookie.clone(),
    });
    Http {
        acme: false,
        challenges: Vec::new(),
        stat_prefix: rule.id.clone(),
        route_name: rule.id.clone(),
        idle_timeout: secs(rule.timeouts.idle_s),
        sticky: vhosts.iter().any(|v| v.sticky_cookie.is_some()),
        vhosts,
    }
}

/// The redirect listener's virtual hosts for one https rule.
fn redirects(rule: &Rule) -> Vec<Vhost> {
    let port = (rule.front_port != 443).then_some(rule.front_port);
    let mut out = Vec::new();
    for d in &rule.domains {
        if d.redirect_http || rule.redirect_http {
            out.push(Vhost {
                name: format!("{}/{}", rule.id, d.id),
                domains: vec![d.host.to_string()],
                action: if d.redirect_http {
                    Action::Redirect { port }
                } else {
                    Action::NotFound
                },
                sticky_cookie: None,
            });
        }
    }
    if rule.redirect_http {
        out.push(Vhost {
            name: rule.id.clone(),
            domains: vec!["*".into()],
            action: Action::Redirect { port },
            sticky_cookie: None,
        });
    }
    out
}

fn push_clusters(rule: &Rule, clusters: &mut Vec<Cluster>, resolved: &Resolved) {
    // A rule whose default pool lists no backend has no default cluster: its other hosts get 404.
    if !rule.pool.backends.is_empty() {
        clusters.push(cluster(rule, &rule.pool, None, None, resolved));
    }
    for d in &rule.domains {
        // Health checks of a domain's pool ask for the domain's host (a wildcard's base name).
        clusters.push(cluster(
            rule,
            &d.pool,
            Some(&d.id),
            Some(d.host.name.clone()),
            resolved,
        ));
    }
}

/// How long Envoy may wait before a new host's first health check (`initial_jitter`; each
/// host draws its own delay). Without it Envoy opens a check connection to every new host inside
/// the endpoint update itself, on its main thread: at 1,000 re-addressed backends 13.5 of the
/// update's 17.5 ms, at 10,000 ~175 of 209 ms, during which its admin API (and so every apply's
/// confirmation) waits. Spread over 250 ms: 6.0 and 87 ms (measured on Envoy 1.40 with binary
/// endpoint files). The price is at most this much longer before a new pool is warm or a moved
/// pool's new hosts can serve; it also keeps the checks of a large pool from running in step.
const FIRST_CHECK_SPREAD_MS: u32 = 250;

fn cluster(
    rule: &Rule,
    pool: &Pool,
    domain: Option<&str>,
    host: Option<String>,
    resolved: &Resolved,
) -> Cluster {
    let upstream_tls = rule.scheme.is_http() && pool.backend_scheme == BackendScheme::Https;
    let h = &pool.health;
    Cluster {
        name: cluster_name(&rule.id, domain),
        connect_timeout: secs(rule.timeouts.connect_s),
        lb_policy: lb_policy(pool.algorithm),
        health: HealthCheck {
            timeout: millis(h.interval_ms.min(5000)),
            interval: millis(h.interval_ms),
            fast_interval: millis(h.fast_interval_ms),
            initial_jitter: millis(FIRST_CHECK_SPREAD_MS.min(h.interval_ms)),
            rise: h.rise,
            fall: h.fall,
            http_path: h.http_path.clone(),
            http_host: h.http_path.as_ref().and(host.clone()),
            statuses: h
                .statuses
                .iter()
                .map(|&(start, end)| StatusRange {
                    start,
                    end: end + 1,
                })
                .collect(),
        },
        proxy_protocol: match rule.proxy_protocol {
            ProxyProtocol::None => None,
            ProxyProtocol::V1 => Some("V1"),
            ProxyProtocol::V2 => Some("V2"),
        },
        upstream_tls,
        http2: rule.scheme == Scheme::Http2,
        sni: if upstream_tls { host } else { None },
        outlier: pool.outlier.map(|o| OutlierView {
            consecutive_5xx: o.consecutive_5xx,
            ejection_time: secs(o.ejection_time_s),
        }),
        slow_start: match (pool.slow_start_s, pool.algorithm) {
            (0, _) => None,
            (s, Algorithm::Leastconn) => Some(SlowStart {
                config: "least_request_lb_config",
                window: secs(s),
            }),
            (s, _) => Some(SlowStart {
                config: "round_robin_lb_config",
                window: secs(s),
            }),
        },
        endpoints: endpoints(pool, resolved),
    }
}

/// The enabled backends as endpoints; a host name gives one per resolved address.
fn endpoints(pool: &Pool, resolved: &Resolved) -> Vec<Endpoint> {
    let mut out = Vec::with_capacity(pool.backends.len());
    for b in pool.backends.iter().filter(|b| b.enabled) {
        let endpoint = |address: String| Endpoint {
            address,
            port: b.port,
            weight: b.weight,
        };
        match &b.address {
            BackendAddress::Ip(ip) => out.push(endpoint(ip.to_string())),
            BackendAddress::Name(n) => out.extend(
                resolved
                    .get(n)
                    .into_iter()
                    .flatten()
                    .map(|ip| endpoint(ip.to_string())),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests;
