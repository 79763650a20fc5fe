//! Backend host names, resolved by the agent rather than by Envoy, so that every address of
//! every answer is judged by the same guard as an IP literal in the spec (`net::backend_refusal`)
//! before it can become an endpoint. A name whose answer holds a forbidden address (loopback,
//! link-local such as the metadata service 169.254.169.254, ...) carries no traffic there.
//!
//! Owns: looking names up (the system's DNS configuration, or a fixed map in tests), judging the
//! answers, and a cache that honours each answer's TTL but keeps none longer than [`MAX_AGE`],
//! and keeps a name's last good addresses when it stops resolving. Does not: render, apply or
//! report; the caller turns [`Problem`]s into events and metrics.

use crate::net::{backend_refusal, Refusal};
use crate::spec::{BackendAddress, Spec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// No answer is trusted for longer than this, whatever its TTL says.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How soon a name that failed to resolve is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Where names are looked up.
pub enum Resolver {
    /// DNS as the machine is configured (`/etc/resolv.conf`, `/etc/hosts`).
    System(Box<hickory_resolver::TokioResolver>),
    /// A fixed map, for tests: nothing is looked up. A name missing from the map does not
    /// resolve; every answer is valid for `ttl`.
    Map {
        answers: HashMap<String, Vec<IpAddr>>,
        ttl: Duration,
    },
}

/// One answer: its addresses and until when it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    pub valid_for: Duration,
}

impl Resolver {
    /// The system's resolver, asking for A and AAAA records alike.
    pub fn system() -> anyhow::Result<Resolver> {
        use anyhow::Context;
        let mut b = hickory_resolver::TokioResolver::builder_tokio()
            .context("cannot read the system's DNS configuration")?;
        b.options_mut().ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        let r = b.build().context("cannot build the DNS resolver")?;
        Ok(Resolver::System(Box::new(r)))
    }

    pub async fn lookup(&self, name: &str) -> Result<Answer, String> {
        match self {
            Resolver::Map { answers, ttl } => match answers.get(name) {
                Some(addrs) if !addrs.is_empty() => Ok(Answer {
                    addrs: addrs.clone(),
                    valid_for: *ttl,
                }),
                _ => Err(format!("{name} does not resolve (no such name in the map)")),
            },
            Resolver::System(r) => {
                // A fully qualified name: never expanded with the machine's search domains.
                let fqdn = format!("{name}.");
                let lookup = r
                    .lookup_ip(fqdn.as_str())
                    .await
                    .map_err(|e| format!("{name} does not resolve: {e}"))?;
                let valid_for = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                Ok(Answer {
                    addrs: lookup.iter().collect(),
                    valid_for,
                })
            }
        }
    }
}

/// An answer split by the guard: what may carry traffic, and what may not and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judged {
    /// Sorted, without duplicates.
    pub allowed: Vec<IpAddr>,
    pub refused: Vec<(IpAddr, Refusal)>,
}

/// Judges every address of an answer by the rule for IP literals in the spec.
pub fn judge(addrs: &[IpAddr], allow_loopback: bool) -> Judged {
    let mut allowed = BTreeSet::new();
    let mut refused = BTreeMap::new();
    for &ip in addrs {
        match backend_refusal(ip, allow_loopback) {
            None => {
                allowed.insert(ip);
            }
            Some(why) => {
                refused.insert(ip, why);
            }
        }
    }
    Judged {
        allowed: allowed.into_iter().collect(),
        refused: refused.into_iter().collect(),
    }
}

/// Something to tell the operator about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The answer held addresses the guard refuses; they carry no traffic.
    Refused {
        name: String,
        refused: Vec<(IpAddr, Refusal)>,
    },
    /// The name did not resolve; `kept` are the last good addresses still in use.
    Unresolved {
        name: String,
        error: String,
        kept: Vec<IpAddr>,
    },
}

impl Problem {
    pub fn name(&self) -> &str {
        match self {
            Problem::Refused { name, .. } | Problem::Unresolved { name, .. } => name,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Problem::Refused { name, refused } => {
                let list: Vec<String> = refused
                    .iter()
                    .map(|(ip, why)| format!("{ip} {why}"))
                    .collect();
                format!(
                    "backend host {name} resolves to addresses that must not carry traffic ({}); they get none",
                    list.join("; ")
                )
            }
            Problem::Unresolved { name, error, kept } if kept.is_empty() => {
                format!("backend host {name}: {error}; it has no address and gets no traffic")
            }
            Problem::Unresolved { name, error, kept } => format!(
                "backend host {name}: {error}; its last good addresses ({}) stay in use",
                kept.iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// What the names of a spec resolved to, as endpoints see it: name → allowed addresses (sorted).
/// Part of the config hash: a changed answer is a changed config.
pub type Resolved = BTreeMap<String, Vec<IpAddr>>;

/// Every backend host name of a spec, once each, sorted.
pub fn names(spec: &Spec) -> BTreeSet<String> {
    spec.rules
        .iter()
        .flat_map(|r| std::iter::once(&r.pool).chain(r.domains.iter().map(|d| &d.pool)))
        .flat_map(|p| p.backends.iter())
        .filter(|b| b.enabled)
        .filter_map(|b| match &b.address {
            BackendAddress::Name(n) => Some(n.clone()),
            BackendAddress::Ip(_) => None,
        })
        .collect()
}

struct Entry {
    judged: Judged,
    until: Instant,
}

/// The answers in use, per name, with when each must be asked again.
#[derive(Default)]
pub struct Cache {
    entries: HashMap<String, Entry>,
}

impl Cache {
    /// Resolves what `names` need (names whose answer has expired, or is new), judges every
    /// answer, and returns the addresses to use for every name and the problems seen in this
    /// round. A failed lookup keeps the name's last good addresses.
    pub async fn resolve(
        &mut self,
        resolver: &Resolver,
        names: &BTreeSet<String>,
        allow_loopback: bool,
        now: Instant,
    ) -> (Resolved, Vec<Problem>) {
        self.entries.retain(|n, _| names.contains(n));
        let mut problems = Vec::new();
        for name in names {
            if self.entries.get(name).is_some_and(|e| e.until > now) {
                continue;
            }
            match resolver.lookup(name).await {
                Ok(answer) => {
                    let judged = judge(&answer.addrs, allow_loopback);
                    if !judged.refused.is_empty() {
                        problems.push(Problem::Refused {
                            name: name.clone(),
                            refused: judged.refused.clone(),
                        });
                    }
                    let until = now + answer.valid_for.min(MAX_AGE);
                    self.entries.insert(name.clone(), Entry { judged, until });
                }
                Err(error) => {
                    let until = now + RETRY_AFTER_FAILURE;
                    let entry = self.entries.entry(name.clone()).or_insert(Entry {
                        judged: Judged::default(),
                        until,
                    });
                    entry.until = until;
                    problems.push(Problem::Unresolved {
                        name: name.clone(),
                        error,
                        kept: entry.judged.allowed.clone(),
                    });
                }
            }
        }
        let resolved = names
            .iter()
            .map(|n| {
                let allowed = self
                    .entries
                    .get(n)
                    .map(|e| e.judged.allowed.clone())
                    .unwrap_or_default();
                (n.clone(), allowed)
            })
            .collect();
        (resolved, problems)
    }

    /// When the next answer expires (the agent re-resolves then, even if the spec is unchanged).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_address_of_an_answer_is_judged_like_a_literal() {
        let j = judge(
            &ips(&[
                "10.0.0.2",
                "169.254.169.254",
                "127.0.0.1",
                "::ffff:169.254.169.254",
                "10.0.0.1",
                "10.0.0.2",
                "fd00::1",
                "0.0.0.0",
            ]),
            false,
        );
        assert_eq!(j.allowed, ips(&["10.0.0.1", "10.0.0.2", "fd00::1"]));
        let refused: Vec<IpAddr> = j.refused.iter().map(|(ip, _)| *ip).collect();
        assert_eq!(
            refused,
            ips(&[
                "0.0.0.0",
                "127.0.0.1",
                "169.254.169.254",
                "::ffff:169.254.169.254"
            ])
        );
        assert!(j
            .refused
            .iter()
            .any(|(_, why)| why.to_string().contains("metadata")));
        // Development mode opens loopback, and only loopback.
        let dev = judge(&ips(&["127.0.0.2", "169.254.169.254"]), true);
        assert_eq!(dev.allowed, ips(&["127.0.0.2"]));
        assert_eq!(dev.refused.len(), 1);
    }

    fn map(entries: &[(&str, &[&str])]) -> Resolver {
        Resolver::Map {
            answers: entries
                .iter()
                .map(|(n, a)| (n.to_string(), ips(a)))
                .collect(),
            ttl: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn answers_are_cached_until_they_expire_and_kept_when_a_name_stops_resolving() {
        let names: BTreeSet<String> = ["a.test", "b.test"].map(String::from).into();
        let mut cache = Cache::default();
        let t0 = Instant::now();
        let first = map(&[
            ("a.test", &["10.0.0.1"]),
            ("b.test", &["10.0.0.9", "169.254.169.254"]),
        ]);
        let (r, problems) = cache.resolve(&first, &names, false, t0).await;
        assert_eq!(r["a.test"], ips(&["10.0.0.1"]));
        assert_eq!(
            r["b.test"],
            ips(&["10.0.0.9"]),
            "the metadata address is dropped"
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message().contains("169.254.169.254"),
            "{problems:?}"
        );

        // Within MAX_AGE nothing is asked again: a resolver that knows nothing changes nothing.
        let empty = map(&[]);
        let (r2, p2) = cache
            .resolve(&empty, &names, false, t0 + Duration::from_secs(10))
            .await;
        assert_eq!((r2, p2), (r.clone(), vec![]));
        assert!(cache.next_expiry().unwrap() <= t0 + MAX_AGE);

        // Expired: a changed answer is followed; a name that stops resolving keeps its last
        // good addresses and is reported.
        let later = t0 + MAX_AGE + Duration::from_secs(1);
        let changed = map(&[("a.test", &["10.0.0.5", "10.0.0.4"])]);
        let (r3, p3) = cache.resolve(&changed, &names, false, later).await;
        assert_eq!(r3["a.test"], ips(&["10.0.0.4", "10.0.0.5"]));
        assert_eq!(r3["b.test"], ips(&["10.0.0.9"]), "last good addresses kept");
        assert!(
            matches!(&p3[..], [Problem::Unresolved { name, kept, .. }] if name == "b.test" && *kept == ips(&["10.0.0.9"])),
            "{p3:?}"
        );
        // A name no longer in the spec is forgotten.
        let only_a: BTreeSet<String> = ["a.test".to_owned()].into();
        let (r4, _) = cache.resolve(&changed, &only_a, false, later).await;
        assert_eq!(r4.keys().collect::<Vec<_>>(), ["a.test"]);
        // A name that never resolved has no address.
        let new: BTreeSet<String> = ["c.test".to_owned()].into();
        let (r5, p5) = cache.resolve(&changed, &new, false, later).await;
        assert!(r5["c.test"].is_empty());
        assert!(p5[0].message().contains("gets no traffic"), "{p5:?}");
    }
}
