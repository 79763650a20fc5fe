//! The edge under attack: what an attacker gets, what a legitimate client sees beside it, and
//! Envoy's peak memory, for each attack the edge limits are meant to stop (docs/mapping.md, "Edge
//! limits"; the quick versions are `tests/it/edge.rs`).
//!
//! One supervisor and its Envoy (2 workers) serving one http rule to a loopback upstream in this
//! process. A legitimate client (4 keep-alive connections, 200 requests a second in all) runs
//! through every case; its p99 and failures during each attack are compared with a baseline
//! taken just before it. Cases:
//!
//! 1. slowloris: Debian's `slowhttptest -H`, 4,000 connections, a header line every 3 s;
//! 2. slow POST: `slowhttptest -B`, 4,000 connections, a body chunk every 3 s;
//! 3. HTTP/2 rapid reset (CVE-2023-44487): 4 connections opening and cancelling streams as fast
//!    as they can, reconnecting when Envoy closes them;
//! 4. a flood of HTTP/2 streams: 40 connections each opening as many streams as Envoy allows and
//!    never finishing them;
//! 5. memory pressure (its own Envoy, `envoy.max_heap_mb: 64`): 2,000 uploads that never end to
//!    a backend that never reads; then the uploads stop.
//!
//! Targets (issue "The edge, hardened"): cases 1-4, the legitimate client has 0 failures and its
//! p99 within 2x its baseline; case 1, the slow connections are closed at the header time limit
//! (10 s); cases 3-4, Envoy's memory stays bounded (peak RSS below 256 MB); case 5, the overload
//! actions fire, the heap is back under 95 % within 10 s while the uploads go on (stalled
//! streams cut at the scaled idle timeout), Envoy's RSS stays below its heap limit plus its idle
//! size, and every action is off again within 60 s of the load stopping. `ATTACK_SECONDS` (default 30) sets each attack's length.
//! `ATTACK_ONLY=reset,memory` runs only the cases named; `ATTACK_RUNTIME=k=v&...` sets Envoy
//! runtime keys through its admin API first (to try a defence's tuning).
//! `make bench-attacks` (installs slowhttptest). Loopback only. Exits 1 when a target is missed.

#[path = "../tests/it/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::supervisor::Stand;
use support::upstream;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Runs `f` to its end on the calling thread, in a single-threaded runtime of its own: an
/// attacker on its own thread gets at most one core, as one attacking machine's share would be
/// on this 2-core machine, and cannot starve the legitimate client.
fn on_own_thread<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `f` on a thread of its own ([`on_own_thread`]), awaited without blocking the caller.
async fn attacker<T: Send + 'static, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    tokio::task::spawn_blocking(move || on_own_thread(f()))
        .await
        .unwrap()
}

/// CPU time (user + system) of process `pid` so far, in clock ticks (100 a second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(at) = stat.rfind(')') else {
        return 0;
    };
    let f: Vec<&str> = stat[at + 2..].split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Envoy's peak RSS, sampled every 100 ms on a thread of its own; `take` reads and resets it.
struct Peak {
    max_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Peak {
    fn start(pid: u32) -> Peak {
        let max_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max((rss_mb(pid) * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Peak { max_kib, stop }
    }
    fn take(&self) -> f64 {
        self.max_kib.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Each request of the legitimate client: when it started, and its latency in ms (None: failed).
type Samples = Arc<Mutex<Vec<(Instant, Option<f64>)>>>;

/// The legitimate client: 4 loops of keep-alive GETs, 200 a second in all. Each request's
/// latency (or failure) is recorded with its start time, so any window can be judged.
struct Legit {
    samples: Samples,
    stop: Arc<AtomicBool>,
}

impl Legit {
    fn start(url: String) -> Legit {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (samples2, stop2) = (samples.clone(), stop.clone());
        // A thread and runtime of its own: the attackers' tasks never delay its requests.
        std::thread::spawn(move || {
            on_own_thread(async move {
                let mut loops = Vec::new();
                for _ in 0..4 {
                    let (samples, stop, url) = (samples2.clone(), stop2.clone(), url.clone());
                    loops.push(tokio::spawn(async move {
                        let client = reqwest::Client::builder()
                            .no_proxy()
                            .timeout(Duration::from_secs(5))
                            .build()
                            .unwrap();
                        let mut tick = tokio::time::interval(Duration::from_millis(20));
                        while !stop.load(Ordering::Relaxed) {
                            tick.tick().await;
                            let t = Instant::now();
                            let ok = match client.get(&url).send().await {
                                Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                                _ => false,
                            };
                            let ms = t.elapsed().as_secs_f64() * 1000.0;
                            samples.lock().unwrap().push((t, ok.then_some(ms)));
                        }
                    }));
                }
                for l in loops {
                    let _ = l.await;
                }
            })
        });
        Legit { samples, stop }
    }

    /// Requests started in `[from, to)`: (count, failures, p99 ms of the served ones).
    fn window(&self, from: Instant, to: Instant) -> (usize, usize, f64) {
        let s = self.samples.lock().unwrap();
        let w: Vec<&Option<f64>> = s
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, x)| x)
            .collect();
        let mut ok: Vec<f64> = w.iter().filter_map(|x| **x).collect();
        ok.sort_by(f64::total_cmp);
        let p99 = ok
            .get(((ok.len() as f64 * 0.99) as usize).min(ok.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN);
        (w.len(), w.len() - ok.len(), p99)
    }
}

impl Drop for Legit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// slowhttptest's own summary: the last line of its CSV (seconds, closed, pending, connected,
/// service available) and the peak of connected.
fn slowhttptest(args: &[&str], url: &str, seconds: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("slow");
    let out = Command::new("slowhttptest")
        .args(args)
        .args(["-u", url, "-l", &seconds.to_string(), "-g", "-o"])
        .arg(&prefix)
        .output()
        .expect("slowhttptest is required: make bench-attacks installs it");
    let csv = std::fs::read_to_string(prefix.with_extension("csv")).unwrap_or_else(|_| {
        panic!(
            "slowhttptest wrote no statistics: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let rows: Vec<Vec<u64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .filter(|r: &Vec<u64>| r.len() >= 4)
        .collect();
    let peak = rows.iter().map(|r| r[3]).max().unwrap_or(0);
    let last = rows.last().cloned().unwrap_or_default();
    format!(
        "peak {peak} connected at once; at the end: {} closed, {} pending, {} connected",
        last.get(1).unwrap_or(&0),
        last.get(2).unwrap_or(&0),
        last.get(3).unwrap_or(&0)
    )
}

/// Rapid reset from `conns` connections for `seconds`: streams opened and cancelled at once;
/// a connection Envoy closes is replaced. Returns (streams, connections Envoy closed).
async fn rapid_reset(port: u16, conns: usize, seconds: u64) -> (u64, u64) {
    let streams = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (streams, closed) = (streams.clone(), closed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let Ok((mut h2, conn)) = h2::client::handshake(tcp).await else {
                    continue;
                };
                let driver = tokio::spawn(conn);
                while Instant::now() < until {
                    let Ok(Ok(ready)) =
                        tokio::time::timeout(Duration::from_secs(2), h2.clone().ready()).await
                    else {
                        break;
                    };
                    h2 = ready;
                    let req = http::Request::get(format!("http://127.0.0.1:{port}/reset"))
                        .body(())
                        .unwrap();
                    match h2.send_request(req, false) {
                        Ok((_, mut s)) => {
                            s.send_reset(h2::Reason::CANCEL);
                            streams.fetch_add(1, Ordering::Relaxed);
                            // Let the connection's task write the frames (and the legitimate
                            // client run): without it the loop only fills a local queue.
                            tokio::task::yield_now().await;
                        }
                        Err(_) => break,
                    }
                }
                if Instant::now() < until {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
                driver.abort();
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        streams.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed),
    )
}

/// `conns` HTTP/2 connections, each opening streams (requests whose body never ends) until
/// Envoy's concurrent-stream limit holds them back, kept for `seconds`. Returns the streams
/// open at the peak.
async fn stream_flood(port: u16, conns: usize, seconds: u64) -> u64 {
    let open = Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    for _ in 0..conns {
        let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        let Ok((mut h2, conn)) = h2::client::handshake(tcp).await else {
            continue;
        };
        let driver = tokio::spawn(conn);
        let mut streams = Vec::new();
        // Ask for more than allowed: the client holds back what Envoy's SETTINGS do not admit.
        for _ in 0..150 {
            let Ok(Ok(ready)) =
                tokio::time::timeout(Duration::from_millis(200), h2.clone().ready()).await
            else {
                break;
            };
            h2 = ready;
            let req = http::Request::post(format!("http://127.0.0.1:{port}/flood"))
                .body(())
                .unwrap();
            match h2.send_request(req, false) {
                Ok(s) => {
                    streams.push(s);
                    open.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        held.push((driver, streams, h2));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for (driver, _, _) in &held {
        driver.abort();
    }
    open.load(Ordering::Relaxed)
}

/// A backend that accepts connections and never reads from them.
async fn never_reads() -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            kept.push(s);
        }
    });
    (port, task)
}

/// `n` uploads that never end: headers for a 1 GB body, then body as fast as Envoy takes it.
fn uploads(port: u16, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let head =
                    "POST /upload HTTP/1.1\r\nHost: lb\r\nContent-Length: 1000000000\r\n\r\n";
                if c.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 16 * 1024];
                while c.write_all(&chunk).await.is_ok() {}
            })
        })
        .collect()
}

fn spec(front: u16, backend_port: u16) -> Value {
    json!({"identifier": "lb-attacks", "lbName": "attacks", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": backend_port,
        "backends": [{"identifier": "b1", "ip": "127.0.0.1"}]}]})
}

async fn stat(stand: &Stand, filter: &str, name: &str) -> u64 {
    support::envoy::stats(&stand.settings, filter).await(name)
}

/// Whether case `name` runs: `ATTACK_ONLY` names the cases to run (slowloris, slowpost, reset,
/// flood, memory), comma-separated; unset, all run.
fn only(name: &str) -> bool {
    std::env::var("ATTACK_ONLY").map_or(true, |v| v.split(',').any(|c| c.trim() == name))
}

fn main() {
    let seconds: u64 = std::env::var("ATTACK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut missed: Vec<String> = Vec::new();
    let mut rows: Vec<String> = Vec::new();
    rt.block_on(async {
        let up = upstream::http("web", None).await;
        let front = Stand::front_port();
        let stand = Stand::start(|s| s.envoy.concurrency = Some(2)).await;
        stand.apply_ok(&spec(front, up.port())).await;
        let url = format!("http://127.0.0.1:{front}/");
        let pid = stand.status().await.envoy_pid.expect("Envoy runs");
        let peak = Peak::start(pid);
        let legit = Legit::start(url.clone());
        println!("edge attacks: one http rule, Envoy 2 workers, legitimate client 200 req/s; {seconds} s per attack");
        let idle = rss_mb(pid);

        // Each attack: a baseline window just before it, then the attack.
        macro_rules! attack {
            ($name:expr, $run:expr) => {{
                let b0 = Instant::now();
                tokio::time::sleep(Duration::from_secs(8)).await;
                let base = legit.window(b0, Instant::now());
                peak.take();
                let t0 = Instant::now();
                let cpu0 = cpu_ticks(pid);
                let got: String = $run;
                let during = legit.window(t0, Instant::now());
                let cores = (cpu_ticks(pid) - cpu0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
                let rss = peak.take();
                let line = format!(
                    "{:<22} | {:<70} | {:>5} req, {} failed, p99 {:.2} ms (baseline {:.2} ms, {:.2}x) | {:.0} MB, {:.2} cores",
                    $name, got, during.0, during.1, during.2, base.2, during.2 / base.2, rss, cores
                );
                println!("{line}");
                rows.push(line);
                if during.0 == 0 {
                    missed.push(format!("{}: the legitimate client made no request at all", $name));
                }
                if during.1 > 0 {
                    missed.push(format!("{}: the legitimate client had {} failures", $name, during.1));
                }
                if during.2 > 2.0 * base.2 {
                    missed.push(format!(
                        "{}: the legitimate client's p99 {:.2} ms is {:.2}x its baseline (target <= 2x)",
                        $name, during.2, during.2 / base.2
                    ));
                }
                rss
            }};
        }

        // `ATTACK_RUNTIME=key=value&...`: runtime keys set through Envoy's admin before the
        // attacks (for trying a defence's tuning; the shipped values are the config's).
        if let Ok(q) = std::env::var("ATTACK_RUNTIME") {
            support::envoy::admin_client(&stand.settings)
                .post(format!("http://envoy/runtime_modify?{q}"))
                .send()
                .await
                .unwrap();
            println!("runtime: {q}");
        }
        let before = stat(&stand, "header_timeout", "http.web.downstream_rq_header_timeout").await;
        let u = url.clone();
        if only("slowloris") {
        attack!("slowloris (4,000)", {
            tokio::task::spawn_blocking(move || {
                slowhttptest(&["-H", "-c", "4000", "-r", "1000", "-i", "3"], &u, seconds)
            })
            .await
            .unwrap()
        });
        let cut = stat(&stand, "header_timeout", "http.web.downstream_rq_header_timeout").await - before;
        println!("  closed at the header time limit: {cut}");
        if cut < 3600 {
            missed.push(format!(
                "slowloris: only {cut} of 4,000 slow connections closed at the header time limit"
            ));
        }
        }
        let u = url.clone();
        if only("slowpost") {
        attack!("slow POST (4,000)", {
            tokio::task::spawn_blocking(move || {
                slowhttptest(
                    &["-B", "-c", "4000", "-r", "1000", "-i", "3", "-s", "100000"],
                    &u,
                    seconds,
                )
            })
            .await
            .unwrap()
        });
        }
        if only("reset") {
        let rss = attack!("HTTP/2 rapid reset", {
            let (streams, closed) = attacker(move || rapid_reset(front, 4, seconds)).await;
            format!("{streams} streams opened and cancelled; Envoy closed {closed} connections")
        });
        let premature = stat(&stand, "premature", "http.web.downstream_rq_too_many_premature_resets").await;
        println!("  connections closed for premature resets (Envoy's count): {premature}");
        if rss > 256.0 {
            missed.push(format!("rapid reset: Envoy's peak RSS {rss:.0} MB (target < 256)"));
        }
        if premature == 0 {
            missed.push("rapid reset: no connection closed for premature resets".into());
        }
        }
        if only("flood") {
        let rss = attack!("HTTP/2 stream flood", {
            let open = attacker(move || stream_flood(front, 40, seconds)).await;
            format!("{open} streams held open on 40 connections (100 each allowed)")
        });
        if rss > 256.0 {
            missed.push(format!("stream flood: Envoy's peak RSS {rss:.0} MB (target < 256)"));
        }
        }
        drop(legit);
        drop(peak);
        println!("Envoy idle RSS {idle:.0} MB");
        drop(stand);

        // 5. Memory pressure, on an Envoy with a small heap limit.
        if !only("memory") {
            return;
        }
        let (slow_port, _backend) = never_reads().await;
        let stand = Stand::start(|s| {
            s.envoy.concurrency = Some(2);
            s.envoy.max_heap_mb = Some(64);
        })
        .await;
        stand.apply_ok(&spec(front, slow_port)).await;
        let pid = stand.status().await.envoy_pid.expect("Envoy runs");
        let idle = rss_mb(pid);
        let peak = Peak::start(pid);
        let t0 = Instant::now();
        // The uploads run for the attack's length on their own thread; the runtime's end
        // closes every one of them.
        let load = tokio::task::spawn_blocking(move || {
            on_own_thread(async move {
                let tasks = uploads(front, 2000);
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                for t in tasks {
                    t.abort();
                }
            })
        });
        let mut fired: Option<f64> = None;
        // When the heap came back under 95 % after the actions fired, the uploads still going.
        let mut back: Option<f64> = None;
        let mut timeline = Vec::new();
        while !load.is_finished() {
            let s = support::envoy::stats(&stand.settings, "overload").await;
            let pressure = s("overload.envoy.resource_monitors.fixed_heap.pressure");
            if fired.is_none() && s("overload.envoy.overload_actions.disable_http_keepalive.active") == 1 {
                fired = Some(t0.elapsed().as_secs_f64());
            }
            if fired.is_some() && back.is_none() && pressure < 95 {
                back = fired.map(|f| t0.elapsed().as_secs_f64() - f);
            }
            timeline.push(format!(
                "{:>4.1}s heap {pressure}% reset {} shed {} rss {:.0}",
                t0.elapsed().as_secs_f64(),
                s("envoy.overload_actions.reset_high_memory_stream.count"),
                s("overload.envoy.load_shed_points.tcp_listener_accept.shed_load_count"),
                rss_mb(pid)
            ));
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let _ = load.await;
        println!("memory pressure, each second: {}", timeline.join("; "));
        let rss = peak.take();
        // Recovery: the uploads are gone, their buffers freed; every action lets go.
        let r0 = Instant::now();
        let recovered = loop {
            let s = support::envoy::stats(&stand.settings, "overload").await;
            if s("overload.envoy.overload_actions.disable_http_keepalive.active") == 0
                && s("overload.envoy.overload_actions.stop_accepting_requests.active") == 0
            {
                break Some(r0.elapsed());
            }
            if r0.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let line = format!(
            "{:<22} | 2,000 uploads to a backend that never reads: actions fired after {} | peak RSS {rss:.0} MB (idle {idle:.0}, heap limit 64 MiB) | every action off again {:?} after the load stopped",
            "memory pressure", fired.map_or("never".to_owned(), |t| format!("{t:.1} s")), recovered
        );
        println!("{line}");
        rows.push(line);
        match back {
            Some(b) if b <= 10.0 => println!(
                "  the heap was back under 95 % {b:.1} s after the actions fired, the uploads still going (target <= 10 s): met"
            ),
            _ => missed.push(format!(
                "memory pressure: the heap not back under 95 % within 10 s of the actions firing ({back:?})"
            )),
        }
        if fired.is_none() {
            missed.push("memory pressure: the overload actions never fired".into());
        }
        if rss > 64.0 + idle {
            missed.push(format!(
                "memory pressure: Envoy's peak RSS {rss:.0} MB above its heap limit plus idle ({:.0} MB)",
                64.0 + idle
            ));
        }
        if recovered.is_none() {
            missed.push("memory pressure: the overload actions still on 60 s after the load stopped".into());
        }
    });
    println!("\n| attack | what the attacker got | the legitimate client | Envoy peak RSS, CPU |");
    for r in &rows {
        println!("{r}");
    }
    if missed.is_empty() {
        println!("\nverdict: every target met");
    } else {
        println!("\nverdict: missed:");
        for m in &missed {
            println!("- {m}");
        }
        std::process::exit(1);
    }
}
