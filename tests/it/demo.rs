//! `make run`'s demo (scripts/demo.sh) as a newcomer meets it: it starts even when another Envoy
//! holds the example's base id, and every command it prints works when pasted into a new shell
//! that has nothing of the demo's environment, in another directory.
//! (It uses the demo's fixed ports 18080-18103 and 19100-19101 and its folder run/demo.)

use crate::support::envoy_bin;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `line` in a fresh bash in another directory than the repository, with only PATH and
/// HOME set.
fn paste(line: &str) -> (bool, String) {
    let out = Command::new("bash")
        .args(["-c", line])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_command_the_demo_prints_works_when_pasted() {
    // The binaries `cargo test` built (the demo defaults to the release build `make run` makes).
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vpsie-lb-agent"));
    let bin_dir = bin
        .parent()
        .unwrap()
        .strip_prefix(repo())
        .unwrap()
        .to_owned();
    // A demo that cannot serve (its front port held) says so, and prints no banner.
    let held = std::net::TcpListener::bind(("127.0.0.1", 18080)).unwrap();
    let failed = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(repo())
        .env("BIN", &bin_dir)
        .env("ENVOY_BIN", envoy_bin())
        .env("DEMO_WAIT_S", "3")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    drop(held);
    let (out, err) = (
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr),
    );
    assert!(!failed.status.success(), "{out}\n{err}");
    assert!(!out.contains("demo is running"), "no banner: {out}");
    assert!(
        err.contains("does not serve on http://127.0.0.1:18080/")
            && err.contains("listener port 18080 on 127.0.0.1 cannot be bound"),
        "it says what failed: {err}"
    );

    // Another Envoy holds the example's base id (7), as an installed load balancer would.
    let squatter = crate::support::envoy::Squatter::start(7);
    let mut demo = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(repo())
        .env("BIN", &bin_dir)
        .env("ENVOY_BIN", envoy_bin())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = nix::unistd::Pid::from_raw(demo.id() as i32);
    // Read the banner on a thread, so the deadline below holds even if the demo hangs.
    let (tx, rx) = mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        // Read to the end: the demo prints again while it stops, and a closed pipe would
        // kill it (SIGPIPE) before it has stopped what it started.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let end = line.contains("Ctrl-C stops everything");
                banner.push(line);
                if end {
                    break;
                }
            }
            Err(_) => {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                panic!("the demo printed no banner within 120 s: {banner:#?}");
            }
        }
    }
    // The commands: indented lines that start with a program the demo tells people to run.
    let commands: Vec<String> = banner
        .iter()
        .map(|l| l.trim())
        .filter(|l| {
            l.starts_with("curl ")
                || l.starts_with(&format!("{}/", repo().join(&bin_dir).display()))
        })
        .map(str::to_owned)
        .collect();
    let mut failures = Vec::new();
    for c in &commands {
        // The first request may race the health check of the second backend: retry a few
        // times, each an observable answer, never a sleep.
        let mut last = (false, String::new());
        for _ in 0..50 {
            last = paste(c);
            if last.0 {
                break;
            }
        }
        if !last.0 {
            failures.push(format!("{c}\n  -> {}", last.1));
        }
    }
    let status = commands
        .iter()
        .find(|c| c.contains(" status ") && !c.contains("--json"));
    let json = commands.iter().find(|c| c.contains("--json"));
    let summary = status.map(|c| paste(c).1).unwrap_or_default();
    let full = json.map(|c| paste(c).1).unwrap_or_default();

    // Ctrl-C, as the banner says: the demo stops everything it started.
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).unwrap();
    let stopped = demo.wait().unwrap();
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    drop(squatter);

    assert!(
        failures.is_empty(),
        "commands that failed:\n{}",
        failures.join("\n")
    );
    assert!(
        commands.len() >= 4,
        "the demo prints its commands: {banner:#?}"
    );
    assert!(
        banner.iter().any(|l| l.contains("Envoy base id 8")),
        "the demo took the next free base id: {banner:#?}"
    );
    assert!(summary.contains("Envoy       LIVE, epoch 0"), "{summary}");
    assert!(summary.contains("Last poll   "), "{summary}");
    assert!(summary.contains("Events      "), "{summary}");
    let v: serde_json::Value =
        serde_json::from_str(&full).unwrap_or_else(|e| panic!("{e}: {full}"));
    assert_eq!(v["supervisor"]["envoy_state"], "LIVE", "{full}");
    assert!(
        stopped.code().is_some(),
        "the demo ends by itself: {stopped:?}"
    );
    if std::net::TcpStream::connect(("127.0.0.1", 18080)).is_ok() {
        // Seen once in a loaded full run and never alone: say who still listens and what the
        // supervisor did, so that the next time explains itself.
        let tail = |f: &str| {
            let text = std::fs::read_to_string(repo().join("run/demo").join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let who = Command::new("ss")
            .args(["-ltnp", "sport = :18080"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "Envoy stopped with the demo, but 127.0.0.1:18080 still accepts:\n{who}\nsupervisor log:\n{}\nenvoy log:\n{}",
            tail("supervisor.log"),
            tail("envoy.log")
        );
    }
}
