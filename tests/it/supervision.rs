//! The supervisor with the real Envoy, under load, on loopback: hot restarts that drop nothing,
//! runtime failures rolled back, crashes restarted, clients killed mid-apply, graceful stop, and a
//! supervisor that comes back and takes over the Envoy it left running.

use crate::support::load::Load;
use crate::support::supervisor::Stand;
use crate::support::upstream::{self, Upstream};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vpsie_lb_agent::command::Failure;
use vpsie_lb_agent::supervisor::protocol::{ApplyMethod, ApplyResult};

fn backend(id: &str, up: &Upstream) -> Value {
    json!({"identifier": id, "ip": "127.0.0.1", "port": up.port()})
}

/// Two specs that differ in backends and routes, on the same front port.
fn specs(front: u16, ups: &[Upstream; 3]) -> (Value, Value) {
    let a = json!({"identifier": "lb-sup", "lbName": "sup", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [backend("u1", &ups[0]), backend("u2", &ups[1])]
    }]});
    let b = json!({"identifier": "lb-sup", "lbName": "sup", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
        "algorithm": "leastconn",
        "backends": [backend("u2", &ups[1]), backend("u3", &ups[2])],
        "domains": [{"domainId": "x", "domainName": "x.test", "backends": [backend("u1", &ups[0])]}]
    }]});
    (a, b)
}

pub(crate) async fn upstreams() -> [Upstream; 3] {
    [
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
        upstream::http("u3", None).await,
    ]
}

/// Applies alternating between two specs under load, live into the one epoch.
/// `SUPERVISION_APPLIES` scales it (CI: 10; the benchmark runs 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_under_load_drop_nothing() {
    let applies: usize = std::env::var("SUPERVISION_APPLIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, b) = specs(front, &ups);
    let stand = Stand::start(|_| {}).await;
    let first = stand.apply_ok(&a).await;
    assert_eq!(first.result, ApplyResult::Applied);
    assert_eq!(first.epoch, Some(0));

    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 4, 2);
    for i in 1..=applies {
        let spec = if i % 2 == 1 { &b } else { &a };
        let out = stand.apply_ok(spec).await;
        assert_eq!(out.result, ApplyResult::Applied);
        assert_eq!(out.method, Some(ApplyMethod::Live), "apply {i}");
        assert_eq!(out.epoch, Some(0), "no new epoch");
    }
    load.more(200).await;
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    assert!(counts.ok > 100, "the load ran: {counts:?}");
    let status = stand.status().await;
    assert_eq!(
        status.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
    assert_eq!(status.epoch, Some(0));
    // The resources' version moves with every apply, the epoch does not.
    let r = status
        .resources
        .clone()
        .expect("the live resources are shown");
    assert_eq!(r.live_applies, applies as u64);
    assert_eq!(Some(&r.hash), status.hash.as_ref());
    assert_eq!((r.lds_version.len(), r.cds_version.len()), (16, 16));
    assert!(
        status.good.len() <= 6,
        "at most 5 backups are kept: {:?}",
        status.good
    );
}

/// A spec that passes `envoy --mode validate` but cannot be served: one of its ports is held by
/// another process. With the preflight check (the default) it is refused before anything is
/// written; without it, Envoy itself rejects the new listener and the supervisor puts the last
/// good resources back. Either way traffic carries on and the next good spec applies live.
async fn held_port_case(preflight: bool) {
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, b) = specs(front, &ups);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let mut bad = a.clone();
    bad["rules"].as_array_mut().unwrap().push(json!({
        "ruleId": "extra", "scheme": "tcp", "frontPort": held_port, "backPort": ups[0].port(),
        "backends": [{"identifier": "t", "ip": "127.0.0.1"}]
    }));
    bad["rules"][0]["backends"][0]["weight"] = json!(7);
    let stand = Stand::start(|s| s.supervisor.preflight_ports = preflight).await;
    let good = stand.apply_ok(&a).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 4, 2);
    load.more(50).await;

    let err = stand.apply(&bad).await.unwrap_err();
    assert!(matches!(err, Failure::RolledBack(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&held_port.to_string()),
        "the error names the port: {msg}"
    );

    let status = stand.status().await;
    assert_eq!(
        status.hash,
        Some(good.hash.clone()),
        "the old config serves"
    );
    assert_eq!(
        status.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live,
        "admin answers again"
    );
    let last = status.last_apply.unwrap();
    assert_eq!(last.result, ApplyResult::RolledBack);
    if !preflight {
        // Envoy's own reason, from its admin API.
        let error = last.error.clone().unwrap_or_default();
        assert!(error.contains("Address already in use"), "{error}");
    }

    let next = stand.apply_ok(&b).await;
    assert_eq!(next.result, ApplyResult::Applied);
    assert_eq!(next.method, Some(ApplyMethod::Live));
    assert_eq!(next.epoch, status.epoch, "the next apply goes live");
    load.more(50).await;
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_port_is_refused_before_anything_changes() {
    held_port_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_envoy_rejects_is_rolled_back_live() {
    held_port_case(false).await;
}

/// Whether transparent huge pages are allowed for a process (`PR_SET_THP_DISABLE` not set).
fn thp_enabled(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status"));
    line.trim() == "1"
}

async fn first_success_after(front: u16, start: Instant) -> Duration {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{front}/"))
            .send()
            .await
        {
            if r.status() == 200 {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "envoy never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_envoy_serves_again_within_a_second() {
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, b) = specs(front, &ups);
    let stand = Stand::start(|_| {}).await;
    stand.apply_ok(&a).await;
    let applied = stand.apply_ok(&b).await;
    let before = stand.status().await;
    let pid = before.envoy_pid.unwrap();
    // The supervisor keeps itself off transparent huge pages (idle memory); Envoy, its child,
    // gets the machine's setting back, and so does the one started after the kill (below).
    assert!(!thp_enabled(stand.supervisor_pid()));
    assert!(
        thp_enabled(pid),
        "Envoy inherited the supervisor's THP setting"
    );
    let shm = vpsie_lb_agent::envoy::shm::path(stand.settings.envoy.base_id);
    assert!(shm.exists(), "Envoy uses {}", shm.display());

    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let back = first_success_after(front, killed).await;
    assert!(
        back < Duration::from_secs(1),
        "serving again after {back:?}"
    );

    // Envoy serves a moment before the supervisor has seen it LIVE.
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let s = stand.status().await;
        if s.envoy_pid.is_some() && s.envoy_pid != Some(pid) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the new envoy: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        after.hash,
        Some(applied.hash),
        "the last good config serves"
    );
    assert_eq!(after.epoch, Some(0), "a fresh start is epoch 0");
    assert_eq!(
        after.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
    assert!(thp_enabled(after.envoy_pid.unwrap()));
    // And the next apply goes into that epoch live again.
    let next = stand.apply_ok(&a).await;
    assert_eq!(next.epoch, Some(0));
    assert_eq!(next.method, Some(ApplyMethod::Live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_clients_mid_apply_never_interrupts_traffic() {
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, b) = specs(front, &ups);
    let stand = Stand::start(|_| {}).await;
    stand.apply_ok(&a).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 4, 2);

    let spec_file = stand.dir.path().join("b.json");
    std::fs::write(&spec_file, b.to_string()).unwrap();
    let mut client = std::process::Command::new(env!("CARGO_BIN_EXE_vpsie-lb-agent"))
        .args(["apply", "--spec"])
        .arg(&spec_file)
        .arg("--config")
        .arg(&stand.config_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once its request is in flight: the supervisor has logged its arrival.
    let want = stand.hash_of(&b);
    let arrived = |log: String| {
        log.lines()
            .any(|l| l.contains("apply requested") && l.contains(want.as_str()))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !arrived(stand.log()) {
        assert!(
            Instant::now() < deadline,
            "the apply never reached the supervisor: {}",
            stand.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.kill().unwrap();
    client.wait().unwrap();

    // The supervisor finishes the apply on its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stand.status().await;
        if s.hash.as_ref() == Some(&want) {
            assert_eq!(s.epoch, Some(0), "applied live");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the apply did not finish: {s:?}\n{}",
            stand.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.more(50).await;
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_in_flight_requests_finish() {
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, _) = specs(front, &ups);
    let mut stand = Stand::start(|s| {
        s.envoy.drain_time_s = 3;
        s.envoy.parent_shutdown_time_s = 5;
    })
    .await;
    stand.apply_ok(&a).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{front}/slow"))
                .send()
                .await
        }
    });
    wait_upstream_request_in_flight(&stand).await;
    let stopping = Instant::now();
    stand.signal_supervisor(Signal::SIGTERM);

    let r = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status(), 200);
    assert!(
        stand.wait_supervisor(Duration::from_secs(15)),
        "the supervisor stops"
    );
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "it waited for the request: {took:?}"
    );
    let admin = crate::support::envoy::admin_client(&stand.settings)
        .get("http://envoy-admin/ready")
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(admin.is_err(), "envoy is gone");
}

/// Envoy dies with its supervisor (PR_SET_PDEATHSIG); a restarted supervisor brings the last
/// good config back on its own, over the shared memory the dead Envoy left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_supervisor_brings_back_the_last_good_config() {
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, b) = specs(front, &ups);
    let mut stand = Stand::start(|_| {}).await;
    stand.apply_ok(&a).await;
    let applied = stand.apply_ok(&b).await;
    let old_pid = stand.status().await.envoy_pid.unwrap();

    stand.signal_supervisor(Signal::SIGKILL);
    assert!(stand.wait_supervisor(Duration::from_secs(5)));
    let gone = Instant::now();
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_pid as i32), None).is_ok() {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "envoy outlived its supervisor"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stand.spawn_supervisor().await;
    let back = first_success_after(front, Instant::now()).await;
    let status = stand.status().await;
    assert_eq!(
        status.hash,
        Some(applied.hash),
        "the last good config serves: {status:?}"
    );
    assert_eq!(status.epoch, Some(0));
    assert_eq!(
        status.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
    assert!(
        back < Duration::from_secs(5),
        "serving again after {back:?}"
    );
}

/// Hot restarts keep their one-at-a-time rule (a bootstrap change waits for the previous
/// parent to finish draining) and status answers meanwhile; live applies never wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_applies_never_queue_behind_a_drain_and_hot_restarts_do() {
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, b) = specs(front, &ups);
    let stand = Stand::start(|s| {
        s.envoy.drain_time_s = 2;
        s.envoy.parent_shutdown_time_s = 4;
    })
    .await;
    stand.apply_ok(&a).await;
    // maxConnections lives in the bootstrap: a new process is needed.
    let mut a2 = a.clone();
    a2["maxConnections"] = json!(5000);
    let restarted = stand.apply_ok(&a2).await;
    assert_eq!(restarted.method, Some(ApplyMethod::HotRestart));
    assert_eq!(restarted.epoch, Some(1));

    // Epoch 0 drains for about 4 s; a live apply does not wait for it.
    let mut b2 = b.clone();
    b2["maxConnections"] = json!(5000);
    let asked = Instant::now();
    let live = stand.apply_ok(&b2).await;
    let took = asked.elapsed();
    assert_eq!(live.method, Some(ApplyMethod::Live));
    assert_eq!(live.epoch, Some(1));
    assert!(
        stand
            .log()
            .lines()
            .all(|l| !l.contains("old envoy epoch exited")),
        "the live apply ({took:?}) was made while epoch 0 still drained"
    );

    // Another bootstrap change must wait for epoch 0 to exit.
    let mut a3 = a.clone();
    a3["maxConnections"] = json!(6000);
    let third = {
        let (settings, a3) = (stand.settings.clone(), a3.clone());
        tokio::spawn(async move {
            let p = vpsie_lb_agent::command::prepare_for_store(
                a3.to_string().as_bytes(),
                &settings,
                crate::support::now(),
            )
            .unwrap();
            vpsie_lb_agent::supervisor::client::hand_over(&p, &settings, false).await
        })
    };
    let want = vpsie_lb_agent::command::prepare_for_store(
        a3.to_string().as_bytes(),
        &stand.settings,
        crate::support::now(),
    )
    .unwrap()
    .hash;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stand
        .log()
        .lines()
        .any(|l| l.contains("apply requested") && l.contains(want.as_str()))
    {
        assert!(Instant::now() < deadline, "the third apply never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    let s = stand.status().await;
    assert!(
        asked.elapsed() < Duration::from_millis(1000),
        "status took {:?}",
        asked.elapsed()
    );
    let drained = stand
        .log()
        .lines()
        .any(|l| l.contains("old envoy epoch exited"));
    assert!(
        drained || !third.is_finished(),
        "the hot restart waits for the drain"
    );
    assert_eq!(s.epoch, Some(1));
    assert_eq!(
        s.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
    let out = third.await.unwrap().unwrap();
    assert_eq!(out.method, Some(ApplyMethod::HotRestart));
    assert_eq!(out.epoch, Some(2));
    assert!(
        stand
            .log()
            .lines()
            .any(|l| l.contains("old envoy epoch exited")),
        "epoch 0 exited before epoch 2 started"
    );
}

/// When nothing can be made to serve, the supervisor says so (`critical`) and keeps retrying
/// with backoff until it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_cannot_serve_is_critical_and_retried() {
    let ups = upstreams().await;
    let front = Stand::front_port();
    let (a, _) = specs(front, &ups);
    let stand = Stand::start(|_| {}).await;
    stand.apply_ok(&a).await;
    let pid = stand.status().await.envoy_pid.unwrap();

    // Freeze the supervisor, kill Envoy, and take its port before the supervisor can restart it.
    stand.signal_supervisor(Signal::SIGSTOP);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let mut held = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.is_none() {
        held = std::net::TcpListener::bind(("127.0.0.1", front)).ok();
        assert!(
            Instant::now() < deadline,
            "the killed Envoy's port never came free"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stand.signal_supervisor(Signal::SIGCONT);

    let deadline = Instant::now() + Duration::from_secs(20);
    let critical = loop {
        let s = stand.status().await;
        if let Some(c) = s.critical {
            assert_eq!(
                s.envoy_state,
                vpsie_lb_agent::envoy::admin::EnvoyState::NotRunning
            );
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "never critical: {s:?}\n{}",
            stand.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        critical.contains("Address already in use") || critical.contains("LIVE"),
        "{critical}"
    );
    assert!(stand.log().contains("CRITICAL"), "said loudly in the log");
    // A log file (or the journal) gets plain text: colour codes are for terminals only.
    assert!(
        !stand.log().contains('\u{1b}'),
        "escape codes in a log that is not a terminal"
    );

    drop(held);
    let back = first_success_after(front, Instant::now()).await;
    assert!(
        back < Duration::from_secs(10),
        "a retry brought it back after {back:?}"
    );
    // Envoy serves a moment before the supervisor has seen it LIVE.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stand.status().await;
        if s.critical.is_none() {
            assert_eq!(
                s.envoy_state,
                vpsie_lb_agent::envoy::admin::EnvoyState::Live
            );
            break;
        }
        assert!(Instant::now() < deadline, "still critical: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until Envoy has a request in flight to a backend (its `upstream_rq_active` stat).
async fn wait_upstream_request_in_flight(stand: &Stand) {
    let admin = crate::support::envoy::admin_client(&stand.settings);
    let url = "http://envoy-admin/stats?filter=upstream_rq_active";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = admin.get(url).send().await.unwrap().text().await.unwrap();
        let active: u64 = text
            .lines()
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
            .sum();
        if active > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no request in flight: {text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Another Envoy on the machine holding the same `--base-id` (an installed load balancer, a
/// second checkout's demo): Envoy says so only on stderr, before its log file is open. The apply
/// names the cause and the setting to change, and carries Envoy's own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_envoy_on_the_same_base_id_is_named() {
    let ups = upstreams().await;
    let (a, _) = specs(Stand::front_port(), &ups);
    let stand = Stand::start(|_| {}).await;
    let base_id = stand.settings.envoy.base_id;
    let squatter = crate::support::envoy::Squatter::start(base_id);

    // Nothing serves yet, so this is critical: the hand-over says so, with the cause.
    let said = match stand.apply(&a).await {
        Ok(out) => format!("{out:?}"),
        Err(e) => e.to_string(),
    };
    drop(squatter);
    assert!(
        said.contains(&format!(
            "another Envoy on this machine holds base-id {base_id}; set envoy.base_id"
        )),
        "{said}"
    );
    assert!(
        said.contains("unable to bind domain socket"),
        "Envoy's own words come with it: {said}"
    );
    let status = stand.status().await;
    let said = format!("{:?} {:?}", status.critical, status.last_apply);
    assert!(said.contains("holds base-id"), "{said}");
}
