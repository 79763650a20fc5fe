//! Inheritance and defaults.

use super::*;

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
