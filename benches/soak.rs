//! Soak: the whole product for an hour of churn. The real agent process follows the API stand-in
//! (its own process) and hands each change to the real supervisor and Envoy, while:
//! - paced HTTP clients (keep-alive and a new connection per request) and long-lived TCP
//!   connections (an echo every second each) go through Envoy;
//! - the spec changes every 2 s (the HTTP pool swaps a backend and its weights, a TCP backend
//!   comes and goes, a third rule's listener is added and removed every 10 changes);
//! - the API misbehaves every 30 s (500, 429, a reply slower than the agent's timeout, an
//!   oversize body, an error envelope, a dropped connection), and is down (its process killed,
//!   connections refused) for 3 minutes at 40% of the run;
//! - Envoy is killed with SIGKILL every 10 minutes (the supervisor must bring it back) and the
//!   agent every 7 (started again 2 s later, as systemd's `RestartSec=2` does).
//!
//! It prints: failed requests and cut long-lived connections outside Envoy's kill windows
//! (target 0), events the agent queued vs. those the API recorded (target: none lost), every
//! config Envoy served that no `config_applied` reported, RSS and open file descriptors of every
//! process each minute (target: flat after the first 10 minutes), and apply latency percentiles
//! (spec written → served, and the supervisor's own hand-over → confirmed).
//!
//! `make soak` (an hour; not in CI). `SOAK_MINUTES` shortens it: every period above scales with
//! it except the 2 s changes and the 30 s faults. Loopback only. A kill window runs from the
//! SIGKILL until the supervisor reports a new Envoy LIVE, plus 0.5 s for clients to reconnect,
//! and never longer than 1 s: a failure after that counts, and a recovery slower than 1 s is a
//! missed target itself. Open file descriptors are judged net of what follows the load or the
//! config: TCP sockets, connected Unix streams (admin requests) and inotify instances (one per
//! xDS subscription; the third rule comes and goes every 20 s), and by their floor: the lowest
//! count of a life's first samples against that of its last (a leaked fd stays; one open for a
//! moment shows in one sample). It asserts nothing: it reports, exits non-zero when a target is missed and
//! names each one; every process it started is stopped, whatever happens.

#[path = "../tests/it/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::envoy::free_port;
use support::load::Load;
use support::sim::{self, Sim};
use support::supervisor::Stand;
use support::upstream::{self, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vpsie_lb_agent::settings::{LogFormat, Settings};
use vpsie_lb_agent::spec::ConfigHash;
use vpsie_lb_agent::supervisor::client;

/// When things happen, scaled to the run's length.
struct Plan {
    total: Duration,
    envoy_kill_every: Duration,
    agent_kill_every: Duration,
    api_down_at: Duration,
    api_down_for: Duration,
    sample_every: Duration,
    /// Growth is judged after this (the first 10 minutes of an hour).
    settle: Duration,
}

impl Plan {
    fn from_env() -> Plan {
        let minutes: f64 = std::env::var("SOAK_MINUTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60.0);
        let total = Duration::from_secs_f64(minutes * 60.0);
        let part = |f: f64| total.mul_f64(f);
        Plan {
            total,
            envoy_kill_every: part(10.0 / 60.0),
            agent_kill_every: part(7.0 / 60.0),
            api_down_at: part(0.4),
            api_down_for: part(3.0 / 60.0),
            sample_every: part(1.0 / 60.0),
            settle: part(10.0 / 60.0),
        }
    }
}

const CHANGE_EVERY: Duration = Duration::from_secs(2);
const FAULT_EVERY: Duration = Duration::from_secs(30);
/// After a new Envoy is LIVE, clients may still be reconnecting.
const RECONNECT_GRACE: Duration = Duration::from_millis(500);
/// The longest a kill window may last, whatever the recovery: a killed Envoy must serve again
/// within 1 s (a crash alone costs 0.1–0.3 s).
const KILL_WINDOW_CAP: Duration = Duration::from_secs(1);

fn backend(id: &str, up: &Upstream, weight: u32) -> Value {
    json!({"identifier": id, "ip": "127.0.0.1", "port": up.port(), "weight": weight})
}

struct Lb {
    http_port: u16,
    tcp_port: u16,
    extra_port: u16,
    http: Vec<Upstream>,
    tcp: Vec<Upstream>,
}

impl Lb {
    /// Change `i`: each differs from the one before, and none touches the listeners that carry
    /// the load (their connections must live through every change). They repeat every 300
    /// changes (the least common multiple of the periods below).
    fn spec(&self, i: usize) -> Value {
        let n = self.http.len();
        let pool: Vec<Value> = (0..n)
            .filter(|k| *k != i % n && *k != (i + n / 2) % n)
            .map(|k| {
                backend(
                    &self.http[k].name,
                    &self.http[k],
                    50 + ((i * 7 + k * 13) % 100) as u32,
                )
            })
            .collect();
        let mut tcp = vec![
            backend("t0", &self.tcp[0], 100),
            backend("t1", &self.tcp[1], 50 + (i % 50) as u32),
        ];
        if i % 4 < 2 {
            tcp.push(backend("t2", &self.tcp[2], 100));
        }
        let mut rules = vec![
            json!({"ruleId": "web", "scheme": "http", "frontPort": self.http_port, "backPort": 1,
                   "healthCheckPath": "/", "backends": pool}),
            json!({"ruleId": "tcp", "scheme": "tcp", "frontPort": self.tcp_port, "backPort": 1,
                   "backends": tcp}),
        ];
        if (i / 10) % 2 == 1 {
            rules.push(
                json!({"ruleId": "extra", "scheme": "http", "frontPort": self.extra_port,
                              "backPort": 1, "backends": [backend("x", &self.http[0], 100)]}),
            );
        }
        json!({"identifier": sim::LB, "lbName": "soak", "updated_on": "2026-12-01 10:00:00",
               "rules": rules})
    }
}

/// Long-lived TCP connections through the tcp rule, each echoing a line every second; a
/// connection that breaks is counted (with its time) and replaced.
struct LongLived {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    cuts: Arc<Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LongLived {
    fn start(port: u16, n: usize) -> LongLived {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..n)
            .map(|c| {
                let (stop, rounds, cuts) = (stop.clone(), rounds.clone(), cuts.clone());
                tokio::spawn(async move {
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Connecting fails while Envoy is down: try again, it is not a cut.
                        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let mut established = false;
                        while !stop.load(Ordering::Relaxed) {
                            k += 1;
                            match echo(&mut s, &format!("c{c}-{k}\n")).await {
                                Ok(()) => {
                                    established = true;
                                    rounds.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    // A connection Envoy accepted but could not forward (no
                                    // backend yet) never carried anything: not a cut.
                                    if established {
                                        cuts.lock().unwrap().push((Instant::now(), e));
                                    }
                                    break;
                                }
                            }
                            // Between rounds the peer sends nothing: a read that ends is the
                            // cut, timed when it happens (not at the next round, up to 1 s later).
                            let mut probe = [0u8; 1];
                            let idle = tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(1)) => None,
                                r = s.read(&mut probe) => Some(match r {
                                    Ok(0) => "closed while idle".to_owned(),
                                    Ok(_) => "unexpected bytes while idle".to_owned(),
                                    Err(e) => format!("{e} while idle"),
                                }),
                            };
                            if let Some(e) = idle {
                                if established {
                                    cuts.lock().unwrap().push((Instant::now(), e));
                                }
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        LongLived {
            stop,
            rounds,
            cuts,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let cuts = self.cuts.lock().unwrap().clone();
        (self.rounds.load(Ordering::Relaxed), cuts)
    }
}

/// One echo round: the upstream answers `tN:` + what it was sent.
async fn echo(s: &mut TcpStream, msg: &str) -> Result<(), String> {
    s.write_all(msg.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let want = msg.len() + 3;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_err(|_| "no echo within 5 s".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    if !got.ends_with(msg.as_bytes()) {
        return Err(format!("wrong echo {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

/// What the supervisor reported, each time it changed.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    pid: Option<u32>,
    state: String,
    hash: Option<ConfigHash>,
}

/// Polls the supervisor's status every 100 ms, keeping each change with its time.
fn watch_supervisor(
    settings: Settings,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, Seen)>> {
    tokio::spawn(async move {
        let mut log: Vec<(Instant, Seen)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let seen = match client::status(&settings).await {
                Ok(s) => Seen {
                    pid: s.envoy_pid,
                    state: s.envoy_state.to_string(),
                    hash: s.hash,
                },
                Err(e) => Seen {
                    pid: None,
                    state: format!("supervisor unreachable: {e}"),
                    hash: None,
                },
            };
            if log.last().map(|(_, s)| s) != Some(&seen) {
                log.push((Instant::now(), seen));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        log
    })
}

/// The real agent, logging JSON lines to `log` (appended across restarts).
fn start_agent(config: &Path, log: &Path) -> Agent {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Agent(
        Command::new(support::agent_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

/// The agent process, killed and reaped when dropped: a soak that fails or panics leaves
/// nothing running (the stand-in and the supervisor have their own guards).
struct Agent(Child);

impl std::ops::Deref for Agent {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Events the agent queued, by id (its log line once an event is queued): id → kind.
fn queued_events(log: &Path) -> BTreeMap<String, String> {
    let file = std::fs::File::open(log).unwrap();
    let mut out = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let f = &v["fields"];
        if let (Some(id), Some(kind)) = (f["id"].as_str(), f["kind"].as_str()) {
            if v["level"] == "INFO" {
                out.insert(id.to_owned(), kind.to_owned());
            }
        }
    }
    out
}

/// The inodes of this network namespace's sockets that follow the load or the config: every TCP
/// socket (connections in any state, from clients and health checks; listeners, which come and
/// go with the soak's third rule), IPv4 and IPv6, and connected Unix stream sockets (admin
/// requests: one connection each, many a second during an apply).
fn established_inodes() -> HashSet<u64> {
    let mut set = HashSet::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/unix") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode [Path]; Type 0001 = stream,
            // St 03 = connected (a listener is 01).
            if f.get(4) == Some(&"0001") && f.get(5) == Some(&"03") {
                if let Some(inode) = f.get(6).and_then(|i| i.parse().ok()) {
                    set.insert(inode);
                }
            }
        }
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local remote st ... inode (10th field).
            if f.len() > 9 {
                if let Some(inode) = f.get(9).and_then(|i| i.parse().ok()) {
                    set.insert(inode);
                }
            }
        }
    }
    set
}

/// Open fds of `pid` that follow neither the load nor the config: what a leak would grow (files,
/// pipes, event fds, other sockets). Left out: the sockets of [`established_inodes`] and
/// inotify instances (Envoy holds one per xDS subscription, so they follow the config too).
fn fds_net_of_connections(pid: u32, established: &HashSet<u64>) -> Option<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        if link.to_str() == Some("anon_inode:inotify") {
            continue;
        }
        let inode = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|i| i.parse::<u64>().ok());
        if !inode.is_some_and(|i| established.contains(&i)) {
            n += 1;
        }
    }
    Some(n)
}

fn rss_kb_and_fds(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[derive(Debug)]
struct Sample {
    at: Duration,
    process: &'static str,
    pid: u32,
    rss_kb: u64,
    fds: usize,
    /// `fds` less established TCP connections.
    other_fds: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn percentiles(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<46} n={:<5} p50 {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(soak());
}

async fn soak() {
    let plan = Plan::from_env();
    let mut http = Vec::new();
    for k in 0..6 {
        http.push(upstream::http(&format!("h{k}"), None).await);
    }
    let mut tcp = Vec::new();
    for k in 0..3 {
        tcp.push(upstream::echo(&format!("t{k}")).await);
    }
    let lb = Lb {
        http_port: free_port(),
        tcp_port: free_port(),
        extra_port: free_port(),
        http,
        tcp,
    };
    let stand = Stand::start(|_| {}).await;
    let mut sim = Sim::start(&lb.spec(0));
    let mut settings = sim::agent_settings(&stand, &sim);
    settings.logging.format = LogFormat::Json;
    let config = stand.dir.path().join("agent-soak.yaml");
    std::fs::write(&config, serde_yaml::to_string(&settings).unwrap()).unwrap();
    let agent_log = stand.dir.path().join("agent.log");
    let mut agent = start_agent(&config, &agent_log);

    // Spec hashes, to tell when each change serves.
    let hash_of = |spec: &Value| {
        vpsie_lb_agent::pipeline::prepare_for_store(
            spec.to_string().as_bytes(),
            &settings,
            support::now(),
        )
        .unwrap_or_else(|e| panic!("the soak's own spec is refused: {e}"))
        .hash
    };
    // Every spec written, in order, with its hash (the changes cycle: a hash comes back).
    let mut written: Vec<(Instant, ConfigHash)> = vec![(Instant::now(), hash_of(&lb.spec(0)))];

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_supervisor(stand.settings.clone(), stop.clone());
    // Traffic starts once the first config serves.
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://127.0.0.1:{}/", lb.http_port))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the first config never served:\n{}",
            stand.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = Load::start_paced(
        &format!("http://127.0.0.1:{}/", lb.http_port),
        4,
        2,
        Duration::from_millis(20),
    );
    let long_lived = LongLived::start(lb.tcp_port, 16);

    println!(
        "soak: {:?}; changes every {CHANGE_EVERY:?}, API faults every {FAULT_EVERY:?}, Envoy killed every {:?}, the agent every {:?}, the API down at {:?} for {:?}",
        plan.total, plan.envoy_kill_every, plan.agent_kill_every, plan.api_down_at, plan.api_down_for
    );
    let faults: [(&str, u32, u64); 6] = [
        ("status_500", 3, 0),
        ("status_429", 2, 0),
        // Longer than the agent's request timeout (5 s).
        ("delay", 1, 8000),
        ("oversize", 1, 0),
        ("error_envelope", 1, 0),
        ("drop", 2, 0),
    ];
    let started = Instant::now();
    let (mut next_change, mut next_fault, mut next_sample) =
        (started + CHANGE_EVERY, started + FAULT_EVERY, started);
    let mut next_envoy_kill = started + plan.envoy_kill_every;
    let mut next_agent_kill = started + plan.agent_kill_every;
    let api_down_at = started + plan.api_down_at;
    let mut api_down = false;
    let mut api_up_at: Option<Instant> = None;
    let mut agent_restart_at: Option<Instant> = None;
    let mut envoy_kills: Vec<(Instant, u32)> = Vec::new();
    let mut agent_kills = 0;
    let mut recorded: BTreeMap<String, Value> = BTreeMap::new();
    let mut recorded_twice = 0usize;
    let mut samples: Vec<Sample> = Vec::new();
    let (mut i, mut f) = (0usize, 0usize);
    let mut collect = |events: Vec<Value>, recorded: &mut BTreeMap<String, Value>| {
        for e in events {
            let id = e["id"].as_str().unwrap_or("").to_owned();
            if recorded.insert(id, e).is_some() {
                recorded_twice += 1;
            }
        }
    };

    while started.elapsed() < plan.total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        if now >= next_change {
            next_change += CHANGE_EVERY;
            i += 1;
            let spec = lb.spec(i);
            written.push((now, hash_of(&spec)));
            sim.write_spec(&spec);
        }
        if now >= next_fault && !api_down {
            next_fault += FAULT_EVERY;
            let (kind, count, delay) = faults[f % faults.len()];
            f += 1;
            sim.fault_ms(kind, count, delay).await;
        }
        if now >= api_down_at && !api_down && api_up_at.is_none() {
            // Nothing more is recorded (every request answers 500), then what was is kept and
            // the API goes away.
            sim.fault("status_500", 1_000_000).await;
            collect(sim.events().await, &mut recorded);
            sim.kill();
            api_down = true;
            api_up_at = Some(now + plan.api_down_for);
            println!(
                "{:>7.1} s  the API is down",
                started.elapsed().as_secs_f64()
            );
        }
        if api_down && api_up_at.is_some_and(|t| now >= t) {
            sim.restart();
            api_down = false;
            println!(
                "{:>7.1} s  the API is back",
                started.elapsed().as_secs_f64()
            );
        }
        if now >= next_envoy_kill {
            next_envoy_kill += plan.envoy_kill_every;
            if let Ok(s) = client::status(&stand.settings).await {
                if let Some(pid) = s.envoy_pid {
                    // Timed before the signal: the clients' threads may see the cut before this
                    // one runs again.
                    let at = Instant::now();
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    envoy_kills.push((at, pid));
                    println!(
                        "{:>7.1} s  Envoy {pid} killed",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
        if now >= next_agent_kill {
            next_agent_kill += plan.agent_kill_every;
            let _ = agent.kill();
            let _ = agent.wait();
            agent_kills += 1;
            agent_restart_at = Some(now + Duration::from_secs(2));
            println!(
                "{:>7.1} s  the agent killed",
                started.elapsed().as_secs_f64()
            );
        }
        if agent_restart_at.is_some_and(|t| now >= t) {
            agent_restart_at = None;
            agent = start_agent(&config, &agent_log);
        }
        if now >= next_sample {
            next_sample += plan.sample_every;
            let envoy = client::status(&stand.settings)
                .await
                .ok()
                .and_then(|s| s.envoy_pid);
            let procs = [
                ("agent", agent_restart_at.is_none().then(|| agent.id())),
                ("supervisor", Some(stand.supervisor_pid())),
                ("envoy", envoy),
                ("api-sim", (!api_down).then(|| sim.child.id())),
            ];
            let established = established_inodes();
            for (process, pid) in procs {
                if let Some((rss_kb, fds)) = pid.and_then(rss_kb_and_fds) {
                    let other_fds = pid
                        .and_then(|p| fds_net_of_connections(p, &established))
                        .unwrap_or(fds);
                    samples.push(Sample {
                        at: now - started,
                        process,
                        pid: pid.unwrap_or(0),
                        rss_kb,
                        fds,
                        other_fds,
                    });
                }
            }
        }
    }
    let ran = started.elapsed();
    if agent_restart_at.is_some() {
        agent = start_agent(&config, &agent_log);
    }
    if api_down {
        sim.restart();
    }
    // The end: faults cleared, the last change served, every queued event delivered.
    sim.clear_faults().await;
    load.more(100).await;
    let counts = load.finish().await;
    let (rounds, cuts) = long_lived.finish().await;
    let last_hash = hash_of(&lb.spec(i));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut delivered = false;
    while Instant::now() < deadline {
        let queued = queued_events(&agent_log);
        let events = sim.events().await;
        let served = client::status(&stand.settings)
            .await
            .ok()
            .and_then(|s| s.hash);
        if served.as_ref() == Some(&last_hash)
            && queued.keys().all(|id| {
                recorded.contains_key(id) || events.iter().any(|e| e["id"] == id.as_str())
            })
        {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    collect(sim.events().await, &mut recorded);
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    let _ = agent.kill();
    let _ = agent.wait();

    let mut missed: Vec<String> = Vec::new();
    // Kill windows: from each SIGKILL until a new Envoy is LIVE, plus the reconnect grace, and
    // at most KILL_WINDOW_CAP: beyond that, failures count.
    let recoveries: Vec<(Instant, Option<Duration>)> = envoy_kills
        .iter()
        .map(|&(at, pid)| {
            let back = seen
                .iter()
                .find(|(t, s)| *t > at && s.pid.is_some_and(|p| p != pid) && s.state == "LIVE")
                .map(|(t, _)| *t - at);
            (at, back)
        })
        .collect();
    let windows: Vec<(Instant, Instant)> = recoveries
        .iter()
        .map(|&(at, back)| {
            let end = back.map_or(KILL_WINDOW_CAP, |b| {
                (b + RECONNECT_GRACE).min(KILL_WINDOW_CAP)
            });
            (at, at + end)
        })
        .collect();
    let in_window = |t: Instant| windows.iter().any(|(a, b)| t >= *a && t <= *b);
    let failed_outside = counts.failed_at.iter().filter(|t| !in_window(**t)).count();
    let cuts_outside: Vec<&(Instant, String)> =
        cuts.iter().filter(|(t, _)| !in_window(*t)).collect();

    println!("\n== soak over {:.1} min: {i} changes, {f} API faults, {} Envoy kills, {agent_kills} agent kills",
        ran.as_secs_f64() / 60.0, envoy_kills.len());
    for (k, (a, back)) in recoveries.iter().enumerate() {
        let at = (*a - started).as_secs_f64();
        match back {
            Some(b) => {
                println!(
                    "Envoy kill {} at {at:.0} s: a new Envoy LIVE after {:.2} s (target <= {:.0} s)",
                    k + 1,
                    b.as_secs_f64(),
                    KILL_WINDOW_CAP.as_secs_f64()
                );
                if *b > KILL_WINDOW_CAP {
                    missed.push(format!(
                        "Envoy kill {} at {at:.0} s: LIVE again after {:.2} s (target <= 1 s)",
                        k + 1,
                        b.as_secs_f64()
                    ));
                }
            }
            None => {
                println!("Envoy kill {} at {at:.0} s: no new Envoy LIVE seen", k + 1);
                missed.push(format!(
                    "Envoy kill {} at {at:.0} s: never LIVE again",
                    k + 1
                ));
            }
        }
    }
    println!(
        "HTTP requests: {} ok, {} failed ({} inside kill windows, {failed_outside} outside: target 0)",
        counts.ok,
        counts.failed,
        counts.failed - failed_outside as u64
    );
    if failed_outside > 0 {
        println!("  first errors: {:?}", counts.errors);
    }
    println!(
        "long-lived TCP: {rounds} echo rounds, {} connections cut ({} outside kill windows: target 0)",
        cuts.len(),
        cuts_outside.len()
    );
    for (t, e) in cuts_outside.iter().take(10) {
        println!("  cut at {:.1} s: {e}", (*t - started).as_secs_f64());
    }

    let queued = queued_events(&agent_log);
    let lost: Vec<(&String, &String)> = queued
        .iter()
        .filter(|(id, _)| !recorded.contains_key(*id))
        .collect();
    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for kind in queued.values() {
        by_kind.entry(kind).or_default().0 += 1;
    }
    for e in recorded.values() {
        by_kind
            .entry(e["type"].as_str().unwrap_or("?"))
            .or_default()
            .1 += 1;
    }
    println!(
        "events: {} queued by the agent, {} recorded by the API ({recorded_twice} recorded twice across the API's restart), {} lost: target 0{}",
        queued.len(),
        recorded.len(),
        lost.len(),
        if delivered { "" } else { " (NOT all delivered within 120 s of the end)" }
    );
    for (kind, (q, r)) in &by_kind {
        println!("  {kind:<20} queued {q:>5}  recorded {r:>5}");
    }
    let reported: BTreeSet<&str> = recorded
        .values()
        .filter(|e| e["type"] == "config_applied")
        .filter_map(|e| e["metadata"]["config_hash"].as_str())
        .collect();
    let served: BTreeSet<&str> = seen
        .iter()
        .filter_map(|(_, s)| s.hash.as_ref().map(ConfigHash::as_str))
        .collect();
    let unreported: Vec<&&str> = served.iter().filter(|h| !reported.contains(**h)).collect();
    println!(
        "configs: {} served, {} reported applied, {} served but never reported: target 0",
        served.len(),
        reported.len(),
        unreported.len()
    );

    // Latency: each spec written → the supervisor serves it (seen every 100 ms); a spec counts
    // as superseded when a later one serves first.
    let mut e2e = Vec::new();
    let mut superseded = 0;
    let mut from = 0;
    for (j, (at, hash)) in written.iter().enumerate() {
        while from < seen.len() && seen[from].0 < *at {
            from += 1;
        }
        // The changes repeat every 300 (`Lb::spec`): the next hundred are all distinct.
        let later: HashSet<&str> = written[j + 1..written.len().min(j + 100)]
            .iter()
            .map(|(_, h)| h.as_str())
            .collect();
        let served = seen[from..]
            .iter()
            .filter_map(|(t, s)| Some((t, s.hash.as_ref()?.as_str())))
            .find(|(_, h)| *h == hash.as_str() || (later.contains(h) && *h != hash.as_str()));
        match served {
            Some((t, h)) if h == hash.as_str() => e2e.push((*t - *at).as_secs_f64() * 1000.0),
            _ => superseded += 1,
        }
    }
    let by_method = |m: &str| -> Vec<f64> {
        recorded
            .values()
            .filter(|e| e["type"] == "config_applied" && e["metadata"]["method"] == m)
            .filter_map(|e| e["metadata"]["apply_ms"].as_f64())
            .collect()
    };
    println!("\napply latency");
    percentiles("spec written -> served (status every 100 ms)", e2e);
    percentiles(
        "supervisor, live (hand-over -> confirmed)",
        by_method("live"),
    );
    percentiles("supervisor, hot restart", by_method("hot_restart"));
    let restarts = by_method("restart");
    if !restarts.is_empty() {
        percentiles("supervisor, fresh Envoy after one died mid-apply", restarts);
    }
    println!(
        "({superseded} of {} specs were superseded before they served: API faults, the API or the agent down)",
        written.len()
    );

    println!(
        "\nRSS (MB) and open fds (of which following neither load nor config), each {:?}",
        plan.sample_every
    );
    println!(
        "{:>8}  {:>25}  {:>25}  {:>25}  {:>25}",
        "min", "agent", "supervisor", "envoy", "api-sim"
    );
    let mut rows: BTreeMap<u64, BTreeMap<&str, &Sample>> = BTreeMap::new();
    for s in &samples {
        rows.entry(s.at.as_secs()).or_default().insert(s.process, s);
    }
    for (at, row) in &rows {
        let cell = |p: &str| {
            row.get(p).map_or("-".to_owned(), |s| {
                format!(
                    "{:.1} / {} ({}) ({})",
                    s.rss_kb as f64 / 1024.0,
                    s.fds,
                    s.other_fds,
                    s.pid
                )
            })
        };
        println!(
            "{:>8.1}  {:>25}  {:>25}  {:>25}  {:>25}",
            *at as f64 / 60.0,
            cell("agent"),
            cell("supervisor"),
            cell("envoy"),
            cell("api-sim")
        );
    }
    // Growth after the settling time: for each process that lived through it, its first sample
    // after it vs. its last; the processes killed on purpose are judged per life (pid).
    println!(
        "\ngrowth after the first {:?} (per process life, from its third sample)",
        plan.settle
    );
    let mut lives: BTreeMap<(&str, u32), Vec<&Sample>> = BTreeMap::new();
    for s in &samples {
        lives.entry((s.process, s.pid)).or_default().push(s);
    }
    for ((process, pid), all) in &lives {
        // A life's first two samples may catch it starting up (in a short run they do): its
        // growth counts from its third, and from the settling time.
        let v: Vec<&Sample> = all
            .iter()
            .skip(2)
            .filter(|s| s.at >= plan.settle)
            .copied()
            .collect();
        if v.len() < 3 {
            continue;
        }
        let (a, b) = (v[0], v[v.len() - 1]);
        let drss = b.rss_kb as f64 / 1024.0 - a.rss_kb as f64 / 1024.0;
        // Connections come and go with the load: what is judged is every other fd, by its
        // floor: a leaked fd stays, so it raises the lowest count of the last samples, while
        // one caught open for a moment (Envoy reading an xDS file) is in one sample only.
        let k = (v.len() / 2).clamp(1, 3);
        let floor = |s: &[&Sample]| s.iter().map(|s| s.other_fds).min().unwrap_or(0) as i64;
        let dfds = floor(&v[v.len() - k..]) - floor(&v[..k]);
        // Allocator noise is not growth: 1 MB or 5% of the process.
        let rss_grew = drss > (a.rss_kb as f64 / 1024.0 * 0.05).max(1.0);
        let fds_grew = dfds > 2;
        let grew = rss_grew || fds_grew;
        // The stand-in keeps every event in memory: reported, not judged.
        if *process != "api-sim" {
            if rss_grew {
                missed.push(format!("{process} {pid}: RSS grew {drss:+.1} MB"));
            }
            if fds_grew {
                missed.push(format!(
                    "{process} {pid}: fds that follow neither load nor config grew {dfds:+}"
                ));
            }
        }
        println!(
            "  {process:<10} {pid:>8}  {} samples  RSS {:+.1} MB  fds (not load or config) {dfds:+}{}",
            v.len(),
            drss,
            if grew { "  GREW" } else { "" }
        );
    }

    if failed_outside > 0 {
        missed.push(format!(
            "{failed_outside} HTTP requests failed outside the kill windows"
        ));
    }
    if !cuts_outside.is_empty() {
        missed.push(format!(
            "{} long-lived connections cut outside the kill windows",
            cuts_outside.len()
        ));
    }
    if !lost.is_empty() {
        missed.push(format!("{} events lost", lost.len()));
    }
    if !delivered {
        missed.push(
            "the last change did not serve, or queued events were not delivered, within 120 s of the end"
                .into(),
        );
    }
    if !unreported.is_empty() {
        missed.push(format!(
            "{} configs served but never reported applied",
            unreported.len()
        ));
    }
    let met = missed.is_empty();
    if met {
        println!("\ntargets met");
    } else {
        println!("\ntargets MISSED:");
        for m in &missed {
            println!("  - {m}");
        }
    }
    // The logs outlive the run's directory.
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak-logs");
    let _ = std::fs::create_dir_all(&keep);
    for name in ["agent.log", "supervisor.log", "envoy.log"] {
        let _ = std::fs::copy(stand.dir.path().join(name), keep.join(name));
    }
    println!("logs: {}", keep.display());
    // `exit` runs no destructor: everything started is stopped first.
    drop(sim);
    drop(stand);
    if !met {
        std::process::exit(1);
    }
}
