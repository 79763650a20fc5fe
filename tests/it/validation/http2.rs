//! The http2 scheme (what the VPSie cloud controller sends for gRPC services).

use super::*;

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
