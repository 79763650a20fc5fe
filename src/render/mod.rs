//! Turns a valid spec into one complete Envoy bootstrap, from the Tera templates in `templates/`.
//!
//! Invariants:
//! - **render does no I/O**: it returns the config text and the certificate files it refers to;
//!   writing them is the caller's job (see [`crate::store`]).
//! - **every value is escaped**: templates print values only through the `q` filter (a test
//!   checks every `{{ }}` in `templates/`), which emits a JSON string literal with everything
//!   outside printable ASCII escaped. JSON is also YAML, and no input can add structure.
//! - **the output is parsed back and checked** against the view before it is returned.
//!
//! The templates are compiled into the binary, so the agent is self-contained.

mod edge;
mod readback;
mod sources;
pub mod splice;
mod view;
pub mod xds;

pub use view::{cluster_name, redirect_listener_name, refused_stat_prefix, CertFile, View};

use crate::resolve::Resolved;
use crate::settings::Settings;
use crate::spec::Spec;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

/// The template set, compiled in. Names are what templates `include`.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "bootstrap.json.tera",
        include_str!("../../templates/bootstrap.json.tera"),
    ),
    (
        "listener.json.tera",
        include_str!("../../templates/listener.json.tera"),
    ),
    (
        "http.json.tera",
        include_str!("../../templates/http.json.tera"),
    ),
    (
        "access_log.json.tera",
        include_str!("../../templates/access_log.json.tera"),
    ),
    (
        "cluster.json.tera",
        include_str!("../../templates/cluster.json.tera"),
    ),
    (
        "upstream_tls.json.tera",
        include_str!("../../templates/upstream_tls.json.tera"),
    ),
    (
        "metrics_listener.json.tera",
        include_str!("../../templates/metrics_listener.json.tera"),
    ),
    (
        "metrics_clusters.json.tera",
        include_str!("../../templates/metrics_clusters.json.tera"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the built-in templates do not compile: {0}")]
    Templates(String),
    #[error("rendering the Envoy config failed: {0}")]
    Render(String),
    #[error("the rendered Envoy config failed its self-check ({0}); this is a bug in the templates, nothing was applied")]
    Check(String),
}

/// What rendering produced: the config text and the files it names. The supervisor's protocol
/// carries it as it is (`config`, `files`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    /// The Envoy bootstrap, as JSON (which Envoy reads as YAML too).
    pub config: String,
    pub files: Vec<CertFile>,
}

/// SHA-256 (hex) of the template set: part of every `config_hash`, so a new template means a new
/// hash and a re-apply.
pub fn template_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut h = Sha256::new();
        for (name, text) in TEMPLATES {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(text.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    })
}

/// The template set's version together with every setting the output depends on: part of every
/// `config_hash`, so that a changed setting (a new access log path, a listen address) is a new
/// config that the agent applies, not one the supervisor takes for the one already stored.
pub fn output_version(settings: &Settings) -> String {
    let e = &settings.envoy;
    let m = &settings.metrics;
    let mut h = Sha256::new();
    for part in [
        // (Certificate paths are left out: stored configs keep their certificates under their
        // own hash, and `validate` renders into a directory of its own.)
        template_version().to_owned(),
        e.admin_socket.to_string_lossy().into_owned(),
        e.listen_addresses()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        e.redirect_port.to_string(),
        m.address.to_string(),
        m.port.to_string(),
        m.scrape_port.to_string(),
        m.allowed_cidrs.join(","),
        settings.access_log.path.to_string_lossy().into_owned(),
        settings.access_log.query_string.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The type of the file access log's config, as the templates write it.
const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// `config` with every access log written to `path` instead: `envoy --mode validate` opens the
/// files it names, and a check from the command line must neither need nor touch the real one.
pub fn with_access_log_path(config: &str, path: &Path) -> Result<String, RenderError> {
    fn walk(v: &mut Value, path: &str) {
        match v {
            Value::Object(o) => {
                if o.get("@type").and_then(Value::as_str) == Some(FILE_ACCESS_LOG) {
                    o.insert("path".into(), Value::String(path.into()));
                }
                o.values_mut().for_each(|v| walk(v, path));
            }
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, path)),
            _ => {}
        }
    }
    let mut doc: Value = serde_json::from_str(config)
        .map_err(|e| RenderError::Check(format!("it does not read back: {e}")))?;
    walk(&mut doc, &path.to_string_lossy());
    Ok(doc.to_string())
}

/// The compiled templates. Call once at start-up to fail fast on a broken build.
pub fn templates() -> Result<&'static tera::Tera, RenderError> {
    static TERA: OnceLock<Result<tera::Tera, String>> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut t = tera::Tera::default();
        t.autoescape_on(vec![]);
        t.register_filter("q", q_filter);
        t.register_filter("lb_endpoints", lb_endpoints_filter);
        t.add_raw_templates(TEMPLATES.to_vec())
            .map_err(|e| format!("{e:?}"))?;
        Ok(t)
    })
    .as_ref()
    .map_err(|e| RenderError::Templates(e.clone()))
}

/// Escapes a string as a double-quoted JSON string literal, itself a YAML scalar. Everything in
/// the Basic Multilingual Plane outside printable ASCII becomes `\uXXXX`, so control characters
/// and the line separators (U+2028, U+2029, NEL) that YAML 1.1 parsers read as line breaks never
/// reach a parser raw. Characters above U+FFFF are written as they are: none of them is a line
/// break or a quote, and YAML parsers refuse the surrogate-pair escapes JSON would need.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) > 0xFFFF => out.push(c),
            // Writing to a String cannot fail.
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// The one filter every template value goes through: strings are quoted and escaped, numbers
/// and booleans pass as they are, anything else (a missing value is null) is an error.
fn q_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    match v {
        Value::String(s) => Ok(Value::String(quote(s))),
        Value::Number(_) | Value::Bool(_) => Ok(v.clone()),
        other => Err(tera::Error::msg(format!(
            "q: cannot print {other} as a scalar"
        ))),
    }
}

/// About what one endpoint takes in the rendered config, for sizing buffers.
const ENDPOINT_BYTES: usize = 112;

/// Writes a pool's endpoints, each `[address, port, weight]` (see [`view::Endpoint`]), as
/// Envoy's `lb_endpoints` list, one endpoint a line. It exists for speed: at 10,000 backends,
/// Tera's interpreter spent most of the render in a per-endpoint loop (`cargo bench --bench
/// pipeline`). The escaping is `q`'s: the address goes through [`quote`], port and weight must be
/// integers, and anything else is an error, so this filter can add no structure either.
fn lb_endpoints_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let bad = |what: &Value| {
        tera::Error::msg(format!(
            "lb_endpoints: {what} is not an [address, port, weight] endpoint"
        ))
    };
    let Value::Array(list) = v else {
        return Err(bad(v));
    };
    let mut endpoints = Vec::with_capacity(list.len());
    for e in list {
        match e.as_array().map(Vec::as_slice) {
            Some([Value::String(a), Value::Number(p), Value::Number(w)]) => {
                match (p.as_u64(), w.as_u64()) {
                    (Some(p), Some(w)) => endpoints.push((a.as_str(), p, w)),
                    _ => return Err(bad(e)),
                }
            }
            _ => return Err(bad(e)),
        }
    }
    let mut out = String::with_capacity(32 + list.len() * ENDPOINT_BYTES);
    write_lb_endpoints(&mut out, endpoints.into_iter());
    Ok(Value::String(out))
}

/// The text of one `lb_endpoints` list: what the filter prints, and what a splice writes in its
/// place ([`splice`]), so that the two cannot differ.
fn write_lb_endpoints<'a>(out: &mut String, endpoints: impl Iterator<Item = (&'a str, u64, u64)>) {
    out.push('[');
    for (i, (address, port, weight)) in endpoints.enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "\n                {{\"endpoint\": {{\"address\": {{\"socket_address\": {{\"address\": {}, \"port_value\": {port}}}}}}}, \"load_balancing_weight\": {weight}}}",
            quote(address)
        );
    }
    out.push_str(LB_ENDPOINTS_END);
}

/// How every `lb_endpoints` list ends: a newline is never inside a value (`quote` escapes it),
/// and each endpoint's line is indented deeper, so this finds a list's end.
const LB_ENDPOINTS_END: &str = "\n              ]";

/// Pending ACME HTTP-01 challenges: token → key authorization. Both come from the CA, so they
/// are held to the RFC's alphabet (base64url, and one `.` in the key authorization) before
/// they reach a template, on top of the templates' escaping.
pub type Challenges = std::collections::BTreeMap<String, String>;

/// Whether a challenge is in the alphabet RFC 8555 gives tokens and key authorizations.
pub fn challenge_ok(token: &str, key_auth: &str) -> bool {
    let b64url = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    b64url(token)
        && key_auth
            .split_once('.')
            .is_some_and(|(t, thumb)| t == token && b64url(thumb))
}

/// Renders the Envoy bootstrap for a valid spec. `challenges` are answered on the redirect
/// port when the spec has managed certificates; any not in the RFC's alphabet is left out.
pub fn render(
    spec: &Spec,
    settings: &Settings,
    resolved: &Resolved,
    challenges: &Challenges,
) -> Result<Rendered, RenderError> {
    let (view, files) = build_view(spec, settings, resolved, challenges);
    let config = render_view(&view)?;
    Ok(Rendered { config, files })
}

/// The template's view of a spec, and the files it names.
fn build_view(
    spec: &Spec,
    settings: &Settings,
    resolved: &Resolved,
    challenges: &Challenges,
) -> (View, Vec<CertFile>) {
    let challenges: Challenges = challenges
        .iter()
        .filter(|(t, k)| challenge_ok(t, k))
        .map(|(t, k)| (t.clone(), k.clone()))
        .collect();
    view::build(spec, settings, resolved, &challenges)
}

/// The whole config from the templates, self-checked.
fn render_view(view: &View) -> Result<String, RenderError> {
    let tera = templates()?;
    let ctx =
        tera::Context::from_serialize(view).map_err(|e| RenderError::Render(e.to_string()))?;
    // Sized for the endpoints plus the rest, so that a big config is not copied over and over
    // as Tera's buffer grows.
    let endpoints: usize = view.clusters.iter().map(|c| c.endpoints.len()).sum();
    let mut out = Vec::with_capacity(64 * 1024 + endpoints * ENDPOINT_BYTES);
    tera.render_to("bootstrap.json.tera", &ctx, &mut out)
        .map_err(|e| RenderError::Render(format!("{:#}", anyhow::Error::new(e))))?;
    let config = String::from_utf8(out)
        .map_err(|e| RenderError::Render(format!("the output is not UTF-8: {e}")))?;
    check(&config, view)?;
    Ok(config)
}

/// Parses the rendered text back and checks that its shape is exactly what the view asked for:
/// same node id, admin address, listeners and clusters in order, and every endpoint. An input
/// that managed to add or remove structure would fail here.
/// The rule name a listener's access log lines carry.
fn log_rule(l: &view::Listener) -> &str {
    match (&l.http, &l.tcp) {
        (Some(h), _) => &h.stat_prefix,
        (None, Some(t)) => &t.stat_prefix,
        (None, None) => "",
    }
}

fn check(config: &str, view: &View) -> Result<(), RenderError> {
    let doc: readback::Doc = match serde_json::from_str(config) {
        Ok(v) => v,
        Err(e) => return fail(format!("it does not read back: {e}")),
    };
    if doc.node.id != view.node_id {
        return fail("node id".into());
    }
    if doc.admin.address.target() != Some(format!("unix:{}", view.admin_socket)) {
        return fail("admin address".into());
    }
    check_runtime(&doc, view)?;
    check_listeners(&doc, view)?;
    check_clusters(&doc, view)
}

fn fail(what: String) -> Result<(), RenderError> {
    Err(RenderError::Check(what))
}

/// The runtime layer holds exactly the view's keys (the listeners' limits).
fn check_runtime(doc: &readback::Doc, view: &View) -> Result<(), RenderError> {
    let limits: Vec<(&str, u64)> = match doc.layered_runtime.layers.as_slice() {
        [layer] => layer
            .static_layer
            .iter()
            .map(|(k, v)| (k.as_ref(), *v))
            .collect(),
        _ => return fail("the runtime layer".into()),
    };
    let mut want: Vec<(&str, u64)> = view
        .runtime
        .iter()
        .map(|l| (l.key.as_str(), u64::from(l.value)))
        .collect();
    want.sort_unstable();
    if limits != want {
        return fail(format!("the runtime keys {limits:?}"));
    }
    Ok(())
}

/// The listeners are the view's, in order, on their addresses, with their filter chains; the
/// scrape port's comes last.
fn check_listeners(doc: &readback::Doc, view: &View) -> Result<(), RenderError> {
    let listeners = match &view.metrics {
        Some(m) => {
            let n = doc.static_resources.listeners.len();
            let Some(last) = doc.static_resources.listeners.last() else {
                return fail("the metrics listener is missing".into());
            };
            if last.name != m.listener_name || last.targets() != view.listen_targets(m.port) {
                return fail("the metrics listener".into());
            }
            &doc.static_resources.listeners[..n - 1]
        }
        None => &doc.static_resources.listeners[..],
    };
    let same_listeners = listeners.len() == view.listeners.len()
        && listeners.iter().zip(&view.listeners).all(|(l, vl)| {
            l.name == vl.name
                && l.targets() == view.listen_targets(vl.port)
                && l.filter_chains.len() == vl.chains.len()
        });
    // A rule's name is a literal inside the access log's format string, where `%` would start a
    // command: rule ids are identifiers, so this is a second line of defence.
    if let Some(l) = view.listeners.iter().find(|l| log_rule(l).contains('%')) {
        return fail(format!("listener {}: its rule name holds '%'", l.name));
    }
    if !same_listeners {
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_ref()).collect();
        return fail(format!("listeners {names:?}"));
    }
    Ok(())
}

/// The clusters are the view's, in order, with their endpoints; the scrape port's two come last.
fn check_clusters(doc: &readback::Doc, view: &View) -> Result<(), RenderError> {
    let mut clusters = &doc.static_resources.clusters[..];
    if let Some(m) = &view.metrics {
        let n = clusters.len();
        let tail: Vec<(&str, String)> = clusters[n.saturating_sub(2)..]
            .iter()
            .filter_map(|c| {
                let [loc] = c.load_assignment.endpoints.as_slice() else {
                    return None;
                };
                let [ep] = loc.lb_endpoints.as_slice() else {
                    return None;
                };
                Some((c.name.as_ref(), ep.endpoint.address.target()?))
            })
            .collect();
        let want = [
            (m.admin_cluster.as_str(), format!("unix:{}", m.admin_socket)),
            (
                m.agent_cluster.as_str(),
                format!("{}:{}", m.agent_address, m.agent_port),
            ),
        ];
        if n < 2 || tail != want {
            return fail("the metrics clusters".into());
        }
        clusters = &clusters[..n - 2];
    }
    if clusters.len() != view.clusters.len() {
        return fail(format!(
            "{} clusters, expected {}",
            clusters.len(),
            view.clusters.len()
        ));
    }
    for (c, vc) in clusters.iter().zip(&view.clusters) {
        let [locality] = c.load_assignment.endpoints.as_slice() else {
            return fail(format!("localities of cluster {}", vc.name));
        };
        let eps = &locality.lb_endpoints;
        let same = c.name == vc.name
            && eps.len() == vc.endpoints.len()
            && eps.iter().zip(&vc.endpoints).all(|(e, ve)| {
                e.endpoint
                    .address
                    .socket_address
                    .as_ref()
                    .is_some_and(|sa| sa.address == ve.address && sa.port_value == ve.port)
            });
        if !same {
            return fail(format!("cluster {} or its endpoints", vc.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
