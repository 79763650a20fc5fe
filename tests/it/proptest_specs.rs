//! Property: every spec the contract allows is accepted by our validator, and the config we
//! render from it is accepted by the real `envoy --mode validate`.
//!
//! The generator walks the whole contract: three schemes, every algorithm, TCP and HTTP health
//! checks, sticky cookies, redirects, PROXY protocol, upstream TLS, SNI certificates, wildcard and
//! sub-domains, host-name and IPv6 backends, weights, disabled backends, ports as strings, flags as
//! 0/1. `PROPTEST_CASES` sets the number of cases (default 64; `make proptest-nightly` runs 500).

use crate::support::{certs, envoy_bin};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use std::sync::OnceLock;
use vpsie_lb_agent::{command, envoy, settings::Settings, store};

/// Certificates are slow to make; a few, made once, are picked from.
fn cert_pool() -> &'static Vec<certs::TestCert> {
    static POOL: OnceLock<Vec<certs::TestCert>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..3)
            .map(|i| certs::cert(&[&format!("c{i}.example.test")]))
            .collect()
    })
}

fn id_prefix() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_]{0,12}"
}

/// Ports and whole numbers come as numbers or as numeric strings.
fn num(n: u64, as_string: bool) -> Value {
    if as_string {
        json!(n.to_string())
    } else {
        json!(n)
    }
}

/// Flags come as booleans or as 0/1.
fn flag(b: bool, as_number: bool) -> Value {
    if as_number {
        json!(b as u8)
    } else {
        json!(b)
    }
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u8>(), any::<u8>(), 1u8..255).prop_map(|(b, c, d)| format!("10.{b}.{c}.{d}")),
        (16u8..32, any::<u8>(), 1u8..255).prop_map(|(b, c, d)| format!("172.{b}.{c}.{d}")),
        (any::<u8>(), 1u8..255).prop_map(|(c, d)| format!("192.168.{c}.{d}")),
        (1u16..0xffff).prop_map(|x| format!("fd00:{x:x}::{x:x}")),
        "[a-z][a-z0-9-]{0,10}[a-z0-9]\\.internal",
    ]
}

fn backends(min: usize) -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(
        (
            id_prefix(),
            address(),
            prop::option::of(1u64..65536),
            prop::option::of(1u64..=10_000),
            prop::option::of(any::<bool>()),
            any::<bool>(),
        ),
        min..5,
    )
    .prop_map(|list| {
        list.into_iter()
            .enumerate()
            .map(|(i, (prefix, ip, port, weight, enabled, as_str))| {
                let mut b = json!({"identifier": format!("{prefix}-{i}"), "ip": ip,
                                   "vmIdentifier": "vm-x", "status": "running"});
                if let Some(p) = port {
                    b["port"] = num(p, as_str);
                }
                if let Some(w) = weight {
                    b["weight"] = num(w, !as_str);
                }
                if let Some(e) = enabled {
                    b["enabled"] = flag(e, as_str);
                }
                b
            })
            .collect()
    })
}

/// Pool-level overrides any level (LB, rule, domain) may carry.
fn pool_fields(http: bool) -> impl Strategy<Value = serde_json::Map<String, Value>> {
    (
        prop::option::of(prop::sample::select(vec![
            "roundrobin",
            "leastconn",
            "random",
            "source",
            "ring_hash",
            "maglev",
        ])),
        prop::option::of(prop_oneof![Just(String::new()), "/[A-Za-z0-9/_.~%-]{0,20}"]),
        prop::option::of(100u64..60_000),
        prop::option::of(50u64..30_000),
        prop::option::of((1u64..=10, 1u64..=10)),
        prop::option::of(("[A-Za-z0-9_-]{1,20}", any::<bool>())),
        any::<bool>(),
    )
        .prop_map(
            move |(alg, path, interval, fast, rise_fall, cookie, as_str)| {
                let mut m = serde_json::Map::new();
                if let Some(a) = alg {
                    m.insert("algorithm".into(), json!(a));
                }
                if let Some(p) = path {
                    m.insert("healthCheckPath".into(), json!(p));
                }
                if let Some(i) = interval {
                    m.insert("checkInterval".into(), num(i, as_str));
                }
                if let Some(f) = fast {
                    m.insert("fastInterval".into(), json!(f));
                }
                if let Some((r, f)) = rise_fall {
                    m.insert("rise".into(), json!(r));
                    m.insert("fall".into(), json!(f));
                }
                if let (true, Some((name, on))) = (http, cookie) {
                    m.insert("cookieCheck".into(), flag(on, as_str));
                    m.insert("cookieName".into(), json!(name));
                }
                m
            },
        )
}

fn tls() -> impl Strategy<Value = Value> {
    (
        0usize..3,
        prop::sample::select(vec![
            (None, None),
            (Some("TLSv1.2"), None),
            (Some("TLSv1.2"), Some("TLSv1.3")),
            (Some("TLSv1.3"), Some("TLSv1.3")),
            (None, Some("TLSv1.2")),
        ]),
        prop::sample::select(vec![
            vec![],
            vec!["h2"],
            vec!["http/1.1"],
            vec!["http/1.1", "h2"],
        ]),
    )
        .prop_map(|(i, (min, max), alpn)| {
            let c = &cert_pool()[i];
            let mut t = json!({"certificateId": format!("cert-{i}"), "certificatePem": c.cert_pem,
                               "privateKeyPem": c.key_pem});
            if let Some(v) = min {
                t["minVersion"] = json!(v);
            }
            if let Some(v) = max {
                t["maxVersion"] = json!(v);
            }
            if !alpn.is_empty() {
                t["alpn"] = json!(alpn);
            }
            t
        })
}

fn domains(rule: usize, https: bool) -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(
        (
            id_prefix(),
            0u8..3,
            "[a-z][a-z0-9]{0,8}",
            pool_fields(true),
            backends(1),
            prop::option::of(tls()),
            prop::option::of(any::<bool>()),
            prop::option::of(prop::sample::select(vec!["http", "https"])),
            prop::option::of(1u64..65536),
        ),
        0..4,
    )
    .prop_map(move |list| {
        list.into_iter()
            .enumerate()
            .map(
                |(i, (prefix, shape, label, fields, backends, tls, redirect, scheme, port))| {
                    // Hosts carry the rule and domain index, so they are unique across the LB.
                    let base = format!("{label}.r{rule}d{i}.example.test");
                    let mut d = json!({"domainId": format!("{prefix}-{i}"), "backends": backends});
                    match shape {
                        0 => d["domainName"] = json!(base),
                        1 => d["domainName"] = json!(format!("*.{base}")),
                        _ => {
                            d["domainName"] = json!(base);
                            d["subdomain"] = json!("www");
                        }
                    }
                    d.as_object_mut().unwrap().extend(fields);
                    if let Some(s) = scheme {
                        d["backendScheme"] = json!(s);
                    }
                    if let Some(p) = port {
                        d["backPort"] = json!(p);
                    }
                    if https {
                        if let Some(t) = tls {
                            d["tls"] = t;
                        }
                        if let Some(r) = redirect {
                            d["redirectHTTP"] = json!(r);
                        }
                    }
                    d
                },
            )
            .collect()
    })
}

fn rule(i: usize) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["http", "https", "tcp"]),
        id_prefix(),
        any::<bool>(),
        1u64..65536,
        pool_fields(true),
        backends(1),
        prop::option::of(prop::sample::select(vec!["none", "v1", "v2"])),
        prop::option::of((1u64..=60, 0u64..=7200, 0u64..=600)),
        prop::option::of(prop::sample::select(vec!["http", "https"])),
        tls(),
        any::<bool>(),
        prop::option::of(any::<bool>()),
    )
        .prop_flat_map(
            move |(
                scheme,
                prefix,
                as_str,
                back,
                fields,
                bs,
                pp,
                timeouts,
                bscheme,
                tls,
                empty,
                redirect,
            )| {
                let http = scheme != "tcp";
                let https = scheme == "https";
                let mut r = json!({
                    "ruleId": format!("{prefix}-{i}"),
                    "scheme": scheme,
                    // Front ports are unique by construction and far from the redirect port.
                    "frontPort": num(20_000 + i as u64, as_str),
                    "backPort": num(back, !as_str),
                    "backends": bs,
                });
                let mut f = fields;
                if !http {
                    f.remove("cookieCheck");
                    f.remove("cookieName");
                }
                r.as_object_mut().unwrap().extend(f);
                if let Some(p) = pp {
                    r["proxyProtocol"] = json!(p);
                }
                if let Some((c, idle, req)) = timeouts {
                    r["timeouts"] = json!({"connect": c, "idle": idle, "request": req});
                }
                if http {
                    if let Some(s) = bscheme {
                        r["backendScheme"] = json!(s);
                    }
                }
                if https {
                    r["tls"] = tls;
                    // Only the first rule may redirect every host (the redirect port is shared).
                    if let (0, Some(rd)) = (i, redirect) {
                        r["redirectHTTP"] = flag(rd, as_str);
                    }
                }
                let doms = if http {
                    domains(i, https).boxed()
                } else {
                    Just(vec![]).boxed()
                };
                (Just(r), doms, Just(empty && http))
            },
        )
        .prop_map(|(mut r, doms, empty_default)| {
            if !doms.is_empty() {
                if empty_default {
                    r["backends"] = json!([]);
                }
                r["domains"] = json!(doms);
            }
            r
        })
}

fn spec() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(Just(()), 1..5),
        pool_fields(true),
        prop::option::of(1u64..=1_000_000),
        "[a-zA-Z0-9_-]{1,64}",
    )
        .prop_flat_map(|(n, lb_fields, max_conn, id)| {
            let rules: Vec<_> = (0..n.len()).map(rule).collect();
            (rules, Just(lb_fields), Just(max_conn), Just(id))
        })
        .prop_map(|(rules, lb_fields, max_conn, id)| {
            let mut s = json!({"identifier": id, "lbName": "prop-lb", "rules": rules,
                               "created_on": "2026-11-20 10:00:00", "traffic": 42});
            s.as_object_mut().unwrap().extend(lb_fields);
            if let Some(m) = max_conn {
                s["maxConnections"] = json!(m);
            }
            json!({"error": false, "data": s})
        })
}

#[test]
fn proptest_valid_specs_render_to_configs_envoy_accepts() {
    let bin = envoy_bin();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&spec(), |spec| {
            let dir = tempfile::tempdir().unwrap();
            let mut settings = Settings::default();
            settings.envoy.binary = bin.clone();
            settings.envoy.config_dir = dir.path().to_path_buf();
            settings.envoy.cert_dir = Some(dir.path().join("certs"));
            settings.envoy.redirect_port = 18_080;
            settings.access_log.path = dir.path().join("access.log");
            let prepared = command::prepare(
                spec.to_string().as_bytes(),
                &settings,
                crate::support::now(),
            )
            .map_err(|e| TestCaseError::fail(format!("a valid spec was refused: {e}\n{spec:#}")))?;
            let config = dir.path().join("envoy.json");
            store::write_rendered(&prepared.rendered, &config).unwrap();
            rt.block_on(envoy::validate(&bin, &config))
                .map_err(|e| TestCaseError::fail(format!("{e}\nspec: {spec:#}")))?;
            Ok(())
        })
        .unwrap();
}
