//! Limits.

use super::*;

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
