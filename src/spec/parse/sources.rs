//! Source lists (`allowedSources`, `deniedSources`): CIDRs, and where they may be set.

use super::{kind, Map, Value, Walker, MAX_SOURCES};
use crate::spec::address;
use crate::spec::path::Path;
use ipnet::IpNet;

impl Walker<'_> {
    /// Source lists sit on rules only: one set where it would be silently ignored would let in
    /// clients its author meant to refuse.
    pub(super) fn sources_not_here(&mut self, obj: &Map<'_>, p: &Path, level: &str) {
        for key in ["allowedSources", "deniedSources"] {
            self.not_for_scheme(
                obj,
                p,
                key,
                &format!(
                    "is set per rule, not at {level} level: a rule's list covers its whole port"
                ),
            );
        }
    }

    /// `allowedSources` / `deniedSources`: CIDRs (a bare address is one host), IPv4 or IPv6,
    /// host bits zero, at most `MAX_SOURCES`. Returned sorted without duplicates.
    pub(super) fn cidrs(&mut self, obj: &Map<'_>, p: &Path, key: &'static str) -> Vec<IpNet> {
        let Some(list) = self.array(obj, p, key) else {
            return Vec::new();
        };
        let lp = p.field(key);
        if list.len() > MAX_SOURCES {
            self.f.error(
                lp,
                format!("holds {} entries; at most {MAX_SOURCES}", list.len()),
            );
            return Vec::new();
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let Value::Str(text) = item else {
                self.f.error(
                    lp.index(i),
                    format!(
                        "must be a CIDR string like \"203.0.113.0/24\" or \"2001:db8::/32\", got {}",
                        kind(item)
                    ),
                );
                continue;
            };
            match address::source_cidr(text) {
                Ok(net) => out.push(net),
                Err(why) => self.f.error(lp.index(i), why),
            }
        }
        out.sort();
        out.dedup();
        out
    }
}
