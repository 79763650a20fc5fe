//! Walks the API's JSON into the normalised model, judging every field on the way.
//!
//! The JSON is walked by hand rather than derived with serde so that a wrong type is one more
//! finding with its path instead of the end of parsing: the user gets every error at once.
//! Unknown fields are ignored (the API adds fields over time); `null` and `""` count as absent
//! (the real API sends `"cookieName": ""`, `"subdomain": null`), except that an empty
//! `healthCheckPath` explicitly asks for a TCP check.

use super::error::{shown, Findings};
use super::model::*;
use super::path::Path;
use super::tls;
/// The document as parsed: borrowed from the input bytes, objects as vectors of entries. A spec
/// of 10,000 backends parses in about half the time of `serde_json::Value`, which copies every
/// string and builds a B-tree per object (`cargo bench --bench pipeline`).
type Value<'a> = serde_json_borrow::Value<'a>;
type Map<'a> = serde_json_borrow::ObjectAsVec<'a>;
use std::collections::HashMap;

mod backends;
mod certs;
mod health;
mod hosts;
mod pools;
mod rules;
mod sources;

pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
pub const MAX_RULES: usize = 64;
/// Entries of `healthCheckStatuses`.
pub const MAX_STATUS_RANGES: usize = 16;
pub const MAX_DOMAINS: usize = 256;
/// Entries of `allowedSources`, and of `deniedSources`.
pub const MAX_SOURCES: usize = 1_000;
pub const MAX_BACKENDS: usize = 10_000;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 50_000;
pub const DEFAULT_COOKIE_NAME: &str = "VPSIE_LB";
const MAX_HEALTH_PATH: usize = 1024;

/// What validation needs to know beyond the spec itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// Development only: lets backends sit on 127.0.0.0/8 and ::1 (tests and the demo).
    pub allow_loopback_backends: bool,
    /// The port `redirectHTTP` listens on (setting `envoy.redirect_port`).
    pub redirect_port: u16,
    /// Ports the load balancer itself holds (admin, metrics...), with what holds them.
    pub reserved_ports: Vec<(u16, String)>,
    /// Unix seconds, for certificate validity.
    pub now: i64,
}

/// Fields that can be set LB-wide, per rule and per domain; the nearest level wins.
#[derive(Debug, Default, Clone)]
struct PoolFields {
    back_port: Option<u16>,
    backend_scheme: Option<BackendScheme>,
    algorithm: Option<Algorithm>,
    /// `Some(None)`: explicitly a TCP check (empty path), overriding a level above.
    health_path: Option<Option<String>>,
    check_interval: Option<u32>,
    fast_interval: Option<u32>,
    rise: Option<u32>,
    fall: Option<u32>,
    cookie_check: Option<bool>,
    cookie_name: Option<String>,
    redirect: Option<bool>,
    /// HTTP health check answers counted healthy: inclusive ranges.
    statuses: Option<Vec<(u16, u16)>>,
    /// `Some(None)`: explicitly off (overriding a level above).
    outlier: Option<Option<Outlier>>,
    /// Seconds; 0 = off.
    slow_start: Option<u32>,
}

impl PoolFields {
    fn over(self, parent: &PoolFields) -> PoolFields {
        PoolFields {
            back_port: self.back_port.or(parent.back_port),
            backend_scheme: self.backend_scheme.or(parent.backend_scheme),
            algorithm: self.algorithm.or(parent.algorithm),
            health_path: self.health_path.or_else(|| parent.health_path.clone()),
            check_interval: self.check_interval.or(parent.check_interval),
            fast_interval: self.fast_interval.or(parent.fast_interval),
            rise: self.rise.or(parent.rise),
            fall: self.fall.or(parent.fall),
            cookie_check: self.cookie_check.or(parent.cookie_check),
            cookie_name: self.cookie_name.or_else(|| parent.cookie_name.clone()),
            redirect: self.redirect.or(parent.redirect),
            statuses: self.statuses.or_else(|| parent.statuses.clone()),
            outlier: self.outlier.or(parent.outlier),
            slow_start: self.slow_start.or(parent.slow_start),
        }
    }
}

const SCHEMES: &[(&str, Scheme)] = &[
    ("http", Scheme::Http),
    ("https", Scheme::Https),
    ("http2", Scheme::Http2),
    ("tcp", Scheme::Tcp),
];
const BACKEND_SCHEMES: &[(&str, BackendScheme)] = &[
    ("http", BackendScheme::Http),
    ("https", BackendScheme::Https),
];
const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("roundrobin", Algorithm::Roundrobin),
    ("leastconn", Algorithm::Leastconn),
    ("random", Algorithm::Random),
    ("source", Algorithm::Source),
    ("ring_hash", Algorithm::RingHash),
    ("maglev", Algorithm::Maglev),
];
const PROXY_PROTOCOLS: &[(&str, ProxyProtocol)] = &[
    ("none", ProxyProtocol::None),
    ("v1", ProxyProtocol::V1),
    ("v2", ProxyProtocol::V2),
];
const TLS_VERSIONS: &[(&str, TlsVersion)] =
    &[("TLSv1.2", TlsVersion::V1_2), ("TLSv1.3", TlsVersion::V1_3)];
const ALPNS: &[(&str, Alpn)] = &[("h2", Alpn::H2), ("http/1.1", Alpn::Http11)];

/// Finds the load balancer object: the `data` of an API envelope, or a bare object.
pub fn document<'i>(input: &'i [u8], f: &mut Findings) -> Option<Value<'i>> {
    if input.len() > MAX_BODY_BYTES {
        f.error(
            "",
            format!(
                "the document is {} bytes; at most 10 MiB is accepted (it is refused whole, never truncated)",
                input.len()
            ),
        );
        return None;
    }
    let value: Value = match serde_json::from_slice(input) {
        Ok(v) => v,
        Err(e) => {
            f.error("", format!("the document is not valid JSON: {e}"));
            return None;
        }
    };
    let Value::Object(top) = value else {
        f.error("", "the document must be a JSON object");
        return None;
    };
    // The contract's failure envelope carries no `data`: `{"error": true, "code": .., "message": ..}`.
    let envelope = top.contains_key("error")
        && (top.contains_key("data") || field(&top, "error") == Some(&Value::Bool(true)));
    if !envelope {
        return Some(Value::Object(top));
    }
    match field(&top, "error") {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            let code = field(&top, "code").map(described).unwrap_or_default();
            let message = field(&top, "message").and_then(Value::as_str).unwrap_or("");
            f.error(
                "",
                format!(
                    "the API answered with an error (code {code}): {}",
                    shown(message)
                ),
            );
            return None;
        }
        _ => {
            f.error("error", "must be true or false (the API envelope)");
            return None;
        }
    }
    top.into_vec()
        .into_iter()
        .rev()
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v)
}

/// The walk itself: options plus the findings so far.
pub struct Walker<'o> {
    pub opts: &'o Options,
    pub f: Findings,
    /// Certificate and key pairs checked so far (`certificate NUL key`), with the outcome.
    pub tls_checked: HashMap<String, Result<tls::CheckedPair, Vec<tls::PairError>>>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Str(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A refused value as a message shows it: strings through `shown` (escaped, cut short),
/// containers by kind only, so that no value can break the line or flood the terminal.
fn described(v: &Value) -> String {
    match v {
        Value::Str(s) => shown(s),
        Value::Array(_) | Value::Object(_) => kind(v).to_owned(),
        other => other.to_string(),
    }
}

/// A key's value. A key given twice counts with its last value, as `serde_json` reads it.
fn field<'v, 'a>(obj: &'v Map<'a>, key: &str) -> Option<&'v Value<'a>> {
    obj.as_vec()
        .iter()
        .rev()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A field's value; `null` and the empty string are absent.
fn get<'v, 'a>(obj: &'v Map<'a>, key: &str) -> Option<&'v Value<'a>> {
    field(obj, key).filter(|v| !v.is_null() && v.as_str() != Some(""))
}

/// Health-check intervals below these are raised to them (with a warning): the real API passes
/// through whatever its clients send (the VPSie cloud controller's documented example gives
/// `10`), and checking every backend more than ten times a second only loads the backends.
const MIN_CHECK_INTERVAL_MS: u32 = 100;
const MIN_FAST_INTERVAL_MS: u32 = 50;
/// `rise`/`fall` above this are accepted with a warning: the VPSie cloud controller sends its
/// check interval (1000) as `rise`, which is valid but makes recovery very slow.
const SLOW_THRESHOLD: u32 = 100;

fn ident_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Walker<'_> {
    fn string<'v>(&mut self, obj: &'v Map<'_>, p: &Path, key: &'static str) -> Option<&'v str> {
        match get(obj, key)? {
            Value::Str(s) => Some(s.as_ref()),
            other => {
                self.f.error(
                    p.field(key),
                    format!("must be a string, got {}", kind(other)),
                );
                None
            }
        }
    }

    fn required<T>(
        &mut self,
        v: Option<T>,
        obj: &Map<'_>,
        p: &Path,
        key: &'static str,
    ) -> Option<T> {
        if v.is_none() && get(obj, key).is_none() {
            self.f.error(p.field(key), "is required");
        }
        v
    }

    /// An identifier: `^[a-zA-Z0-9_-]{1,max}$`.
    fn ident(&mut self, obj: &Map<'_>, p: &Path, key: &'static str, max: usize) -> Option<String> {
        let s = self.string(obj, p, key)?;
        if ident_ok(s, max) {
            Some(s.to_owned())
        } else {
            self.f.error(
                p.field(key),
                format!("must match ^[a-zA-Z0-9_-]{{1,{max}}}$, got {}", shown(s)),
            );
            None
        }
    }

    /// A whole number given as a JSON number or a string of digits (the API sends both).
    fn int(
        &mut self,
        obj: &Map<'_>,
        p: &Path,
        key: &'static str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let v = get(obj, key)?;
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::Str(s)
                if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse().ok()
            }
            Value::Str(s) => {
                self.f.error(
                    p.field(key),
                    format!("must be a whole number, got {}", shown(s)),
                );
                return None;
            }
            other => {
                self.f.error(
                    p.field(key),
                    format!("must be a whole number, got {}", kind(other)),
                );
                return None;
            }
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.f.error(
                    p.field(key),
                    format!("must be between {min} and {max}, got {v}"),
                );
                None
            }
        }
    }

    fn port(&mut self, obj: &Map<'_>, p: &Path, key: &'static str) -> Option<u16> {
        self.int(obj, p, key, 1, 65535).map(|n| n as u16)
    }

    fn u32_in(
        &mut self,
        obj: &Map<'_>,
        p: &Path,
        key: &'static str,
        min: u32,
        max: u32,
    ) -> Option<u32> {
        self.int(obj, p, key, min.into(), max.into())
            .map(|n| n as u32)
    }

    /// A flag: 0/1 or false/true, as JSON or as a string (the API sends every form).
    fn flag(&mut self, obj: &Map<'_>, p: &Path, key: &'static str) -> Option<bool> {
        match get(obj, key)? {
            Value::Bool(b) => Some(*b),
            Value::Number(n) if n.as_u64() == Some(0) => Some(false),
            Value::Number(n) if n.as_u64() == Some(1) => Some(true),
            Value::Str(s) if s == "0" || s == "false" => Some(false),
            Value::Str(s) if s == "1" || s == "true" => Some(true),
            other => {
                self.f.error(
                    p.field(key),
                    format!(
                        "must be 0, 1, false or true (or one of them as a string), got {}",
                        described(other)
                    ),
                );
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        obj: &Map<'_>,
        p: &Path,
        key: &'static str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(obj, p, key)?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.f.error(
                    p.field(key),
                    format!("must be one of {}, got {}", names.join(", "), shown(s)),
                );
                None
            }
        }
    }

    fn array<'v, 'a>(
        &mut self,
        obj: &'v Map<'a>,
        p: &Path,
        key: &'static str,
    ) -> Option<&'v Vec<Value<'a>>> {
        match get(obj, key)? {
            Value::Array(a) => Some(a),
            other => {
                self.f.error(
                    p.field(key),
                    format!("must be an array, got {}", kind(other)),
                );
                None
            }
        }
    }

    fn object<'v, 'a>(&mut self, v: &'v Value<'a>, p: &Path) -> Option<&'v Map<'a>> {
        match v {
            Value::Object(o) => Some(o),
            other => {
                self.f
                    .error(p, format!("must be an object, got {}", kind(other)));
                None
            }
        }
    }

    /// Walks the load-balancer object. Findings go to `self.f`; the spec is only meaningful when
    /// no error was found.
    pub fn spec(&mut self, v: &Value) -> Option<Spec> {
        let root = Path::Root;
        let obj = self.object(v, &root)?;
        let id = self.ident(obj, &root, "identifier", 64);
        let id = self.required(id, obj, &root, "identifier");
        let name = self.ident(obj, &root, "lbName", 255);
        let name = self.required(name, obj, &root, "lbName");
        let max_connections = self
            .u32_in(obj, &root, "maxConnections", 1, 1_000_000)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let lb = self.pool_fields(obj, &root, false);
        self.sources_not_here(obj, &root, "the load balancer's");

        let rp = root.field("rules");
        let list = match self.array(obj, &root, "rules") {
            Some(l) if !l.is_empty() => l.as_slice(),
            Some(_) | None => {
                self.f.error(rp, "must hold at least one rule");
                &[]
            }
        };
        if list.len() > MAX_RULES {
            self.f.error(
                rp,
                format!("holds {} rules; at most {MAX_RULES}", list.len()),
            );
        }
        let mut rules: Vec<(usize, Rule)> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let p = rp.index(i);
            let Some(o) = self.object(item, &p) else {
                continue;
            };
            if let Some(r) = self.rule(o, &p, &lb) {
                rules.push((i, r));
            }
        }
        self.across_rules(&rules);

        let mut rules: Vec<Rule> = rules.into_iter().map(|(_, r)| r).collect();
        for r in &mut rules {
            r.pool.backends.sort_by(|a, b| a.id.cmp(&b.id));
            for d in &mut r.domains {
                d.pool.backends.sort_by(|a, b| a.id.cmp(&b.id));
            }
            r.domains.sort_by(|a, b| a.id.cmp(&b.id));
        }
        rules.sort_by_key(|r| r.front_port);
        Some(Spec {
            id: id?,
            name: name?,
            max_connections,
            rules,
        })
    }
}

/// The algorithms under which Envoy can ramp a new host up (slow start).
fn ramps(a: Algorithm) -> bool {
    matches!(a, Algorithm::Roundrobin | Algorithm::Leastconn)
}

/// Whether a spec sets `key` to something other than an "off" value (0, false, none, http, []).
fn set_to_something(obj: &Map<'_>, key: &str) -> bool {
    match get(obj, key) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Str(s)) => !["0", "false", "none", "http"].contains(&s.as_ref()),
        Some(_) => true,
    }
}
