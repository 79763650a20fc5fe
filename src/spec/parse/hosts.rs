//! Domains: host names, their own pools and certificates, and the host they route by.

use super::{get, Map, PoolFields, Walker};
use crate::spec::address;
use crate::spec::error::shown;
use crate::spec::model::*;
use crate::spec::path::Path;

impl Walker<'_> {
    pub(super) fn domain(
        &mut self,
        obj: &Map<'_>,
        p: &Path,
        rule: &PoolFields,
        scheme: Scheme,
        rule_tls: bool,
    ) -> Option<Domain> {
        let id = self.ident(obj, p, "domainId", 64);
        let id = self.required(id, obj, p, "domainId");
        let host = self.host(obj, p);
        let fields = self.pool_fields(obj, p, true).over(rule);
        self.sources_not_here(obj, p, "a domain's");
        if scheme != Scheme::Https {
            self.no_effect(
                obj,
                p,
                "redirectHTTP",
                "redirectHTTP applies to https rules only",
            );
        }
        // A domain's certificate is chosen by SNI, so the rule's front must be TLS.
        let tls_front = scheme == Scheme::Https || (scheme == Scheme::Http2 && rule_tls);
        if !tls_front {
            self.not_for_scheme(
                obj,
                p,
                "tls",
                "applies to https rules, and to http2 rules that have their own tls (this front is plain text)",
            );
        }
        let tls = match get(obj, "tls") {
            Some(v) if tls_front => self.tls(v, &p.field("tls")),
            _ => None,
        };
        // An https rule without its own certificate: each domain without one gets a managed
        // certificate for its name, which HTTP-01 cannot validate for a wildcard.
        let managed = scheme == Scheme::Https && !rule_tls && get(obj, "tls").is_none();
        if managed && host.as_ref().is_some_and(|h| h.wildcard) {
            self.f.error(
                p.field("tls"),
                "is required for a wildcard domain of an https rule without tls: managed certificates are validated by HTTP-01, which cannot validate a wildcard",
            );
        }
        let backends = match self.array(obj, p, "backends") {
            Some(list) if !list.is_empty() => {
                self.backends(list, &p.field("backends"), fields.back_port)
            }
            Some(_) | None => {
                self.f
                    .error(p.field("backends"), "must hold at least one backend");
                Vec::new()
            }
        };
        let redirect_http = scheme == Scheme::Https && fields.redirect == Some(true);
        let pool = self.pool(&fields, scheme, backends);
        Some(Domain {
            id: id?,
            host: host?,
            tls,
            managed,
            redirect_http,
            pool,
        })
    }

    pub(super) fn host(&mut self, obj: &Map<'_>, p: &Path) -> Option<Host> {
        let name = self.string(obj, p, "domainName");
        let name = self.required(name, obj, p, "domainName")?;
        let lower = name.to_ascii_lowercase();
        let (wildcard, base) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if let Some(why) = address::dns_name_error(base) {
            self.f.error(
                p.field("domainName"),
                format!(
                    "must be a DNS name or *. followed by one: {} {why}",
                    shown(name)
                ),
            );
            return None;
        }
        let sub = self.string(obj, p, "subdomain").filter(|s| !s.is_empty());
        let full = match sub {
            None => base.to_owned(),
            Some(_) if wildcard => {
                self.f.error(
                    p.field("subdomain"),
                    "cannot be combined with a wildcard domainName",
                );
                return None;
            }
            Some(s) => {
                let s = s.to_ascii_lowercase();
                let full = format!("{s}.{base}");
                if let Some(why) = address::dns_name_error(&s) {
                    self.f
                        .error(p.field("subdomain"), format!("{} {why}", shown(&s)));
                    return None;
                }
                if full.len() > 253 {
                    self.f.error(
                        p.field("subdomain"),
                        format!("makes the host {} characters long; at most 253", full.len()),
                    );
                    return None;
                }
                full
            }
        };
        Some(Host {
            wildcard,
            name: full,
        })
    }
}
