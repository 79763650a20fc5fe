//! Walks the API's JSON into the normalised model, judging every field on the way.
//!
//! The JSON is walked by hand rather than derived with serde so that a wrong type is one more
//! finding with its path instead of the end of parsing: the user gets every error at once.
//! Unknown fields are ignored (the API adds fields over time); `null` and `""` count as absent
//! (the real API sends `"cookieName": ""`, `"subdomain": null`), except that an empty
//! `healthCheckPath` explicitly asks for a TCP check.

use super::address;
use super::error::{shown, Findings};
use super::model::*;
use super::path::Path;
use super::tls;
use ipnet::IpNet;
/// The document as parsed: borrowed from the input bytes, objects as vectors of entries. A spec
/// of 10,000 backends parses in about half the time of `serde_json::Value`, which copies every
/// string and builds a B-tree per object (`cargo bench --bench pipeline`).
type Value<'a> = serde_json_borrow::Value<'a>;
type Map<'a> = serde_json_borrow::ObjectAsVec<'a>;
use std::collections::{HashMap, HashSet};

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

    /// An interval in ms, raised to `floor` with a warning when set below it.
    fn interval(&mut self, obj: &Map<'_>, p: &Path, key: &'static str, floor: u32) -> Option<u32> {
        let n = self.u32_in(obj, p, key, 1, 3_600_000)?;
        if n < floor {
            self.f.warning(
                p.field(key),
                format!("{n} ms is raised to {floor} ms: no backend is checked more often"),
            );
        }
        Some(n.max(floor))
    }

    /// A health-check threshold; unusually large ones are accepted but warned about.
    fn threshold(&mut self, obj: &Map<'_>, p: &Path, key: &'static str) -> Option<u32> {
        let n = self.u32_in(obj, p, key, 1, 10_000)?;
        if n > SLOW_THRESHOLD {
            self.f.warning(
                p.field(key),
                format!("{n} checks in a row are needed to change a backend's health state; recovery or removal will be slow"),
            );
        }
        Some(n)
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

    /// `Some(None)`: an explicit TCP check (`""`, which `get` would call absent);
    /// `Some(Some(path))`: an HTTP check; `None`: not set here (or refused).
    fn health_path(&mut self, obj: &Map<'_>, p: &Path) -> Option<Option<String>> {
        if field(obj, "healthCheckPath").and_then(Value::as_str) == Some("") {
            return Some(None);
        }
        let s = self.string(obj, p, "healthCheckPath")?;
        let ok = s.len() <= MAX_HEALTH_PATH
            && s.starts_with('/')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.~%-".contains(&b));
        if ok {
            return Some(Some(s.to_owned()));
        }
        self.f.error(
            p.field("healthCheckPath"),
            format!(
                "must be empty or match ^/[A-Za-z0-9/_.~%-]*$ with at most {MAX_HEALTH_PATH} characters, got {}",
                shown(s)
            ),
        );
        None
    }

    fn pool_fields(&mut self, obj: &Map<'_>, p: &Path, with_ports: bool) -> PoolFields {
        let health_path = self.health_path(obj, p);
        let cookie_name = self.string(obj, p, "cookieName").and_then(|s| {
            if ident_ok(s, 64) {
                Some(s.to_owned())
            } else {
                self.f.error(
                    p.field("cookieName"),
                    format!("must match ^[A-Za-z0-9_-]{{1,64}}$, got {}", shown(s)),
                );
                None
            }
        });
        PoolFields {
            back_port: if with_ports {
                self.port(obj, p, "backPort")
            } else {
                None
            },
            backend_scheme: if with_ports {
                self.choice(obj, p, "backendScheme", BACKEND_SCHEMES)
            } else {
                None
            },
            algorithm: self.choice(obj, p, "algorithm", ALGORITHMS),
            health_path,
            check_interval: self.interval(obj, p, "checkInterval", MIN_CHECK_INTERVAL_MS),
            fast_interval: self.interval(obj, p, "fastInterval", MIN_FAST_INTERVAL_MS),
            rise: self.threshold(obj, p, "rise"),
            fall: self.threshold(obj, p, "fall"),
            cookie_check: self.flag(obj, p, "cookieCheck"),
            cookie_name,
            redirect: self.flag(obj, p, "redirectHTTP"),
            statuses: self.statuses(obj, p),
            outlier: self.outlier(obj, p),
            slow_start: self.slow_start(obj, p),
        }
    }

    /// `slowStart`: seconds 0-600. Envoy ramps a host up only under round robin and least
    /// connections; set beside another algorithm on the same level, it is said to be ignored.
    fn slow_start(&mut self, obj: &Map<'_>, p: &Path) -> Option<u32> {
        let s = self.u32_in(obj, p, "slowStart", 0, 600)?;
        let algorithm = ALGORITHMS
            .iter()
            .find(|(n, _)| get(obj, "algorithm").and_then(Value::as_str) == Some(*n))
            .map(|(_, a)| *a);
        if s > 0 && algorithm.is_some_and(|a| !ramps(a)) {
            self.f.warning(
                p.field("slowStart"),
                "is ignored: slow start applies to the roundrobin and leastconn algorithms only",
            );
        }
        Some(s)
    }

    /// `healthCheckStatuses`: `"200"`, `"200-399"` (numbers accepted too), each within 100-599.
    fn statuses(&mut self, obj: &Map<'_>, p: &Path) -> Option<Vec<(u16, u16)>> {
        let list = self.array(obj, p, "healthCheckStatuses")?;
        let sp = p.field("healthCheckStatuses");
        if list.is_empty() {
            self.f.error(
                sp,
                "must hold at least one status or range (or be left out for 200-399)",
            );
            return None;
        }
        if list.len() > MAX_STATUS_RANGES {
            self.f.error(
                sp,
                format!("holds {} entries; at most {MAX_STATUS_RANGES}", list.len()),
            );
            return None;
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let text = match item {
                Value::Str(s) => s.trim().to_owned(),
                Value::Number(n) => n.to_string(),
                other => {
                    self.f.error(
                        sp.index(i),
                        format!(
                            "must be a status like \"200\" or a range like \"200-399\", got {}",
                            kind(other)
                        ),
                    );
                    continue;
                }
            };
            let code = |t: &str| {
                t.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
            };
            let range = match text.split_once('-') {
                Some((a, b)) => code(a).zip(code(b)).filter(|(a, b)| a <= b),
                None => code(&text).map(|c| (c, c)),
            };
            match range {
                Some(r) => out.push(r),
                None => self.f.error(
                    sp.index(i),
                    format!("must be a status 100-599 like \"200\" or a range like \"200-399\" (low to high), got {}", shown(&text)),
                ),
            }
        }
        (out.len() == list.len()).then_some(out)
    }

    /// `outlierDetection`: `{consecutive5xx, ejectionTime}`; `null` or absent: off.
    fn outlier(&mut self, obj: &Map<'_>, p: &Path) -> Option<Option<Outlier>> {
        let v = get(obj, "outlierDetection")?;
        let op = p.field("outlierDetection");
        let o = self.object(v, &op)?;
        for k in o.keys() {
            if !["consecutive5xx", "ejectionTime"].contains(&k) {
                self.f.error(
                    op,
                    format!(
                        "holds an unknown field {}; its fields are consecutive5xx and ejectionTime",
                        shown(k)
                    ),
                );
            }
        }
        let consecutive = self.u32_in(o, &op, "consecutive5xx", 1, 100);
        if get(o, "consecutive5xx").is_none() {
            self.f.error(
                op.field("consecutive5xx"),
                "is required: how many 5xx answers or connect failures in a row eject a backend (1-100)",
            );
        }
        let ejection = self.u32_in(o, &op, "ejectionTime", 1, 3600).unwrap_or(30);
        Some(consecutive.map(|c| Outlier {
            consecutive_5xx: c,
            ejection_time_s: ejection,
        }))
    }

    fn pool(&mut self, fields: &PoolFields, scheme: Scheme, backends: Vec<Backend>) -> Pool {
        let interval_ms = fields.check_interval.unwrap_or(5000);
        Pool {
            back_port: fields.back_port.unwrap_or(0),
            backend_scheme: fields.backend_scheme.unwrap_or(BackendScheme::Http),
            algorithm: fields.algorithm.unwrap_or(Algorithm::Roundrobin),
            health: Health {
                http_path: fields.health_path.clone().flatten(),
                interval_ms,
                fast_interval_ms: fields.fast_interval.unwrap_or((interval_ms / 2).max(50)),
                rise: fields.rise.unwrap_or(2),
                fall: fields.fall.unwrap_or(3),
                statuses: fields.statuses.clone().unwrap_or_else(|| vec![(200, 399)]),
            },
            outlier: fields.outlier.flatten(),
            // Only these two ramp a new host up; another algorithm ignores the window.
            slow_start_s: match fields.algorithm.unwrap_or(Algorithm::Roundrobin) {
                a if ramps(a) => fields.slow_start.unwrap_or(0),
                _ => 0,
            },
            sticky_cookie: (scheme.is_http() && fields.cookie_check == Some(true)).then(|| {
                fields
                    .cookie_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned())
            }),
            backends,
        }
    }

    fn backends(&mut self, list: &[Value], p: &Path, back_port: Option<u16>) -> Vec<Backend> {
        let mut out = Vec::with_capacity(list.len());
        let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let bp = p.index(i);
            let Some(obj) = self.object(item, &bp) else {
                continue;
            };
            let id = self.ident(obj, &bp, "identifier", 64);
            let id = self.required(id, obj, &bp, "identifier");
            if let Some(Value::Str(s)) = get(obj, "identifier") {
                if id.is_some() && !seen.insert(s.as_ref()) {
                    self.f.error(
                        bp.field("identifier"),
                        format!("{} is used by another backend of this pool; identifiers must be unique in a pool", shown(s)),
                    );
                }
            }
            let address =
                self.string(obj, &bp, "ip").and_then(|s| {
                    match address::backend_address(s, self.opts.allow_loopback_backends) {
                        Ok(a) => Some(a),
                        Err(why) => {
                            self.f.error(bp.field("ip"), format!("{} {why}", shown(s)));
                            None
                        }
                    }
                });
            let address = self.required(address, obj, &bp, "ip");
            let port = self.port(obj, &bp, "port").or(back_port);
            let weight = self.u32_in(obj, &bp, "weight", 1, 10_000).unwrap_or(100);
            let enabled = self.flag(obj, &bp, "enabled").unwrap_or(true);
            if let (Some(id), Some(address), Some(port)) = (id, address, port) {
                out.push(Backend {
                    id,
                    address,
                    port,
                    weight,
                    enabled,
                });
            }
        }
        out
    }

    fn tls(&mut self, v: &Value, p: &Path) -> Option<Tls> {
        let obj = self.object(v, p)?;
        let id = self.ident(obj, p, "certificateId", 64);
        let id = self.required(id, obj, p, "certificateId");
        let cert = self.string(obj, p, "certificatePem");
        let cert = self.required(cert, obj, p, "certificatePem");
        let key = self.string(obj, p, "privateKeyPem");
        let key = self.required(key, obj, p, "privateKeyPem");
        let min_version = self.choice(obj, p, "minVersion", TLS_VERSIONS);
        let max_version = self.choice(obj, p, "maxVersion", TLS_VERSIONS);
        if let (Some(min), Some(max)) = (min_version, max_version) {
            if min > max {
                self.f
                    .error(p.field("minVersion"), "must not be above maxVersion");
            }
        }
        let alpn = match self.array(obj, p, "alpn") {
            None => vec![Alpn::H2, Alpn::Http11],
            Some(list) => {
                let ap = p.field("alpn");
                if list.is_empty() {
                    self.f.error(
                        ap,
                        "must name at least one of h2, http/1.1 (or be left out for both)",
                    );
                }
                let mut out = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    let s = item.as_str().unwrap_or("");
                    match ALPNS.iter().find(|(n, _)| *n == s) {
                        Some((_, a)) if out.contains(a) => self
                            .f
                            .error(ap.index(i), format!("{} is listed twice", shown(s))),
                        Some((_, a)) => out.push(*a),
                        None => self.f.error(
                            ap.index(i),
                            format!(
                                "must be h2 or http/1.1, got {}",
                                match item {
                                    Value::Str(s) => shown(s),
                                    other => kind(other).to_owned(),
                                }
                            ),
                        ),
                    }
                }
                out
            }
        };
        let (cert, key) = (cert?, key?);
        // One certificate is often given for many domains (a wildcard, or one per rule): check
        // each distinct pair once.
        let checked = self
            .tls_checked
            .entry(format!("{cert}\0{key}"))
            .or_insert_with(|| tls::check_pair(cert, key, self.opts.now))
            .clone();
        match checked {
            Ok(pair) => {
                if let Some(w) = pair.expiry_warning {
                    self.f.warning(p.field("certificatePem"), w);
                }
                Some(Tls {
                    id: id?,
                    certificate_pem: pair.certificate_pem,
                    private_key_pem: pair.private_key_pem,
                    min_version: min_version.unwrap_or(TlsVersion::V1_2),
                    max_version: max_version.unwrap_or(TlsVersion::V1_3),
                    alpn,
                    not_after: pair.not_after,
                })
            }
            Err(errors) => {
                for e in errors {
                    match e {
                        tls::PairError::Certificate(m) => {
                            self.f.error(p.field("certificatePem"), m)
                        }
                        tls::PairError::Key(m) => self.f.error(p.field("privateKeyPem"), m),
                    }
                }
                None
            }
        }
    }

    fn timeouts(&mut self, obj: &Map<'_>, p: &Path, scheme: Scheme) -> Timeouts {
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
    fn not_for_scheme(&mut self, obj: &Map<'_>, p: &Path, key: &'static str, why: &str) {
        if set_to_something(obj, key) {
            self.f.error(p.field(key), why.to_owned());
        }
    }

    /// Warns about a field that is set but means nothing here. The real API carries every
    /// setting on every domain (`redirectHTTP: 1` on a plain http rule's domain), so this is no
    /// reason to refuse a load balancer.
    fn no_effect(&mut self, obj: &Map<'_>, p: &Path, key: &'static str, why: &str) {
        if set_to_something(obj, key) {
            self.f.warning(p.field(key), format!("is ignored: {why}"));
        }
    }

    fn domain(
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

    fn host(&mut self, obj: &Map<'_>, p: &Path) -> Option<Host> {
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

    fn rule(&mut self, obj: &Map<'_>, p: &Path, lb: &PoolFields) -> Option<Rule> {
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

        if scheme_s == Scheme::Tcp {
            let why = "applies to http, https and http2 rules only";
            self.not_for_scheme(obj, p, "cookieCheck", why);
            self.not_for_scheme(
                obj,
                p,
                "domains",
                "applies to http, https and http2 rules only (host routing needs HTTP)",
            );
            if fields.backend_scheme == Some(BackendScheme::Https) {
                self.f.error(
                    p.field("backendScheme"),
                    "https applies to http, https and http2 rules only",
                );
            }
        }
        if scheme.is_some() && scheme_s != Scheme::Https {
            self.no_effect(
                obj,
                p,
                "redirectHTTP",
                "redirectHTTP applies to https rules only",
            );
        }
        if scheme.is_some() && !matches!(scheme_s, Scheme::Https | Scheme::Http2) {
            self.not_for_scheme(obj, p, "tls", "applies to https and http2 rules only");
        }
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

        let mut domains = Vec::new();
        if scheme_s.is_http() {
            if let Some(list) = self.array(obj, p, "domains") {
                let dp = p.field("domains");
                let mut seen: HashMap<Host, usize> = HashMap::new();
                for (i, item) in list.iter().enumerate() {
                    let ip = dp.index(i);
                    let Some(o) = self.object(item, &ip) else {
                        continue;
                    };
                    let Some(d) = self.domain(o, &ip, &fields, scheme_s, tls.is_some()) else {
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
        }
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

    /// Source lists sit on rules only: one set where it would be silently ignored would let in
    /// clients its author meant to refuse.
    fn sources_not_here(&mut self, obj: &Map<'_>, p: &Path, level: &str) {
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
    fn cidrs(&mut self, obj: &Map<'_>, p: &Path, key: &'static str) -> Vec<IpNet> {
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

    /// Checks that need every rule: unique ids and ports, limits, and the redirect listener.
    fn across_rules(&mut self, rules: &[(usize, Rule)]) {
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
    fn redirects(&mut self, rules: &[(usize, Rule)], ports: &HashMap<u16, usize>) {
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
