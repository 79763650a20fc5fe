//! Faults of the machine itself, with the real agent, supervisor and Envoy: each one gives a
//! clear error, the last good config keeps serving, no state or event is lost, and the agent
//! recovers by itself when the fault goes. Needs root (the tests mount their own tmpfs).

use crate::support::sim::{agent_metric, agent_process, agent_settings, client, Sim, LB};
use crate::support::supervisor::Stand;
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of `kib` KiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(kib: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (these tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with one file until it refuses more; returns that file.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                return filler;
            }
        }
    }
}

/// What goes wrong with a disk, and how it is put right.
#[derive(Clone, Copy, Debug)]
enum DiskFault {
    Full,
    ReadOnly,
}

impl Tmpfs {
    fn remount(&self, how: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(self.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "cannot remount {how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Breaks the filesystem; the returned closure puts it right.
    fn break_it(&self, fault: DiskFault) -> impl FnOnce(&Tmpfs) {
        match fault {
            DiskFault::Full => {
                let filler = self.fill();
                Box::new(move |_: &Tmpfs| std::fs::remove_file(&filler).unwrap())
                    as Box<dyn FnOnce(&Tmpfs)>
            }
            DiskFault::ReadOnly => {
                self.remount("ro");
                Box::new(|t: &Tmpfs| t.remount("rw"))
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A child process killed (and reaped) when dropped, so that a failing test leaves no agent
/// running behind it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spec(front: u16, up: &Upstream) -> Value {
    json!({"identifier": LB, "lbName": "faults", "rules": [{"ruleId": "web", "scheme": "http",
        "frontPort": front, "backPort": 1,
        "backends": [{"identifier": "b", "ip": "127.0.0.1", "port": up.port()}]}]})
}

/// The body of `GET /` through the load balancer.
async fn served_by(front: u16) -> String {
    let url = format!("http://127.0.0.1:{front}/");
    match client().get(&url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("error: {e}"),
    }
}

/// Waits for `what` to hold, polling every 50 ms, for at most 20 s.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's state directory on a full filesystem: a spec change is still applied and its
/// `config_applied` still reaches the API (sent from memory), the metric says the queue is not
/// on disk, and once space is back the file catches up by itself: after a kill -9 the agent
/// resends nothing and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_loses_no_event_and_catches_up() {
    state_disk_fault(DiskFault::Full).await;
}

/// As above, with the state directory's filesystem read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_disk_loses_no_event_and_catches_up() {
    state_disk_fault(DiskFault::ReadOnly).await;
}

async fn state_disk_fault(fault: DiskFault) {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &u1));
    let disk = Tmpfs::mount(256);
    let mut settings = agent_settings(&stand, &sim);
    settings.state_dir = disk.path().join("agent");
    let start_agent = agent_process(&stand, &settings);
    let agent = start_agent();
    let applied = |n: usize| {
        let sim = &sim;
        move || async move {
            let events = sim.events().await;
            events
                .iter()
                .filter(|e| e["type"] == "config_applied")
                .count()
                >= n
        }
    };
    until("the first config_applied", applied(1)).await;
    until("u1 serves", || async { served_by(front).await == "u1" }).await;

    let repair = disk.break_it(fault);
    sim.write_spec(&spec(front, &u2));
    until("u2 serves", || async { served_by(front).await == "u2" }).await;
    until("the second config_applied, sent from memory", applied(2)).await;
    let port = settings.metrics.port;
    until("the metric says the queue is not on disk", || async {
        agent_metric(port, "vpsie_lb_agent_events_unsaved").await == Some(1.0)
    })
    .await;

    // The disk takes writes again: the file catches up within a poll or two, and holds nothing
    // left to send.
    repair(&disk);
    until("the queue is on disk again", || async {
        agent_metric(port, "vpsie_lb_agent_events_unsaved").await == Some(0.0)
    })
    .await;
    let queue: Value =
        serde_json::from_slice(&std::fs::read(settings.event_queue_path()).unwrap()).unwrap();
    assert_eq!(queue["events"], json!([]), "{queue}");

    // A restart sends nothing twice and misses nothing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(agent);
    let _agent = start_agent();
    until("the restarted agent's agent_started", || async {
        let events = sim.events().await;
        events
            .iter()
            .filter(|e| e["type"] == "agent_started")
            .count()
            >= 2
    })
    .await;
    let events = sim.events().await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "agent_started",
            "config_applied",
            "config_applied",
            "agent_started"
        ],
        "{events:#?}"
    );
    assert_eq!(served_by(front).await, "u2");
}

/// The supervisor's config directory on a full filesystem: a new spec cannot be stored, the
/// API hears why (the error names the file and says the disk is full), the last good config
/// keeps serving, and once space is back the agent applies the spec by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_config_disk_keeps_the_last_good_config_and_recovers() {
    config_disk_fault(DiskFault::Full, "No space left on device").await;
}

/// As above, with the config directory's filesystem read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_config_disk_keeps_the_last_good_config_and_recovers() {
    config_disk_fault(DiskFault::ReadOnly, "Read-only file system").await;
}

async fn config_disk_fault(fault: DiskFault, cause: &str) {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let disk = Tmpfs::mount(2048);
    let config_dir = disk.path().join("envoy");
    let stand = Stand::start(|s| s.envoy.config_dir = config_dir.clone()).await;
    let sim = Sim::start(&spec(front, &u1));
    let settings = agent_settings(&stand, &sim);
    let _agent = agent_process(&stand, &settings)();
    until("u1 serves", || async { served_by(front).await == "u1" }).await;

    let repair = disk.break_it(fault);
    sim.write_spec(&spec(front, &u2));
    let failure = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = sim.events().await;
            if let Some(e) = events
                .iter()
                .find(|e| e["type"] != "agent_started" && e["type"] != "config_applied")
            {
                break e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no failure reported: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Not "Envoy is not serving": it is, on the previous config.
    assert_eq!(failure["type"], "reload_failed", "{failure:#}");
    let text = failure["message"].as_str().unwrap();
    assert!(
        text.contains(cause)
            && text.contains(config_dir.to_str().unwrap())
            && text.contains("the previous config still serves"),
        "the report does not say what is wrong: {failure:#}"
    );
    assert_eq!(served_by(front).await, "u1", "the last good config serves");
    // Every poll tries again (1 s apart), and the failure is reported once.
    let port = settings.metrics.port;
    until("three failed polls", || async {
        agent_metric(port, "vpsie_lb_agent_polls_total{result=\"failed\"}")
            .await
            .is_some_and(|n| n >= 3.0)
    })
    .await;
    let failures = sim
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "reload_failed")
        .count();
    assert_eq!(failures, 1);
    assert_eq!(served_by(front).await, "u1");

    repair(&disk);
    until("u2 serves once the disk takes writes", || async {
        served_by(front).await == "u2"
    })
    .await;
    until("its config_applied", || async {
        let events = sim.events().await;
        events
            .iter()
            .filter(|e| e["type"] == "config_applied")
            .count()
            == 2
    })
    .await;
}

/// The supervisor's socket removed from disk (a cleanup of /run, a mistaken rm): within a few
/// seconds the supervisor listens on a new one, and what runs is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_supervisor_socket_comes_back_by_itself() {
    let up = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let applied = stand.apply_ok(&spec(front, &up)).await;
    std::fs::remove_file(&stand.settings.supervisor.socket).unwrap();
    assert!(
        vpsie_lb_agent::supervisor::client::status(&stand.settings)
            .await
            .is_err(),
        "the socket is gone"
    );
    let settings = &stand.settings;
    until(
        "the supervisor answers on its socket again",
        || async move {
            vpsie_lb_agent::supervisor::client::status(settings)
                .await
                .is_ok()
        },
    )
    .await;
    let s = stand.status().await;
    assert_eq!(s.hash, Some(applied.hash), "{s:?}");
    assert_eq!(served_by(front).await, "u1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stand.settings.supervisor.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the new socket is private");
}

/// Envoy's binary missing: a new spec cannot be checked, the API hears why (the path), the
/// running Envoy keeps serving the last good config, and once the binary is back the agent
/// applies the spec by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_envoy_binary_keeps_the_last_good_config_and_recovers() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let bin_dir = tempfile::tempdir().unwrap();
    let link = bin_dir.path().join("envoy");
    std::os::unix::fs::symlink(crate::support::envoy_bin(), &link).unwrap();
    let stand = Stand::start(|s| s.envoy.binary = link.clone()).await;
    let sim = Sim::start(&spec(front, &u1));
    let settings = agent_settings(&stand, &sim);
    let _agent = agent_process(&stand, &settings)();
    until("u1 serves", || async { served_by(front).await == "u1" }).await;

    std::fs::remove_file(&link).unwrap();
    sim.write_spec(&spec(front, &u2));
    until("the failure reaches the API", || async {
        sim.events().await.iter().any(|e| {
            e["type"] == "reload_failed"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(link.to_str().unwrap()))
        })
    })
    .await;
    assert_eq!(served_by(front).await, "u1", "the last good config serves");

    std::os::unix::fs::symlink(crate::support::envoy_bin(), &link).unwrap();
    until("u2 serves once the binary is back", || async {
        served_by(front).await == "u2"
    })
    .await;
}

/// An Envoy binary that hangs when asked its version (a broken upgrade) holds nothing up: the
/// agent gives up on the question after its time limit, reports the version unknown, and
/// applies the spec; the hung process is killed, not left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_binary_that_hangs_holds_nothing_up() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &u1));
    let mut settings = agent_settings(&stand, &sim);
    let marker = format!("hang-{}", std::process::id());
    let hanging = stand.dir.path().join("envoy-hangs");
    std::fs::write(
        &hanging,
        format!("#!/bin/bash\nexec -a {marker} sleep 600\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &hanging,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The agent's own view of the binary; the supervisor runs the real one.
    settings.envoy.binary = hanging;
    let _agent = agent_process(&stand, &settings)();
    let deadline =
        Instant::now() + vpsie_lb_agent::envoy::process::QUERY_TIMEOUT + Duration::from_secs(20);
    while served_by(front).await != "u1" {
        assert!(Instant::now() < deadline, "the spec was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until("agent_started reaches the API", || async {
        sim.events()
            .await
            .iter()
            .any(|e| e["type"] == "agent_started" && e["metadata"]["envoy_version"] == "unknown")
    })
    .await;
    let left = Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "the hung process was left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Slow clients on the agent's metrics port (connections that send half a request head and then
/// nothing): the server serves at most its limit at once, closes each after its head timeout,
/// and a real scrape still gets its answer while the agent keeps polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_the_metrics_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use vpsie_lb_agent::agent::{METRICS_CONNECTIONS, METRICS_HEAD_TIMEOUT};
    let up = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &up));
    let settings = agent_settings(&stand, &sim);
    let _agent = agent_process(&stand, &settings)();
    let port = settings.metrics.port;
    let polls = || async move {
        agent_metric(port, "vpsie_lb_agent_polls_total{result=\"not_modified\"}")
            .await
            .unwrap_or(0.0)
    };
    until("the agent polls", || async { polls().await >= 1.0 }).await;
    let before = polls().await;

    // More slow clients than the server serves at once, fewer than the listen backlog holds.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..METRICS_CONNECTIONS + 36 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // A real scrape gets through once the first slow clients have timed out.
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(METRICS_HEAD_TIMEOUT * 3)
        .send()
        .await
        .expect("the scrape is answered")
        .text()
        .await
        .unwrap();
    assert!(text.contains("vpsie_lb_agent_polls_total"), "{text}");
    let scraped = started.elapsed();
    // Every slow connection is closed by the server, none kept for ever; and not all at once:
    // the first ones were served (and timed out) before the others were accepted.
    let mut closed_at = Vec::new();
    for (i, s) in slow.iter_mut().enumerate() {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(METRICS_HEAD_TIMEOUT * 4, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    // A 408 before the close is fine.
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(read.is_ok(), "slow connection {i} is still open");
        closed_at.push(started.elapsed());
    }
    println!(
        "scrape answered after {scraped:?} behind {} slow clients; first closed at {:?}, last at {:?}",
        slow.len(),
        closed_at[0],
        closed_at[closed_at.len() - 1]
    );
    assert!(closed_at[0] >= METRICS_HEAD_TIMEOUT - Duration::from_millis(500));
    assert!(
        closed_at[closed_at.len() - 1] >= METRICS_HEAD_TIMEOUT * 2 - Duration::from_millis(500)
    );
    assert!(
        polls().await > before,
        "the agent kept polling behind the slow clients"
    );
}

/// The stored config the supervisor restarts from, truncated mid-write (a crash of the machine
/// while it was written, a disk error): a restarted supervisor says what is wrong, and the load
/// balancer serves the spec again by itself, without anyone touching the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_stored_config_is_recovered_by_itself() {
    let up = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let mut stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &up));
    let settings = agent_settings(&stand, &sim);
    let _agent = agent_process(&stand, &settings)();
    until("u1 serves", || async { served_by(front).await == "u1" }).await;
    // Envoy serves a moment before the supervisor has confirmed the apply.
    until("the apply is confirmed", || async {
        stand.status().await.hash.is_some()
    })
    .await;
    let hash = stand.status().await.hash.unwrap();

    stand.signal_supervisor(nix::sys::signal::Signal::SIGINT);
    assert!(stand.wait_supervisor(Duration::from_secs(10)));
    let store = vpsie_lb_agent::store::ConfigStore::new(&stand.settings.envoy.config_dir);
    let stored = store.config_path(&hash);
    let text = std::fs::read(&stored).unwrap();
    std::fs::write(&stored, &text[..text.len() / 2]).unwrap();
    stand.spawn_supervisor().await;
    until("u1 serves again", || async {
        served_by(front).await == "u1"
    })
    .await;
    let log = stand.log();
    assert!(
        log.contains(&format!(
            "the stored config {} does not read back",
            stored.display()
        )),
        "the supervisor does not say what is wrong:\n{log}"
    );
}

/// libfaketime, which moves the wall clock of the processes it is preloaded into (and of no
/// other): Debian's `faketime` package, which `make test` installs.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file());
    found
        .expect("libfaketime is required for this test: install Debian's faketime (make test does)")
}

/// The wall clock jumping under the agent (libfaketime moves the agent's clock only; its
/// monotonic clock, which times its polls and retries, runs on as a real jump leaves it):
/// forward past a certificate's expiry, a spec change is refused at the certificate with the
/// date it expired, the last good config serving; set right again, the same spec is applied
/// without any change of it. Then back before the certificate's start, likewise. Every event
/// arrives once, with the clock the agent had when it happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jump_refuses_clearly_keeps_serving_and_recovers() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let tls_port = Stand::front_port();
    // Valid from yesterday for ten days.
    let cert = crate::support::certs::cert_valid(&["clock.test"], -1, 10);
    let spec = |up: &Upstream| {
        json!({"identifier": LB, "lbName": "clock", "rules": [
            {"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
             "backends": [{"identifier": "b", "ip": "127.0.0.1", "port": up.port()}]},
            {"ruleId": "secure", "scheme": "https", "frontPort": tls_port, "backPort": 1,
             "tls": {"certificateId": "clock", "certificatePem": cert.cert_pem,
                     "privateKeyPem": cert.key_pem},
             "backends": [{"identifier": "b", "ip": "127.0.0.1", "port": up.port()}]}]})
    };
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(&u1));
    let mut settings = agent_settings(&stand, &sim);
    // Envoy does not run under libfaketime (it hangs at start): the agent asks its version
    // through a wrapper that leaves it out. Only the agent's clock jumps.
    let wrapper = stand.dir.path().join("envoy-real-clock");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nunset LD_PRELOAD\nexec '{}' \"$@\"\n",
            crate::support::envoy_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    settings.envoy.binary = wrapper;
    let _ = agent_process(&stand, &settings); // writes the agent's settings file
    let clock = stand.dir.path().join("clock");
    std::fs::write(&clock, "+0\n").unwrap();
    let _agent = Running(
        Command::new(crate::support::agent_bin())
            .args(["run", "--config"])
            .arg(stand.dir.path().join("agent-run.yaml"))
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    until("u1 serves", || async { served_by(front).await == "u1" }).await;
    let today = time::OffsetDateTime::now_utc().date();
    let day_of = |e: &Value| -> time::Date {
        let ts = e["timestamp"].as_str().unwrap_or_default();
        let part = |r: std::ops::Range<usize>| -> i32 {
            ts.get(r)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("not RFC 3339: {ts}"))
        };
        let month = time::Month::try_from(part(5..7) as u8).unwrap();
        time::Date::from_calendar_date(part(0..4), month, part(8..10) as u8).unwrap()
    };
    let events_of = |kind: &'static str| {
        let sim = &sim;
        async move {
            sim.events()
                .await
                .into_iter()
                .filter(|e| e["type"] == kind)
                .collect::<Vec<Value>>()
        }
    };

    // Forward, past the certificate's end: the change is refused at the certificate.
    std::fs::write(&clock, "+30d\n").unwrap();
    sim.write_spec(&spec(&u2));
    until("the refusal reaches the API", || async {
        !events_of("config_rejected").await.is_empty()
    })
    .await;
    let refused = events_of("config_rejected").await.remove(0);
    let text = refused.to_string();
    assert!(
        text.contains("rules[1].tls") && text.contains("expired on"),
        "names the certificate and its expiry: {text}"
    );
    assert!(
        day_of(&refused) >= today + time::Duration::days(29),
        "{refused}"
    );
    assert_eq!(served_by(front).await, "u1", "the last good config serves");

    // Set right: the same spec, unchanged at the API, is judged again and applied.
    std::fs::write(&clock, "+0\n").unwrap();
    until("u2 serves once the clock is right", || async {
        served_by(front).await == "u2"
    })
    .await;

    // Back, before the certificate's start: refused likewise, then applied once set right.
    std::fs::write(&clock, "-3d\n").unwrap();
    sim.write_spec(&spec(&u1));
    until("the second refusal reaches the API", || async {
        events_of("config_rejected").await.len() == 2
    })
    .await;
    let refused = events_of("config_rejected").await.remove(1);
    assert!(
        refused.to_string().contains("is not valid before"),
        "{refused}"
    );
    assert!(
        day_of(&refused) <= today - time::Duration::days(2),
        "{refused}"
    );
    assert_eq!(served_by(front).await, "u2", "the last good config serves");
    std::fs::write(&clock, "+0\n").unwrap();
    until("u1 serves once the clock is right", || async {
        served_by(front).await == "u1"
    })
    .await;

    // Every event once: started, three applies (u1, u2, u1), two refusals.
    until("the last apply reaches the API", || async {
        events_of("config_applied").await.len() == 3
    })
    .await;
    let events = sim.events().await;
    let mut kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "agent_started",
            "config_applied",
            "config_applied",
            "config_applied",
            "config_rejected",
            "config_rejected"
        ],
        "{events:#?}"
    );
}
