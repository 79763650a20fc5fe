//! What the benchmarks that drive load share: Debian's `wrk` and `h2load` run and read, and the
//! CPU time of the process under test (with its children, for nginx's workers).

use std::process::Command;

/// One load run: requests per second, latency percentiles, and the CPU time the process under
/// test spent per request (filled in by the caller, who knows the process).
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us: f64,
}

/// CPU time (user + system) of process `pid` and its children (one level: nginx's workers) so
/// far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let own = |pid: &str| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        let Some(at) = stat.rfind(')') else {
            return 0;
        };
        let f: Vec<&str> = stat[at + 2..].split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        n(11) + n(12)
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let ticks: u64 = own(&pid.to_string()) + children.split_whitespace().map(own).sum::<u64>();
    // The clock tick, asked once (not a process spawned per measurement).
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    });
    ticks as f64 / hz
}

/// A latency as wrk and h2load print it: a number with a unit (us, ms, s).
pub fn parse_latency(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// `wrk -t1 -c<conns> --latency` for `seconds` against `url`, with `extra` arguments (a header,
/// say). Panics on any error or non-2xx answer: a benchmark of failures measures nothing.
pub fn wrk(url: &str, conns: u32, seconds: u64, extra: &[&str]) -> Round {
    let out = Command::new("wrk")
        .args(["-t1", "--latency"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{seconds}s"))
        .args(extra)
        .arg(url)
        .output()
        .expect("wrk is required: WITH_WRK=1 scripts/install-test-tools.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let line = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
    };
    let rps = line("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"));
    let p = |q: &str| {
        line(q)
            .and_then(parse_latency)
            .unwrap_or_else(|| panic!("no {q} in wrk's output: {text}"))
    };
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw errors: {text}"
    );
    Round {
        rps,
        p50_ms: p("50%"),
        p99_ms: p("99%"),
        cpu_us: 0.0,
    }
}

/// A number from the environment (a benchmark's size or length), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
