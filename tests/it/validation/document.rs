//! The document: envelope, unknown fields, null.

use super::*;

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
