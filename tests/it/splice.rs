//! Endpoint-only changes rendered by splicing the last config (`render::splice`): the result is
//! byte for byte what the templates make, only endpoint-only changes take that path, and the real
//! agent takes it for a backend change.

use crate::support::sim::{self, agent_metric, agent_process, agent_settings, Sim};
use crate::support::supervisor::Stand;
use crate::support::{certs, upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vpsie_lb_agent::pipeline::{self, Managed};
use vpsie_lb_agent::render::splice::{Cache, How};
use vpsie_lb_agent::resolve::Resolved;
use vpsie_lb_agent::settings::Settings;

/// Three rules (https with a domain of its own certificate, http, tcp) and four pools.
fn base() -> Value {
    let c = certs::cert(&["shop.example.com"]);
    let d = certs::cert(&["api.example.com"]);
    let pool = |net: u8, n: u8| -> Vec<Value> {
        (1..=n)
            .map(|i| json!({"identifier": format!("b{net}-{i}"), "ip": format!("10.0.{net}.{i}"), "weight": 100}))
            .collect()
    };
    json!({
        "identifier": "lb-splice", "lbName": "splice",
        "rules": [
            {"ruleId": "secure", "scheme": "https", "frontPort": 8443, "backPort": 9000,
             "tls": {"certificateId": "c1", "certificatePem": c.cert_pem, "privateKeyPem": c.key_pem},
             "backends": pool(1, 3),
             "domains": [{"domainId": "d1", "domainName": "api.example.com",
                          "tls": {"certificateId": "c2", "certificatePem": d.cert_pem, "privateKeyPem": d.key_pem},
                          "backends": pool(2, 2)}]},
            {"ruleId": "web", "scheme": "http", "frontPort": 8080, "backPort": 9000,
             "healthCheckPath": "/healthz", "backends": pool(3, 4)},
            {"ruleId": "db", "scheme": "tcp", "frontPort": 5432, "backPort": 5432,
             "backends": pool(4, 2)}
        ]
    })
}

/// Where each pool's backends are in `base()`.
const POOLS: [&str; 4] = [
    "/rules/0/backends",
    "/rules/0/domains/0/backends",
    "/rules/1/backends",
    "/rules/2/backends",
];

/// Renders `spec` both ways (the templates, and `cache`): the two configs and files must be the
/// same bytes. Returns how the cache made it.
fn both(spec: &Value, settings: &Settings, cache: &mut Cache) -> How {
    both_resolved(spec, &Resolved::new(), settings, cache)
}

fn both_resolved(spec: &Value, r: &Resolved, settings: &Settings, cache: &mut Cache) -> How {
    let loaded = pipeline::load(spec.to_string().as_bytes(), settings, crate::support::now())
        .unwrap_or_else(|e| panic!("{e}"));
    let m = Managed::default();
    let full = pipeline::finish(loaded.clone(), r, &m, settings, true).unwrap();
    let (cached, how) = pipeline::finish_cached(loaded, r, &m, settings, cache).unwrap();
    assert_eq!(full.hash, cached.hash);
    assert!(
        full.rendered.config == cached.rendered.config,
        "{how:?}: the configs differ"
    );
    assert_eq!(full.rendered.files, cached.rendered.files);
    how
}

fn settings() -> Settings {
    let mut s = Settings::default();
    s.envoy.config_dir = "/var/lib/vpsie-lb/envoy".into();
    s
}

/// A small deterministic generator: the same changes on every run.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn endpoint_only_changes_are_spliced_and_are_what_the_templates_make() {
    let settings = settings();
    let mut cache = Cache::default();
    let mut spec = base();
    assert_eq!(both(&spec, &settings, &mut cache), How::Full);
    let mut rng = Lcg(7);
    let mut next_ip = 100;
    for step in 0..60 {
        // One or two pools change: a backend re-weighted, added, removed or re-addressed (the
        // https pools' changes move the certificates' directory too: it is named by the hash).
        let touched: std::collections::BTreeSet<usize> = (0..1 + rng.next(2))
            .map(|_| rng.next(POOLS.len()))
            .collect();
        for &p in &touched {
            let list = spec.pointer_mut(POOLS[p]).unwrap().as_array_mut().unwrap();
            next_ip += 1;
            let fresh = json!({"identifier": format!("n{next_ip}"),
                               "ip": format!("10.1.{}.{}", next_ip / 250, next_ip % 250 + 1)});
            match rng.next(4) {
                0 if !list.is_empty() => {
                    let k = rng.next(list.len());
                    let w = list[k]["weight"].as_u64().unwrap_or(100);
                    list[k]["weight"] = json!(w % 250 + 1);
                }
                1 if list.len() > 1 => {
                    list.remove(rng.next(list.len()));
                }
                2 if !list.is_empty() => {
                    let k = rng.next(list.len());
                    list[k]["ip"] = fresh["ip"].clone();
                }
                _ => list.push(fresh),
            }
        }
        assert_eq!(
            both(&spec, &settings, &mut cache),
            How::Spliced {
                changed: touched.len()
            },
            "step {step}, pools {touched:?}"
        );
    }
}

#[test]
fn anything_but_endpoints_renders_from_the_templates() {
    let settings = settings();
    let mut cache = Cache::default();
    let spec = base();
    both(&spec, &settings, &mut cache);
    let other = certs::cert(&["shop.example.com"]);
    let changes: [(&str, Value); 5] = [
        ("/rules/1/healthCheckPath", json!("/ready")),
        ("/rules/0/tls/certificatePem", json!(other.cert_pem)),
        ("/rules/2/frontPort", json!(5433)),
        // Backends are kept in their identifiers' order: this one stays first.
        ("/rules/1/backends/0/identifier", json!("b3-0")),
        ("/lbName", json!("renamed")),
    ];
    for (ptr, value) in changes {
        let mut s = spec.clone();
        *s.pointer_mut(ptr).unwrap() = value.clone();
        if ptr.ends_with("certificatePem") {
            s["rules"][0]["tls"]["privateKeyPem"] = json!(other.key_pem);
        }
        let how = both(&s, &settings, &mut cache);
        // A renamed backend or load balancer changes nothing Envoy sees, but the hash: the
        // config is the last one with the certificates' directory renamed.
        let want = if ptr.ends_with("identifier") || ptr == "/lbName" {
            How::Spliced { changed: 0 }
        } else {
            How::Full
        };
        assert_eq!(how, want, "{ptr}");
        // And back: the cache follows what was rendered last.
        both(&spec, &settings, &mut cache);
    }
    // A host-named backend's answers come and go: its list empties and fills, spliced.
    let mut s = spec.clone();
    s["rules"][2]["backends"] = json!([{"identifier": "db", "ip": "db.test"}]);
    // Not looked up yet: no endpoint.
    assert_eq!(both(&s, &settings, &mut cache), How::Spliced { changed: 1 });
    let answers: [&[&str]; 4] = [&["10.9.0.1"], &["10.9.0.1", "10.9.0.2"], &[], &["10.9.0.3"]];
    for a in answers {
        let r: Resolved = [(
            "db.test".to_owned(),
            a.iter().map(|ip| ip.parse().unwrap()).collect(),
        )]
        .into_iter()
        .collect();
        assert_eq!(
            both_resolved(&s, &r, &settings, &mut cache),
            How::Spliced { changed: 1 },
            "{a:?}"
        );
    }
}

/// The real agent renders a backend change by splicing (its `renders_total`), and what Envoy
/// then serves is the new pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_splices_a_backend_change_and_envoy_serves_it() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let spec = |u: &upstream::Upstream| {
        json!({"identifier": sim::LB, "lbName": "splice",
               "rules": [{"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
                          "backends": [{"identifier": u.name, "ip": "127.0.0.1", "port": u.port()}]}]})
    };
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(&u1));
    let settings = agent_settings(&stand, &sim);
    let mut agent = agent_process(&stand, &settings)();
    let port = settings.metrics.port;
    let answers = |want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = match reqwest::get(format!("http://127.0.0.1:{front}/")).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{want} never answered (last: {got:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    answers("u1").await;
    sim.write_spec(&spec(&u2));
    answers("u2").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent_metric(port, "vpsie_lb_agent_renders_total{how=\"spliced\"}").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the change was not spliced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        agent_metric(port, "vpsie_lb_agent_renders_total{how=\"full\"}").await,
        Some(1.0)
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
