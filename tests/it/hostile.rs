//! A hostile-input corpus: every string field of the contract, fed values that could break a
//! parser, a template or a log line.
//!
//! No hostile value fits the grammar of any field, so each must be refused with errors at exactly
//! that field's path, with messages that stay on one line and stay short. Separately, each field
//! has values that look odd but that the contract allows; those must be accepted and rendered to
//! a config that parses as JSON, has the same listeners and clusters as the benign spec, and
//! carries the value through intact. Finally `render::quote` must round-trip every hostile string
//! through JSON and YAML.

use crate::support::{certs, contract_path, http_spec, https_spec, options};
use serde_json::{json, Value};
use vpsie_lb_agent::render::{self, quote};
use vpsie_lb_agent::settings::Settings;
use vpsie_lb_agent::spec::{self, Loaded, SpecErrors};

/// The hostile values, each with a label for failure messages.
fn hostile() -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = [
        ("newline", "a\nb"),
        ("trailing newline", "\n"),
        ("CR", "a\rb"),
        ("CRLF", "a\r\nb"),
        ("single quote", "a'b"),
        ("double quote", "a\"b"),
        ("backslash", "a\\b"),
        ("JSON breakout", "\"}, {\"name\": \"x"),
        ("tera expression", "{{ x }}"),
        ("tera statement", "{% if %}"),
        ("tera comment", "{# c #}"),
        ("YAML anchor", "&a"),
        ("YAML alias", "*a"),
        ("YAML tag", "!!str"),
        ("YAML comment", "a #c"),
        ("hash", "#"),
        ("YAML mapping", "a: b"),
        ("YAML flow", "{a: 1}"),
        ("YAML sequence", "- a"),
        ("YAML document end", "..."),
        ("line separator U+2028", "a\u{2028}b"),
        ("paragraph separator U+2029", "a\u{2029}b"),
        ("next line U+0085", "a\u{85}b"),
        ("NUL", "a\0b"),
        ("tab", "a\tb"),
        ("escape sequence", "\u{1b}[31mred"),
        ("bell", "\u{7}"),
        ("DEL", "\u{7f}"),
        ("vertical tab", "\u{b}"),
        ("form feed", "\u{c}"),
        ("byte order mark", "\u{feff}a"),
        ("zero-width space", "a\u{200b}"),
        ("right-to-left override", "\u{202e}abc"),
        ("space", " "),
        ("percent format", "%s%n"),
        ("unicode letters", "ünïcødé"),
        ("CJK", "日本語"),
        ("dotted capital I", "İ"),
        ("Kelvin sign", "\u{212a}"),
        ("fullwidth digits", "８０"),
        ("emoji", "😀"),
    ]
    .into_iter()
    .map(|(l, s)| (l, s.to_owned()))
    .collect();
    v.push(("100 KB", "a".repeat(100_000)));
    v.push(("100 KB of newlines", "\n".repeat(100_000)));
    v
}

/// A field of the contract and where it sits in one of the support specs.
struct Field {
    name: &'static str,
    https: bool,
    /// Applied to the base spec first (e.g. turn sticky sessions on so that a cookie name shows).
    prep: fn(&mut Value),
    /// Where the field sits, as a JSON pointer; errors name it by [`Field::path`].
    ptr: &'static str,
    /// Accepted values that look odd, and the (normalised) text that must then appear in the
    /// rendered config, if the field is rendered at all.
    accepted: &'static [(&'static str, Option<&'static str>)],
    /// Whether the field names listeners or clusters (ids do).
    names_resources: bool,
}

impl Field {
    /// The field's place as the contract (and every error) names it.
    fn path(&self) -> String {
        contract_path(self.ptr)
    }
}

fn no_prep(_: &mut Value) {}

fn with_source_lists(v: &mut Value) {
    v["rules"][0]["allowedSources"] = serde_json::json!(["10.0.0.0/8"]);
    v["rules"][0]["deniedSources"] = serde_json::json!(["10.1.0.0/16"]);
}

fn fields() -> Vec<Field> {
    const LONG_ID: &str = "ABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJ0123";
    let f = |name, https, ptr, accepted, names_resources| Field {
        name,
        https,
        prep: no_prep,
        ptr,
        accepted,
        names_resources,
    };
    vec![
        f(
            "identifier",
            false,
            "/identifier",
            &[
                ("-", Some("-")),
                ("---", Some("---")),
                ("_0", Some("_0")),
                (LONG_ID, Some(LONG_ID)),
            ],
            false,
        ),
        f(
            "lbName",
            false,
            "/lbName",
            &[("-_-", None), ("---", None), (LONG_ID, None)],
            false,
        ),
        f(
            "ruleId",
            false,
            "/rules/0/ruleId",
            &[
                ("-", Some("-")),
                ("---", Some("---")),
                ("_", Some("_")),
                (LONG_ID, Some(LONG_ID)),
            ],
            true,
        ),
        f("scheme", false, "/rules/0/scheme", &[("tcp", None)], false),
        f(
            "backendScheme",
            false,
            "/rules/0/backendScheme",
            &[("https", None), ("http", None)],
            false,
        ),
        f(
            "algorithm",
            false,
            "/rules/0/algorithm",
            &[
                ("leastconn", None),
                ("random", None),
                ("source", None),
                ("ring_hash", None),
                ("maglev", None),
            ],
            false,
        ),
        f(
            "LB-wide algorithm",
            false,
            "/algorithm",
            &[("maglev", None)],
            false,
        ),
        f(
            "proxyProtocol",
            false,
            "/rules/0/proxyProtocol",
            &[("v1", None), ("v2", None), ("none", None)],
            false,
        ),
        f(
            "healthCheckPath",
            false,
            "/rules/0/healthCheckPath",
            &[
                ("", None),
                ("/%7B%7B%20x%20%7D%7D", Some("/%7B%7B%20x%20%7D%7D")),
                ("/%0A%0D%E2%80%A8", Some("/%0A%0D%E2%80%A8")),
                ("/~a/../b", Some("/~a/../b")),
                ("//", Some("//")),
            ],
            false,
        ),
        f(
            "LB-wide healthCheckPath",
            false,
            "/healthCheckPath",
            &[("/%25", Some("/%25"))],
            false,
        ),
        Field {
            prep: |v| v["rules"][0]["cookieCheck"] = json!(1),
            ..f(
                "cookieName",
                false,
                "/rules/0/cookieName",
                &[
                    ("-", Some("-")),
                    ("---", Some("---")),
                    (LONG_ID, Some(LONG_ID)),
                ],
                false,
            )
        },
        f(
            "backend identifier",
            false,
            "/rules/0/backends/0/identifier",
            &[("-", None), ("---", None), (LONG_ID, None)],
            false,
        ),
        f(
            "backend ip",
            false,
            "/rules/0/backends/0/ip",
            &[
                ("::ffff:10.1.2.3", Some("::ffff:10.1.2.3")),
                ("fd00::1", Some("fd00::1")),
                // Host names never reach Envoy: the agent resolves them (to RESOLVED_TO here).
                ("DB.Internal", Some(RESOLVED_TO)),
                ("web", Some(RESOLVED_TO)),
                ("xn--bcher-kva.example", Some(RESOLVED_TO)),
            ],
            false,
        ),
        f(
            "domainId",
            true,
            "/rules/0/domains/0/domainId",
            &[
                ("-", Some("-")),
                ("---", Some("---")),
                (LONG_ID, Some(LONG_ID)),
            ],
            true,
        ),
        f(
            "domainName",
            true,
            "/rules/0/domains/0/domainName",
            &[
                ("API.EXAMPLE.COM", Some("api.example.com")),
                ("*.example.com", Some("*.example.com")),
                ("xn--bcher-kva.example", Some("xn--bcher-kva.example")),
                ("0-9.a", Some("0-9.a")),
            ],
            false,
        ),
        Field {
            prep: |v| v["rules"][0]["domains"][0]["subdomain"] = json!("www"),
            ..f(
                "subdomain",
                true,
                "/rules/0/domains/0/subdomain",
                &[
                    ("", Some("api.example.com")),
                    ("WWW", Some("www.api.example.com")),
                    ("a-b.c", Some("a-b.c.api.example.com")),
                ],
                false,
            )
        },
        f(
            "domain healthCheckPath",
            true,
            "/rules/0/domains/0/healthCheckPath",
            &[("/a.b", Some("/a.b"))],
            false,
        ),
        f(
            "domain backendScheme",
            true,
            "/rules/0/domains/0/backendScheme",
            &[("https", None)],
            false,
        ),
        Field {
            prep: |v| v["rules"][0]["domains"][0]["cookieCheck"] = json!(true),
            ..f(
                "domain cookieName",
                true,
                "/rules/0/domains/0/cookieName",
                &[("c-1", Some("c-1"))],
                false,
            )
        },
        f(
            "domain algorithm",
            true,
            "/rules/0/domains/0/algorithm",
            &[("source", None)],
            false,
        ),
        f(
            "domain backend identifier",
            true,
            "/rules/0/domains/0/backends/0/identifier",
            &[("x", None)],
            false,
        ),
        f(
            "domain backend ip",
            true,
            "/rules/0/domains/0/backends/0/ip",
            &[("2001:db8::7", Some("2001:db8::7"))],
            false,
        ),
        f(
            "certificateId",
            true,
            "/rules/0/tls/certificateId",
            &[
                ("-", Some("/--")),
                ("---", Some("/----")),
                (LONG_ID, Some(LONG_ID)),
            ],
            false,
        ),
        f(
            "domain certificateId",
            true,
            "/rules/0/domains/0/tls/certificateId",
            &[("_", Some("/_-"))],
            false,
        ),
        f(
            "minVersion",
            true,
            "/rules/0/tls/minVersion",
            &[("TLSv1.3", Some("TLSv1_3")), ("TLSv1.2", None)],
            false,
        ),
        f(
            "maxVersion",
            true,
            "/rules/0/tls/maxVersion",
            &[("TLSv1.2", None)],
            false,
        ),
        Field {
            prep: |v| v["rules"][0]["tls"]["alpn"] = json!(["h2"]),
            ..f(
                "alpn entry",
                true,
                "/rules/0/tls/alpn/0",
                &[("http/1.1", Some("http/1.1"))],
                false,
            )
        },
        Field {
            prep: |v| v["rules"][0]["tls"]["alpn"] = json!(["h2", "http/1.1"]),
            ..f("second alpn entry", true, "/rules/0/tls/alpn/1", &[], false)
        },
        Field {
            prep: |v| v["rules"][0]["domains"][0]["tls"]["alpn"] = json!(["h2"]),
            ..f(
                "domain alpn entry",
                true,
                "/rules/0/domains/0/tls/alpn/0",
                &[],
                false,
            )
        },
        // Numbers and flags, which the API may also send as strings.
        f("frontPort", false, "/rules/0/frontPort", &[], false),
        f("backPort", false, "/rules/0/backPort", &[], false),
        f(
            "backend port",
            false,
            "/rules/0/backends/0/port",
            &[],
            false,
        ),
        f("weight", false, "/rules/0/backends/0/weight", &[], false),
        f("checkInterval", false, "/checkInterval", &[], false),
        f(
            "timeouts.connect",
            false,
            "/rules/0/timeouts/connect",
            &[],
            false,
        ),
        f("maxConnections", false, "/maxConnections", &[], false),
        f("cookieCheck", false, "/rules/0/cookieCheck", &[], false),
        f("redirectHTTP", true, "/rules/0/redirectHTTP", &[], false),
        f(
            "backend enabled",
            false,
            "/rules/0/backends/0/enabled",
            &[],
            false,
        ),
        Field {
            prep: with_source_lists,
            ..f(
                "allowedSources entry",
                true,
                "/rules/0/allowedSources/0",
                &[
                    ("203.0.113.7", Some("203.0.113.7")),
                    ("2001:DB8::/32", Some("2001:db8::")),
                ],
                false,
            )
        },
        Field {
            prep: with_source_lists,
            ..f(
                "deniedSources entry",
                false,
                "/rules/0/deniedSources/0",
                &[("10.1.2.3", None), ("2001:DB8::1", None)],
                false,
            )
        },
    ]
}

/// Sets `v` at a JSON pointer, creating the last key (and an empty `timeouts` object) if needed.
fn put(doc: &mut Value, ptr: &str, v: Value) {
    let (parent, key) = ptr.rsplit_once('/').unwrap();
    if parent == "/rules/0/timeouts" && doc.pointer(parent).is_none() {
        doc["rules"][0]["timeouts"] = json!({});
    }
    match doc.pointer_mut(parent) {
        Some(Value::Object(o)) => {
            o.insert(key.to_owned(), v);
        }
        Some(Value::Array(a)) => a[key.parse::<usize>().unwrap()] = v,
        _ => panic!("no {parent} in the spec"),
    }
}

fn load(v: &Value) -> Result<Loaded, SpecErrors> {
    spec::load(v.to_string().as_bytes(), &options())
}

/// A message that is safe to print: one line, no control or invisible formatting characters,
/// and short however long the refused value was.
fn message_problem(m: &str) -> Option<String> {
    if m.chars().count() > 400 {
        return Some(format!("is {} characters long", m.chars().count()));
    }
    let bad = m.chars().find(|&c| {
        c.is_control()
            || matches!(
                c,
                '\u{2028}'
                    | '\u{2029}'
                    | '\u{200b}'..='\u{200f}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{feff}'
            )
    });
    bad.map(|c| format!("holds {c:?}"))
}

/// The structure of a rendered config: listeners (name, port, filter chains) and clusters
/// (name, endpoints), in order.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Shape {
    listeners: Vec<(String, u64, usize)>,
    clusters: Vec<(String, usize)>,
}

fn shape(config: &str) -> Shape {
    let doc: Value = serde_json::from_str(config).expect("the rendered config parses as JSON");
    let sr = &doc["static_resources"];
    Shape {
        listeners: sr["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().expect("listener name").to_owned(),
                    l["address"]["socket_address"]["port_value"]
                        .as_u64()
                        .expect("port"),
                    l["filter_chains"].as_array().expect("filter chains").len(),
                )
            })
            .collect(),
        clusters: sr["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().expect("cluster name").to_owned(),
                    c["load_assignment"]["endpoints"][0]["lb_endpoints"]
                        .as_array()
                        .map_or(0, Vec::len),
                )
            })
            .collect(),
    }
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

/// What every backend host name resolves to in these renders.
const RESOLVED_TO: &str = "10.99.0.1";

/// Renders a loaded spec (its host names resolved to [`RESOLVED_TO`]) and checks what every
/// rendered config must be.
fn rendered(l: &Loaded) -> Result<String, String> {
    let resolved = vpsie_lb_agent::resolve::names(&l.spec)
        .into_iter()
        .map(|n| (n, vec![RESOLVED_TO.parse().unwrap()]))
        .collect();
    let r = render::render(
        &l.spec,
        &Settings::default(),
        &resolved,
        &Default::default(),
    )
    .map_err(|e| e.to_string())?;
    if let Some(b) = r
        .config
        .bytes()
        .find(|&b| !(b == b'\n' || (b' '..=b'~').contains(&b)))
    {
        return Err(format!(
            "the config holds byte {b:#04x} outside printable ASCII"
        ));
    }
    Ok(r.config)
}

fn base(f: &Field, http: &Value, https: &Value) -> Value {
    let mut v = if f.https { https.clone() } else { http.clone() };
    (f.prep)(&mut v);
    v
}

/// The benign value of the field in the base spec, as text.
fn benign(f: &Field, base: &Value) -> String {
    match base.pointer(f.ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "1".into(),
    }
}

/// Every hostile value, alone and glued to the field's benign value on either side, is refused
/// at exactly the field's path with printable messages.
fn refuses_hostile_values(f: &Field, http: &Value, https: &Value) -> Vec<String> {
    let base = base(f, http, https);
    assert!(
        load(&base).is_ok(),
        "{}: the base spec must be valid",
        f.name
    );
    let good = benign(f, &base);
    let mut failures = Vec::new();
    for (label, h) in hostile() {
        for (form, value) in [
            ("alone", h.clone()),
            ("after the benign value", format!("{good}{h}")),
            ("before the benign value", format!("{h}{good}")),
        ] {
            let mut v = base.clone();
            put(&mut v, f.ptr, json!(value));
            let what = format!("{}: {label} {form}", f.name);
            let path = f.path();
            match load(&v) {
                Ok(_) => failures.push(format!("{what}: accepted")),
                Err(e) => {
                    if !e.has(&path) {
                        failures.push(format!("{what}: no error at {path}: {e}"));
                    }
                    for finding in &e.0 {
                        if finding.path != path {
                            failures.push(format!("{what}: an error elsewhere: {finding}"));
                        }
                        if let Some(p) = message_problem(&finding.message) {
                            failures.push(format!(
                                "{what}: the message {p}: {:.200?}",
                                finding.message
                            ));
                        }
                    }
                }
            }
        }
    }
    failures
}

/// The odd-looking values the contract allows are accepted and rendered safely.
fn renders_allowed_values(f: &Field, http: &Value, https: &Value) -> Vec<String> {
    let base = base(f, http, https);
    let benign_loaded = load(&base).expect("the base spec is valid");
    let benign_shape = shape(&rendered(&benign_loaded).expect("the base spec renders"));
    let old = benign(f, &base);
    let mut failures = Vec::new();
    for &(value, appears) in f.accepted {
        let what = format!("{}: {value:.30?}", f.name);
        let mut v = base.clone();
        put(&mut v, f.ptr, json!(value));
        let loaded = match load(&v) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{what}: refused: {e}"));
                continue;
            }
        };
        let config = match rendered(&loaded) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                continue;
            }
        };
        let mut want = benign_shape.clone();
        if f.names_resources {
            // Listener and cluster names are built from ids: `rule` and `rule/domain`.
            let rename = |n: &str| {
                n.split('/')
                    .map(|part| if part == old { value } else { part })
                    .collect::<Vec<_>>()
                    .join("/")
            };
            want.listeners.iter_mut().for_each(|l| l.0 = rename(&l.0));
            want.clusters.iter_mut().for_each(|c| c.0 = rename(&c.0));
        }
        let got = shape(&config);
        if got != want {
            failures.push(format!("{what}: structure {got:?}, expected {want:?}"));
        }
        if let Some(text) = appears {
            let mut all = Vec::new();
            strings(&serde_json::from_str(&config).unwrap(), &mut all);
            if !all.iter().any(|s| s.contains(text)) {
                failures.push(format!("{what}: {text:?} does not appear in the config"));
            }
        }
    }
    failures
}

#[test]
fn every_field_refuses_every_hostile_value_at_its_path() {
    let (http, https) = (http_spec(), https_spec());
    let mut failures = Vec::new();
    let fields = fields();
    assert!(fields.len() >= 30);
    for f in &fields {
        failures.extend(refuses_hostile_values(f, &http, &https));
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn allowed_odd_values_render_with_unchanged_structure() {
    let (http, https) = (http_spec(), https_spec());
    let mut failures = Vec::new();
    let mut tried = 0;
    for f in &fields() {
        tried += f.accepted.len();
        failures.extend(renders_allowed_values(f, &http, &https));
    }
    assert!(tried >= 40, "only {tried} accepted values tried");
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Structured fields given a hostile string instead of an object or array.
#[test]
fn hostile_strings_where_structure_belongs() {
    let cases: &[(bool, &str)] = &[
        (false, "/rules"),
        (false, "/rules/0"),
        (false, "/rules/0/backends"),
        (false, "/rules/0/backends/0"),
        (false, "/rules/0/timeouts"),
        (false, "/rules/0/domains"),
        (true, "/rules/0/tls"),
        (true, "/rules/0/tls/alpn"),
        (true, "/rules/0/domains/0"),
        (true, "/rules/0/domains/0/tls"),
        (true, "/rules/0/domains/0/backends"),
    ];
    let (http, https) = (http_spec(), https_spec());
    let mut failures = Vec::new();
    for &(is_https, ptr) in cases {
        let path = &contract_path(ptr);
        for (label, h) in hostile() {
            let mut v = if is_https {
                https.clone()
            } else {
                http.clone()
            };
            put(&mut v, ptr, json!(h));
            match load(&v) {
                Ok(_) => failures.push(format!("{path}: {label}: accepted")),
                Err(e) => {
                    for finding in &e.0 {
                        if finding.path != *path {
                            failures
                                .push(format!("{path}: {label}: an error elsewhere: {finding}"));
                        }
                        if let Some(p) = message_problem(&finding.message) {
                            failures.push(format!("{path}: {label}: the message {p}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// PEM fields: a hostile value alone is refused at the field; glued around a real PEM block,
/// it is either refused there or dropped, since the PEM is re-encoded from what was parsed.
#[test]
fn hostile_text_around_pem_never_reaches_the_output() {
    let c = certs::cert(&["shop.example.com"]);
    let mut base = https_spec();
    base["rules"][0]["tls"]["certificatePem"] = json!(c.cert_pem);
    base["rules"][0]["tls"]["privateKeyPem"] = json!(c.key_pem);
    let clean = load(&base).expect("valid");
    let clean_tls = clean.spec.rules[0].tls.clone().unwrap();
    let mut failures = Vec::new();
    for (key, pem) in [
        ("certificatePem", &c.cert_pem),
        ("privateKeyPem", &c.key_pem),
    ] {
        let path = &contract_path(&format!("/rules/0/tls/{key}"));
        for (label, h) in hostile() {
            for (form, value) in [
                ("alone", h.clone()),
                ("after the PEM", format!("{pem}{h}")),
                ("before the PEM", format!("{h}\n{pem}")),
                ("inside the PEM", pem.replacen('\n', &format!("\n{h}\n"), 2)),
            ] {
                let what = format!("{key}: {label} {form}");
                let mut v = base.clone();
                v["rules"][0]["tls"][key] = json!(value);
                match load(&v) {
                    Err(e) => {
                        if e.0.iter().any(|f| f.path != *path) || !e.has(path) {
                            failures.push(format!("{what}: errors not at {path}: {e}"));
                        }
                        for f in &e.0 {
                            if let Some(p) = message_problem(&f.message) {
                                failures.push(format!("{what}: the message {p}"));
                            }
                        }
                    }
                    Ok(l) => {
                        if form == "alone" {
                            failures.push(format!("{what}: accepted"));
                            continue;
                        }
                        let tls = l.spec.rules[0].tls.as_ref().unwrap();
                        if tls.certificate_pem != clean_tls.certificate_pem
                            || tls.private_key_pem != clean_tls.private_key_pem
                        {
                            failures.push(format!("{what}: the stray text was kept"));
                        }
                        let r = render::render(
                            &l.spec,
                            &Settings::default(),
                            &Default::default(),
                            &Default::default(),
                        )
                        .unwrap();
                        for file in &r.files {
                            if !file.contents.starts_with("-----BEGIN ")
                                || !file.contents.trim_end().ends_with("-----")
                            {
                                failures.push(format!(
                                    "{what}: {} is not clean PEM",
                                    file.path.display()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Unknown fields are ignored, whatever their names and values.
#[test]
fn hostile_unknown_fields_change_nothing() {
    let base = https_spec();
    let clean = load(&base).expect("valid");
    let clean_config = rendered(&clean).unwrap();
    let mut v = base.clone();
    for (i, (label, h)) in hostile().into_iter().enumerate() {
        let key = format!("{h}{i}");
        let value = json!({"label": label, "value": h, "list": [h, {"n": null}]});
        v[&key] = value.clone();
        v["rules"][0][&key] = value.clone();
        v["rules"][0]["tls"][&key] = value.clone();
        v["rules"][0]["backends"][0][&key] = value.clone();
        v["rules"][0]["domains"][0][&key] = value;
    }
    let loaded = load(&v).expect("unknown fields are ignored");
    assert_eq!(loaded.spec, clean.spec);
    assert_eq!(rendered(&loaded).unwrap(), clean_config);
}

/// The API's error message is shown to operators: it must not break their terminal either.
#[test]
fn hostile_api_error_messages_are_shown_safely() {
    for (label, h) in hostile() {
        for body in [
            json!({"error": true, "code": 500, "message": h}),
            json!({"error": true, "code": h, "message": "x"}),
        ] {
            let e = spec::load(body.to_string().as_bytes(), &options())
                .expect_err("an error envelope is refused");
            assert_eq!(e.0.len(), 1, "{label}: {e}");
            assert!(
                e.0[0].message.contains("the API answered with an error"),
                "{label}: {e}"
            );
            if let Some(p) = message_problem(&e.0[0].message) {
                panic!("{label}: the message {p}: {:.200?}", e.0[0].message);
            }
        }
    }
}

/// Extra strings for `quote`, beyond the hostile corpus: every ASCII character, and the edges of
/// the Basic Multilingual Plane.
fn quote_corpus() -> Vec<String> {
    let mut v: Vec<String> = hostile().into_iter().map(|(_, s)| s).collect();
    v.push((0u8..=127).map(char::from).collect());
    v.push(String::new());
    v.push("\u{ffff}\u{fffd}\u{d7ff}\u{e000}".into());
    v.push("\\u0041 \\n \\\"".into());
    v.push("'\"'\"'".into());
    v.push("}}{{".into());
    v
}

#[test]
fn quote_round_trips_through_json_and_yaml() {
    for s in quote_corpus() {
        let q = quote(&s);
        let shown: String = s.chars().take(20).collect();
        assert!(q.starts_with('"') && q.ends_with('"') && q.len() >= 2);
        assert!(
            q.chars()
                .all(|c| (' '..='~').contains(&c) || c > '\u{ffff}'),
            "{shown:?}: quote emitted a raw character that is neither printable ASCII nor above U+FFFF"
        );
        assert_eq!(
            serde_json::from_str::<String>(&q).unwrap(),
            s,
            "JSON: {shown:?}"
        );
        // As a value and as a key inside a larger document, the structure stays as written.
        let json_doc = format!("{{{q}: [{q}, 1], \"after\": {q}}}");
        let parsed: Value = serde_json::from_str(&json_doc).unwrap();
        assert_eq!(
            parsed.as_object().unwrap().len(),
            if s == "after" { 1 } else { 2 }
        );
        assert_eq!(parsed["after"], json!(s));
        assert_eq!(parsed[&s], json!([s, 1]));

        assert_eq!(
            serde_yaml::from_str::<String>(&q).unwrap(),
            s,
            "YAML: {shown:?}"
        );
        // An explicit key (`? `): YAML limits implicit keys to 1024 characters.
        let yaml_doc = format!("? {q}\n: [{q}, 1]\nafter: {q}\n");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml_doc).unwrap();
        let map = parsed.as_mapping().unwrap();
        assert_eq!(map.len(), if s == "after" { 1 } else { 2 }, "{shown:?}");
        assert_eq!(
            map.get("after").and_then(|v| v.as_str()),
            Some(s.as_str()),
            "{shown:?}"
        );
        assert_eq!(
            map.get(s.as_str())
                .and_then(|v| v.as_sequence())
                .map(Vec::len),
            Some(2),
            "{shown:?}"
        );
    }
}

#[test]
fn quote_escapes_the_characters_yaml_reads_as_line_breaks() {
    for (c, esc) in [
        ('\n', "\\u000a"),
        ('\r', "\\u000d"),
        ('\u{85}', "\\u0085"),
        ('\u{2028}', "\\u2028"),
        ('\u{2029}', "\\u2029"),
        ('\0', "\\u0000"),
    ] {
        assert_eq!(quote(&format!("a{c}b")), format!("\"a{esc}b\""));
    }
    assert_eq!(quote("{{ x }}"), "\"{{ x }}\"");
    assert_eq!(quote("\"}"), "\"\\\"}\"");
}

/// Every IPv6 spelling that carries an IPv4 address (mapped, compatible, NAT64 and 6to4, in
/// dotted and in hexadecimal notation) of `v4`.
fn disguises(v4: std::net::Ipv4Addr) -> Vec<(&'static str, String)> {
    let [a, b, c, d] = v4.octets();
    let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
    vec![
        ("mapped", format!("::ffff:{v4}")),
        ("mapped, hexadecimal", format!("::ffff:{hi:x}:{lo:x}")),
        ("mapped, capitals", format!("::FFFF:{v4}")),
        ("compatible", format!("::{v4}")),
        ("NAT64", format!("64:ff9b::{v4}")),
        ("NAT64, hexadecimal", format!("64:ff9b::{hi:x}:{lo:x}")),
        ("6to4", format!("2002:{hi:x}:{lo:x}::")),
        (
            "6to4, a host in its subnet",
            format!("2002:{hi:x}:{lo:x}:1::5"),
        ),
    ]
}

/// The forbidden IPv4 addresses that IPv6 spellings can carry: refused as backends wherever a
/// backend address goes (a rule's or a domain's backend, a host name's answer), and by the API
/// client's guard, each refusal naming the address inside. In source lists only the mapped form
/// is refused (an IPv4 client is never seen in it, so the entry would match nobody); NAT64 and
/// 6to4 prefixes are real IPv6 clients' and stay allowed.
#[test]
fn addresses_in_disguise_are_refused_wherever_an_address_goes() {
    let mut failures = Vec::new();
    for v4 in ["169.254.169.254", "127.0.0.1", "0.0.0.0", "224.0.0.1"] {
        let v4: std::net::Ipv4Addr = v4.parse().unwrap();
        for (form, text) in disguises(v4) {
            if v4.is_unspecified() && form == "compatible" {
                continue; // `::0.0.0.0` is `::` itself: refused as unspecified, nothing inside
            }
            let what = format!("{text} ({form} of {v4})");
            let ip: std::net::IpAddr = text.parse().unwrap();
            for (base, ptr, path) in [
                (
                    http_spec(),
                    "/rules/0/backends/0/ip",
                    "rules[0].backends[0].ip",
                ),
                (
                    https_spec(),
                    "/rules/0/domains/0/backends/0/ip",
                    "rules[0].domains[0].backends[0].ip",
                ),
            ] {
                let mut v = base;
                put(&mut v, ptr, json!(text));
                match load(&v) {
                    Ok(_) => failures.push(format!("{what} at {ptr}: accepted")),
                    Err(e) => {
                        let here: Vec<_> = e.0.iter().filter(|f| f.path == path).collect();
                        if here.is_empty()
                            || !here.iter().any(|f| f.message.contains(&v4.to_string()))
                        {
                            failures.push(format!("{what} at {ptr}: not refused naming {v4}: {e}"));
                        }
                    }
                }
            }
            let judged = vpsie_lb_agent::resolve::judge(&[ip], false);
            if !judged.allowed.is_empty()
                || !judged
                    .refused
                    .iter()
                    .any(|(_, why)| why.to_string().contains(&v4.to_string()))
            {
                failures.push(format!("{what} in a DNS answer: {judged:?}"));
            }
            // Loopback is open to backends in development; never its disguises of the others.
            if v4 != std::net::Ipv4Addr::LOCALHOST
                && vpsie_lb_agent::resolve::judge(&[ip], true).allowed == [ip]
            {
                failures.push(format!("{what}: allowed in development"));
            }
            if vpsie_lb_agent::net::api_refusal(ip, false).is_none() {
                failures.push(format!("{what}: the API client would call it"));
            }
            let mut v = http_spec();
            v["rules"][0]["deniedSources"] = json!([text]);
            let mapped = form.starts_with("mapped");
            match (load(&v), mapped) {
                (Ok(_), true) => failures.push(format!("{what} in deniedSources: accepted")),
                (Err(e), false) => failures.push(format!("{what} in deniedSources: refused: {e}")),
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
