//! Live apply at scale: how long an apply takes until Envoy has taken it (the apply's meaning),
//! how long a moved pool's transition takes until its new hosts passed their first health check
//! and the old ones are gone (in the background), and whether Envoy's main thread stays
//! responsive meanwhile, beside HAProxy's runtime API doing the same. Cases, per pool size
//! (`LIVE_BENCH_SIZES`, default `10,1000,10000`):
//! - every backend re-addressed, backends down (one step, nothing to hold);
//! - one backend re-weighted, and one added / removed (the client's whole apply);
//! - every backend re-addressed while the pool serves (1,000 and 10,000 backends that are up:
//!   listeners of this process, TCP health checks): applied, then the transition finished
//!   (every new host passed, the old ones gone: status shows it); and a second change 1 ms
//!   after a first one whose transition is still running (a move to hosts that never answer);
//! - HAProxy's runtime API (Debian `haproxy`): the same servers re-addressed and enabled, and one
//!   server re-weighted, over its admin socket, until it answers;
//! - a listener added / removed, 1 of 1,000 allowed sources replaced, and a hot restart.
//!
//! Envoy's admin `/ready` is probed every 10 ms on its socket from a thread of its own for the
//! whole run; each case prints the p99 of the probes made during it. The supervisor's resident
//! memory is printed after each size. Each target of issue 24 gets a verdict line that names it.
//! `cargo bench --bench live` (or `make bench-live`, which installs haproxy). `LIVE_BENCH_REPS`
//! sets the repetitions per case (default 20; 10,000 backends at most 10). Loopback only: the
//! backends are closed ports or this process's listeners on 127.1.0.0/16; no traffic leaves
//! the machine.

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
    steps: Option<Vec<u64>>,
    /// The supervisor's own part ("apply steps"): stored, split and compared, applied, pruned.
    sup: Option<Vec<u64>>,
}

impl Row {
    fn print(&self, ready_p99: u64) {
        let (e, w) = (&self.envoy, &self.whole);
        println!(
            "| {:<44} | {:>8.1} | {:>8.1} | {:>8.1} | {:>10} | {:>10.1} |",
            self.name,
            ms(pct(e, 0.5)),
            ms(pct(e, 0.95)),
            ms(*e.last().unwrap_or(&0)),
            if w.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", ms(pct(w, 0.5)))
            },
            ms(ready_p99)
        );
    }
}

/// The last lines of the supervisor's and Envoy's logs, for a failure message.
fn logs(stand: &Stand) -> String {
    let tail = |path: std::path::PathBuf| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    format!(
        "supervisor log:\n{}\nenvoy log:\n{}",
        tail(stand.dir.path().join("supervisor.log")),
        tail(stand.settings.envoy.log_file.clone())
    )
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
        sup: None,
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
        if out.method != Some(method) {
            panic!("{name}, repetition {i}: {out:?}\n{}", logs(stand));
        }
        row.envoy.push(out.envoy_us.unwrap_or(0));
        row.whole.push(whole);
    }
    row.envoy.sort_unstable();
    row.whole.sort_unstable();
    if method == ApplyMethod::Live {
        let log = &stand.log()[logged..];
        row.steps = Some(steps(
            log,
            "live apply steps",
            &["written_us", "clusters_us", "listeners_us"],
        ));
        row.sup = Some(steps(
            log,
            "apply steps",
            &["stored_us", "split_us", "applied_us", "pruned_us"],
        ));
    }
    row
}

/// p50 of each of `fields` (`name=` followed by µs) in the debug lines of `log` that hold
/// `marker`.
fn steps(log: &str, marker: &str, fields: &[&str]) -> Vec<u64> {
    let mut columns: Vec<Vec<u64>> = vec![Vec::new(); fields.len()];
    for line in log.lines().filter(|l| l.contains(marker)) {
        for (i, f) in fields.iter().enumerate() {
            let v = line
                .split_once(&format!("{f}="))
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok());
            columns[i].extend(v);
        }
    }
    columns
        .into_iter()
        .map(|mut c| {
            c.sort_unstable();
            if c.is_empty() {
                0
            } else {
                pct(&c, 0.5)
            }
        })
        .collect()
}

/// HAProxy with `n` servers; each repetition re-addresses and enables all of them over the
/// admin socket, alternating between two ports (or, `one_weight`, re-weights one), and waits
/// for every answer.
fn haproxy(n: usize, reps: usize, one_weight: bool) -> Row {
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
        name: if one_weight {
            format!("haproxy runtime API, 1 of {n} re-weighted")
        } else {
            format!("haproxy runtime API, {n} servers re-addressed")
        },
        envoy: Vec::new(),
        whole: Vec::new(),
        steps: None,
        sup: None,
    };
    for r in 0..reps {
        let port = 9 + (r % 2);
        let cmds: Vec<String> = if one_weight {
            vec![format!("set server b/s0 weight {}", 50 + 50 * (r % 2))]
        } else {
            (0..n)
                .flat_map(|i| {
                    [
                        format!("set server b/s{i} addr {} port {port}", addr(i)),
                        format!("enable server b/s{i}"),
                    ]
                })
                .collect()
        };
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

/// Envoy's admin `/ready`, probed every 10 ms from its own thread: (when sent, µs to answer).
struct Probe {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long a probe may wait for its answer (counted as that long when it never comes).
const PROBE_LIMIT: Duration = Duration::from_secs(10);

impl Probe {
    fn start(socket: std::path::PathBuf) -> Probe {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let answered = (|| -> std::io::Result<()> {
                    let mut c = std::os::unix::net::UnixStream::connect(&socket)?;
                    c.set_read_timeout(Some(PROBE_LIMIT))?;
                    c.write_all(b"GET /ready HTTP/1.0\r\nHost: envoy\r\n\r\n")?;
                    let mut out = Vec::new();
                    c.read_to_end(&mut out)?;
                    Ok(())
                })();
                // A socket missing for a moment (a hot restart) is no answer time.
                if answered.is_ok() || t.elapsed() >= PROBE_LIMIT {
                    s.lock().unwrap().push((t, t.elapsed().as_micros() as u64));
                }
                next += Duration::from_millis(10);
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Probe { samples, stop }
    }

    /// p99 and max (µs) of the probes sent between `from` and `to`, and how many.
    fn window(&self, from: Instant, to: Instant) -> (u64, u64, usize) {
        let mut v: Vec<u64> = self
            .samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, us)| *us)
            .collect();
        v.sort_unstable();
        if v.is_empty() {
            return (0, 0, 0);
        }
        (pct(&v, 0.99), *v.last().unwrap(), v.len())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A spec whose pool is `backends` (address, port, weight).
fn pool_spec(front: u16, backends: &[(String, u16, u32)]) -> Value {
    let backends: Vec<Value> = backends
        .iter()
        .enumerate()
        .map(|(i, (ip, port, w))| json!({"identifier": format!("b{i}"), "ip": ip, "port": port, "weight": w}))
        .collect();
    json!({"identifier": "lb-live-bench", "lbName": "bench", "maxConnections": 50_000,
           "rules": [{"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
                      "backends": backends}]})
}

fn pool(n: usize, port: u16, weight: u32) -> Vec<(String, u16, u32)> {
    (0..n).map(|i| (addr(i), port, weight)).collect()
}

/// This process's limit on open files (Envoy inherits it through the supervisor).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(u64::MAX)
}

/// The supervisor's resident memory, MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1000.0)
}

/// One moved pool's life, from the hand-over (µs): applied, then finished (every new host
/// passed its first check and the old ones are gone).
#[derive(Default)]
struct Moves {
    applied: Vec<u64>,
    finished: Vec<u64>,
}

/// Hands `to` over and follows its transition through `status` until it is over.
async fn move_pool(stand: &Stand, to: &Value, m: &mut Moves) {
    let t = Instant::now();
    let (out, _) = hand_over(stand, to).await;
    if out.method != Some(ApplyMethod::Live) {
        panic!("a move: {out:?}\n{}", logs(stand));
    }
    m.applied.push(t.elapsed().as_micros() as u64);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = stand.status().await;
        let now = t.elapsed().as_micros() as u64;
        if s.transitions.is_empty() {
            m.finished.push(now);
            return;
        }
        assert!(
            s.transitions.iter().all(|x| x.stuck.is_none()) && Instant::now() < deadline,
            "the transition did not finish: {:?}",
            s.transitions
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Loopback listeners for `n` backends on `port`, accepting and closing (a TCP health check's
/// connect), so that they stay up however long the run. Each port's listeners live in a process
/// of their own (this benchmark run again, `LIVE_BENCH_LISTEN=port:n`): 10,000 backends on two
/// ports are 20,000 sockets, more than one process may open here.
struct Listening(std::process::Child);

impl Listening {
    fn start(n: usize, port: u16) -> Listening {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("LIVE_BENCH_LISTEN", format!("{port}:{n}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(
            ready.trim(),
            "ready",
            "the listeners on port {port} did not start"
        );
        Listening(child)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The listener process: binds, says "ready", accepts until its stdin closes.
fn listen_here(spec: &str) {
    let (port, n) = spec.split_once(':').unwrap();
    let (port, n): (u16, usize) = (port.parse().unwrap(), n.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..n {
            let l = std::net::TcpListener::bind((addr(i).as_str(), port))
                .expect("a loopback listener for a healthy backend");
            l.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tokio::spawn(async move {
                while let Ok((c, _)) = l.accept().await {
                    drop(c);
                }
            });
        }
        println!("ready");
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await;
    });
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    if let Ok(spec) = std::env::var("LIVE_BENCH_LISTEN") {
        return listen_here(&spec);
    }
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
                "info,vpsie_lb_agent::supervisor=debug".into(),
            )],
        )
        .await;
        let probe = Probe::start(stand.settings.envoy.admin_socket.clone());
        let front = Stand::front_port();
        let mut rows: Vec<(Row, (u64, u64, usize))> = Vec::new();
        let mut moves: Vec<(usize, Moves, (u64, u64, usize))> = Vec::new();
        let mut seconds: Vec<(usize, u64, bool)> = Vec::new();
        let mut warming: Vec<(usize, Moves)> = Vec::new();
        let mut memory: Vec<(usize, f64)> = Vec::new();
        let mut first = true;
        let sizes: Vec<usize> = std::env::var("LIVE_BENCH_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10, 1000, 10_000]);
        macro_rules! timed {
            ($e:expr) => {{
                let from = Instant::now();
                let row = $e;
                let w = probe.window(from, Instant::now());
                rows.push((row, w));
            }};
        }
        // `LIVE_BENCH_ONLY=moves`: only the pools that move while serving.
        let only_moves = std::env::var("LIVE_BENCH_ONLY").is_ok_and(|v| v == "moves");
        for &n in &sizes {
            let reps = if n >= 10_000 { reps.min(10) } else { reps };
            // Down backends (closed ports): nothing serves, so nothing is held.
            let a = pool_spec(front, &pool(n, 9, 100));
            let b = pool_spec(front, &pool(n, 10, 100));
            let (out, _) = hand_over(&stand, &a).await;
            assert!(first || out.method == Some(ApplyMethod::Live), "{out:?}");
            first = false;
            // `LIVE_BENCH_ONLY=moves` goes straight to the moves.
            if !(only_moves && n >= 1000) {
            timed!(run(&stand, &format!("live: {n} backends re-addressed"), &a, &b, reps, ApplyMethod::Live).await);
            timed!(haproxy(n, reps, false));
            let mut reweighted = pool(n, 9, 100);
            reweighted[0].2 = 50;
            let reweighted = pool_spec(front, &reweighted);
            timed!(run(&stand, &format!("live: 1 of {n} re-weighted"), &a, &reweighted, reps, ApplyMethod::Live).await);
            timed!(haproxy(n, reps, true));
            // One fewer, so that 10,000 stays within the contract's limit.
            let plus = pool_spec(front, &pool(n - 1, 9, 100));
            timed!(run(&stand, &format!("live: 1 added to / removed from {n}"), &a, &plus, reps, ApplyMethod::Live).await);
            }
            hand_over(&stand, &a).await;
            memory.push((n, rss_mb(stand.supervisor_pid())));
            if n < 1000 {
                continue;
            }
            // Backends that are up: the pool serves, so a move holds the old hosts until the
            // new ones passed their first check.
            let (p1, p2) = (support::envoy::free_port(), support::envoy::free_port());
            let up = [Listening::start(n, p1), Listening::start(n, p2)];
            let a = pool_spec(front, &pool(n, p1, 100));
            let b = pool_spec(front, &pool(n, p2, 100));
            hand_over(&stand, &a).await;
            let from = Instant::now();
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stand.status().await.transitions.is_empty() {
                assert!(Instant::now() < deadline, "the first pool never settled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Wait until the pool serves (its first checks passed): a move then holds.
            let admin = vpsie_lb_agent::envoy::admin::Admin::new(&stand.settings.envoy.admin_socket).unwrap();
            loop {
                let s = admin.xds_stats().await.unwrap();
                if s.cluster_number("web", "membership_healthy") as usize == n {
                    break;
                }
                assert!(Instant::now() < deadline, "the pool of {n} never became healthy");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut m = Moves::default();
            for i in 0..reps {
                move_pool(&stand, if i % 2 == 0 { &b } else { &a }, &mut m).await;
            }
            m.applied.sort_unstable();
            m.finished.sort_unstable();
            let w = probe.window(from, Instant::now());
            moves.push((n, m, w));
            if reps % 2 == 1 {
                move_pool(&stand, &a, &mut Moves::default()).await;
            }
            // A second change 1 ms after the first, at most 5 times. The first moves the pool
            // to hosts that never answer (a port nothing listens on), so its transition is
            // still running when the second comes (a move to healthy hosts can finish before
            // it: at 10,000, ~100 ms after Envoy took it); the second changes every weight of
            // that list (the pool moves on from the hosts that served) and must supersede the
            // transition, not wait for it. (Not to other new hosts: n hosts passing their first
            // check in a pool of 2n is Envoy's quadratic work, measured by the moves above.)
            let dead_port = support::envoy::free_port();
            let dead = pool_spec(front, &pool(n, dead_port, 100));
            let b2 = pool_spec(front, &pool(n, dead_port, 50));
            for _ in 0..reps.min(5) {
                let (first_out, _) = hand_over(&stand, &dead).await;
                assert_eq!(first_out.method, Some(ApplyMethod::Live));
                let moving = stand.status().await.transitions.first().map(|t| t.id.clone());
                tokio::time::sleep(Duration::from_millis(1)).await;
                let t = Instant::now();
                let (out, _) = hand_over(&stand, &b2).await;
                let took = t.elapsed().as_micros() as u64;
                assert_eq!(out.method, Some(ApplyMethod::Live));
                let after = stand.status().await.transitions;
                // Applied while the first one's transition was still running: it was
                // superseded (a new transition), not waited for.
                let not_waited = moving.is_some() && after.first().is_some_and(|x| Some(&x.id) != moving.as_ref());
                seconds.push((n, took, not_waited));
                let mut m = Moves::default();
                move_pool(&stand, &a, &mut m).await;
            }
            // The alternative to a transition: the pool as a new cluster that Envoy warms
            // (redefined: another check interval), every new host checked once and the host
            // lists built once, not once per host that passes. Measured from a small pool, so
            // that only the new cluster's checks hold connections (two clusters of n hosts
            // each need more than 2n descriptors: at 10,000, with 20,000 allowed here, Envoy
            // ran out, EMFILE, and crashed with SIGSEGV; the image allows 1,048,576).
            let small = pool_spec(front, &pool(10, p1, 100));
            let mut redefined = pool_spec(front, &pool(n, p2, 100));
            redefined["rules"][0]["checkInterval"] = json!(4000);
            let mut warm = Moves::default();
            // Even from a pool of 10, the warm of 10,000 ran Envoy out of descriptors here
            // (20,000 allowed): skipped where the limit is not above 2n.
            let times = if open_files_limit() > 2 * n as u64 + 2000 {
                reps.min(4)
            } else {
                println!(
                    "(the new cluster of {n} backends is skipped: {} open files allowed here)",
                    open_files_limit()
                );
                0
            };
            for _ in 0..times {
                move_pool(&stand, &small, &mut Moves::default()).await;
                move_pool(&stand, &redefined, &mut warm).await;
            }
            move_pool(&stand, &a, &mut Moves::default()).await;
            warm.applied.sort_unstable();
            warm.finished.sort_unstable();
            if times > 0 {
                warming.push((n, warm));
            }
            memory.push((n, rss_mb(stand.supervisor_pid())));
            drop(up);
        }
        let small = spec(front, 10, 9, 50_000, None);
        hand_over(&stand, &small).await;
        let extra = support::envoy::free_port();
        let with_rule = spec(front, 10, 9, 50_000, Some(extra));
        timed!(run(&stand, "live: a listener added / removed", &small, &with_rule, reps, ApplyMethod::Live).await);
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
        timed!(run(&stand, "live: 1 of 1000 allowed sources replaced", &listed(0), &listed(100), reps, ApplyMethod::Live).await);
        hand_over(&stand, &small).await;
        let bigger = spec(front, 10, 9, 60_000, None);
        timed!(run(&stand, "hot restart: bootstrap change (spawn → LIVE)", &small, &bigger, reps.min(10), ApplyMethod::HotRestart).await);

        println!("\nhand-over → applied (Envoy took every resource), {reps} repetitions per case (10,000 backends and hot restart: at most 10)");
        println!(
            "| {:<44} | {:>8} | {:>8} | {:>8} | {:>10} | {:>10} |",
            "", "p50 ms", "p95 ms", "max ms", "whole p50", "/ready p99"
        );
        println!("|{}|", "-".repeat(105));
        for (r, (p99, _, _)) in &rows {
            r.print(*p99);
        }
        let row = |name: &str| rows.iter().map(|(r, _)| r).find(|r| r.name == name);
        let whole = |name: &str| row(name).map_or(f64::NAN, |r| if r.whole.is_empty() { pct(&r.envoy, 0.5) } else { pct(&r.whole, 0.5) } as f64);
        println!("\nwhere a live apply's time goes (p50, ms from its start; Envoy's own work is between \"written\" and \"clusters\")");
        println!("| {:<44} | {:>8} | {:>8} | {:>9} |", "", "written", "clusters", "listeners");
        for (r, _) in &rows {
            if let Some(s) = &r.steps {
                println!("| {:<44} | {:>8.1} | {:>8.1} | {:>9.1} |", r.name, ms(s[0]), ms(s[1]), ms(s[2]));
            }
        }
        println!("\nthe supervisor's part (p50, ms from the request read; \"applied\" includes Envoy's part, \"done\" the bookkeeping after it)");
        println!("| {:<44} | {:>8} | {:>8} | {:>8} | {:>8} |", "", "stored", "split", "applied", "done");
        for (r, _) in &rows {
            if let Some(s) = &r.sup {
                println!(
                    "| {:<44} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} |",
                    r.name,
                    ms(s[0]),
                    ms(s[0] + s[1]),
                    ms(s[2]),
                    ms(s[3])
                );
            }
        }
        println!("\nmoved while serving (every backend re-addressed, backends up), from the hand-over, p50 / max ms");
        println!("| {:<10} | {:>16} | {:>18} | {:>10} |", "backends", "applied", "finished", "/ready p99");
        for (n, m, (p99, _, _)) in &moves {
            let f = |v: &[u64]| format!("{:.0} / {:.0}", ms(pct(v, 0.5)), ms(*v.last().unwrap_or(&0)));
            println!("| {:<10} | {:>16} | {:>18} | {:>10.1} |", n, f(&m.applied), f(&m.finished), ms(*p99));
        }
        println!("\na pool of n new healthy backends as a new cluster Envoy warms (from a pool of 10), hand-over → applied (warm), p50 / max ms");
        for (n, m) in &warming {
            println!("| {:<10} | {:>16} |", n, format!("{:.0} / {:.0}", ms(pct(&m.applied, 0.5)), ms(*m.applied.last().unwrap_or(&0))));
        }
        println!("\nthe supervisor's resident memory after each size");
        for (n, mb) in &memory {
            println!("  {n} backends: {mb:.1} MB");
        }
        println!("\nverdicts (issue 24's targets):");
        for n in [1000usize, 10_000] {
            let live = whole(&format!("live: {n} backends re-addressed"));
            let hap = whole(&format!("haproxy runtime API, {n} servers re-addressed"));
            if live.is_finite() {
                println!("- {n} re-addressed, hand-over → applied p50 {:.1} ms vs HAProxy {:.1} ms: ratio {:.2} (target <= 1.0): {}", live / 1000.0, hap / 1000.0, live / hap, verdict(live <= hap));
            }
            let limit = if n == 1000 { 15.0 } else { 60.0 };
            for case in [format!("live: 1 of {n} re-weighted"), format!("live: 1 added to / removed from {n}")] {
                let w = whole(&case);
                if w.is_finite() {
                    println!("- {case}: whole apply p50 {:.1} ms (target <= {limit} ms): {}", w / 1000.0, verdict(w / 1000.0 <= limit));
                }
            }
        }
        let fin = |n: usize| moves.iter().find(|(k, _, _)| *k == n).map(|(_, m, _)| pct(&m.finished, 0.5) as f64);
        if let (Some(a), Some(b)) = (fin(1000), fin(10_000)) {
            println!("- full transition 10,000 / 1,000: {:.1} (target <= 15): {}", b / a, verdict(b / a <= 15.0));
        }
        let (all_p99, all_max, count) = probe.window(
            Instant::now() - Duration::from_secs(86_400),
            Instant::now(),
        );
        // "Throughout": every case's own p99, not only the run's.
        // Issue 24's cases: endpoint changes and moves (listener, source-list and hot-restart
        // rows are printed, not judged here).
        let worst = rows
            .iter()
            .filter(|(r, _)| r.name.contains("backends re-addressed") || r.name.contains(" of ") && r.name.contains("re-weighted") || r.name.contains("added to"))
            .filter(|(r, _)| r.name.starts_with("live"))
            .map(|(r, w)| (r.name.clone(), w.0))
            .chain(moves.iter().map(|(n, _, w)| (format!("{n} moved while serving"), w.0)))
            .max_by_key(|(_, p99)| *p99)
            .unwrap_or_default();
        println!(
            "- /ready on the admin socket: p99 {:.1} ms, max {:.1} ms over {count} probes; worst case's p99 {:.1} ms ({}) (target p99 <= 100 ms throughout): {}",
            ms(all_p99),
            ms(all_max),
            ms(worst.1),
            worst.0,
            verdict(worst.1 <= 100_000)
        );
        for (n, took, not_waited) in &seconds {
            println!("- a second change 1 ms after the first, {n} backends: applied in {:.1} ms, {} the first one's transition: {}", ms(*took), if *not_waited { "superseding" } else { "NOT superseding" }, verdict(*not_waited));
        }
        println!("- the supervisor's memory target (<= 16 MB at 1,000 backends, idle, as shipped) is judged by `make bench-idle`; the figures above are after this run's churn");
        println!("(\"whole\": the client's view of the apply, with store, split and write; \"applied\" = Envoy reports every resource at its new version)");
    });
}
