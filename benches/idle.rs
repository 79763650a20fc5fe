//! Idle memory: the resident set of the agent (`vpsie-lb-agent run`, following the API stand-in)
//! and of the supervisor (`vpsie-lb-agent supervise`, with its real Envoy) once the spec is
//! applied and nothing changes, for a spec of 10 and of 1,000 backends.
//!
//! `make bench-idle` measures the binary that ships (the `image` profile, through `AGENT_BIN`);
//! `cargo bench --bench idle` alone measures the release build. Each process's `VmRSS` (and its
//! anonymous and file-backed parts) is read from /proc once a second for 10 s after the agent's
//! poll was answered "not modified" (the API stand-in sends ETags); the table shows the median
//! and the largest sample, and which binary ran. Envoy's figure is printed beside them for scale.
//! The project's target is at most 15 MB for the agent and for the supervisor; this prints
//! figures and asserts nothing about them. The backends are closed ports on 127.1.0.0/16:
//! nothing leaves the machine.

#[path = "../tests/it/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::sim::{agent_process, agent_settings, Sim};
use support::supervisor::Stand;

/// The spec the agent follows: one http rule with `n` backends.
fn spec(n: usize) -> Value {
    let backends: Vec<Value> = (0..n)
        .map(|i| {
            json!({"identifier": format!("b{i}"), "ip": format!("127.1.{}.{}", i / 250, i % 250 + 1),
                   "port": 1})
        })
        .collect();
    json!({"identifier": support::sim::LB, "lbName": "idle", "rules": [
        {"ruleId": "web", "scheme": "http", "frontPort": Stand::front_port(), "backPort": 1,
         "backends": backends}
    ]})
}

/// `VmRSS`, `RssAnon` and `RssFile` of a process, in KiB.
fn rss(pid: u32) -> Option<[u64; 3]> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some([field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?])
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Row {
    name: &'static str,
    samples: Vec<[u64; 3]>,
}

impl Row {
    fn print(&mut self, backends: usize) {
        self.samples.sort_by_key(|s| s[0]);
        let median = self.samples[self.samples.len() / 2];
        let max = self.samples[self.samples.len() - 1];
        println!(
            "| {backends} | {} | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MB |",
            self.name,
            mb(median[0]),
            mb(median[1]),
            mb(median[2]),
            mb(max[0]),
        );
    }
}

async fn measure(n: usize) -> Vec<Row> {
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(n));
    let settings = agent_settings(&stand, &sim);
    let agent = agent_process(&stand, &settings)();
    // Applied, then answered "not modified" (ETag): the agent is idle from here on.
    support::sim::wait_polls(&settings, "not_modified").await;
    let status = stand.status().await;
    let envoy = status
        .envoy_pid
        .unwrap_or_else(|| panic!("no Envoy runs: {status:?}"));
    let pids = [
        ("agent", agent.0.id()),
        ("supervisor", stand.supervisor_pid()),
        ("envoy (for scale)", envoy),
    ];
    let mut rows: Vec<Row> = pids
        .iter()
        .map(|(name, _)| Row {
            name,
            samples: Vec::new(),
        })
        .collect();
    // One sample a second: the pace of the agent's polls, so each sample sees a poll's aftermath.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        tick.tick().await;
        for ((name, pid), row) in pids.iter().zip(&mut rows) {
            let s = rss(*pid).unwrap_or_else(|| panic!("the {name} (pid {pid}) is gone"));
            row.samples.push(s);
        }
    }
    drop(agent);
    rows
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument, if any, is ignored.
    println!("idle resident memory, 10 one-second samples after the spec is applied and unchanged");
    println!("| backends | process | RSS (median) | anonymous | file-backed | RSS (max) |");
    println!("|---|---|---|---|---|---|");
    for n in [10, 1_000] {
        for mut row in measure(n).await {
            row.print(n);
        }
    }
    println!("binary: {}", support::agent_bin().display());
    println!("target: at most 15 MB for the agent and for the supervisor");
}
