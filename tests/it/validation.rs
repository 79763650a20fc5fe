//! Every validation rule of the API contract (the team's `shared/api/README.md`, outside this
//! repository), table-driven.
//!
//! Each rule has accepted and refused cases. A refused case names the exact path of the error,
//! a fragment of the message that says which rule was broken, and (unless the case says
//! otherwise) that no error appeared anywhere else. Cases are built by mutating the support
//! specs (`http_spec()`, `https_spec()`) through JSON pointers.

use crate::support::{
    certs, contract_path, http_spec, https_spec, load, load_err, load_ok, options,
};
use serde_json::{json, Value};
use vpsie_lb_agent::spec::{
    self, config_hash, Algorithm, BackendAddress, BackendScheme, Loaded, Options, ProxyProtocol,
    Scheme, SpecErrors, TlsVersion, DEFAULT_COOKIE_NAME, DEFAULT_MAX_CONNECTIONS, MAX_BODY_BYTES,
};

// ---------------------------------------------------------------------------------------------
// The table machinery.

type Mutation = Box<dyn Fn(&mut Value)>;

#[derive(Clone, Copy, Debug)]
enum Base {
    Http,
    Https,
}

enum Expect {
    Ok,
    /// Refused with an error at exactly this place (a JSON pointer into the spec; the error names
    /// it in the contract's notation, [`contract_path`]) whose message holds the fragment, and no
    /// error at any other place.
    Err(String, &'static str),
    /// As `Err`, but other errors may come along (the case breaks two rules at once).
    ErrAmong(String, &'static str),
}

struct Case {
    name: String,
    base: Base,
    mutate: Mutation,
    expect: Expect,
}

fn ok(name: impl Into<String>, base: Base, mutate: Mutation) -> Case {
    Case {
        name: name.into(),
        base,
        mutate,
        expect: Expect::Ok,
    }
}

fn err(
    name: impl Into<String>,
    base: Base,
    mutate: Mutation,
    path: impl Into<String>,
    fragment: &'static str,
) -> Case {
    Case {
        name: name.into(),
        base,
        mutate,
        expect: Expect::Err(path.into(), fragment),
    }
}

fn err_among(
    name: impl Into<String>,
    base: Base,
    mutate: Mutation,
    path: impl Into<String>,
    fragment: &'static str,
) -> Case {
    Case {
        name: name.into(),
        base,
        mutate,
        expect: Expect::ErrAmong(path.into(), fragment),
    }
}

/// Sets `v` at a JSON pointer; the last segment may be a new key, or one past an array's end.
fn put(doc: &mut Value, ptr: &str, v: Value) {
    let (parent, key) = ptr.rsplit_once('/').expect("a JSON pointer");
    let target = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent:?} in the spec"));
    match target {
        Value::Object(o) => {
            o.insert(key.to_owned(), v);
        }
        Value::Array(a) => {
            let i: usize = key.parse().expect("an array index");
            if i == a.len() {
                a.push(v);
            } else {
                a[i] = v;
            }
        }
        other => panic!("{parent:?} is {other}, not a container"),
    }
}

fn take(doc: &mut Value, ptr: &str) {
    let (parent, key) = ptr.rsplit_once('/').expect("a JSON pointer");
    match doc.pointer_mut(parent) {
        Some(Value::Object(o)) => {
            o.remove(key);
        }
        Some(Value::Array(a)) => {
            a.remove(key.parse::<usize>().expect("an array index"));
        }
        _ => panic!("no {parent:?} in the spec"),
    }
}

fn set(ptr: impl Into<String>, v: Value) -> Mutation {
    let ptr = ptr.into();
    Box::new(move |d| put(d, &ptr, v.clone()))
}

fn unset(ptr: impl Into<String>) -> Mutation {
    let ptr = ptr.into();
    Box::new(move |d| take(d, &ptr))
}

fn all(ms: Vec<Mutation>) -> Mutation {
    Box::new(move |d| ms.iter().for_each(|m| m(d)))
}

fn nothing() -> Mutation {
    Box::new(|_| {})
}

fn judge(r: &Result<Loaded, SpecErrors>, expect: &Expect) -> Option<String> {
    match (expect, r) {
        (Expect::Ok, Ok(_)) => None,
        (Expect::Ok, Err(e)) => Some(format!("expected it accepted, got {e}")),
        (Expect::Err(ptr, _) | Expect::ErrAmong(ptr, _), Ok(_)) => Some(format!(
            "expected an error at {:?}, it was accepted",
            contract_path(ptr)
        )),
        (Expect::Err(ptr, frag) | Expect::ErrAmong(ptr, frag), Err(e)) => {
            let path = &contract_path(ptr);
            if !e.has(path) {
                return Some(format!("expected an error at {path:?}, got {e}"));
            }
            if !e
                .0
                .iter()
                .any(|f| f.path == *path && f.message.contains(frag))
            {
                return Some(format!(
                    "the error at {path:?} does not say {frag:?}: got {e}"
                ));
            }
            if matches!(expect, Expect::Err(..)) && e.0.iter().any(|f| f.path != *path) {
                return Some(format!("errors beyond {path:?}: {e}"));
            }
            None
        }
    }
}

/// Runs a table with production options, reporting every failing case at once.
fn run(cases: Vec<Case>) {
    run_with(cases, &options());
}

fn run_with(cases: Vec<Case>, opts: &Options) {
    assert!(!cases.is_empty());
    let http = http_spec();
    let https = https_spec();
    let n = cases.len();
    let (mut accepted, mut refused) = (0, 0);
    let mut failed = Vec::new();
    for c in cases {
        let mut doc = match c.base {
            Base::Http => http.clone(),
            Base::Https => https.clone(),
        };
        (c.mutate)(&mut doc);
        let r = spec::load(doc.to_string().as_bytes(), opts);
        match c.expect {
            Expect::Ok => accepted += 1,
            _ => refused += 1,
        }
        if let Some(why) = judge(&r, &c.expect) {
            failed.push(format!("[{:?}] {}: {why}", c.base, c.name));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} cases failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    // Every table exercises both sides of its rules.
    assert!(
        accepted > 0 && refused > 0,
        "a table must accept and refuse"
    );
}

const B0: &str = "/rules/0/backends/0";

fn p(ptr_base: &str, key: &str) -> String {
    format!("{ptr_base}/{key}")
}

/// A second rule for `http_spec()`-shaped documents.
fn extra_rule(id: &str, port: Value) -> Value {
    json!({
        "ruleId": id,
        "scheme": "http",
        "frontPort": port,
        "backPort": 9000,
        "backends": [{"identifier": "x1", "ip": "10.9.0.1"}]
    })
}

fn extra_domain(id: &str, name: &str) -> Value {
    json!({
        "domainId": id,
        "domainName": name,
        "backends": [{"identifier": "y1", "ip": "10.8.0.1"}]
    })
}

// ---------------------------------------------------------------------------------------------
// Identifiers and names.

#[test]
fn identifiers_match_their_pattern_and_length() {
    use Base::*;
    // (name, base, pointer, error path, max length, required)
    let fields: &[(&str, Base, &str, usize, bool)] = &[
        ("identifier", Http, "/identifier", 64, true),
        ("lbName", Http, "/lbName", 255, true),
        ("ruleId", Http, "/rules/0/ruleId", 64, true),
        ("domainId", Https, "/rules/0/domains/0/domainId", 64, true),
        (
            "backend identifier",
            Http,
            "/rules/0/backends/1/identifier",
            64,
            true,
        ),
        (
            "domain backend identifier",
            Https,
            "/rules/0/domains/0/backends/0/identifier",
            64,
            true,
        ),
        (
            "certificateId",
            Https,
            "/rules/0/tls/certificateId",
            64,
            true,
        ),
        (
            "domain certificateId",
            Https,
            "/rules/0/domains/0/tls/certificateId",
            64,
            true,
        ),
        ("cookieName", Http, "/rules/0/cookieName", 64, false),
        (
            "domain cookieName",
            Https,
            "/rules/0/domains/0/cookieName",
            64,
            false,
        ),
        ("LB-wide cookieName", Http, "/cookieName", 64, false),
    ];
    let mut cases = Vec::new();
    for &(name, base, ptr, max, required) in fields {
        let path = ptr;
        for good in ["aZ09_-", "-", "_", "0", &"x".repeat(max)] {
            cases.push(ok(
                format!("{name} = {good:.20}"),
                base,
                set(ptr, json!(good)),
            ));
        }
        let too_long = "y".repeat(max + 1);
        for bad in ["a.b", "a b", "a/b", "a:b", "a=b", "ä", "a\n", &too_long] {
            cases.push(err(
                format!("{name} = {bad:?}"),
                base,
                set(ptr, json!(bad)),
                path,
                "must match ^[",
            ));
        }
        cases.push(err(
            format!("{name} = 42"),
            base,
            set(ptr, json!(42)),
            path,
            "must be a string",
        ));
        // "" is absent, as the real API means it (`"cookieName": ""`).
        if required {
            cases.push(err(
                format!("{name} = \"\""),
                base,
                set(ptr, json!("")),
                path,
                "is required",
            ));
        } else {
            cases.push(ok(format!("{name} = \"\""), base, set(ptr, json!(""))));
        }
        if required {
            cases.push(err(
                format!("{name} missing"),
                base,
                unset(ptr),
                path,
                "is required",
            ));
        } else {
            cases.push(ok(format!("{name} missing"), base, unset(ptr)));
        }
    }
    run(cases);
}

#[test]
fn max_length_is_named_in_the_message() {
    let e = load_err(&{
        let mut v = http_spec();
        put(&mut v, "/lbName", json!("n".repeat(256)));
        v
    });
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].message.contains("{1,255}"), "{e}");
    let e = load_err(&{
        let mut v = http_spec();
        put(&mut v, "/rules/0/ruleId", json!("n".repeat(65)));
        v
    });
    assert!(e.0[0].message.contains("{1,64}"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Uniqueness.

#[test]
fn ids_ports_and_hosts_are_unique_where_the_contract_says() {
    use Base::*;
    let cases = vec![
        ok(
            "two rules, distinct ids and ports",
            Http,
            set("/rules/1", extra_rule("r2", json!(8081))),
        ),
        err(
            "duplicate ruleId",
            Http,
            set("/rules/1", extra_rule("r1", json!(8081))),
            "/rules/1/ruleId",
            "rule ids must be unique",
        ),
        err(
            "duplicate frontPort",
            Http,
            set("/rules/1", extra_rule("r2", json!(8080))),
            "/rules/1/frontPort",
            "front ports must be unique",
        ),
        err(
            "duplicate frontPort, once as a numeric string",
            Http,
            set("/rules/1", extra_rule("r2", json!("8080"))),
            "/rules/1/frontPort",
            "front ports must be unique",
        ),
        err(
            "duplicate backend identifier in a pool",
            Http,
            set("/rules/0/backends/1/identifier", json!("b1")),
            "/rules/0/backends/1/identifier",
            "unique in a pool",
        ),
        err(
            "duplicate backend identifier in a domain pool",
            Https,
            set(
                "/rules/0/domains/0/backends/1",
                json!({"identifier": "a1", "ip": "10.0.1.2"}),
            ),
            "/rules/0/domains/0/backends/1/identifier",
            "unique in a pool",
        ),
        ok(
            "same backend identifier in two pools",
            Https,
            set("/rules/0/domains/0/backends/0/identifier", json!("b1")),
        ),
        ok(
            "same backend identifier in two rules",
            Http,
            set("/rules/1", {
                let mut r = extra_rule("r2", json!(8081));
                r["backends"][0]["identifier"] = json!("b1");
                r
            }),
        ),
        ok(
            "two domains, distinct ids and hosts",
            Https,
            set("/rules/0/domains/1", extra_domain("d2", "www.example.com")),
        ),
        err(
            "duplicate domainId in a rule",
            Https,
            set("/rules/0/domains/1", extra_domain("d1", "www.example.com")),
            "/rules/0/domains/1/domainId",
            "domain ids must be unique in a rule",
        ),
        err(
            "duplicate host in a rule",
            Https,
            set("/rules/0/domains/1", extra_domain("d2", "api.example.com")),
            "/rules/0/domains/1/domainName",
            "each host may appear once in a rule",
        ),
        err(
            "duplicate host, differing in case",
            Https,
            set("/rules/0/domains/1", extra_domain("d2", "API.Example.COM")),
            "/rules/0/domains/1/domainName",
            "each host may appear once in a rule",
        ),
        err(
            "duplicate host, once spelt with subdomain",
            Https,
            set("/rules/0/domains/1", {
                let mut d = extra_domain("d2", "example.com");
                d["subdomain"] = json!("api");
                d
            }),
            "/rules/0/domains/1/domainName",
            "each host may appear once in a rule",
        ),
        ok(
            "a wildcard and its base name are different hosts",
            Https,
            set(
                "/rules/0/domains/1",
                extra_domain("d2", "*.api.example.com"),
            ),
        ),
        ok(
            "same domainId and host in two rules",
            Http,
            all(vec![
                set(
                    "/rules/0/domains",
                    json!([extra_domain("d1", "a.example.com")]),
                ),
                set("/rules/1", {
                    let mut r = extra_rule("r2", json!(8081));
                    r["domains"] = json!([extra_domain("d1", "a.example.com")]);
                    r
                }),
            ]),
        ),
    ];
    run(cases);
}

// ---------------------------------------------------------------------------------------------
// Ports and numbers.

#[test]
fn ports_are_1_to_65535_as_numbers_or_numeric_strings() {
    use Base::*;
    let fields: &[(&str, Base, &str, bool)] = &[
        ("frontPort", Http, "/rules/0/frontPort", true),
        ("backPort", Http, "/rules/0/backPort", true),
        ("backend port", Http, "/rules/0/backends/0/port", false),
        (
            "domain backPort",
            Https,
            "/rules/0/domains/0/backPort",
            false,
        ),
        (
            "domain backend port",
            Https,
            "/rules/0/domains/0/backends/0/port",
            false,
        ),
    ];
    let mut cases = Vec::new();
    for &(name, base, ptr, required) in fields {
        let path = ptr;
        for good in [
            json!(1),
            json!(80),
            json!("80"),
            json!("1"),
            json!(65535),
            json!("65535"),
        ] {
            cases.push(ok(format!("{name} = {good}"), base, set(ptr, good)));
        }
        for (bad, frag) in [
            (json!("8o"), "must be a whole number"),
            (json!("-1"), "must be a whole number"),
            (json!(" 80"), "must be a whole number"),
            (json!("80 "), "must be a whole number"),
            (json!("+80"), "must be a whole number"),
            (json!("0x50"), "must be a whole number"),
            (json!("8e1"), "must be a whole number"),
            (json!("99999999999"), "must be a whole number"),
            (json!(true), "must be a whole number"),
            (json!([80]), "must be a whole number"),
            (json!({"port": 80}), "must be a whole number"),
            (json!(0), "must be between 1 and 65535"),
            (json!("0"), "must be between 1 and 65535"),
            (json!(65536), "must be between 1 and 65535"),
            (json!("65536"), "must be between 1 and 65535"),
            (json!(-1), "must be between 1 and 65535"),
            (json!(80.5), "must be between 1 and 65535"),
            (json!(u64::MAX), "must be between 1 and 65535"),
        ] {
            cases.push(err(
                format!("{name} = {bad}"),
                base,
                set(ptr, bad),
                path,
                frag,
            ));
        }
        if required {
            cases.push(err(
                format!("{name} missing"),
                base,
                unset(ptr),
                path,
                "is required",
            ));
            cases.push(err(
                format!("{name} null"),
                base,
                set(ptr, Value::Null),
                path,
                "is required",
            ));
            cases.push(err(
                format!("{name} \"\""),
                base,
                set(ptr, json!("")),
                path,
                "is required",
            ));
        } else {
            cases.push(ok(format!("{name} missing"), base, unset(ptr)));
            cases.push(ok(format!("{name} \"\""), base, set(ptr, json!(""))));
        }
    }
    run(cases);
}

#[test]
fn numeric_string_ports_mean_the_number() {
    let mut v = http_spec();
    put(&mut v, "/rules/0/frontPort", json!("80"));
    put(&mut v, "/rules/0/backPort", json!("0081"));
    put(&mut v, "/rules/0/backends/0/port", json!("82"));
    let s = load_ok(&v).spec;
    let r = &s.rules[0];
    assert_eq!(r.front_port, 80);
    assert_eq!(r.pool.back_port, 81);
    let port = |id: &str| r.pool.backends.iter().find(|b| b.id == id).unwrap().port;
    assert_eq!(port("b1"), 82);
    assert_eq!(port("b2"), 81, "a backend without port takes the pool's");
}

#[test]
fn reserved_ports_are_refused_as_front_port() {
    use Base::*;
    run(vec![
        err(
            "frontPort 9101",
            Http,
            set("/rules/0/frontPort", json!(9101)),
            "/rules/0/frontPort",
            "reserved for the agent's metrics",
        ),
        err(
            "frontPort \"9101\"",
            Http,
            set("/rules/0/frontPort", json!("9101")),
            "/rules/0/frontPort",
            "reserved",
        ),
        err(
            "https frontPort 9101",
            Https,
            set("/rules/0/frontPort", json!(9101)),
            "/rules/0/frontPort",
            "reserved",
        ),
        ok(
            "frontPort 9100",
            Http,
            set("/rules/0/frontPort", json!(9100)),
        ),
        ok(
            "backPort 9101 is a backend's port",
            Http,
            set("/rules/0/backPort", json!(9101)),
        ),
    ]);
}

#[test]
fn flags_are_0_1_false_or_true() {
    use Base::*;
    let fields: &[(&str, Base, &str)] = &[
        ("cookieCheck", Http, "/rules/0/cookieCheck"),
        ("LB-wide cookieCheck", Http, "/cookieCheck"),
        ("redirectHTTP", Https, "/rules/0/redirectHTTP"),
        ("LB-wide redirectHTTP", Https, "/redirectHTTP"),
        (
            "domain redirectHTTP",
            Https,
            "/rules/0/domains/0/redirectHTTP",
        ),
        (
            "domain cookieCheck",
            Https,
            "/rules/0/domains/0/cookieCheck",
        ),
        ("backend enabled", Http, "/rules/0/backends/0/enabled"),
    ];
    let mut cases = Vec::new();
    for &(name, base, ptr) in fields {
        let path = ptr;
        // The real API sends every one of these forms; "" is absent like null.
        for good in [
            json!(0),
            json!(1),
            json!(true),
            json!(false),
            json!("0"),
            json!("1"),
            json!("true"),
            json!("false"),
            json!(""),
            Value::Null,
        ] {
            cases.push(ok(format!("{name} = {good}"), base, set(ptr, good)));
        }
        for bad in [
            json!(2),
            json!(-1),
            json!(0.5),
            json!("yes"),
            json!("2"),
            json!("TRUE"),
            json!(" 1"),
            json!([]),
        ] {
            cases.push(err(
                format!("{name} = {bad}"),
                base,
                set(ptr, bad),
                path,
                "must be 0, 1, false or true (or one of them as a string)",
            ));
        }
    }
    run(cases);
}

#[test]
fn flags_mean_what_they_say() {
    let mut v = http_spec();
    put(&mut v, "/rules/0/cookieCheck", json!(1));
    put(&mut v, "/rules/0/backends/0/enabled", json!(0));
    put(&mut v, "/rules/0/backends/1/enabled", json!(true));
    let r = load_ok(&v).spec.rules[0].clone();
    assert!(r.pool.sticky_cookie.is_some());
    let enabled = |id: &str| r.pool.backends.iter().find(|b| b.id == id).unwrap().enabled;
    assert!(!enabled("b1"));
    assert!(enabled("b2"));
    put(&mut v, "/rules/0/cookieCheck", json!(false));
    put(&mut v, "/rules/0/backends/0/enabled", json!(1));
    let r = load_ok(&v).spec.rules[0].clone();
    assert!(r.pool.sticky_cookie.is_none());
    assert!(r.pool.backends.iter().all(|b| b.enabled));
}

// ---------------------------------------------------------------------------------------------
// Enumerations.

#[test]
fn schemes_and_backend_schemes() {
    use Base::*;
    let mut cases = vec![
        ok("scheme http", Http, set("/rules/0/scheme", json!("http"))),
        ok("scheme tcp", Http, set("/rules/0/scheme", json!("tcp"))),
        ok(
            "scheme https",
            Https,
            set("/rules/0/scheme", json!("https")),
        ),
        err(
            "scheme missing",
            Http,
            unset("/rules/0/scheme"),
            "/rules/0/scheme",
            "is required",
        ),
        err(
            "scheme 7",
            Http,
            set("/rules/0/scheme", json!(7)),
            "/rules/0/scheme",
            "must be a string",
        ),
        ok(
            "backendScheme http",
            Http,
            set("/rules/0/backendScheme", json!("http")),
        ),
        ok(
            "backendScheme https",
            Http,
            set("/rules/0/backendScheme", json!("https")),
        ),
        ok(
            "backendScheme https on an https rule",
            Https,
            set("/rules/0/backendScheme", json!("https")),
        ),
        ok(
            "domain backendScheme https",
            Https,
            set("/rules/0/domains/0/backendScheme", json!("https")),
        ),
        ok(
            "backendScheme http on a tcp rule",
            Http,
            all(vec![
                set("/rules/0/scheme", json!("tcp")),
                set("/rules/0/backendScheme", json!("http")),
            ]),
        ),
        err(
            "backendScheme https on a tcp rule",
            Http,
            all(vec![
                set("/rules/0/scheme", json!("tcp")),
                set("/rules/0/backendScheme", json!("https")),
            ]),
            "/rules/0/backendScheme",
            "https applies to http, https and http2 rules only",
        ),
    ];
    for bad in ["HTTP", "udp", " http", "http ", "ws", "h2", "grpc"] {
        cases.push(err(
            format!("scheme {bad:?}"),
            Http,
            set("/rules/0/scheme", json!(bad)),
            "/rules/0/scheme",
            "must be one of http, https, http2, tcp",
        ));
    }
    cases.push(err(
        "scheme \"\"",
        Http,
        set("/rules/0/scheme", json!("")),
        "/rules/0/scheme",
        "is required",
    ));
    cases.push(ok(
        "scheme http2",
        Http,
        set("/rules/0/scheme", json!("http2")),
    ));
    for bad in ["HTTPS", "tcp", "h2", "tls"] {
        cases.push(err(
            format!("backendScheme {bad:?}"),
            Http,
            set("/rules/0/backendScheme", json!(bad)),
            "/rules/0/backendScheme",
            "must be one of http, https",
        ));
        cases.push(err(
            format!("domain backendScheme {bad:?}"),
            Https,
            set("/rules/0/domains/0/backendScheme", json!(bad)),
            "/rules/0/domains/0/backendScheme",
            "must be one of http, https",
        ));
    }
    run(cases);
}

#[test]
fn algorithms_and_proxy_protocol() {
    use Base::*;
    let mut cases = Vec::new();
    let algos = [
        "roundrobin",
        "leastconn",
        "random",
        "source",
        "ring_hash",
        "maglev",
    ];
    let places: &[(Base, &str)] = &[
        (Http, "/algorithm"),
        (Http, "/rules/0/algorithm"),
        (Https, "/rules/0/domains/0/algorithm"),
    ];
    for &(base, ptr) in places {
        let path = ptr;
        for a in algos.iter().chain(&[""]) {
            cases.push(ok(format!("{path} {a:?}"), base, set(ptr, json!(a))));
        }
        for bad in [
            "round_robin",
            "ROUNDROBIN",
            "least_conn",
            "ringhash",
            "hash",
        ] {
            cases.push(err(
                format!("{path} {bad:?}"),
                base,
                set(ptr, json!(bad)),
                path,
                "must be one of roundrobin, leastconn, random, source, ring_hash, maglev",
            ));
        }
    }
    for base in [Http, Https] {
        for pp in ["none", "v1", "v2"] {
            cases.push(ok(
                format!("proxyProtocol {pp}"),
                base,
                set("/rules/0/proxyProtocol", json!(pp)),
            ));
        }
    }
    cases.push(ok(
        "proxyProtocol v2 on tcp",
        Http,
        all(vec![
            set("/rules/0/scheme", json!("tcp")),
            set("/rules/0/proxyProtocol", json!("v2")),
        ]),
    ));
    cases.push(ok(
        "proxyProtocol \"\"",
        Http,
        set("/rules/0/proxyProtocol", json!("")),
    ));
    for bad in ["v3", "V1", "true", "proxy"] {
        cases.push(err(
            format!("proxyProtocol {bad:?}"),
            Http,
            set("/rules/0/proxyProtocol", json!(bad)),
            "/rules/0/proxyProtocol",
            "must be one of none, v1, v2",
        ));
    }
    cases.push(err(
        "proxyProtocol 1",
        Http,
        set("/rules/0/proxyProtocol", json!(1)),
        "/rules/0/proxyProtocol",
        "must be a string",
    ));
    run(cases);
}

#[test]
fn enumerations_map_to_the_model() {
    let mut v = http_spec();
    for (a, want) in [
        ("roundrobin", Algorithm::Roundrobin),
        ("leastconn", Algorithm::Leastconn),
        ("random", Algorithm::Random),
        ("source", Algorithm::Source),
        ("ring_hash", Algorithm::RingHash),
        ("maglev", Algorithm::Maglev),
    ] {
        put(&mut v, "/rules/0/algorithm", json!(a));
        assert_eq!(load_ok(&v).spec.rules[0].pool.algorithm, want, "{a}");
    }
    for (pp, want) in [
        ("none", ProxyProtocol::None),
        ("v1", ProxyProtocol::V1),
        ("v2", ProxyProtocol::V2),
    ] {
        put(&mut v, "/rules/0/proxyProtocol", json!(pp));
        assert_eq!(load_ok(&v).spec.rules[0].proxy_protocol, want, "{pp}");
    }
    put(&mut v, "/rules/0/backendScheme", json!("https"));
    assert_eq!(
        load_ok(&v).spec.rules[0].pool.backend_scheme,
        BackendScheme::Https
    );
    put(&mut v, "/rules/0/scheme", json!("tcp"));
    put(&mut v, "/rules/0/backendScheme", json!("http"));
    assert_eq!(load_ok(&v).spec.rules[0].scheme, Scheme::Tcp);
}

// ---------------------------------------------------------------------------------------------
// Health checks, intervals, weights, timeouts, limits of numbers.

#[test]
fn health_check_path() {
    use Base::*;
    let places: &[(Base, &str)] = &[
        (Http, "/healthCheckPath"),
        (Http, "/rules/0/healthCheckPath"),
        (Https, "/rules/0/domains/0/healthCheckPath"),
    ];
    let longest = format!("/{}", "a".repeat(1023));
    let too_long = format!("/{}", "a".repeat(1024));
    let mut cases = Vec::new();
    for &(base, ptr) in places {
        let path = ptr;
        for good in [
            "",
            "/",
            "/healthz",
            "/a/b_c.d~e%20-f",
            "//x",
            "/A-Z.0-9",
            &longest,
        ] {
            cases.push(ok(
                format!("{path} {good:.30?}"),
                base,
                set(ptr, json!(good)),
            ));
        }
        for bad in [
            "healthz",
            " /healthz",
            "/a b",
            "/a?b=1",
            "/a#b",
            "/a\\b",
            "/a\nb",
            "/ä",
            "/{x}",
            &too_long,
        ] {
            cases.push(err(
                format!("{path} {bad:.30?}"),
                base,
                set(ptr, json!(bad)),
                path,
                "must be empty or match ^/[A-Za-z0-9/_.~%-]*$ with at most 1024 characters",
            ));
        }
        cases.push(err(
            format!("{path} 1"),
            base,
            set(ptr, json!(1)),
            path,
            "must be a string",
        ));
    }
    run(cases);
}

#[test]
fn health_check_path_empty_means_tcp_check() {
    let mut v = https_spec();
    put(&mut v, "/rules/0/healthCheckPath", json!("/healthz"));
    let s = load_ok(&v).spec;
    assert_eq!(
        s.rules[0].pool.health.http_path.as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        s.rules[0].domains[0].pool.health.http_path.as_deref(),
        Some("/healthz"),
        "a domain inherits the rule's path"
    );
    put(&mut v, "/rules/0/domains/0/healthCheckPath", json!(""));
    let s = load_ok(&v).spec;
    assert_eq!(
        s.rules[0].domains[0].pool.health.http_path, None,
        "an empty path overrides the rule's with a TCP check"
    );
    put(&mut v, "/rules/0/healthCheckPath", json!(""));
    put(&mut v, "/healthCheckPath", json!("/lb"));
    let s = load_ok(&v).spec;
    assert_eq!(s.rules[0].pool.health.http_path, None);
    take(&mut v, "/rules/0/healthCheckPath");
    take(&mut v, "/rules/0/domains/0/healthCheckPath");
    let s = load_ok(&v).spec;
    assert_eq!(s.rules[0].pool.health.http_path.as_deref(), Some("/lb"));
    assert_eq!(
        s.rules[0].domains[0].pool.health.http_path.as_deref(),
        Some("/lb")
    );
    take(&mut v, "/healthCheckPath");
    assert_eq!(
        load_ok(&v).spec.rules[0].pool.health.http_path,
        None,
        "absent: TCP check"
    );
}

/// The contract names no bounds for intervals and thresholds; these are the parser's
/// (`checkInterval` 100 ms..1 h, `fastInterval` 50 ms..1 h, `rise`/`fall` 1..100).
#[test]
fn intervals_under_the_floor_are_raised_and_large_thresholds_warned_about() {
    // (pointer, value, what the model holds, words of the warning)
    let cases: &[(&str, Value, u32, &str)] = &[
        ("/rules/0/checkInterval", json!(10), 100, "raised to 100 ms"),
        (
            "/rules/0/checkInterval",
            json!("99"),
            100,
            "raised to 100 ms",
        ),
        ("/rules/0/fastInterval", json!(10), 50, "raised to 50 ms"),
        ("/rules/0/rise", json!(1000), 1000, "1000 checks in a row"),
        ("/rules/0/fall", json!("101"), 101, "101 checks in a row"),
    ];
    for (ptr, value, want, words) in cases {
        let path = &contract_path(ptr);
        let mut v = http_spec();
        put(&mut v, ptr, value.clone());
        let l = load_ok(&v);
        let h = &l.spec.rules[0].pool.health;
        let got = match path.as_str() {
            p if p.ends_with("checkInterval") => h.interval_ms,
            p if p.ends_with("fastInterval") => h.fast_interval_ms,
            p if p.ends_with("rise") => h.rise,
            _ => h.fall,
        };
        assert_eq!(got, *want, "{path} {value}");
        assert!(
            l.warnings
                .iter()
                .any(|w| w.path == *path && w.message.contains(words)),
            "{path} {value}: {:?}",
            l.warnings
        );
    }
    // At the floor and at 100 checks: no warning.
    let mut v = http_spec();
    put(&mut v, "/rules/0/checkInterval", json!(100));
    put(&mut v, "/rules/0/fastInterval", json!(50));
    put(&mut v, "/rules/0/rise", json!(100));
    assert!(load_ok(&v).warnings.is_empty());
}

#[test]
fn intervals_thresholds_weights_and_timeouts_have_ranges() {
    use Base::*;
    let ranges: &[(&str, u64, u64)] = &[
        // Intervals under the floor (100 / 50 ms) are raised, not refused: see below.
        ("checkInterval", 1, 3_600_000),
        ("fastInterval", 1, 3_600_000),
        ("rise", 1, 10_000),
        ("fall", 1, 10_000),
    ];
    let mut cases = Vec::new();
    let places: &[(Base, &str)] = &[
        (Http, ""),
        (Http, "/rules/0"),
        (Https, "/rules/0/domains/0"),
    ];
    for &(field, min, max) in ranges {
        for &(base, ptr) in places {
            let ptr = format!("{ptr}/{field}");
            let path = ptr.clone();
            let frag: &'static str =
                Box::leak(format!("must be between {min} and {max}").into_boxed_str());
            for good in [
                json!(min),
                json!(max),
                json!(min.to_string()),
                json!((min + max) / 2),
            ] {
                cases.push(ok(format!("{path} {good}"), base, set(&ptr, good)));
            }
            for bad in [json!(min - 1), json!(max + 1), json!(-1), json!(1.5)] {
                cases.push(err(
                    format!("{path} {bad}"),
                    base,
                    set(&ptr, bad),
                    &path,
                    frag,
                ));
            }
            cases.push(err(
                format!("{path} \"fast\""),
                base,
                set(&ptr, json!("fast")),
                &path,
                "must be a whole number",
            ));
        }
    }
    // Weights.
    for (ptr, base) in [
        ("/rules/0/backends/0/weight", Http),
        ("/rules/0/domains/0/backends/0/weight", Https),
    ] {
        let path = ptr;
        for good in [
            json!(1),
            json!(100),
            json!(10_000),
            json!("50"),
            Value::Null,
        ] {
            cases.push(ok(format!("{path} {good}"), base, set(ptr, good)));
        }
        for bad in [json!(0), json!(10_001), json!(-5), json!(1.5), json!("0")] {
            cases.push(err(
                format!("{path} {bad}"),
                base,
                set(ptr, bad),
                path,
                "must be between 1 and 10000",
            ));
        }
        cases.push(err(
            format!("{path} \"ten\""),
            base,
            set(ptr, json!("ten")),
            path,
            "must be a whole number",
        ));
    }
    // Timeouts: seconds; 0 = no limit for idle and request only.
    for (key, min, max) in [
        ("connect", 1u64, 3600u64),
        ("idle", 0, 604_800),
        ("request", 0, 86_400),
    ] {
        let ptr = format!("/rules/0/timeouts/{key}");
        let path = ptr.clone();
        let frag: &'static str =
            Box::leak(format!("must be between {min} and {max}").into_boxed_str());
        for good in [json!(min), json!(max), json!(max.to_string())] {
            cases.push(ok(
                format!("{path} {good}"),
                Http,
                all(vec![set("/rules/0/timeouts", json!({})), set(&ptr, good)]),
            ));
        }
        let mut bad = vec![json!(max + 1), json!(-1), json!("soon")];
        if min > 0 {
            bad.push(json!(min - 1));
        }
        for b in bad {
            let frag = if b.is_string() {
                "must be a whole number"
            } else {
                frag
            };
            cases.push(err(
                format!("{path} {b}"),
                Http,
                all(vec![set("/rules/0/timeouts", json!({})), set(&ptr, b)]),
                &path,
                frag,
            ));
        }
    }
    cases.push(ok("timeouts {}", Http, set("/rules/0/timeouts", json!({}))));
    cases.push(ok(
        "timeouts on a tcp rule",
        Http,
        all(vec![
            set("/rules/0/scheme", json!("tcp")),
            set("/rules/0/timeouts", json!({"connect": 2, "idle": 0})),
        ]),
    ));
    cases.push(err(
        "timeouts \"5\"",
        Http,
        set("/rules/0/timeouts", json!("5")),
        "/rules/0/timeouts",
        "must be an object",
    ));
    // maxConnections.
    for good in [json!(1), json!(1_000_000), json!("20000")] {
        cases.push(ok(
            format!("maxConnections {good}"),
            Http,
            set("/maxConnections", good),
        ));
    }
    for bad in [json!(0), json!(1_000_001)] {
        cases.push(err(
            format!("maxConnections {bad}"),
            Http,
            set("/maxConnections", bad),
            "/maxConnections",
            "must be between 1 and 1000000",
        ));
    }
    run(cases);
}

// ---------------------------------------------------------------------------------------------
// Domains and host names.

#[test]
fn domain_names_wildcards_and_subdomains() {
    use Base::*;
    let name = "/rules/0/domains/0/domainName";
    let sub = "/rules/0/domains/0/subdomain";
    let name_p = "/rules/0/domains/0/domainName";
    let sub_p = "/rules/0/domains/0/subdomain";
    let label63 = format!("{}.com", "x".repeat(63));
    let label64 = format!("{}.com", "x".repeat(64));
    // 4 labels: 63 + 63 + 63 + 61 + 3 dots = 253.
    let n253 = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    let n254 = format!("{n253}e");
    let mut cases = vec![
        err(
            "domainName missing",
            Https,
            unset(name),
            name_p,
            "is required",
        ),
        err(
            "domainName 5",
            Https,
            set(name, json!(5)),
            name_p,
            "must be a string",
        ),
        err(
            "wildcard with a subdomain",
            Https,
            all(vec![
                set(name, json!("*.example.com")),
                set(sub, json!("www")),
            ]),
            sub_p,
            "cannot be combined with a wildcard domainName",
        ),
        ok(
            "wildcard with an empty subdomain",
            Https,
            all(vec![set(name, json!("*.example.com")), set(sub, json!(""))]),
        ),
        ok(
            "wildcard with a null subdomain",
            Https,
            all(vec![
                set(name, json!("*.example.com")),
                set(sub, Value::Null),
            ]),
        ),
        err(
            "subdomain makes the host longer than 253",
            Https,
            all(vec![
                set(
                    name,
                    json!([
                        "a".repeat(63),
                        "b".repeat(63),
                        "c".repeat(63),
                        "d".repeat(50)
                    ]
                    .join(".")),
                ),
                set(sub, json!("w".repeat(20))),
            ]),
            sub_p,
            "at most 253",
        ),
        err(
            "subdomain 5",
            Https,
            set(sub, json!(5)),
            sub_p,
            "must be a string",
        ),
    ];
    for good in [
        "api.example.com",
        "*.example.com",
        "API.Example.COM",
        "localdomain",
        "a.b",
        "xn--bcher-kva.example",
        "1.example.com",
        &label63,
        &n253,
        &format!("*.{n253}"),
    ] {
        cases.push(ok(
            format!("domainName {good:.40}"),
            Https,
            set(name, json!(good)),
        ));
    }
    cases.push(err(
        "domainName \"\"",
        Https,
        set(name, json!("")),
        "/rules/0/domains/0/domainName",
        "is required",
    ));
    for bad in [
        "exa_mple.com",
        "-a.com",
        "a-.com",
        "a..com",
        "example.com.",
        ".example.com",
        "*.*.example.com",
        "*example.com",
        "foo.*.com",
        "*",
        "*.",
        "ex ample.com",
        "exämple.com",
        "example.com:80",
        "http://example.com",
        &label64,
        &n254,
    ] {
        cases.push(err(
            format!("domainName {bad:.40?}"),
            Https,
            set(name, json!(bad)),
            name_p,
            "must be a DNS name or *. followed by one",
        ));
    }
    for good in ["www", "WWW", "a.b", "x-1", ""] {
        cases.push(ok(
            format!("subdomain {good:?}"),
            Https,
            set(sub, json!(good)),
        ));
    }
    for bad in ["bad_sub", "-x", "x-", "x.", ".x", "a..b", "*", "w w"] {
        cases.push(err(
            format!("subdomain {bad:?}"),
            Https,
            set(sub, json!(bad)),
            sub_p,
            "",
        ));
    }
    run(cases);
}

#[test]
fn hosts_are_normalised() {
    let mut v = https_spec();
    put(
        &mut v,
        "/rules/0/domains/0/domainName",
        json!("Example.COM"),
    );
    put(&mut v, "/rules/0/domains/0/subdomain", json!("WWW"));
    put(
        &mut v,
        "/rules/0/domains/1",
        extra_domain("d2", "*.Example.Org"),
    );
    let s = load_ok(&v).spec;
    let hosts: Vec<String> = s.rules[0]
        .domains
        .iter()
        .map(|d| d.host.to_string())
        .collect();
    assert_eq!(hosts, ["www.example.com", "*.example.org"]);
    assert!(s.rules[0].domains[1].host.wildcard);
    assert_eq!(s.rules[0].domains[1].host.name, "example.org");
}

// ---------------------------------------------------------------------------------------------
// Backend addresses.

fn ip_cases(bad: &[(&str, &'static str)], good: &[&str]) -> Vec<Case> {
    let mut cases = Vec::new();
    for &(ip, frag) in bad {
        cases.push(err(
            format!("ip {ip:?}"),
            Base::Http,
            set(p(B0, "ip"), json!(ip)),
            "/rules/0/backends/0/ip",
            frag,
        ));
        cases.push(err(
            format!("domain backend ip {ip:?}"),
            Base::Https,
            set("/rules/0/domains/0/backends/0/ip", json!(ip)),
            "/rules/0/domains/0/backends/0/ip",
            frag,
        ));
    }
    for &ip in good {
        cases.push(ok(
            format!("ip {ip:?}"),
            Base::Http,
            set(p(B0, "ip"), json!(ip)),
        ));
    }
    cases
}

#[test]
fn forbidden_backend_addresses() {
    let bad: &[(&str, &'static str)] = &[
        ("127.0.0.1", "is a loopback address"),
        ("127.1.2.3", "is a loopback address"),
        ("::1", "is a loopback address"),
        ("0.0.0.0", "is unspecified"),
        ("::", "is unspecified"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("169.254.169.254", "is link-local"),
        ("169.254.0.1", "is link-local"),
        ("fe80::1", "is link-local"),
        ("224.0.0.1", "is a multicast address"),
        ("239.255.255.250", "is a multicast address"),
        ("ff02::1", "is a multicast address"),
        ("255.255.255.255", "is the broadcast address"),
        ("240.0.0.1", "reserved range"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:7f00:1", "IPv4-mapped loopback"),
        ("::FFFF:169.254.169.254", "IPv4-mapped link-local"),
        ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
        ("::ffff:224.0.0.1", "multicast"),
        ("::127.0.0.1", "loopback"),
        ("64:ff9b::169.254.169.254", "link-local"),
        ("fe80::1%eth0", "not a valid IPv6 address"),
        ("[::1]", "not a valid IPv6 address"),
        ("10.0.0.1:80", "not a valid IPv6 address"),
        ("localhost", "names the loopback host"),
        ("LOCALHOST", "names the loopback host"),
        ("api.localhost", "names the loopback host"),
        ("127.1", "numeric label"),
        ("2130706433", "numeric label"),
        ("10.0.0.256", "numeric label"),
        ("", "is required"),
        ("bad_host", "neither an IP address nor a valid host name"),
        ("http://10.0.0.1", "not a valid IPv6 address"),
        ("10.0.0.1 ", "neither an IP address nor a valid host name"),
    ];
    let good = [
        "10.0.0.1",
        "10.255.255.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "203.0.113.7",
        "8.8.8.8",
        "fd00::1",
        "fc00::1",
        "2001:db8::1",
        "::ffff:10.1.2.3",
        "db.internal",
        "web",
        "Backend-1.Example.COM",
    ];
    let mut cases = ip_cases(bad, &good);
    cases.push(err(
        "ip missing",
        Base::Http,
        unset(p(B0, "ip")),
        "/rules/0/backends/0/ip",
        "is required",
    ));
    cases.push(err(
        "ip 10",
        Base::Http,
        set(p(B0, "ip"), json!(10)),
        "/rules/0/backends/0/ip",
        "must be a string",
    ));
    run(cases);
}

#[test]
fn allow_loopback_backends_opens_loopback_only() {
    let opts = Options {
        allow_loopback_backends: true,
        ..options()
    };
    let bad: &[(&str, &'static str)] = &[
        ("169.254.169.254", "is link-local"),
        ("0.0.0.0", "is unspecified"),
        ("::", "is unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:169.254.169.254", "link-local"),
    ];
    let good = [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "::ffff:127.0.0.1",
        "localhost",
        "10.0.0.1",
    ];
    run_with(ip_cases(bad, &good), &opts);

    let mut v = http_spec();
    put(&mut v, "/rules/0/backends/0/ip", json!("127.0.0.1"));
    put(&mut v, "/rules/0/backends/1/ip", json!("::1"));
    let s = spec::load(v.to_string().as_bytes(), &opts).unwrap().spec;
    let addrs: Vec<String> = s.rules[0]
        .pool
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.1", "::1"]);
    // The same spec with production options is refused at both backends.
    let e = load_err(&v);
    assert_eq!(
        e.0.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["rules[0].backends[0].ip", "rules[0].backends[1].ip"]
    );
}

#[test]
fn backend_names_are_kept_lower_case() {
    let mut v = http_spec();
    put(&mut v, "/rules/0/backends/0/ip", json!("DB.Internal"));
    let s = load_ok(&v).spec;
    let b = s.rules[0]
        .pool
        .backends
        .iter()
        .find(|b| b.id == "b1")
        .unwrap();
    assert_eq!(b.address, BackendAddress::Name("db.internal".into()));
}

// ---------------------------------------------------------------------------------------------
// TLS.

fn tls_pair(ptr: &'static str, c: &certs::TestCert) -> Mutation {
    all(vec![
        set(format!("{ptr}/certificatePem"), json!(c.cert_pem)),
        set(format!("{ptr}/privateKeyPem"), json!(c.key_pem)),
    ])
}

#[test]
fn tls_certificates_and_keys() {
    use Base::*;
    let expired = certs::cert_valid(&["shop.example.com"], -30, -1);
    let future = certs::cert_valid(&["shop.example.com"], 2, 30);
    let soon = certs::cert_valid(&["shop.example.com"], -1, 7);
    let fine = certs::cert_valid(&["shop.example.com"], -1, 30);
    let other_key = certs::other_key_pem();
    let mut cases = Vec::new();
    for ptr in ["/rules/0/tls", "/rules/0/domains/0/tls"] {
        let path = ptr;
        let cp: &'static str = Box::leak(format!("{path}/certificatePem").into_boxed_str());
        let kp: &'static str = Box::leak(format!("{path}/privateKeyPem").into_boxed_str());
        cases.extend([
            ok(
                format!("{path} valid 30 more days"),
                Https,
                tls_pair(ptr, &fine),
            ),
            ok(
                format!("{path} expiring within 14 days is only a warning"),
                Https,
                tls_pair(ptr, &soon),
            ),
            err(
                format!("{path} expired"),
                Https,
                tls_pair(ptr, &expired),
                cp,
                "expired",
            ),
            err(
                format!("{path} not yet valid"),
                Https,
                tls_pair(ptr, &future),
                cp,
                "is not valid before",
            ),
            err(
                format!("{path} key of another certificate"),
                Https,
                set(format!("{ptr}/privateKeyPem"), json!(other_key)),
                kp,
                "does not match the certificate",
            ),
            err(
                format!("{path} certificate not PEM"),
                Https,
                set(format!("{ptr}/certificatePem"), json!("hello")),
                cp,
                "PEM",
            ),
            err(
                format!("{path} key not PEM"),
                Https,
                set(format!("{ptr}/privateKeyPem"), json!("hello")),
                kp,
                "PEM",
            ),
            err(
                format!("{path} broken base64 in the certificate"),
                Https,
                set(
                    format!("{ptr}/certificatePem"),
                    json!("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
                ),
                cp,
                "",
            ),
            err(
                format!("{path} DER that is no certificate"),
                Https,
                set(
                    format!("{ptr}/certificatePem"),
                    json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                ),
                cp,
                "does not parse",
            ),
            err(
                format!("{path} the key in certificatePem"),
                Https,
                set(format!("{ptr}/certificatePem"), json!(fine.key_pem)),
                cp,
                "only CERTIFICATE blocks",
            ),
            err(
                format!("{path} the certificate in privateKeyPem"),
                Https,
                set(format!("{ptr}/privateKeyPem"), json!(fine.cert_pem)),
                kp,
                "expected PRIVATE KEY",
            ),
            err(
                format!("{path} certificate over 64 KiB"),
                Https,
                set(
                    format!("{ptr}/certificatePem"),
                    json!(fine.cert_pem.repeat(200)),
                ),
                cp,
                "at most 64 KiB",
            ),
            err(
                format!("{path} key over 16 KiB"),
                Https,
                set(
                    format!("{ptr}/privateKeyPem"),
                    json!(fine.key_pem.repeat(100)),
                ),
                kp,
                "at most 16 KiB",
            ),
            err(
                format!("{path} without certificatePem"),
                Https,
                unset(format!("{ptr}/certificatePem")),
                cp,
                "is required",
            ),
            err(
                format!("{path} without privateKeyPem"),
                Https,
                unset(format!("{ptr}/privateKeyPem")),
                kp,
                "is required",
            ),
            err(
                format!("{path} is a string"),
                Https,
                set(ptr, json!("c1")),
                path,
                "must be an object",
            ),
        ]);
    }
    cases.push(ok(
        "a chain: leaf then another certificate",
        Https,
        all(vec![
            set(
                "/rules/0/tls/certificatePem",
                json!(format!("{}\n{}", fine.cert_pem, expired.cert_pem)),
            ),
            set("/rules/0/tls/privateKeyPem", json!(fine.key_pem)),
        ]),
    ));
    cases.push(ok(
        "leaf and key both replaced (a chain's leaf must match the key)",
        Https,
        all(vec![
            set(
                "/rules/0/tls/certificatePem",
                json!(format!("{}{}", fine.cert_pem, soon.cert_pem)),
            ),
            set("/rules/0/tls/privateKeyPem", json!(fine.key_pem)),
        ]),
    ));
    cases.push(err(
        "a chain whose leaf does not match the key",
        Https,
        all(vec![
            set(
                "/rules/0/tls/certificatePem",
                json!(format!("{}{}", soon.cert_pem, fine.cert_pem)),
            ),
            set("/rules/0/tls/privateKeyPem", json!(fine.key_pem)),
        ]),
        "/rules/0/tls/privateKeyPem",
        "does not match the certificate",
    ));
    run(cases);
}

#[test]
fn expiring_certificate_is_a_warning_with_its_path() {
    let soon = certs::cert_valid(&["shop.example.com"], -1, 7);
    let mut v = https_spec();
    put(&mut v, "/rules/0/tls/certificatePem", json!(soon.cert_pem));
    put(&mut v, "/rules/0/tls/privateKeyPem", json!(soon.key_pem));
    let loaded = load_ok(&v);
    let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["rules[0].tls.certificatePem"]);
    assert!(
        loaded.warnings[0].message.contains("within 14 days"),
        "{:?}",
        loaded.warnings
    );

    put(
        &mut v,
        "/rules/0/domains/0/tls/certificatePem",
        json!(soon.cert_pem),
    );
    put(
        &mut v,
        "/rules/0/domains/0/tls/privateKeyPem",
        json!(soon.key_pem),
    );
    let paths: Vec<String> = load_ok(&v).warnings.into_iter().map(|w| w.path).collect();
    assert_eq!(
        paths,
        [
            "rules[0].tls.certificatePem",
            "rules[0].domains[0].tls.certificatePem"
        ]
    );

    // Fresh certificates (a year) give no warning; 15 days give none either.
    assert!(load_ok(&https_spec()).warnings.is_empty());
    let later = certs::cert_valid(&["shop.example.com"], -1, 15);
    let mut v = https_spec();
    put(&mut v, "/rules/0/tls/certificatePem", json!(later.cert_pem));
    put(&mut v, "/rules/0/tls/privateKeyPem", json!(later.key_pem));
    assert!(load_ok(&v).warnings.is_empty());
}

#[test]
fn tls_versions_and_alpn() {
    use Base::*;
    let t = "/rules/0/tls";
    let mut cases = Vec::new();
    for (min, max) in [
        ("TLSv1.2", "TLSv1.2"),
        ("TLSv1.2", "TLSv1.3"),
        ("TLSv1.3", "TLSv1.3"),
    ] {
        cases.push(ok(
            format!("{min}..{max}"),
            Https,
            all(vec![
                set(p(t, "minVersion"), json!(min)),
                set(p(t, "maxVersion"), json!(max)),
            ]),
        ));
    }
    cases.push(ok(
        "minVersion TLSv1.3 alone",
        Https,
        set(p(t, "minVersion"), json!("TLSv1.3")),
    ));
    cases.push(ok(
        "maxVersion TLSv1.2 alone",
        Https,
        set(p(t, "maxVersion"), json!("TLSv1.2")),
    ));
    cases.push(err(
        "minVersion above maxVersion",
        Https,
        all(vec![
            set(p(t, "minVersion"), json!("TLSv1.3")),
            set(p(t, "maxVersion"), json!("TLSv1.2")),
        ]),
        "/rules/0/tls/minVersion",
        "must not be above maxVersion",
    ));
    for key in ["minVersion", "maxVersion"] {
        cases.push(ok(format!("{key} \"\""), Https, set(p(t, key), json!(""))));
    }
    for bad in ["TLSv1.1", "TLSv1.0", "tlsv1.2", "1.2", "TLSv1.4"] {
        for key in ["minVersion", "maxVersion"] {
            cases.push(err(
                format!("{key} {bad:?}"),
                Https,
                set(p(t, key), json!(bad)),
                format!("/rules/0/tls/{key}"),
                "must be one of TLSv1.2, TLSv1.3",
            ));
        }
    }
    for good in [
        json!(["h2"]),
        json!(["http/1.1"]),
        json!(["h2", "http/1.1"]),
        json!(["http/1.1", "h2"]),
    ] {
        cases.push(ok(format!("alpn {good}"), Https, set(p(t, "alpn"), good)));
    }
    cases.push(ok(
        "domain alpn [h2]",
        Https,
        set("/rules/0/domains/0/tls/alpn", json!(["h2"])),
    ));
    for (bad, at, frag) in [
        (
            json!([]),
            "/rules/0/tls/alpn",
            "must name at least one of h2, http/1.1",
        ),
        (
            json!(["h3"]),
            "/rules/0/tls/alpn/0",
            "must be h2 or http/1.1",
        ),
        (
            json!(["H2"]),
            "/rules/0/tls/alpn/0",
            "must be h2 or http/1.1",
        ),
        (
            json!(["http/1.0"]),
            "/rules/0/tls/alpn/0",
            "must be h2 or http/1.1",
        ),
        (
            json!(["h2", "h2"]),
            "/rules/0/tls/alpn/1",
            "is listed twice",
        ),
        (
            json!(["h2", "http/1.1", "h2"]),
            "/rules/0/tls/alpn/2",
            "is listed twice",
        ),
        (
            json!(["h2", 2]),
            "/rules/0/tls/alpn/1",
            "must be h2 or http/1.1, got a number",
        ),
        (
            json!(["h2", null]),
            "/rules/0/tls/alpn/1",
            "must be h2 or http/1.1",
        ),
        (json!("h2"), "/rules/0/tls/alpn", "must be an array"),
    ] {
        cases.push(err(
            format!("alpn {bad}"),
            Https,
            set(p(t, "alpn"), bad),
            at,
            frag,
        ));
    }
    cases.push(err(
        "domain alpn []",
        Https,
        set("/rules/0/domains/0/tls/alpn", json!([])),
        "/rules/0/domains/0/tls/alpn",
        "at least one",
    ));
    run(cases);
}

#[test]
fn tls_settings_reach_the_model() {
    let mut v = https_spec();
    let s = load_ok(&v).spec;
    let tls = s.rules[0].tls.as_ref().unwrap();
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::V1_2, TlsVersion::V1_3)
    );
    assert_eq!(
        tls.alpn.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        ["h2", "http/1.1"],
        "alpn defaults to both"
    );
    put(&mut v, "/rules/0/tls/minVersion", json!("TLSv1.3"));
    put(&mut v, "/rules/0/tls/alpn", json!(["http/1.1"]));
    let s = load_ok(&v).spec;
    let tls = s.rules[0].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert_eq!(
        tls.alpn.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        ["http/1.1"]
    );
}

// ---------------------------------------------------------------------------------------------
// What each scheme allows.

#[test]
fn fields_that_belong_to_some_schemes_only() {
    use Base::*;
    let c = certs::cert(&["shop.example.com"]);
    let tls =
        json!({"certificateId": "c9", "certificatePem": c.cert_pem, "privateKeyPem": c.key_pem});
    let tcp = || set("/rules/0/scheme", json!("tcp"));
    let cases = vec![
        err(
            "https without tls or domains",
            Https,
            all(vec![unset("/rules/0/tls"), unset("/rules/0/domains")]),
            "/rules/0/tls",
            "is required for an https rule without domains",
        ),
        err(
            "https with tls null and no domains",
            Https,
            all(vec![
                set("/rules/0/tls", Value::Null),
                set("/rules/0/domains", json!([])),
            ]),
            "/rules/0/tls",
            "is required for an https rule without domains",
        ),
        ok(
            "https without tls: its domains get managed certificates",
            Https,
            all(vec![unset("/rules/0/tls"), unset("/rules/0/domains/0/tls")]),
        ),
        ok(
            "https with tls null: a domain with its own certificate",
            Https,
            set("/rules/0/tls", Value::Null),
        ),
        err(
            "a wildcard domain waiting for a managed certificate",
            Https,
            all(vec![
                unset("/rules/0/tls"),
                unset("/rules/0/domains/0/tls"),
                set("/rules/0/domains/0/domainName", json!("*.example.com")),
            ]),
            "/rules/0/domains/0/tls",
            "which cannot validate a wildcard",
        ),
        ok(
            "a wildcard domain under the rule's certificate",
            Https,
            all(vec![
                unset("/rules/0/domains/0/tls"),
                set("/rules/0/domains/0/domainName", json!("*.example.com")),
            ]),
        ),
        ok(
            "https domain without tls (rule's certificate)",
            Https,
            unset("/rules/0/domains/0/tls"),
        ),
        err(
            "tls on an http rule",
            Http,
            set("/rules/0/tls", tls.clone()),
            "/rules/0/tls",
            "applies to https and http2 rules only",
        ),
        err(
            "tls on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/tls", tls.clone())]),
            "/rules/0/tls",
            "applies to https and http2 rules only",
        ),
        ok(
            "tls null on an http rule",
            Http,
            set("/rules/0/tls", Value::Null),
        ),
        err(
            "tls on a domain of an http rule",
            Https,
            all(vec![
                set("/rules/0/scheme", json!("http")),
                unset("/rules/0/tls"),
            ]),
            "/rules/0/domains/0/tls",
            "applies to https rules, and to http2 rules that have their own tls",
        ),
        err(
            "domains on a tcp rule",
            Http,
            all(vec![
                tcp(),
                set(
                    "/rules/0/domains",
                    json!([extra_domain("d1", "a.example.com")]),
                ),
            ]),
            "/rules/0/domains",
            "applies to http, https and http2 rules only",
        ),
        ok(
            "empty domains on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/domains", json!([]))]),
        ),
        ok(
            "domains on an http rule",
            Http,
            set(
                "/rules/0/domains",
                json!([extra_domain("d1", "a.example.com")]),
            ),
        ),
        err(
            "cookieCheck on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/cookieCheck", json!(1))]),
            "/rules/0/cookieCheck",
            "applies to http, https and http2 rules only",
        ),
        err(
            "cookieCheck true on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/cookieCheck", json!(true))]),
            "/rules/0/cookieCheck",
            "applies to http, https and http2 rules only",
        ),
        ok(
            "cookieCheck 0 on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/cookieCheck", json!(0))]),
        ),
        ok(
            "cookieCheck on an http rule",
            Http,
            set("/rules/0/cookieCheck", json!(1)),
        ),
        ok(
            "cookieCheck on an https rule",
            Https,
            set("/rules/0/cookieCheck", json!(1)),
        ),
        ok(
            "LB-wide cookieCheck with a tcp rule",
            Http,
            all(vec![tcp(), set("/cookieCheck", json!(1))]),
        ),
        ok(
            "redirectHTTP on an http rule",
            Http,
            set("/rules/0/redirectHTTP", json!(1)),
        ),
        ok(
            "redirectHTTP on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/redirectHTTP", json!(true))]),
        ),
        ok(
            "redirectHTTP on a domain of an http rule",
            Http,
            all(vec![
                set(
                    "/rules/0/domains",
                    json!([extra_domain("d1", "a.example.com")]),
                ),
                set("/rules/0/domains/0/redirectHTTP", json!(1)),
            ]),
        ),
        ok(
            "redirectHTTP 0 on an http rule",
            Http,
            set("/rules/0/redirectHTTP", json!(0)),
        ),
        ok(
            "redirectHTTP on an https rule",
            Https,
            set("/rules/0/redirectHTTP", json!(1)),
        ),
        ok(
            "LB-wide redirectHTTP with an http rule",
            Http,
            set("/redirectHTTP", json!(1)),
        ),
        err(
            "tcp rule without backends",
            Http,
            all(vec![tcp(), set("/rules/0/backends", json!([]))]),
            "/rules/0/backends",
            "must hold at least one backend",
        ),
        err(
            "http rule without backends or domains",
            Http,
            set("/rules/0/backends", json!([])),
            "/rules/0/backends",
            "must hold at least one backend",
        ),
        err(
            "http rule, backends missing, no domains",
            Http,
            unset("/rules/0/backends"),
            "/rules/0/backends",
            "must hold at least one backend",
        ),
        ok(
            "https rule without backends, domains route",
            Https,
            set("/rules/0/backends", json!([])),
        ),
        ok(
            "https rule, backends missing, domains route",
            Https,
            unset("/rules/0/backends"),
        ),
        err(
            "domain without backends",
            Https,
            set("/rules/0/domains/0/backends", json!([])),
            "/rules/0/domains/0/backends",
            "must hold at least one backend",
        ),
        err(
            "domain, backends missing",
            Https,
            unset("/rules/0/domains/0/backends"),
            "/rules/0/domains/0/backends",
            "must hold at least one backend",
        ),
        err(
            "no rules",
            Http,
            set("/rules", json!([])),
            "/rules",
            "must hold at least one rule",
        ),
        err(
            "rules missing",
            Http,
            unset("/rules"),
            "/rules",
            "must hold at least one rule",
        ),
        err_among(
            "rules is an object",
            Http,
            set("/rules", json!({})),
            "/rules",
            "must be an array",
        ),
        err(
            "a rule that is a string",
            Http,
            set("/rules/0", json!("r1")),
            "/rules/0",
            "must be an object",
        ),
        err(
            "a backend that is a number",
            Http,
            set("/rules/0/backends/1", json!(5)),
            "/rules/0/backends/1",
            "must be an object",
        ),
        err(
            "a domain that is null",
            Https,
            set("/rules/0/domains/0", Value::Null),
            "/rules/0/domains/0",
            "must be an object",
        ),
    ];
    run(cases);
}

#[test]
fn redirect_port_conflicts() {
    use Base::*;
    let plain80 = |port: Value| set("/rules/1", extra_rule("plain", port));
    let mut cases = vec![
        ok("port 80 without any redirect", Https, plain80(json!(80))),
        ok(
            "redirect with port 80 free",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                plain80(json!(8080)),
            ]),
        ),
        err(
            "an http rule on the redirect port",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                plain80(json!(80)),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "an http rule on the redirect port, as a string",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(true)),
                plain80(json!("80")),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "the redirect comes from a domain",
            Https,
            all(vec![
                set("/rules/0/domains/0/redirectHTTP", json!(1)),
                plain80(json!(80)),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "the redirect comes LB-wide",
            Https,
            all(vec![set("/redirectHTTP", json!(1)), plain80(json!(80))]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "a tcp rule on the redirect port",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                plain80(json!(80)),
                set("/rules/1/scheme", json!("tcp")),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "the https rule itself on the redirect port",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                set("/rules/0/frontPort", json!(80)),
            ]),
            "/rules/0/frontPort",
            "is the redirect port",
        ),
        ok(
            "redirectHTTP 0 leaves port 80 free",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(0)),
                plain80(json!(80)),
            ]),
        ),
    ];
    // Two https rules cannot both redirect every host.
    cases.push(err(
        "two https rules redirect all hosts",
        Https,
        Box::new(|d: &mut Value| {
            let mut second = d["rules"][0].clone();
            second["ruleId"] = json!("r-https-2");
            second["frontPort"] = json!(9443);
            second["domains"] = json!([]);
            d["rules"][0]["redirectHTTP"] = json!(1);
            second["redirectHTTP"] = json!(1);
            d["rules"].as_array_mut().unwrap().push(second);
        }),
        "/rules/1/redirectHTTP",
        "only one https rule can redirect all hosts",
    ));
    run(cases);

    // The redirect port is a setting: with 8081, port 80 is free and 8081 is taken.
    let opts = Options {
        redirect_port: 8081,
        ..options()
    };
    run_with(
        vec![
            ok(
                "port 80 with redirect_port 8081",
                Https,
                all(vec![
                    set("/rules/0/redirectHTTP", json!(1)),
                    plain80(json!(80)),
                ]),
            ),
            err(
                "port 8081 with redirect_port 8081",
                Https,
                all(vec![
                    set("/rules/0/redirectHTTP", json!(1)),
                    plain80(json!(8081)),
                ]),
                "/rules/1/frontPort",
                "port 8081 is the redirect port",
            ),
        ],
        &opts,
    );
}

// ---------------------------------------------------------------------------------------------
// Limits.

fn many_rules(n: usize) -> Value {
    let mut v = http_spec();
    let rules: Vec<Value> = (0..n)
        .map(|i| extra_rule(&format!("r{i}"), json!(10_000 + i)))
        .collect();
    v["rules"] = json!(rules);
    v
}

fn many_domains(n: usize) -> Value {
    let mut v = http_spec();
    let domains: Vec<Value> = (0..n)
        .map(|i| extra_domain(&format!("d{i}"), &format!("h{i}.example.com")))
        .collect();
    v["rules"][0]["domains"] = json!(domains);
    v
}

fn many_backends(n: usize) -> Value {
    let mut v = http_spec();
    let backends: Vec<Value> = (0..n)
        .map(|i| json!({"identifier": format!("b{i}"), "ip": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255 | 1)}))
        .collect();
    v["rules"][0]["backends"] = json!(backends);
    v
}

fn only_error(e: &SpecErrors, path: &str, frag: &str) {
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].path, path, "{e}");
    assert!(e.0[0].message.contains(frag), "{e}");
}

#[test]
fn at_most_64_rules() {
    assert_eq!(load_ok(&many_rules(64)).spec.rules.len(), 64);
    only_error(
        &load_err(&many_rules(65)),
        "rules",
        "holds 65 rules; at most 64",
    );
}

#[test]
fn at_most_256_domains() {
    assert_eq!(load_ok(&many_domains(256)).spec.rules[0].domains.len(), 256);
    only_error(
        &load_err(&many_domains(257)),
        "rules",
        "hold 257 domains in all; at most 256",
    );
    // Counted across rules.
    let mut v = many_domains(200);
    let mut r2 = extra_rule("r2", json!(8081));
    r2["domains"] = many_domains(57)["rules"][0]["domains"].clone();
    put(&mut v, "/rules/1", r2);
    only_error(&load_err(&v), "rules", "hold 257 domains");
}

#[test]
fn at_most_10000_backends() {
    assert_eq!(load_ok(&many_backends(10_000)).spec.backend_count(), 10_000);
    only_error(
        &load_err(&many_backends(10_001)),
        "rules",
        "hold 10001 backends in all; at most 10000",
    );
    // Counted across rules and domains: 9,999 + 1 (rule 2) + 1 (a domain).
    let mut v = many_backends(9_999);
    put(&mut v, "/rules/1", extra_rule("r2", json!(8081)));
    v["rules"][0]["domains"] = json!([extra_domain("d1", "a.example.com")]);
    only_error(&load_err(&v), "rules", "hold 10001 backends");
}

/// Pads a valid spec with an unknown field to exactly `len` bytes.
fn padded(len: usize) -> Vec<u8> {
    let mut v = http_spec();
    v["padding"] = json!("");
    let base = v.to_string().len();
    assert!(len >= base);
    v["padding"] = json!("p".repeat(len - base));
    let body = v.to_string().into_bytes();
    assert_eq!(body.len(), len);
    body
}

#[test]
fn body_over_10_mib_is_refused_whole() {
    assert_eq!(MAX_BODY_BYTES, 10 * 1024 * 1024);
    assert!(spec::load(&padded(MAX_BODY_BYTES), &options()).is_ok());
    let e = spec::load(&padded(MAX_BODY_BYTES + 1), &options()).unwrap_err();
    only_error(&e, "", "at most 10 MiB");
    // Refused before parsing: even bytes that are not JSON say "too big", not "not JSON".
    let junk = vec![b'x'; MAX_BODY_BYTES + 1];
    only_error(&spec::load(&junk, &options()).unwrap_err(), "", "10 MiB");
}

// ---------------------------------------------------------------------------------------------
// The document: envelope, unknown fields, null.

fn load_bytes(b: &[u8]) -> Result<Loaded, SpecErrors> {
    spec::load(b, &options())
}

#[test]
fn envelope_handling() {
    let bare = load_ok(&http_spec()).spec;
    let wrapped = json!({"error": false, "data": http_spec()});
    assert_eq!(
        load_bytes(wrapped.to_string().as_bytes()).unwrap().spec,
        bare
    );

    let e = load_bytes(br#"{"error": true, "code": 404, "message": "load balancer not found"}"#)
        .unwrap_err();
    only_error(&e, "", "the API answered with an error (code 404)");
    assert!(e.0[0].message.contains("load balancer not found"), "{e}");

    let with_data = json!({"error": true, "code": 500, "message": "oops", "data": http_spec()});
    only_error(
        &load_bytes(with_data.to_string().as_bytes()).unwrap_err(),
        "",
        "the API answered with an error (code 500)",
    );
    let odd = json!({"error": "no", "data": http_spec()});
    only_error(
        &load_bytes(odd.to_string().as_bytes()).unwrap_err(),
        "error",
        "must be true or false",
    );

    for junk in [
        &b"not json"[..],
        b"",
        b"{",
        b"<html>502</html>",
        b"\xff\xfe",
    ] {
        only_error(&load_bytes(junk).unwrap_err(), "", "not valid JSON");
    }
    for not_object in ["[]", "null", "42", "\"lb\""] {
        only_error(
            &load_bytes(not_object.as_bytes()).unwrap_err(),
            "",
            "must be a JSON object",
        );
    }
    let data_not_object = json!({"error": false, "data": [1]});
    only_error(
        &load_bytes(data_not_object.to_string().as_bytes()).unwrap_err(),
        "",
        "must be an object",
    );
}

/// The document is read as `serde_json` reads it: escapes in keys and strings mean their
/// characters, and a key given twice counts with its last value (at every level, the envelope
/// too).
#[test]
fn escaped_and_repeated_keys_read_as_json_says() {
    let bare = load_ok(&http_spec()).spec;
    let text = json!({"error": false, "data": http_spec()}).to_string();
    // `frontPort` and the first rule id, written with escapes.
    let escaped = text
        .replacen("\"frontPort\"", "\"fr\\u006fntPort\"", 1)
        .replacen(
            &format!("\"{}\"", bare.rules[0].id),
            &format!(
                "\"\\u{:04x}{}\"",
                bare.rules[0].id.as_bytes()[0],
                &bare.rules[0].id[1..]
            ),
            1,
        );
    assert_ne!(escaped, text);
    assert_eq!(load_bytes(escaped.as_bytes()).unwrap().spec, bare);

    // A repeated key: the last value counts, whichever is valid.
    let port = bare.rules[0].front_port;
    let twice_bad_first = text.replacen(
        "\"frontPort\":",
        "\"frontPort\": \"not a port\", \"frontPort\":",
        1,
    );
    assert_eq!(load_bytes(twice_bad_first.as_bytes()).unwrap().spec, bare);
    let twice_bad_last = text.replacen(
        &format!("\"frontPort\":{port}"),
        &format!("\"frontPort\":{port},\"frontPort\":\"not a port\""),
        1,
    );
    assert_ne!(twice_bad_last, text);
    only_error(
        &load_bytes(twice_bad_last.as_bytes()).unwrap_err(),
        "rules[0].frontPort",
        "",
    );
    let envelope_twice = format!("{{\"data\": [1], {}", &text[1..]);
    assert_eq!(load_bytes(envelope_twice.as_bytes()).unwrap().spec, bare);
}

#[test]
fn unknown_fields_are_ignored() {
    let base = load_ok(&https_spec());
    let mut v = https_spec();
    // Same certificates as `base` so that the specs can be compared.
    v["rules"][0]["tls"] = {
        let mut t = base_tls(&base, 0);
        t["futureTlsField"] = json!({"x": 1});
        t
    };
    v["rules"][0]["domains"][0]["tls"] = base_domain_tls(&base);
    v["futureField"] = json!([1, 2, {"a": null}]);
    v["default_ip"] = json!("203.0.113.20");
    v["dc_name"] = json!("dc-1");
    v["rules"][0]["futureRuleField"] = json!("x");
    v["rules"][0]["timeouts"] = json!({"connect": 5, "future": 1});
    v["rules"][0]["domains"][0]["futureDomainField"] = json!(true);
    v["rules"][0]["backends"][0]["futureBackendField"] = json!({"nested": [1]});
    let loaded = load_ok(&v);
    assert_eq!(loaded.spec, base.spec);
    assert!(loaded.warnings.is_empty());
}

fn base_tls(l: &Loaded, rule: usize) -> Value {
    let t = l.spec.rules[rule].tls.as_ref().unwrap();
    json!({"certificateId": t.id, "certificatePem": t.certificate_pem, "privateKeyPem": t.private_key_pem})
}

fn base_domain_tls(l: &Loaded) -> Value {
    let t = l.spec.rules[0].domains[0].tls.as_ref().unwrap();
    json!({"certificateId": t.id, "certificatePem": t.certificate_pem, "privateKeyPem": t.private_key_pem})
}

#[test]
fn null_is_treated_as_absent() {
    let base = load_ok(&http_spec()).spec;
    let mut v = http_spec();
    for ptr in [
        "/algorithm",
        "/checkInterval",
        "/maxConnections",
        "/cookieName",
        "/rules/0/algorithm",
        "/rules/0/healthCheckPath",
        "/rules/0/cookieCheck",
        "/rules/0/redirectHTTP",
        "/rules/0/proxyProtocol",
        "/rules/0/timeouts",
        "/rules/0/tls",
        "/rules/0/domains",
        "/rules/0/backendScheme",
        "/rules/0/backends/0/port",
        "/rules/0/backends/0/weight",
        "/rules/0/backends/0/enabled",
    ] {
        put(&mut v, ptr, Value::Null);
    }
    assert_eq!(load_ok(&v).spec, base);
    // A required field that is null is missing.
    for ptr in [
        "/identifier",
        "/lbName",
        "/rules/0/ruleId",
        "/rules/0/scheme",
        "/rules/0/frontPort",
        "/rules/0/backPort",
        "/rules/0/backends/0/identifier",
        "/rules/0/backends/0/ip",
    ] {
        let mut v = http_spec();
        put(&mut v, ptr, Value::Null);
        only_error(&load_err(&v), &contract_path(ptr), "is required");
    }
    let mut v = http_spec();
    put(&mut v, "/rules", Value::Null);
    only_error(&load_err(&v), "rules", "must hold at least one rule");
}

#[test]
fn all_errors_are_reported_at_once_in_document_order() {
    let mut v = http_spec();
    put(&mut v, "/identifier", json!("bad id"));
    put(&mut v, "/rules/0/frontPort", json!(0));
    put(&mut v, "/rules/0/algorithm", json!("fastest"));
    put(&mut v, "/rules/0/backends/0/ip", json!("127.0.0.1"));
    put(&mut v, "/rules/0/backends/1/weight", json!(0));
    let e = load_err(&v);
    let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "identifier",
            "rules[0].frontPort",
            "rules[0].algorithm",
            "rules[0].backends[0].ip",
            "rules[0].backends[1].weight",
        ]
    );
    for (f, frag) in e.0.iter().zip([
        "must match",
        "between 1 and 65535",
        "must be one of",
        "loopback",
        "between 1 and 10000",
    ]) {
        assert!(f.message.contains(frag), "{f}");
    }
    assert!(
        e.to_string()
            .starts_with("the load-balancer spec is invalid (5 errors)"),
        "{e}"
    );

    // Across rules, domains and TLS blocks: array order is kept.
    let mut v = https_spec();
    put(&mut v, "/lbName", json!(""));
    put(&mut v, "/rules/0/tls/alpn", json!(["h3"]));
    put(&mut v, "/rules/0/domains/0/domainName", json!("bad_name"));
    put(
        &mut v,
        "/rules/0/domains/0/backends/0/ip",
        json!("169.254.169.254"),
    );
    put(&mut v, "/rules/1", extra_rule("r2", json!(65536)));
    put(&mut v, "/rules/2", extra_rule("r3", json!(8082)));
    put(&mut v, "/rules/2/backends/0/weight", json!(-1));
    let e = load_err(&v);
    let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "lbName",
            "rules[0].tls.alpn[0]",
            "rules[0].domains[0].domainName",
            "rules[0].domains[0].backends[0].ip",
            "rules[1].frontPort",
            "rules[2].backends[0].weight",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Inheritance and defaults.

#[test]
fn defaults() {
    let s = load_ok(&https_spec()).spec;
    assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(DEFAULT_MAX_CONNECTIONS, 50_000);
    let r = &s.rules[0];
    assert_eq!(r.proxy_protocol, ProxyProtocol::None);
    assert_eq!(
        (
            r.timeouts.connect_s,
            r.timeouts.idle_s,
            r.timeouts.request_s
        ),
        (5, 300, 60)
    );
    assert!(!r.redirect_http);
    for pool in [&r.pool, &r.domains[0].pool] {
        assert_eq!(pool.algorithm, Algorithm::Roundrobin);
        assert_eq!(pool.backend_scheme, BackendScheme::Http);
        assert_eq!(pool.health.http_path, None);
        assert_eq!(pool.health.interval_ms, 5000);
        assert_eq!(pool.health.fast_interval_ms, 2500);
        assert_eq!((pool.health.rise, pool.health.fall), (2, 3));
        assert_eq!(pool.sticky_cookie, None);
        assert_eq!(pool.back_port, 9000, "domains inherit the rule's backPort");
        for b in &pool.backends {
            assert_eq!(b.weight, 100);
            assert!(b.enabled);
            assert_eq!(b.port, 9000);
        }
    }
}

#[test]
fn lb_wide_values_reach_rules_and_domains_and_nearer_levels_win() {
    let mut v = https_spec();
    put(&mut v, "/algorithm", json!("leastconn"));
    put(&mut v, "/checkInterval", json!(3000));
    put(&mut v, "/rise", json!(4));
    put(&mut v, "/fall", json!("5"));
    put(&mut v, "/rules/1", extra_rule("plain", json!(8080)));
    let s = load_ok(&v).spec;
    for r in &s.rules {
        let pools = std::iter::once(&r.pool).chain(r.domains.iter().map(|d| &d.pool));
        for pool in pools {
            assert_eq!(pool.algorithm, Algorithm::Leastconn, "{}", r.id);
            assert_eq!(pool.health.interval_ms, 3000);
            assert_eq!(
                pool.health.fast_interval_ms, 1500,
                "fastInterval defaults to checkInterval/2"
            );
            assert_eq!((pool.health.rise, pool.health.fall), (4, 5));
        }
    }
    // A rule overrides the LB, a domain overrides its rule.
    put(&mut v, "/rules/0/algorithm", json!("random"));
    put(&mut v, "/rules/0/checkInterval", json!(4000));
    put(&mut v, "/rules/0/domains/0/algorithm", json!("maglev"));
    put(&mut v, "/rules/0/domains/0/checkInterval", json!(8001));
    put(&mut v, "/rules/0/domains/0/fastInterval", json!(700));
    put(&mut v, "/rules/0/domains/0/backPort", json!("7000"));
    let s = load_ok(&v).spec;
    let r = s.rules.iter().find(|r| r.id == "r-https").unwrap();
    assert_eq!(r.pool.algorithm, Algorithm::Random);
    assert_eq!(
        (r.pool.health.interval_ms, r.pool.health.fast_interval_ms),
        (4000, 2000)
    );
    let d = &r.domains[0].pool;
    assert_eq!(d.algorithm, Algorithm::Maglev);
    assert_eq!(
        (d.health.interval_ms, d.health.fast_interval_ms),
        (8001, 700)
    );
    assert_eq!(d.back_port, 7000);
    assert_eq!(d.backends[0].port, 7000);
    assert_eq!(r.pool.back_port, 9000);
    let other = s.rules.iter().find(|r| r.id == "plain").unwrap();
    assert_eq!(
        other.pool.algorithm,
        Algorithm::Leastconn,
        "other rules keep the LB value"
    );

    // fastInterval never drops below its own minimum when halved.
    let mut v = http_spec();
    put(&mut v, "/rules/0/checkInterval", json!(100));
    assert_eq!(load_ok(&v).spec.rules[0].pool.health.fast_interval_ms, 50);
    put(&mut v, "/rules/0/checkInterval", json!(101));
    assert_eq!(load_ok(&v).spec.rules[0].pool.health.fast_interval_ms, 50);
}

#[test]
fn cookie_defaults_and_inheritance() {
    let mut v = https_spec();
    put(&mut v, "/rules/0/cookieCheck", json!(1));
    let s = load_ok(&v).spec;
    assert_eq!(
        s.rules[0].pool.sticky_cookie.as_deref(),
        Some(DEFAULT_COOKIE_NAME)
    );
    assert_eq!(DEFAULT_COOKIE_NAME, "VPSIE_LB");
    assert_eq!(
        s.rules[0].domains[0].pool.sticky_cookie.as_deref(),
        Some(DEFAULT_COOKIE_NAME),
        "domains inherit cookieCheck"
    );
    put(&mut v, "/cookieName", json!("LBWIDE"));
    put(&mut v, "/rules/0/domains/0/cookieName", json!("DOM"));
    let s = load_ok(&v).spec;
    assert_eq!(s.rules[0].pool.sticky_cookie.as_deref(), Some("LBWIDE"));
    assert_eq!(
        s.rules[0].domains[0].pool.sticky_cookie.as_deref(),
        Some("DOM")
    );
    put(&mut v, "/rules/0/domains/0/cookieCheck", json!(0));
    let s = load_ok(&v).spec;
    assert_eq!(
        s.rules[0].domains[0].pool.sticky_cookie, None,
        "a domain can turn it off"
    );

    // LB-wide cookieCheck reaches http rules and leaves tcp rules alone.
    let mut v = http_spec();
    put(&mut v, "/cookieCheck", json!(true));
    put(&mut v, "/rules/1", extra_rule("t", json!(8081)));
    put(&mut v, "/rules/1/scheme", json!("tcp"));
    let s = load_ok(&v).spec;
    let by_id = |id: &str| s.rules.iter().find(|r| r.id == id).unwrap();
    assert_eq!(
        by_id("r1").pool.sticky_cookie.as_deref(),
        Some(DEFAULT_COOKIE_NAME)
    );
    assert_eq!(by_id("t").pool.sticky_cookie, None);
}

#[test]
fn lb_wide_redirect_reaches_https_rules_only() {
    let mut v = https_spec();
    put(&mut v, "/redirectHTTP", json!(1));
    put(&mut v, "/rules/1", extra_rule("plain", json!(8080)));
    let s = load_ok(&v).spec;
    let by_id = |id: &str| s.rules.iter().find(|r| r.id == id).unwrap();
    assert!(by_id("r-https").redirect_http);
    assert!(by_id("r-https").domains[0].redirect_http);
    assert!(!by_id("plain").redirect_http);
}

// ---------------------------------------------------------------------------------------------
// Canonical order and the config hash.

fn hash_of(v: &Value) -> String {
    config_hash(&load_ok(v).spec, "t")
}

#[test]
fn canonical_order_and_volatile_fields_do_not_change_the_hash() {
    let mut v = https_spec();
    put(
        &mut v,
        "/rules/0/backends/1",
        json!({"identifier": "b2", "ip": "10.0.0.2", "weight": 7}),
    );
    put(
        &mut v,
        "/rules/0/domains/1",
        extra_domain("d2", "www.example.com"),
    );
    put(
        &mut v,
        "/rules/0/domains/1/backends/1",
        json!({"identifier": "y2", "ip": "10.8.0.2"}),
    );
    put(&mut v, "/rules/1", extra_rule("plain", json!(8080)));
    put(&mut v, "/rules/2", extra_rule("tcp1", json!(7000)));
    put(&mut v, "/rules/2/scheme", json!("tcp"));
    let h0 = hash_of(&v);
    assert_eq!(h0.len(), 64);
    assert!(h0.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(hash_of(&v), h0, "the hash is stable");

    let reverse = |v: &mut Value, ptr: &str| {
        v.pointer_mut(ptr)
            .unwrap()
            .as_array_mut()
            .unwrap()
            .reverse();
    };
    let variants: Vec<(&str, Mutation)> = vec![
        (
            "backends reversed",
            Box::new(move |v| reverse(v, "/rules/0/backends")),
        ),
        (
            "domain backends reversed",
            Box::new(move |v| reverse(v, "/rules/0/domains/1/backends")),
        ),
        (
            "domains reversed",
            Box::new(move |v| reverse(v, "/rules/0/domains")),
        ),
        ("rules reversed", Box::new(move |v| reverse(v, "/rules"))),
        (
            "informational fields",
            Box::new(|v| {
                v["created_on"] = json!("2026-11-01 09:00:00");
                v["updated_on"] = json!("2026-11-23 21:42:10");
                v["traffic"] = json!(1_234_567);
                v["default_ip"] = json!("203.0.113.20");
                v["dc_name"] = json!("x");
                v["dcId"] = json!(3);
                v["boxsize_id"] = json!(1);
                v["user_id"] = json!(2);
                v["created_by"] = json!("me");
                v["status"] = json!("active");
            }),
        ),
        (
            "backend informational fields",
            Box::new(|v| {
                for ptr in [
                    "/rules/0/backends/0",
                    "/rules/0/domains/0/backends/0",
                    "/rules/1/backends/0",
                ] {
                    let b = v.pointer_mut(ptr).unwrap();
                    b["vmIdentifier"] = json!("vm-123");
                    b["created_on"] = json!("2026-01-01");
                    b["status"] = json!("down");
                }
            }),
        ),
        (
            "ports and weights as numeric strings",
            Box::new(|v| {
                v["rules"][0]["frontPort"] = json!("8443");
                v["rules"][0]["backPort"] = json!("9000");
                v["rules"][0]["backends"][1]["weight"] = json!("7");
            }),
        ),
        (
            "defaults spelt out",
            Box::new(|v| {
                v["rules"][1]["algorithm"] = json!("roundrobin");
                v["rules"][1]["proxyProtocol"] = json!("none");
                v["rules"][1]["backends"][0]["weight"] = json!(100);
                v["rules"][1]["backends"][0]["enabled"] = json!(1);
                v["rules"][1]["timeouts"] = json!({"connect": 5, "idle": 300, "request": 60});
            }),
        ),
        (
            "case of host names",
            Box::new(|v| {
                v["rules"][0]["domains"][0]["domainName"] = json!("API.Example.com");
            }),
        ),
        (
            "PEM with CRLF line ends",
            Box::new(|v| {
                let pem = v["rules"][0]["tls"]["certificatePem"]
                    .as_str()
                    .unwrap()
                    .replace('\n', "\r\n");
                v["rules"][0]["tls"]["certificatePem"] = json!(pem);
            }),
        ),
        (
            "an unknown field",
            Box::new(|v| v["x-new"] = json!({"a": 1})),
        ),
    ];
    for (name, f) in &variants {
        let mut w = v.clone();
        f(&mut w);
        assert_eq!(hash_of(&w), h0, "{name} changed the hash");
    }

    let changes: Vec<(&str, Mutation)> = vec![
        (
            "a weight",
            Box::new(|v| v["rules"][0]["backends"][1]["weight"] = json!(8)),
        ),
        (
            "a backend disabled",
            Box::new(|v| v["rules"][0]["backends"][0]["enabled"] = json!(0)),
        ),
        (
            "a backend address",
            Box::new(|v| v["rules"][0]["backends"][0]["ip"] = json!("10.0.0.9")),
        ),
        (
            "a backend port",
            Box::new(|v| v["rules"][0]["backends"][0]["port"] = json!(9001)),
        ),
        (
            "a backend id",
            Box::new(|v| v["rules"][0]["backends"][0]["identifier"] = json!("b0")),
        ),
        (
            "an algorithm",
            Box::new(|v| v["rules"][1]["algorithm"] = json!("leastconn")),
        ),
        (
            "a health path",
            Box::new(|v| v["rules"][1]["healthCheckPath"] = json!("/h")),
        ),
        (
            "a timeout",
            Box::new(|v| v["rules"][1]["timeouts"] = json!({"idle": 301})),
        ),
        (
            "a front port",
            Box::new(|v| v["rules"][2]["frontPort"] = json!(7001)),
        ),
        ("the LB name", Box::new(|v| v["lbName"] = json!("renamed"))),
        (
            "maxConnections",
            Box::new(|v| v["maxConnections"] = json!(100)),
        ),
        (
            "a host",
            Box::new(|v| v["rules"][0]["domains"][0]["domainName"] = json!("api2.example.com")),
        ),
        (
            "alpn",
            Box::new(|v| v["rules"][0]["tls"]["alpn"] = json!(["h2"])),
        ),
        (
            "a cookie",
            Box::new(|v| v["rules"][1]["cookieCheck"] = json!(1)),
        ),
    ];
    for (name, f) in &changes {
        let mut w = v.clone();
        f(&mut w);
        assert_ne!(hash_of(&w), h0, "{name} did not change the hash");
    }

    let s = load_ok(&v).spec;
    assert_ne!(
        config_hash(&s, "u"),
        config_hash(&s, "t"),
        "the template version is hashed"
    );
}

#[test]
fn the_model_is_in_canonical_order() {
    let mut v = http_spec();
    put(&mut v, "/rules/0/backends/0/identifier", json!("zz"));
    put(&mut v, "/rules/1", extra_rule("a-first-id", json!(81)));
    put(
        &mut v,
        "/rules/0/domains",
        json!([
            extra_domain("dz", "z.example.com"),
            extra_domain("da", "a.example.com")
        ]),
    );
    let s = load_ok(&v).spec;
    let ports: Vec<u16> = s.rules.iter().map(|r| r.front_port).collect();
    assert_eq!(ports, [81, 8080], "rules sorted by frontPort");
    let r = s.rules.iter().find(|r| r.id == "r1").unwrap();
    let ids: Vec<&str> = r.pool.backends.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["b2", "zz"], "backends sorted by id");
    let ids: Vec<&str> = r.domains.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["da", "dz"], "domains sorted by id");
}

/// Baseline: the support specs are valid, so every refused case above is refused for its own
/// mutation and not for something in the base.
#[test]
fn the_base_specs_are_valid() {
    assert!(load(&http_spec()).is_ok());
    let l = load_ok(&https_spec());
    assert!(l.warnings.is_empty());
    run(vec![
        ok("http base", Base::Http, nothing()),
        ok("https base", Base::Https, nothing()),
        err(
            "http base without identifier",
            Base::Http,
            unset("/identifier"),
            "/identifier",
            "is required",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// The http2 scheme (what the VPSie cloud controller sends for gRPC services).

#[test]
fn http2_rules_take_tls_optionally_and_have_no_request_limit_by_default() {
    // Plain (h2c) front: no tls, no request limit, HTTP/2 health checks are the render's job.
    let mut v = http_spec();
    put(&mut v, "/rules/0/scheme", json!("http2"));
    let l = load_ok(&v);
    let r = &l.spec.rules[0];
    assert_eq!((r.scheme, r.tls.is_none()), (Scheme::Http2, true));
    assert_eq!(r.timeouts.request_s, 0);
    put(&mut v, "/rules/0/timeouts", json!({"request": 30}));
    assert_eq!(load_ok(&v).spec.rules[0].timeouts.request_s, 30);

    // TLS front: the https base's certificates, on an http2 rule.
    let mut v = https_spec();
    put(&mut v, "/rules/0/scheme", json!("http2"));
    let l = load_ok(&v);
    assert!(l.spec.rules[0].tls.is_some());
    assert!(
        l.spec.rules[0].domains[0].tls.is_some(),
        "SNI certificate per domain"
    );

    // A domain certificate needs a TLS front.
    take(&mut v, "/rules/0/tls");
    let e = load_err(&v);
    only_error(
        &e,
        "rules[0].domains[0].tls",
        "applies to https rules, and to http2 rules that have their own tls",
    );

    // redirectHTTP means nothing here: warned, not refused.
    let mut v = http_spec();
    put(&mut v, "/rules/0/scheme", json!("http2"));
    put(&mut v, "/rules/0/redirectHTTP", json!("1"));
    let l = load_ok(&v);
    assert!(!l.spec.rules[0].redirect_http);
    assert!(
        l.warnings.iter().any(|w| w.path == "rules[0].redirectHTTP"
            && w.message.contains("applies to https rules only")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn health_check_statuses_and_outlier_detection() {
    use Base::*;
    let s = "/rules/0/healthCheckStatuses";
    let o = "/rules/0/outlierDetection";
    let cases = vec![
        ok("one status", Http, set(s, json!(["204"]))),
        ok(
            "a range and a status",
            Http,
            set(s, json!(["200-299", "302"])),
        ),
        ok("a status as a number", Http, set(s, json!([204]))),
        ok(
            "on a domain",
            Https,
            set("/rules/0/domains/0/healthCheckStatuses", json!(["200"])),
        ),
        err(
            "empty",
            Http,
            set(s, json!([])),
            "/rules/0/healthCheckStatuses",
            "at least one",
        ),
        err(
            "out of range",
            Http,
            set(s, json!(["200", "600"])),
            "/rules/0/healthCheckStatuses/1",
            "100-599",
        ),
        err(
            "a range high to low",
            Http,
            set(s, json!(["399-200"])),
            "/rules/0/healthCheckStatuses/0",
            "low to high",
        ),
        err(
            "not a status",
            Http,
            set(s, json!(["ok"])),
            "/rules/0/healthCheckStatuses/0",
            "like \"200\"",
        ),
        err(
            "an object",
            Http,
            set(s, json!([{"from": 200}])),
            "/rules/0/healthCheckStatuses/0",
            "got an object",
        ),
        err(
            "too many",
            Http,
            set(s, json!(vec!["200"; 17])),
            "/rules/0/healthCheckStatuses",
            "at most 16",
        ),
        err(
            "not an array",
            Http,
            set(s, json!("200")),
            "/rules/0/healthCheckStatuses",
            "must be an array",
        ),
        ok(
            "consecutive 5xx",
            Http,
            set(o, json!({"consecutive5xx": 3})),
        ),
        ok(
            "with its ejection time",
            Http,
            set(o, json!({"consecutive5xx": "5", "ejectionTime": 60})),
        ),
        ok(
            "on a domain",
            Https,
            set(
                "/rules/0/domains/0/outlierDetection",
                json!({"consecutive5xx": 1}),
            ),
        ),
        err(
            "without a count",
            Http,
            set(o, json!({"ejectionTime": 60})),
            "/rules/0/outlierDetection/consecutive5xx",
            "is required",
        ),
        err(
            "a count of 0",
            Http,
            set(o, json!({"consecutive5xx": 0})),
            "/rules/0/outlierDetection/consecutive5xx",
            "between 1 and 100",
        ),
        err(
            "a count of 101",
            Http,
            set(o, json!({"consecutive5xx": 101})),
            "/rules/0/outlierDetection/consecutive5xx",
            "between 1 and 100",
        ),
        err(
            "an ejection time of 0",
            Http,
            set(o, json!({"consecutive5xx": 3, "ejectionTime": 0})),
            "/rules/0/outlierDetection/ejectionTime",
            "between 1 and 3600",
        ),
        err(
            "an unknown field",
            Http,
            set(o, json!({"consecutive5xx": 3, "interval": 5})),
            "/rules/0/outlierDetection",
            "unknown field \"interval\"",
        ),
        err(
            "not an object",
            Http,
            set(o, json!(3)),
            "/rules/0/outlierDetection",
            "must be an object",
        ),
        ok("slow start", Http, set("/rules/0/slowStart", json!(30))),
        ok(
            "slow start off",
            Http,
            set("/rules/0/slowStart", json!("0")),
        ),
        ok(
            "slow start with least connections",
            Http,
            all(vec![
                set("/rules/0/slowStart", json!(600)),
                set("/rules/0/algorithm", json!("leastconn")),
            ]),
        ),
        err(
            "slow start too long",
            Http,
            set("/rules/0/slowStart", json!(601)),
            "/rules/0/slowStart",
            "between 0 and 600",
        ),
        err(
            "slow start negative",
            Http,
            set("/rules/0/slowStart", json!(-1)),
            "/rules/0/slowStart",
            "between 0 and 600",
        ),
    ];
    run(cases);
}

#[test]
fn slow_start_beside_a_hashing_algorithm_is_ignored_with_a_warning() {
    let mut v = http_spec();
    v["rules"][0]["slowStart"] = json!(30);
    v["rules"][0]["algorithm"] = json!("source");
    let l = load_ok(&v);
    assert_eq!(l.spec.rules[0].pool.slow_start_s, 0);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.path == "rules[0].slowStart"
                && w.message.contains("roundrobin and leastconn")),
        "{:?}",
        l.warnings
    );
    v["rules"][0]["algorithm"] = json!("roundrobin");
    assert_eq!(load_ok(&v).spec.rules[0].pool.slow_start_s, 30);
}

#[test]
fn health_statuses_and_outlier_detection_are_inherited_and_hashed() {
    let mut v = https_spec();
    v["rules"][0]["healthCheckStatuses"] = json!(["204"]);
    v["rules"][0]["outlierDetection"] = json!({"consecutive5xx": 4});
    let l = load_ok(&v);
    let d = &l.spec.rules[0].domains[0].pool;
    assert_eq!(
        d.health.statuses,
        [(204, 204)],
        "a domain inherits its rule's list"
    );
    assert_eq!(
        d.outlier.map(|o| (o.consecutive_5xx, o.ejection_time_s)),
        Some((4, 30))
    );
    let plain = load_ok(&https_spec());
    assert_eq!(
        plain.spec.rules[0].pool.health.statuses,
        [(200, 399)],
        "the default"
    );
    assert_eq!(plain.spec.rules[0].pool.outlier, None);
    let t = "t";
    assert_ne!(config_hash(&l.spec, t), config_hash(&plain.spec, t));
}

#[test]
fn source_lists() {
    use Base::*;
    let a = "/rules/0/allowedSources";
    let d = "/rules/0/deniedSources";
    let cases = vec![
        ok(
            "IPv4 and IPv6 ranges",
            Http,
            set(a, json!(["203.0.113.0/24", "2001:db8::/32"])),
        ),
        ok(
            "a bare address is one host, on a tcp rule",
            Http,
            all(vec![
                set("/rules/0/scheme", json!("tcp")),
                set(d, json!(["203.0.113.7", "2001:db8::7"])),
            ]),
        ),
        ok(
            "both, on an https rule",
            Https,
            all(vec![
                set(a, json!(["10.0.0.0/8"])),
                set(d, json!(["10.1.0.0/16"])),
            ]),
        ),
        ok(
            "empty lists",
            Http,
            all(vec![set(a, json!([])), set(d, json!([]))]),
        ),
        ok(
            "1,000 entries",
            Http,
            set(
                a,
                json!((0..1000)
                    .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
                    .collect::<Vec<_>>()),
            ),
        ),
        err(
            "1,001 entries",
            Http,
            set(d, json!(vec!["10.0.0.0/8"; 1001])),
            "/rules/0/deniedSources",
            "at most 1000",
        ),
        err(
            "host bits set",
            Http,
            set(a, json!(["10.0.0.0/8", "203.0.113.5/24"])),
            "/rules/0/allowedSources/1",
            "host bits set; the network is 203.0.113.0/24",
        ),
        err(
            "a prefix too long",
            Http,
            set(a, json!(["10.0.0.0/33"])),
            "/rules/0/allowedSources/0",
            "must be a CIDR",
        ),
        err(
            "a name",
            Http,
            set(d, json!(["office.example.com"])),
            "/rules/0/deniedSources/0",
            "must be a CIDR",
        ),
        err(
            "an IPv4-mapped IPv6 address",
            Http,
            set(d, json!(["::ffff:203.0.113.7"])),
            "/rules/0/deniedSources/0",
            "write the IPv4 form",
        ),
        err(
            "a number",
            Http,
            set(a, json!([10])),
            "/rules/0/allowedSources/0",
            "must be a CIDR string",
        ),
        err(
            "not an array",
            Http,
            set(a, json!("10.0.0.0/8")),
            "/rules/0/allowedSources",
            "must be an array",
        ),
        err(
            "on a domain",
            Https,
            set("/rules/0/domains/0/allowedSources", json!(["10.0.0.0/8"])),
            "/rules/0/domains/0/allowedSources",
            "is set per rule",
        ),
        err(
            "load-balancer wide",
            Http,
            set("/deniedSources", json!(["10.0.0.0/8"])),
            "/deniedSources",
            "is set per rule",
        ),
    ];
    run(cases);
}

#[test]
fn source_lists_are_normalised_hashed_and_warned_about_when_they_refuse_everyone() {
    let mut v = http_spec();
    v["rules"][0]["allowedSources"] = json!(["2001:db8::/32", "10.0.0.0/8", "10.0.0.0/8"]);
    let one = load_ok(&v);
    let shown: Vec<String> = one.spec.rules[0]
        .sources
        .allowed
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32"], "sorted, once each");
    v["rules"][0]["allowedSources"] = json!(["10.0.0.0/8", "2001:db8::/32"]);
    let same = load_ok(&v);
    let t = "t";
    assert_eq!(
        config_hash(&one.spec, t),
        config_hash(&same.spec, t),
        "order and repeats do not change the hash"
    );
    assert_ne!(
        config_hash(&one.spec, t),
        config_hash(&load_ok(&http_spec()).spec, t)
    );
    assert!(one.warnings.is_empty(), "{:?}", one.warnings);

    v["rules"][0]["deniedSources"] = json!(["10.0.0.0/7", "2001:db8::/31"]);
    let none = load_ok(&v);
    assert!(
        none.warnings
            .iter()
            .any(|w| w.path == "rules[0].allowedSources"
                && w.message.contains("refuses every client")),
        "{:?}",
        none.warnings
    );
}
