//! Unit tests of the parent module.

use super::*;

use serde_json::json;

fn build_from(spec: serde_json::Value) -> View {
    build_with(spec, &Resolved::new())
}

fn build_with(spec: serde_json::Value, resolved: &Resolved) -> View {
    let mut settings = Settings::default();
    settings.envoy.redirect_port = 8081;
    let loaded = crate::spec::load(
        spec.to_string().as_bytes(),
        &crate::spec::Options {
            allow_loopback_backends: false,
            redirect_port: settings.envoy.redirect_port,
            reserved_ports: Vec::new(),
            now: 1_700_000_000,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    build(&loaded.spec, &settings, resolved, &Default::default()).0
}

fn rule(extra: serde_json::Value) -> serde_json::Value {
    let mut r = json!({"ruleId": "r", "scheme": "http", "frontPort": 8080, "backPort": 80,
                       "backends": [{"identifier": "a", "ip": "10.0.0.1"}]});
    r.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"identifier": "lb", "lbName": "lb", "rules": [r]})
}

#[test]
fn host_names_become_one_endpoint_per_resolved_address() {
    let spec = rule(json!({"backends": [
        {"identifier": "a", "ip": "10.0.0.1"},
        {"identifier": "b", "ip": "db.internal", "port": 5432, "weight": 7},
        {"identifier": "c", "ip": "gone.internal"},
        {"identifier": "d", "ip": "off.internal", "enabled": 0}]}));
    let resolved: Resolved = [
        ("db.internal", vec!["10.0.0.7", "fd00::7"]),
        ("gone.internal", vec![]),
        ("off.internal", vec!["10.0.0.9"]),
    ]
    .into_iter()
    .map(|(n, a)| (n.to_owned(), a.iter().map(|s| s.parse().unwrap()).collect()))
    .collect();
    let v = build_with(spec, &resolved);
    let eps: Vec<(&str, u16, u32)> = v.clusters[0]
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.port, e.weight))
        .collect();
    // A name without addresses, and a disabled backend, give no endpoint.
    assert_eq!(
        eps,
        [
            ("10.0.0.1", 80, 100),
            ("10.0.0.7", 5432, 7),
            ("fd00::7", 5432, 7)
        ]
    );
}

#[test]
fn algorithms_map_to_envoy_policies_with_a_hash_key_where_needed() {
    for (alg, policy, hashed) in [
        ("roundrobin", "ROUND_ROBIN", false),
        ("leastconn", "LEAST_REQUEST", false),
        ("random", "RANDOM", false),
        ("source", "RING_HASH", true),
        ("ring_hash", "RING_HASH", true),
        ("maglev", "MAGLEV", true),
    ] {
        let v = build_from(rule(json!({"algorithm": alg})));
        assert_eq!(v.clusters[0].lb_policy, policy, "{alg}");
        let http = v.listeners[0].http.as_ref().unwrap();
        let Action::Route { hash_source_ip, .. } = &http.vhosts[0].action else {
            panic!("{alg}: the default pool routes")
        };
        assert_eq!(*hash_source_ip, hashed, "{alg}");
    }
}

#[test]
fn an_empty_default_pool_answers_404_and_has_no_cluster() {
    let v = build_from(rule(json!({"backends": [], "domains": [
        {"domainId": "d", "domainName": "a.test", "backends": [{"identifier": "x", "ip": "10.0.0.2"}]}]})));
    let names: Vec<&str> = v.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["r/d"]);
    let http = v.listeners[0].http.as_ref().unwrap();
    assert_eq!(http.vhosts.last().unwrap().domains, ["*"]);
    assert!(matches!(
        http.vhosts.last().unwrap().action,
        Action::NotFound
    ));
}

#[test]
fn redirect_to_443_leaves_the_port_out() {
    let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
    let tls = json!({"certificateId": "c", "certificatePem": cert.cert.pem(),
                     "privateKeyPem": cert.key_pair.serialize_pem()});
    for (port, want) in [(443, None), (8443, Some(8443))] {
        let v = build_from(rule(
            json!({"scheme": "https", "frontPort": port, "tls": tls, "redirectHTTP": 1}),
        ));
        let redirect = v
            .listeners
            .iter()
            .find(|l| l.name == "redirect:8081")
            .unwrap();
        let vh = &redirect.http.as_ref().unwrap().vhosts;
        assert_eq!(vh.len(), 1, "the catch-all redirect is the only host");
        assert!(
            matches!(vh[0].action, Action::Redirect { port } if port == want),
            "{port}"
        );
    }
}

#[test]
fn durations_print_as_envoy_wants_them() {
    assert_eq!(secs(0), "0s");
    assert_eq!(millis(1500), "1.500s");
    assert_eq!(millis(50), "0.050s");
}
