//! Enumerations.

use super::*;

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
