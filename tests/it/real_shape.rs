//! Load balancers exactly as the real VPSie API returns them (govpsie's `LBDetails`, filled as the
//! VPSie cloud controller fills it: UUID identifiers, two backends per Kubernetes node, the
//! controller's interval values, every setting carried per domain, `""`/`null` for "not set",
//! numbers and flags as strings), one table row each: accepted, hashed without the
//! informational fields, rendered, and served by the real Envoy.

use crate::support::envoy::{free_port, test_settings, Envoy};
use crate::support::{options, upstream};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use vpsie_lb_agent::spec::{self, Scheme};

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/data/vpsie-shaped")
        .join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// One row: the fixture, and the warnings its validation must give (path, words in the message).
struct Row {
    name: &'static str,
    warnings: &'static [(&'static str, &'static str)],
}

const ROWS: &[Row] = &[
    Row {
        name: "k8s-tcp",
        warnings: &[],
    },
    Row {
        name: "k8s-http",
        // The controller sends its check interval (1000) as `rise`: valid, but slow to recover.
        warnings: &[("rules[0].domains[0].rise", "1000 checks")],
    },
    Row {
        name: "k8s-grpc",
        warnings: &[("rules[0].domains[0].rise", "1000 checks")],
    },
    Row {
        name: "dashboard",
        warnings: &[(
            "rules[0].domains[0].redirectHTTP",
            "ignored: redirectHTTP applies to https rules only",
        )],
    },
];

#[test]
fn every_real_shaped_load_balancer_is_accepted_with_only_the_expected_warnings() {
    for row in ROWS {
        let doc = fixture(row.name);
        let loaded = spec::load(doc.to_string().as_bytes(), &options())
            .unwrap_or_else(|e| panic!("{}: refused:\n{e}", row.name));
        let got: Vec<(String, String)> = loaded
            .warnings
            .iter()
            .map(|w| (w.path.clone(), w.message.clone()))
            .collect();
        assert_eq!(got.len(), row.warnings.len(), "{}: {got:?}", row.name);
        for (path, words) in row.warnings {
            assert!(
                got.iter().any(|(p, m)| p == path && m.contains(words)),
                "{}: no warning at {path} saying {words:?}: {got:?}",
                row.name
            );
        }
        // Every backend of the document is in the model (none silently dropped).
        let listed = doc.to_string().matches("\"vmIdentifier\"").count();
        assert_eq!(loaded.spec.backend_count(), listed, "{}", row.name);
    }
}

/// What the real shape means, field by field, on the fixtures.
#[test]
fn real_values_mean_what_the_contract_says() {
    let grpc = spec::load(fixture("k8s-grpc").to_string().as_bytes(), &options()).unwrap();
    let r = &grpc.spec.rules[0];
    assert_eq!(r.scheme, Scheme::Http2);
    assert_eq!(
        r.timeouts.request_s, 0,
        "gRPC streams have no overall limit"
    );
    let d = &r.domains[0];
    assert_eq!(
        d.host.to_string(),
        "grpc.example.com",
        "subdomain + domainName"
    );
    assert_eq!(
        d.pool.health.http_path, None,
        "healthCheckPath \"\" is a TCP check"
    );
    assert_eq!(
        d.pool.sticky_cookie, None,
        "cookieName \"\" with cookieCheck 0"
    );
    assert_eq!(
        (d.pool.health.interval_ms, d.pool.health.fast_interval_ms),
        (1000, 500)
    );
    assert_eq!((d.pool.health.rise, d.pool.health.fall), (1000, 2));
    assert!(r.pool.backends.is_empty());

    let http = spec::load(fixture("k8s-http").to_string().as_bytes(), &options()).unwrap();
    let r = &http.spec.rules[0];
    assert_eq!(
        r.pool.backends.len(),
        4,
        "rule-level backends beside the domain"
    );
    assert_eq!(
        r.domains[0].host.to_string(),
        "shop.example.com",
        "subdomain null"
    );
    assert_eq!(r.domains[0].pool.health.http_path.as_deref(), Some("/"));

    let dash = spec::load(fixture("dashboard").to_string().as_bytes(), &options()).unwrap();
    let r = dash
        .spec
        .rules
        .iter()
        .find(|r| r.scheme == Scheme::Http)
        .unwrap();
    let www = r
        .domains
        .iter()
        .find(|d| d.host.name == "www.example.org")
        .unwrap();
    assert_eq!(
        www.pool.sticky_cookie.as_deref(),
        Some("SRVID"),
        "cookieCheck \"1\""
    );
    assert!(
        !www.redirect_http,
        "redirectHTTP on an http rule does nothing"
    );
    let api = r
        .domains
        .iter()
        .find(|d| d.host.name == "api.example.org")
        .unwrap();
    assert_eq!(api.pool.sticky_cookie, None, "cookieCheck \"false\"");
    assert_eq!(r.front_port, 8080, "frontPort \"8080\"");
}

/// The config hash ignores what the contract calls informational, at every level.
#[test]
fn informational_fields_never_change_the_hash() {
    let hash = |v: &Value| {
        let l = spec::load(v.to_string().as_bytes(), &options()).unwrap();
        spec::config_hash(&l.spec, "t")
    };
    for row in ROWS {
        let doc = fixture(row.name);
        let mut changed = doc.clone();
        fn touch(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    for (k, val) in m.iter_mut() {
                        match k.as_str() {
                            "created_on" | "updated_on" => *val = "2030-01-01T00:00:00Z".into(),
                            "traffic" | "user_id" | "boxsize_id" => *val = 987.into(),
                            "default_ip" | "dc_name" | "dcId" | "created_by" | "vmIdentifier"
                            | "type" => *val = "changed".into(),
                            "proxy_mode" => *val = 7.into(),
                            _ => touch(val),
                        }
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(touch),
                _ => {}
            }
        }
        touch(&mut changed);
        assert_ne!(
            doc, changed,
            "{}: the fixture has informational fields",
            row.name
        );
        assert_eq!(hash(&doc), hash(&changed), "{}", row.name);
    }
}

#[test]
fn an_https_rule_without_tls_gets_managed_certificates_for_its_domain_names() {
    // As the real API sends an https rule: domains, no certificate.
    let mut doc = fixture("k8s-http");
    doc["data"]["rules"][0]["scheme"] = "https".into();
    doc["data"]["rules"][0]["frontPort"] = 443.into();
    let l = spec::load(doc.to_string().as_bytes(), &options()).unwrap();
    assert_eq!(l.spec.managed_names(), ["shop.example.com"]);

    // Without a domain there is no name to issue for.
    let mut bare = doc.clone();
    bare["data"]["rules"][0]
        .as_object_mut()
        .unwrap()
        .remove("domains");
    let e = spec::load(bare.to_string().as_bytes(), &options()).unwrap_err();
    let f =
        e.0.iter()
            .find(|f| f.path == "rules[0].tls")
            .expect("an error at rules[0].tls");
    assert!(
        f.message.contains("managed certificate") && f.message.contains("without domains"),
        "{f:?}"
    );
    assert_eq!(e.0.len(), 1, "{e}");

    // HTTP-01 is answered in plain HTTP on the redirect port: TLS there cannot answer it.
    let mut on_80 = doc.clone();
    on_80["data"]["rules"][0]["frontPort"] = options().redirect_port.into();
    let e = spec::load(on_80.to_string().as_bytes(), &options()).unwrap_err();
    assert!(
        e.0.iter().any(|f| f.path == "rules[0].frontPort"
            && f.message.contains("must answer plain HTTP")),
        "{e}"
    );
}

/// Each fixture served by the real Envoy: every backend replaced by a loopback upstream named
/// after it, every front port by a free one; each rule and domain answers from its own pool.
#[tokio::test]
async fn every_real_shaped_load_balancer_is_served_by_the_real_envoy() {
    for row in ROWS {
        serve_and_check(row.name).await;
    }
}

async fn serve_and_check(name: &str) {
    let mut doc = fixture(name);
    let mut ups: HashMap<String, upstream::Upstream> = HashMap::new();
    let rules = doc["data"]["rules"].as_array_mut().unwrap();
    for rule in rules.iter_mut() {
        rule["frontPort"] = free_port().into();
        let tcp = rule["scheme"] == "tcp";
        let mut pools: Vec<&mut Value> = vec![];
        let (backends, domains) = {
            let obj = rule.as_object_mut().unwrap();
            let mut b = None;
            let mut d = None;
            for (k, v) in obj.iter_mut() {
                match k.as_str() {
                    "backends" => b = Some(v),
                    "domains" => d = Some(v),
                    _ => {}
                }
            }
            (b, d)
        };
        pools.extend(backends);
        for d in domains
            .into_iter()
            .flat_map(|d| d.as_array_mut().unwrap().iter_mut())
        {
            pools.push(&mut d["backends"]);
        }
        for pool in pools {
            for b in pool.as_array_mut().unwrap() {
                let id = b["identifier"].as_str().unwrap().to_owned();
                let up = if tcp {
                    upstream::tcp(&id).await
                } else {
                    upstream::http(&id, None).await
                };
                b["ip"] = "127.0.0.1".into();
                b["port"] = up.port().into();
                ups.insert(id, up);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let envoy = Envoy::start_with(&doc, settings, dir).await;

    let lb = &doc["data"];
    for rule in lb["rules"].as_array().unwrap() {
        let port = rule["frontPort"].as_u64().unwrap() as u16;
        let ids = |pool: &Value| -> BTreeSet<String> {
            pool.as_array()
                .unwrap()
                .iter()
                .map(|b| b["identifier"].as_str().unwrap().to_owned())
                .collect()
        };
        if rule["scheme"] == "tcp" {
            let want = ids(&rule["backends"]);
            let seen = until_all_seen(&want, || tcp_name(port)).await;
            assert_eq!(seen, want, "{name}: tcp rule {port}");
            continue;
        }
        let h2 = rule["scheme"] == "http2";
        for d in rule["domains"].as_array().into_iter().flatten() {
            let host = match d["subdomain"].as_str().filter(|s| !s.is_empty()) {
                Some(sub) => format!("{sub}.{}", d["domainName"].as_str().unwrap()),
                None => d["domainName"].as_str().unwrap().to_owned(),
            };
            let want = ids(&d["backends"]);
            let seen = until_all_seen(&want, || http_name(port, &host, h2)).await;
            assert_eq!(seen, want, "{name}: host {host} on {port}");
        }
        let default = ids(&rule["backends"]);
        if default.is_empty() {
            let (status, _) = http_get(port, "nobody.example.net", h2).await.unwrap();
            assert_eq!(status, 404, "{name}: no default pool on {port}");
        } else {
            let seen = until_all_seen(&default, || http_name(port, "nobody.example.net", h2)).await;
            assert_eq!(seen, default, "{name}: default pool on {port}");
        }
    }
    drop(envoy);
}

/// Calls `probe` until every name of `want` has answered (health checks pass one by one),
/// with a deadline; returns what answered.
async fn until_all_seen<F, Fut>(want: &BTreeSet<String>, probe: F) -> BTreeSet<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeSet::new();
    while !want.is_subset(&seen) && Instant::now() < deadline {
        if let Some(n) = probe().await {
            seen.insert(n);
        } else {
            tokio::task::yield_now().await;
        }
    }
    seen
}

async fn tcp_name(port: u16) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    (!out.is_empty()).then_some(out)
}

async fn http_get(port: u16, host: &str, h2: bool) -> Option<(u16, reqwest::Response)> {
    // The name resolves to loopback in this client only, so Host (or :authority) carries it.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut b = reqwest::Client::builder().no_proxy().resolve(host, addr);
    if h2 {
        b = b.http2_prior_knowledge();
    }
    let r = b
        .build()
        .unwrap()
        .get(format!("http://{host}:{port}/"))
        .send()
        .await
        .ok()?;
    if h2 {
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "the front speaks h2c"
        );
    }
    Some((r.status().as_u16(), r))
}

async fn http_name(port: u16, host: &str, h2: bool) -> Option<String> {
    let (status, r) = http_get(port, host, h2).await?;
    if status != 200 {
        return None;
    }
    let version = r.headers().get("x-seen-version").cloned();
    let name = r.text().await.ok()?;
    if h2 {
        assert_eq!(
            version.as_ref().and_then(|v| v.to_str().ok()),
            Some("HTTP/2.0"),
            "http2 rules speak HTTP/2 to their backends"
        );
    }
    Some(name)
}
