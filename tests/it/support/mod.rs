//! Helpers shared by the integration tests: the real Envoy, test certificates, spec builders.

#![allow(dead_code)]

pub mod access_log;
pub mod certs;
pub mod envoy;
pub mod load;
pub mod netns;
pub mod pebble;
pub mod sim;
pub mod supervisor;
pub mod tls;
pub mod upstream;

use serde_json::{json, Value};
use std::path::PathBuf;
use vpsie_lb_agent::spec::{self, Loaded, Options, SpecErrors};

/// The contract's name for a place in a spec (`rules[0].backends[1].ip`, as errors name it) from
/// its JSON pointer (`/rules/0/backends/1/ip`, as tests reach it): tests write the pointer once
/// and derive the other.
pub fn contract_path(ptr: &str) -> String {
    let mut out = String::new();
    for seg in ptr.split('/').skip(1) {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// The agent binary the supervisor and agent processes run: the one Cargo built for this test
/// or benchmark, or `AGENT_BIN` (`make bench-idle` measures the binary that ships with it).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vpsie-lb-agent")))
}

/// The real Envoy binary: `ENVOY_BIN`, else the one `make envoy` installs. A test that needs Envoy
/// fails (never skips) when it is missing.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/envoy/bin/envoy")
        });
    assert!(
        path.is_file(),
        "Envoy is required for this test but {} does not exist: run `make envoy` or set ENVOY_BIN",
        path.display()
    );
    path
}

/// The API contract's example specs, kept in `examples/specs/` (copies of the contract's).
pub fn example(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/specs")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read example spec {}: {e}", p.display()))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Validation options as production has them (no loopback backends, redirect port 80, the
/// agent's metrics on 9101; Envoy's admin is a Unix socket and holds no port).
pub fn options() -> Options {
    Options {
        allow_loopback_backends: false,
        redirect_port: 80,
        reserved_ports: vec![(9101, "the agent's metrics".into())],
        now: now(),
    }
}

pub fn load(v: &Value) -> Result<Loaded, SpecErrors> {
    spec::load(v.to_string().as_bytes(), &options())
}

/// Loads a spec that must be valid; panics with every error otherwise.
pub fn load_ok(v: &Value) -> Loaded {
    load(v).unwrap_or_else(|e| panic!("expected a valid spec, got: {e}"))
}

/// Loads a spec that must be refused, and returns the errors.
pub fn load_err(v: &Value) -> SpecErrors {
    match load(v) {
        Ok(_) => panic!("expected the spec to be refused: {v}"),
        Err(e) => e,
    }
}

/// A minimal valid spec: one http rule with two backends.
pub fn http_spec() -> Value {
    json!({
        "identifier": "lb-test-1",
        "lbName": "test",
        "rules": [{
            "ruleId": "r1",
            "scheme": "http",
            "frontPort": 8080,
            "backPort": 9000,
            "backends": [
                {"identifier": "b1", "ip": "10.0.0.1"},
                {"identifier": "b2", "ip": "10.0.0.2"}
            ]
        }]
    })
}

/// A valid https rule with a fresh certificate for `host` (and one domain with its own).
pub fn https_spec() -> Value {
    let c = certs::cert(&["shop.example.com"]);
    let d = certs::cert(&["api.example.com"]);
    json!({
        "identifier": "lb-test-2",
        "lbName": "test-https",
        "rules": [{
            "ruleId": "r-https",
            "scheme": "https",
            "frontPort": 8443,
            "backPort": 9000,
            "tls": {"certificateId": "c1", "certificatePem": c.cert_pem, "privateKeyPem": c.key_pem},
            "backends": [{"identifier": "b1", "ip": "10.0.0.1"}],
            "domains": [{
                "domainId": "d1",
                "domainName": "api.example.com",
                "tls": {"certificateId": "c2", "certificatePem": d.cert_pem, "privateKeyPem": d.key_pem},
                "backends": [{"identifier": "a1", "ip": "10.0.1.1"}]
            }]
        }]
    })
}
