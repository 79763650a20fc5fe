//! Rules: scheme, ports, timeouts, what each scheme allows, and the checks across rules (ports,
//! redirects).

use super::{
    get, set_to_something, Map, PoolFields, Value, Walker, MAX_BACKENDS, MAX_DOMAINS,
    PROXY_PROTOCOLS, SCHEMES,
};
use crate::spec::error::shown;
use crate::spec::model::*;
use crate::spec::path::Path;
use std::collections::HashMap;

impl Walker<'_> {
    pub(super) fn timeouts(&mut self, obj: &Map<'_>, p: &Path, scheme: Scheme) -> Timeouts {
        let mut t = Timeouts {
            connect_s: 5,
            idle_s: 300,
            // A gRPC stream lives as long as its call: no overall limit unless the spec sets one.
            request_s: if scheme == Scheme::Http2 { 0 } else { 60 },
        };
        let Some(v) = get(obj, "timeouts") else {
            return t;
        };
        let tp = p.field("timeouts");
        let Some(o) = self.object(v, &tp) else {
            return t;
        };
        if let Some(n) = self.u32_in(o, &tp, "connect", 1, 3600) {
            t.connect_s = n;
        }
        if let Some(n) = self.u32_in(o, &tp, "idle", 0, 604_800) {
            t.idle_s = n;
        }
        if let Some(n) = self.u32_in(o, &tp, "request", 0, 86_400) {
            t.request_s = n;
        }
        t
    }

    /// Rejects a field that the contract does not allow for this rule's scheme, when the
    /// spec sets it explicitly. LB-wide defaults simply don't apply there.
    pub(super) fn not_for_scheme(&mut self, obj: &Map<'_>, p: &Path, key: &'static str, why: &str) {
        if set_to_something(obj, key) {
            self.f.error(p.field(key), why.to_owned());
        }
    }

    /// Warns about a field that is set but means nothing here. The real API carries every
    /// setting on every domain (`redirectHTTP: 1` on a plain http rule's domain), so this is no
    /// reason to refuse a load balancer.
    pub(super) fn no_effect(&mut self, obj: &Map<'_>, p: &Path, key: &'static str, why: &str) {
        if set_to_something(obj, key) {
            self.f.warning(p.field(key), format!("is ignored: {why}"));
        }
    }

    pub(super) fn rule(&mut self, obj: &Map<'_>, p: &Path, lb: &PoolFields) -> Option<Rule> {
        let id = self.ident(obj, p, "ruleId", 64);
        let id = self.required(id, obj, p, "ruleId");
        let scheme = self.choice(obj, p, "scheme", SCHEMES);
        let scheme = self.required(scheme, obj, p, "scheme");
        let front_port = self.port(obj, p, "frontPort");
        let front_port = self.required(front_port, obj, p, "frontPort");
        let fields = self.pool_fields(obj, p, true);
        if get(obj, "backPort").is_none() {
            self.f.error(p.field("backPort"), "is required");
        }
        let proxy_protocol = self
            .choice(obj, p, "proxyProtocol", PROXY_PROTOCOLS)
            .unwrap_or(ProxyProtocol::None);
        let scheme_s = scheme.unwrap_or(Scheme::Http);
        let timeouts = self.timeouts(obj, p, scheme_s);

        self.scheme_limits(obj, p, scheme.is_some(), scheme_s, fields.backend_scheme);
        let tls = match (scheme, get(obj, "tls")) {
            (Some(Scheme::Https | Scheme::Http2), Some(v)) => self.tls(v, &p.field("tls")),
            _ => None,
        };
        // LB-wide cookie and redirect defaults only reach rules where they mean something.
        let mut inherited = lb.clone();
        if !scheme_s.is_http() {
            inherited.cookie_check = None;
        }
        if scheme_s != Scheme::Https {
            inherited.redirect = None;
        }
        let fields = fields.over(&inherited);

        let domains = if scheme_s.is_http() {
            self.rule_domains(obj, p, &fields, scheme_s, tls.is_some())
        } else {
            Vec::new()
        };
        let backends = match self.array(obj, p, "backends") {
            Some(list) => self.backends(list, &p.field("backends"), fields.back_port),
            None => Vec::new(),
        };
        let listed = get(obj, "backends")
            .and_then(Value::as_array)
            .map_or(0, <[Value]>::len);
        if listed == 0
            && (scheme_s == Scheme::Tcp
                || get(obj, "domains")
                    .and_then(Value::as_array)
                    .is_none_or(<[Value]>::is_empty))
        {
            self.f.error(
                p.field("backends"),
                "must hold at least one backend (it may be empty only when domains route the traffic)",
            );
        }
        // Without tls, an https rule is served with managed certificates for its domains' names.
        if scheme_s == Scheme::Https && tls.is_none() && get(obj, "tls").is_none() {
            let named = get(obj, "domains")
                .and_then(Value::as_array)
                .is_some_and(|d| !d.is_empty());
            if !named {
                self.f.error(
                    p.field("tls"),
                    "is required for an https rule without domains: a managed certificate (ACME) is issued for domain names, and this rule has none",
                );
            }
        }
        let redirect_http = scheme_s == Scheme::Https && fields.redirect == Some(true);
        let pool = self.pool(&fields, scheme_s, backends);
        let sources = self.rule_sources(obj, p);
        Some(Rule {
            id: id?,
            scheme: scheme?,
            front_port: front_port?,
            proxy_protocol,
            timeouts,
            tls,
            redirect_http,
            pool,
            domains,
            sources,
        })
    }

    /// What a rule's scheme rules out: HTTP-only fields on a tcp rule, `redirectHTTP` outside
    /// https, `tls` outside https and http2.
    fn scheme_limits(
        &mut self,
        obj: &Map<'_>,
        p: &Path,
        scheme_given: bool,
        scheme_s: Scheme,
        backend_scheme: Option<BackendScheme>,
    ) {
        if scheme_s == Scheme::Tcp {
            let why = "applies to http, https and http2 rules only";
            self.not_for_scheme(obj, p, "cookieCheck", why);
            self.not_for_scheme(
                obj,
                p,
                "domains",
                "applies to http, https and http2 rules only (host routing needs HTTP)",
            );
            if backend_scheme == Some(BackendScheme::Https) {
                self.f.error(
                    p.field("backendScheme"),
                    "https applies to http, https and http2 rules only",
                );
            }
        }
        if scheme_given && scheme_s != Scheme::Https {
            self.no_effect(
                obj,
                p,
                "redirectHTTP",
                "redirectHTTP applies to https rules only",
            );
        }
        if scheme_given && !matches!(scheme_s, Scheme::Https | Scheme::Http2) {
            self.not_for_scheme(obj, p, "tls", "applies to https and http2 rules only");
        }
    }

    /// An HTTP rule's domains: each host once, each domain id once.
    fn rule_domains(
        &mut self,
        obj: &Map<'_>,
        p: &Path,
        fields: &PoolFields,
        scheme_s: Scheme,
        rule_tls: bool,
    ) -> Vec<Domain> {
        let mut domains = Vec::new();
        if let Some(list) = self.array(obj, p, "domains") {
            let dp = p.field("domains");
            let mut seen: HashMap<Host, usize> = HashMap::new();
            for (i, item) in list.iter().enumerate() {
                let ip = dp.index(i);
                let Some(o) = self.object(item, &ip) else {
                    continue;
                };
                let Some(d) = self.domain(o, &ip, fields, scheme_s, rule_tls) else {
                    continue;
                };
                if let Some(prev) = seen.insert(d.host.clone(), i) {
                    self.f.error(
                        ip.field("domainName"),
                        format!("host {} is already routed by domains[{prev}]; each host may appear once in a rule", d.host),
                    );
                }
                if domains.iter().any(|o: &Domain| o.id == d.id) {
                    self.f.error(
                        ip.field("domainId"),
                        format!("{} is used by another domain of this rule; domain ids must be unique in a rule", shown(&d.id)),
                    );
                }
                domains.push(d);
            }
        }
        domains
    }

    /// A rule's source lists, with a warning when the allowed ones are all denied.
    fn rule_sources(&mut self, obj: &Map<'_>, p: &Path) -> Sources {
        let sources = Sources {
            allowed: self.cidrs(obj, p, "allowedSources"),
            denied: self.cidrs(obj, p, "deniedSources"),
        };
        if !sources.allowed.is_empty()
            && sources
                .allowed
                .iter()
                .all(|a| sources.denied.iter().any(|d| d.contains(a)))
        {
            self.f.warning(
                p.field("allowedSources"),
                "every entry lies inside deniedSources: this rule refuses every client",
            );
        }
        sources
    }

    /// Checks that need every rule: unique ids and ports, limits, and the redirect listener.
    pub(super) fn across_rules(&mut self, rules: &[(usize, Rule)]) {
        let rp = Path::Root;
        let rp = rp.field("rules");
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut ports: HashMap<u16, usize> = HashMap::new();
        let (mut domains, mut backends) = (0usize, 0usize);
        for (i, r) in rules {
            let p = rp.index(*i);
            if let Some(prev) = ids.insert(&r.id, *i) {
                self.f.error(
                    p.field("ruleId"),
                    format!(
                        "{} is already the id of rules[{prev}]; rule ids must be unique",
                        shown(&r.id)
                    ),
                );
            }
            if let Some(prev) = ports.insert(r.front_port, *i) {
                self.f.error(
                    p.field("frontPort"),
                    format!("port {} is already the frontPort of rules[{prev}]; front ports must be unique", r.front_port),
                );
            }
            for (port, holder) in &self.opts.reserved_ports {
                if r.front_port == *port {
                    self.f.error(
                        p.field("frontPort"),
                        format!("port {port} is reserved for {holder}"),
                    );
                }
            }
            domains += r.domains.len();
            backends += r.pool.backends.len()
                + r.domains
                    .iter()
                    .map(|d| d.pool.backends.len())
                    .sum::<usize>();
        }
        if domains > MAX_DOMAINS {
            self.f.error(
                rp,
                format!("hold {domains} domains in all; at most {MAX_DOMAINS}"),
            );
        }
        if backends > MAX_BACKENDS {
            self.f.error(
                rp,
                format!("hold {backends} backends in all; at most {MAX_BACKENDS}"),
            );
        }
        self.redirects(rules, &ports);
    }

    /// The redirect listener is shared by every https rule, so a host may be claimed once.
    pub(super) fn redirects(&mut self, rules: &[(usize, Rule)], ports: &HashMap<u16, usize>) {
        let rp = Path::Root;
        let rp = rp.field("rules");
        let redirect_port = self.opts.redirect_port;
        let mut catch_all: Option<(usize, u16)> = None;
        let mut hosts: HashMap<&Host, (usize, usize, bool)> = HashMap::new();
        let mut first_user: Option<usize> = None;
        for (i, r) in rules.iter().filter(|(_, r)| r.scheme == Scheme::Https) {
            let p = rp.index(*i);
            if r.redirect_http || r.domains.iter().any(|d| d.redirect_http) {
                first_user.get_or_insert(*i);
            }
            if r.redirect_http {
                match catch_all {
                    Some((prev, port)) => self.f.error(
                        p.field("redirectHTTP"),
                        format!("rules[{prev}] already redirects every other host to port {port}; only one https rule can redirect all hosts"),
                    ),
                    None => catch_all = Some((*i, r.front_port)),
                }
            }
            for (j, d) in r.domains.iter().enumerate() {
                if !(d.redirect_http || r.redirect_http) {
                    continue;
                }
                if let Some((pi, pj, was)) = hosts.insert(&d.host, (*i, j, d.redirect_http)) {
                    if pi != *i && (was || d.redirect_http) {
                        let dp = p.field("domains");
                        let dp = dp.index(j);
                        self.f.error(
                            dp.field("redirectHTTP"),
                            format!("host {} is also claimed on the redirect port by rules[{pi}].domains[{pj}]; a host can be redirected to one https port only", d.host),
                        );
                    }
                }
            }
        }
        if let (Some(user), Some(holder)) = (first_user, ports.get(&redirect_port)) {
            let p = rp.index(*holder);
            self.f.error(
                p.field("frontPort"),
                format!("port {redirect_port} is the redirect port (setting envoy.redirect_port), used by redirectHTTP of rules[{user}]"),
            );
        }
        // HTTP-01 challenges of managed certificates are answered in plain HTTP on the redirect
        // port: by the redirect listener, or by the plain-HTTP rule that holds the port.
        let managed_user = rules
            .iter()
            .find(|(_, r)| r.domains.iter().any(|d| d.managed))
            .map(|(i, _)| *i);
        if let (Some(user), Some(holder)) = (managed_user, ports.get(&redirect_port)) {
            let plain = rules
                .iter()
                .find(|(i, _)| i == holder)
                .is_some_and(|(_, r)| {
                    r.scheme.is_http() && r.scheme != Scheme::Https && r.tls.is_none()
                });
            if !plain {
                let p = rp.index(*holder);
                self.f.error(
                    p.field("frontPort"),
                    format!("port {redirect_port} (setting envoy.redirect_port) must answer plain HTTP: rules[{user}] has managed certificates, validated by ACME HTTP-01 on that port"),
                );
            }
        }
    }
}
