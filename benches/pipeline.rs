//! The whole pipeline (parse + validate + hash + render, i.e. `command::prepare`) on specs with
//! 10, 1,000 and 10,000 backends, and each stage on its own so one can see where the time goes.
//!
//! Run with `cargo bench --bench pipeline`. This only prints figures (criterion's output, then a
//! table of the pipeline beside its floor: serde_json parsing the same input and writing the same
//! output bytes, in the same run); it never asserts on time. The project's target is 10,000
//! backends in at most 20 ms for `pipeline/prepare/10000`, and at most 3x the floor.
//!
//! The specs are generated here, in the API's realistic shape: up to 64 rules mixing http, https
//! (one self-signed certificate, made once) and tcp; a few domains per http/https rule, each with
//! its own pool; backends spread over every pool, with IPs in 10.0.0.0/8, some weights, some ports
//! as strings, some disabled, and the informational fields the API adds.

/// The allocator of the `vpsie-lb-agent` binary (see src/main.rs), so the figures are the agent's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use std::time::Duration;
use vpsie_lb_agent::command::{self, Prepared};
use vpsie_lb_agent::settings::Settings;
use vpsie_lb_agent::{render, spec};

/// Backend counts the bench runs at.
const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// One certificate and key, PEM, shared by every https rule and SNI domain.
struct Cert {
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn generate() -> Cert {
        let c = rcgen::generate_simple_self_signed(vec!["example.com".into()])
            .expect("rcgen cannot make a self-signed certificate");
        Cert {
            cert_pem: c.cert.pem(),
            key_pem: c.key_pair.serialize_pem(),
        }
    }

    fn tls(&self, id: &str) -> Value {
        json!({
            "certificateId": id,
            "certificatePem": self.cert_pem,
            "privateKeyPem": self.key_pem,
            "minVersion": "TLSv1.2",
            "alpn": ["h2", "http/1.1"],
        })
    }
}

const ALGORITHMS: [&str; 6] = [
    "roundrobin",
    "leastconn",
    "random",
    "source",
    "ring_hash",
    "maglev",
];

/// Domains of rule `r`: http rules get 3, https rules 2, tcp rules none.
fn domain_count(r: usize) -> usize {
    match r % 3 {
        0 => 3,
        1 => 2,
        _ => 0,
    }
}

/// A spec (the API's enveloped response) holding exactly `n` backends in all.
fn spec_json(n: usize, cert: &Cert) -> Value {
    let rules = (n / 15).clamp(3, spec::MAX_RULES);
    // One pool per rule (its default pool) and one per domain.
    let pools: usize = (0..rules).map(|r| 1 + domain_count(r)).sum();
    assert!(n >= pools, "{n} backends cannot fill {pools} pools");

    // Deal the backends over the pools round-robin: every pool gets at least one.
    let mut by_pool: Vec<Vec<Value>> = vec![Vec::new(); pools];
    for k in 0..n {
        let p = k % pools;
        let i = by_pool[p].len();
        by_pool[p].push(backend(k, i));
    }
    let mut by_pool = by_pool.into_iter();

    let mut rule_list = Vec::with_capacity(rules);
    for r in 0..rules {
        let default_pool = by_pool.next().expect("one pool per rule");
        let domains: Vec<Value> = (0..domain_count(r))
            .map(|d| domain(r, d, by_pool.next().expect("one pool per domain"), cert))
            .collect();
        rule_list.push(rule(r, default_pool, domains, cert));
    }
    assert!(by_pool.next().is_none(), "every pool has its place");

    json!({
        "error": false,
        "data": {
            "identifier": format!("lb-bench-{n}"),
            "lbName": "bench-frontend",
            "default_ip": "203.0.113.20",
            "maxConnections": 50000,
            "algorithm": "roundrobin",
            "checkInterval": 3000,
            "rise": 2,
            "fall": 3,
            "created_on": "2026-11-01 09:00:00",
            "updated_on": "2026-11-23 21:42:10",
            "traffic": 1_234_567,
            "dc_name": "bench-dc",
            "rules": rule_list,
        }
    })
}

/// Backend number `k` of the whole spec, `i` of its pool.
fn backend(k: usize, i: usize) -> Value {
    let a = k + 1;
    let ip = format!("10.{}.{}.{}", (a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff);
    let mut b = json!({
        "identifier": format!("vm-{i}"),
        "ip": ip,
        "vmIdentifier": format!("vm-{k:08x}"),
        "status": "running",
    });
    let o = b.as_object_mut().expect("an object");
    match k % 4 {
        0 => {}
        1 => {
            o.insert("port".into(), json!(8000 + (k % 1000)));
        }
        2 => {
            o.insert("port".into(), json!((8000 + (k % 1000)).to_string()));
        }
        _ => {
            o.insert("created_on".into(), json!("2026-11-01 09:00:00"));
        }
    }
    if k % 3 == 0 {
        o.insert("weight".into(), json!(1 + (k % 200)));
    }
    if k % 50 == 7 {
        // Flags come as 0/1 or false/true.
        let off = if k % 100 == 7 { json!(0) } else { json!(false) };
        o.insert("enabled".into(), off);
    }
    b
}

fn domain(r: usize, d: usize, backends: Vec<Value>, cert: &Cert) -> Value {
    let https = r % 3 == 1;
    // The third domain is given as a subdomain of the rule's own name.
    let name = if d == 2 {
        format!("r{r}.example.com")
    } else {
        format!("app{d}.r{r}.example.com")
    };
    let mut v = json!({
        "domainId": format!("d-{d}"),
        "domainName": name,
        "backendScheme": if d == 1 { "https" } else { "http" },
        "algorithm": ALGORITHMS[(r + d) % ALGORITHMS.len()],
        "backends": backends,
    });
    let o = v.as_object_mut().expect("an object");
    if d == 0 {
        o.insert("healthCheckPath".into(), json!("/status"));
        o.insert("backPort".into(), json!("8443"));
    }
    if d == 2 {
        o.insert("subdomain".into(), json!("static"));
    }
    if https && d == 0 {
        o.insert("tls".into(), cert.tls(&format!("cert-r{r}-d{d}")));
    }
    v
}

fn rule(r: usize, backends: Vec<Value>, domains: Vec<Value>, cert: &Cert) -> Value {
    let front_port = 10_000 + r;
    let mut v = json!({
        "ruleId": format!("r-{r}"),
        "frontPort": front_port,
        "backPort": if r % 2 == 0 { json!(8080) } else { json!("8080") },
        "algorithm": ALGORITHMS[r % ALGORITHMS.len()],
        "timeouts": { "connect": 3, "idle": 120, "request": 30 },
        "backends": backends,
    });
    let o = v.as_object_mut().expect("an object");
    match r % 3 {
        0 => {
            o.insert("scheme".into(), json!("http"));
            o.insert("healthCheckPath".into(), json!("/healthz"));
            if r % 2 == 0 {
                o.insert("cookieCheck".into(), json!(1));
                o.insert("cookieName".into(), json!("SRVID"));
            }
            o.insert("domains".into(), json!(domains));
        }
        1 => {
            o.insert("scheme".into(), json!("https"));
            o.insert("tls".into(), cert.tls(&format!("cert-r{r}")));
            // Only one https rule may redirect every host from the redirect port.
            if r == 1 {
                o.insert("redirectHTTP".into(), json!(1));
            }
            o.insert("domains".into(), json!(domains));
        }
        _ => {
            o.insert("scheme".into(), json!("tcp"));
            o.insert("proxyProtocol".into(), json!(["none", "v1", "v2"][r % 3]));
            o.insert("checkInterval".into(), json!(2000));
            o.insert("fastInterval".into(), json!(500));
        }
    }
    v
}

/// Runs the pipeline once and panics with the errors if the spec is refused, so the bench can
/// never be timing the error path.
fn prepare_ok(input: &[u8], settings: &Settings, now: i64, n: usize) -> Prepared {
    match command::prepare(input, settings, now) {
        Ok(p) => p,
        Err(command::Failure::Invalid(errors)) => {
            panic!("the generated {n}-backend spec is invalid:\n{errors:#?}")
        }
        Err(e) => panic!("the generated {n}-backend spec fails: {e}"),
    }
}

fn pipeline(c: &mut Criterion) {
    let settings = Settings::default();
    let now = command::now_unix();
    let cert = Cert::generate();
    let opts = vpsie_lb_agent::pipeline::spec_options(&settings, now);

    let inputs: Vec<(usize, Vec<u8>)> = SIZES
        .iter()
        .map(|&n| {
            let bytes = serde_json::to_vec(&spec_json(n, &cert)).expect("JSON serialises");
            (n, bytes)
        })
        .collect();

    println!("pipeline: input and output sizes");
    for (n, bytes) in &inputs {
        let p = prepare_ok(bytes, &settings, now, *n);
        assert_eq!(
            spec::Spec::backend_count(&p.loaded.spec),
            *n,
            "the generated spec must hold exactly {n} backends"
        );
        let domains: usize = p.loaded.spec.rules.iter().map(|r| r.domains.len()).sum();
        println!(
            "  {n:>6} backends: {} rules, {domains} domains, input JSON {} bytes, rendered config {} bytes, {} certificate files, {} warnings",
            p.loaded.spec.rules.len(),
            bytes.len(),
            p.rendered.config.len(),
            p.rendered.files.len(),
            p.warnings().len(),
        );
    }

    // 12 benchmarks of about 5.5 s each: the whole run stays near 1.5 minutes on 2 cores.
    let mut g = c.benchmark_group("pipeline");
    g.warm_up_time(Duration::from_millis(1500))
        .measurement_time(Duration::from_secs(4));
    for (n, bytes) in &inputs {
        let n = *n;
        // Criterion's fewest samples at the largest size, so 4 s is enough for ~60 ms a run.
        g.sample_size(if n >= 10_000 { 10 } else { 20 });
        g.throughput(Throughput::Elements(n as u64));
        let loaded = prepare_ok(bytes, &settings, now, n).loaded;
        let template_version = render::template_version();

        g.bench_with_input(BenchmarkId::new("prepare", n), bytes, |b, bytes| {
            b.iter(|| command::prepare(black_box(bytes), &settings, now).expect("valid spec"))
        });
        g.bench_with_input(BenchmarkId::new("load", n), bytes, |b, bytes| {
            b.iter(|| spec::load(black_box(bytes), &opts).expect("valid spec"))
        });
        g.bench_with_input(BenchmarkId::new("hash", n), &loaded.spec, |b, s| {
            b.iter(|| spec::config_hash(black_box(s), template_version))
        });
        g.bench_with_input(BenchmarkId::new("render", n), &loaded.spec, |b, s| {
            b.iter(|| {
                render::render(
                    black_box(s),
                    &settings,
                    &Default::default(),
                    &Default::default(),
                )
                .expect("renders")
            })
        });
    }
    g.finish();
    floor_ratio(&inputs, &settings, now);
    endpoint_change(&cert, &settings, now);
}

/// An endpoint-only change (one backend re-addressed), the way the agent renders it: from the
/// last config with the changed endpoint list rewritten (`render::splice`), beside a full render
/// of the same change, in the same run. Both render for the store (the certificates' directory is
/// named by the hash, so it moves too) and alternate between two specs, so every run is a change.
fn endpoint_change(cert: &Cert, settings: &Settings, now: i64) {
    use vpsie_lb_agent::pipeline::{self, Managed};
    use vpsie_lb_agent::render::splice::{Cache, How};
    println!("\nan endpoint-only change (one backend re-addressed), median of 15 runs each");
    println!("| backends | full render ms | spliced ms | full / spliced | load + spliced ms |");
    println!("|---|---|---|---|---|");
    for n in SIZES {
        let a = spec_json(n, cert);
        let mut b = a.clone();
        let first = b["data"]["rules"]
            .as_array_mut()
            .and_then(|rules| {
                rules.iter_mut().find_map(|r| {
                    r["backends"]
                        .as_array_mut()
                        .filter(|l| !l.is_empty())
                        .map(|l| &mut l[0])
                })
            })
            .expect("a rule with backends");
        first["ip"] = json!("10.255.255.254");
        let inputs = [a, b].map(|v| serde_json::to_vec(&v).expect("JSON serialises"));
        let loaded = inputs
            .clone()
            .map(|i| pipeline::load(&i, settings, now).expect("valid spec"));
        let (r, m) = (Default::default(), Managed::default());
        let mut k = 0;
        let full = median(
            || {
                k += 1;
                let l = loaded[k % 2].clone();
                black_box(pipeline::finish(l, &r, &m, settings, true).expect("renders"));
            },
            15,
        );
        let mut cache = Cache::default();
        let _ = pipeline::finish_cached(loaded[k % 2].clone(), &r, &m, settings, &mut cache);
        let spliced = median(
            || {
                k += 1;
                let l = loaded[k % 2].clone();
                let (p, how) =
                    pipeline::finish_cached(l, &r, &m, settings, &mut cache).expect("renders");
                assert_eq!(how, How::Spliced { changed: 1 });
                black_box(p);
            },
            15,
        );
        let whole = median(
            || {
                k += 1;
                let l = pipeline::load(&inputs[k % 2], settings, now).expect("valid spec");
                let (p, how) =
                    pipeline::finish_cached(l, &r, &m, settings, &mut cache).expect("renders");
                assert_eq!(how, How::Spliced { changed: 1 });
                black_box(p);
            },
            15,
        );
        println!(
            "| {n} | {:.2} | {:.2} | {:.1} | {:.2} |",
            full.as_secs_f64() * 1e3,
            spliced.as_secs_f64() * 1e3,
            full.as_secs_f64() / spliced.as_secs_f64(),
            whole.as_secs_f64() * 1e3
        );
    }
}

/// The median time of `runs` calls.
fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// The pipeline beside a floor measured in the same run: parsing the same input with serde_json
/// and writing the same output bytes (into memory, as `prepare` does; it does no I/O). Printed as
/// medians and their ratio (target: 10,000 backends in at most 20 ms, and at most 3x the floor).
fn floor_ratio(inputs: &[(usize, Vec<u8>)], settings: &Settings, now: i64) {
    println!("\npipeline beside its floor (median of 15 runs each)");
    println!("| backends | prepare ms | floor ms | prepare / floor |");
    println!("|---|---|---|---|");
    for (n, bytes) in inputs {
        let out = prepare_ok(bytes, settings, now, *n)
            .rendered
            .config
            .into_bytes();
        let prepare = median(
            || {
                black_box(command::prepare(black_box(bytes), settings, now).expect("valid spec"));
            },
            15,
        );
        let floor = median(
            || {
                let v: Value = serde_json::from_slice(black_box(bytes)).expect("JSON");
                let mut written = Vec::with_capacity(out.len());
                written.extend_from_slice(black_box(&out));
                black_box((v, written));
            },
            15,
        );
        println!(
            "| {n} | {:.2} | {:.2} | {:.1} |",
            prepare.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            prepare.as_secs_f64() / floor.as_secs_f64()
        );
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
