//! Live apply latency: hand-over to Envoy → confirmed, inside the supervisor (`envoy_us` of each
//! apply: from the first xDS file written until Envoy's admin API reports every resource at the
//! new version), for an endpoint-only change at 10, 1,000 and 10,000 backends (every backend
//! re-addressed; the backends are down, so the change goes in one step), at 1,000 backends that
//! are up (two steps: the new hosts health-checked before the old ones leave), for a
//! listener change (a rule added or removed) and for one of 1,000 allowed sources replaced,
//! beside two baselines measured in the same run:
//! - the hot-restart path (a bootstrap change, `maxConnections`): spawn → LIVE of a new epoch;
//! - HAProxy's runtime API (Debian `haproxy`): the same number of servers re-addressed and
//!   enabled (`set server ... addr`, `enable server`) over its admin socket, until it answers.
//!
//! `cargo bench --bench live` (or `make bench-live`, which installs haproxy). `LIVE_BENCH_REPS`
//! sets the repetitions per case (default 20), `LIVE_BENCH_SIZES` the pool sizes (default
//! `10,1000,10000`). The supervisor logs where each apply's time went at debug level
//! (`RUST_LOG=vpsie_lb_agent=debug`: "live apply steps"). Loopback only: the backends are closed ports (or
//! this process's listeners) on 127.1.0.0/16; no traffic leaves the machine. It prints a table
//! and the ratios, and asserts nothing beyond each apply being live.

#[path = "../tests/it/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::supervisor::Stand;
use vpsie_lb_agent::command;
use vpsie_lb_agent::supervisor::client;
use vpsie_lb_agent::supervisor::protocol::{ApplyMethod, ApplyOutcome};

/// The address of backend `i`: distinct loopback addresses, a closed port.
fn addr(i: usize) -> String {
    format!("127.1.{}.{}", i / 250, i % 250 + 1)
}

fn spec(front: u16, n: usize, port: u16, max_connections: u32, extra_rule: Option<u16>) -> Value {
    let backends: Vec<Value> = (0..n)
        .map(|i| json!({"identifier": format!("b{i}"), "ip": addr(i), "port": port}))
        .collect();
    let mut rules = vec![
        json!({"ruleId": "web", "scheme": "http", "frontPort": front,
                                "backPort": 1, "backends": backends}),
    ];
    if let Some(p) = extra_rule {
        rules.push(
            json!({"ruleId": "extra", "scheme": "http", "frontPort": p, "backPort": 9,
                          "backends": [{"identifier": "e", "ip": "127.1.255.1"}]}),
        );
    }
    json!({"identifier": "lb-live-bench", "lbName": "bench", "maxConnections": max_connections,
           "rules": rules})
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    name: String,
    /// Hand-over → confirmed (µs), sorted.
    envoy: Vec<u64>,
    /// The whole apply as the client sees it (store, validate, split, write, confirm), µs.
    whole: Vec<u64>,
    /// Where live applies' time went, from the supervisor's "live apply steps" lines: p50 µs
    /// of each step's end, from the apply's start.
    steps: Option<[u64; 4]>,
}

impl Row {
    fn print(&self) {
        let (e, w) = (&self.envoy, &self.whole);
        println!(
            "| {:<44} | {:>8.1} | {:>8.1} | {:>8.1} | {:>10} |",
            self.name,
            ms(pct(e, 0.5)),
            ms(pct(e, 0.95)),
            ms(*e.last().unwrap_or(&0)),
            if w.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", ms(pct(w, 0.5)))
            }
        );
    }
}

async fn hand_over(stand: &Stand, v: &Value) -> (ApplyOutcome, u64) {
    let p = command::prepare_for_store(v.to_string().as_bytes(), &stand.settings, support::now())
        .unwrap();
    let t = Instant::now();
    let out = client::hand_over(&p, &stand.settings, false)
        .await
        .unwrap_or_else(|e| panic!("apply failed: {e}\n{}", stand.log()));
    (out, t.elapsed().as_micros() as u64)
}

/// Alternates between two specs `reps` times; every apply must be `method`.
async fn run(
    stand: &Stand,
    name: &str,
    a: &Value,
    b: &Value,
    reps: usize,
    method: ApplyMethod,
) -> Row {
    let mut row = Row {
        name: name.to_owned(),
        envoy: Vec::new(),
        whole: Vec::new(),
        steps: None,
    };
    let logged = stand.log().len();
    for i in 0..reps {
        if method == ApplyMethod::HotRestart {
            // A hot restart waits for the previous parent to exit: that wait is the drain
            // policy, not apply cost, so it is left out.
            let wait = Duration::from_secs(stand.settings.envoy.parent_shutdown_time_s.into())
                + Duration::from_millis(300);
            tokio::time::sleep(wait).await;
        }
        let (out, whole) = hand_over(stand, if i % 2 == 0 { b } else { a }).await;
        assert_eq!(out.method, Some(method), "{name}: {out:?}");
        row.envoy.push(out.envoy_us.unwrap_or(0));
        row.whole.push(whole);
    }
    row.envoy.sort_unstable();
    row.whole.sort_unstable();
    if method == ApplyMethod::Live {
        row.steps = Some(steps(&stand.log()[logged..]));
    }
    row
}

/// p50 of each field of the "live apply steps" debug lines in `log`.
fn steps(log: &str) -> [u64; 4] {
    let fields = [
        "written_us=",
        "clusters_us=",
        "checked_us=",
        "listeners_us=",
    ];
    let mut columns: [Vec<u64>; 4] = Default::default();
    for line in log.lines().filter(|l| l.contains("live apply steps")) {
        for (i, f) in fields.iter().enumerate() {
            let v = line
                .split_once(f)
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok());
            columns[i].extend(v);
        }
    }
    columns.map(|mut c| {
        c.sort_unstable();
        if c.is_empty() {
            0
        } else {
            pct(&c, 0.5)
        }
    })
}

/// HAProxy with `n` servers; each repetition re-addresses and enables all of them over the
/// admin socket, alternating between two ports, and waits for every answer.
fn haproxy(n: usize, reps: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let front = support::envoy::free_port();
    let mut cfg = format!(
        "global\n  stats socket {} mode 600 level admin\n  maxconn 1000\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\nbackend b\n",
        sock.display()
    );
    for i in 0..n {
        cfg.push_str(&format!("  server s{i} {}:9 disabled\n", addr(i)));
    }
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    /// Stops HAProxy however the benchmark ends (a panic included).
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _haproxy = Running(std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy is required for this benchmark: `make bench-live` installs it (Debian package haproxy)"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::yield_now();
    }
    let mut row = Row {
        name: format!("haproxy runtime API, {n} servers"),
        envoy: Vec::new(),
        whole: Vec::new(),
        steps: None,
    };
    for r in 0..reps {
        let port = 9 + (r % 2);
        let cmds: Vec<String> = (0..n)
            .flat_map(|i| {
                [
                    format!("set server b/s{i} addr {} port {port}", addr(i)),
                    format!("enable server b/s{i}"),
                ]
            })
            .collect();
        let t = Instant::now();
        // Interactive mode, one command per line (a single line is bounded by HAProxy's
        // buffer size), then `quit`: it answers each and closes.
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut text = String::from("prompt\n");
        for c in &cmds {
            text.push_str(c);
            text.push('\n');
        }
        text.push_str("quit\n");
        // Answers are read while commands are written: HAProxy gives up on a client that does
        // not read its answers.
        let mut r = s.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = r.read_to_string(&mut out);
            out
        });
        s.write_all(text.as_bytes()).unwrap();
        let out = reader.join().unwrap();
        row.envoy.push(t.elapsed().as_micros() as u64);
        assert!(
            !out.contains("Unknown") && !out.contains("No such"),
            "haproxy refused a command: {}",
            &out[..out.len().min(300)]
        );
    }
    row.envoy.sort_unstable();
    row
}

fn main() {
    // Current-thread: Envoy epochs die with the thread that started them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reps: usize = std::env::var("LIVE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    rt.block_on(async {
        let stand = Stand::start_with_env(
            |s| {
                s.envoy.drain_time_s = 1;
                s.envoy.parent_shutdown_time_s = 2;
                s.supervisor.confirm_timeout_s = 120;
                s.supervisor.live_timeout_s = 120;
            },
            vec![(
                "RUST_LOG".into(),
                "info,vpsie_lb_agent::supervisor::live=debug".into(),
            )],
        )
        .await;
        let front = Stand::front_port();
        let mut rows = Vec::new();
        let mut first = true;
        let sizes: Vec<usize> = std::env::var("LIVE_BENCH_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10, 1000, 10_000]);
        for n in sizes {
            let a = spec(front, n, 9, 50_000, None);
            let b = spec(front, n, 10, 50_000, None);
            let (out, _) = hand_over(&stand, &a).await;
            assert!(first || out.method == Some(ApplyMethod::Live), "{out:?}");
            first = false;
            let reps = if n >= 10_000 { reps.min(10) } else { reps };
            rows.push(
                run(
                    &stand,
                    &format!("live: {n} backends re-addressed"),
                    &a,
                    &b,
                    reps,
                    ApplyMethod::Live,
                )
                .await,
            );
            rows.push(haproxy(n, reps));
        }
        // The same at 1,000 backends that are up (listening; the health checks are TCP
        // connects): the pool's leaving hosts carry traffic, so the update goes in two steps
        // and waits for the new hosts' first health check.
        let (p1, p2) = (
            support::envoy::free_port(),
            support::envoy::free_port(),
        );
        let _listening: Vec<std::net::TcpListener> = (0..1000)
            .flat_map(|i| [p1, p2].map(|p| std::net::TcpListener::bind((addr(i).as_str(), p))))
            .map(|l| l.expect("a loopback listener for a healthy backend"))
            .collect();
        let a = spec(front, 1000, p1, 50_000, None);
        let b = spec(front, 1000, p2, 50_000, None);
        hand_over(&stand, &a).await;
        rows.push(
            run(
                &stand,
                "live: 1000 healthy backends re-addressed",
                &a,
                &b,
                reps,
                ApplyMethod::Live,
            )
            .await,
        );
        let small = spec(front, 10, 9, 50_000, None);
        hand_over(&stand, &small).await;
        let extra = support::envoy::free_port();
        let with_rule = spec(front, 10, 9, 50_000, Some(extra));
        rows.push(
            run(
                &stand,
                "live: a listener added / removed",
                &small,
                &with_rule,
                reps,
                ApplyMethod::Live,
            )
            .await,
        );
        // A rule with 1,000 allowed source entries (1,001 filter chains), one entry replaced:
        // the listener changes in place and only that entry's chain is drained.
        let listed = |moved: usize| {
            let mut v = spec(front, 10, 9, 50_000, None);
            let list: Vec<String> = (0..1000)
                .map(|i| format!("10.{}.{}.0/24", i / 256 + if i == 0 { moved } else { 0 }, i % 256))
                .collect();
            v["rules"][0]["allowedSources"] = json!(list);
            v
        };
        hand_over(&stand, &listed(0)).await;
        rows.push(
            run(
                &stand,
                "live: 1 of 1000 allowed sources replaced",
                &listed(0),
                &listed(100),
                reps,
                ApplyMethod::Live,
            )
            .await,
        );
        hand_over(&stand, &small).await;
        let bigger = spec(front, 10, 9, 60_000, None);
        rows.push(
            run(
                &stand,
                "hot restart: bootstrap change (spawn → LIVE)",
                &small,
                &bigger,
                reps.min(10),
                ApplyMethod::HotRestart,
            )
            .await,
        );
        println!("\nhand-over → confirmed, {reps} repetitions per case (10,000 backends and hot restart: at most 10)");
        println!(
            "| {:<44} | {:>8} | {:>8} | {:>8} | {:>10} |",
            "", "p50 ms", "p95 ms", "max ms", "whole p50"
        );
        println!("|{}|", "-".repeat(92));
        for r in &rows {
            r.print();
        }
        let p50 = |name: &str| {
            rows.iter()
                .find(|r| r.name == name)
                .map(|r| pct(&r.envoy, 0.5) as f64)
                .unwrap_or(f64::NAN)
        };
        let live_1k = p50("live: 1000 backends re-addressed");
        let up_1k = p50("live: 1000 healthy backends re-addressed");
        println!(
            "\n1,000 backends: live p50 {:.1} ms (target <= 30 ms); live / haproxy {:.2}; live / hot restart {:.2}",
            live_1k / 1000.0,
            live_1k / p50("haproxy runtime API, 1000 servers"),
            live_1k / p50("hot restart: bootstrap change (spawn → LIVE)"),
        );
        println!(
            "1,000 healthy backends (two steps): live p50 {:.1} ms; live / haproxy {:.2}",
            up_1k / 1000.0,
            up_1k / p50("haproxy runtime API, 1000 servers"),
        );
        println!("\nwhere a live apply's time goes (p50, ms from its start; Envoy's own work is between \"written\" and \"clusters\")");
        println!(
            "| {:<44} | {:>8} | {:>8} | {:>8} | {:>9} |",
            "", "written", "clusters", "checked", "listeners"
        );
        for r in &rows {
            if let Some(s) = r.steps {
                println!(
                    "| {:<44} | {:>8.1} | {:>8.1} | {:>8.1} | {:>9.1} |",
                    r.name,
                    ms(s[0]),
                    ms(s[1]),
                    ms(s[2]),
                    ms(s[3])
                );
            }
        }
        println!(
            "(\"whole p50\": the client's view of the apply, with store, envoy --mode validate, split and write)"
        );
    });
}
