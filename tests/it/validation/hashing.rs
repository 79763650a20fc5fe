//! Canonical order and the config hash.

use super::*;

fn hash_of(v: &Value) -> vpsie_lb_agent::spec::ConfigHash {
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
    assert_eq!(h0.as_str().len(), 64);
    assert!(h0.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
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
