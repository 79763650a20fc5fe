//! A process dying in the middle of a step: Envoy killed at each step of a live apply, of its
//! put-back and of a hot restart; the supervisor killed during an apply and during a hot
//! restart. Each kill lands at an exact step (the test binary's supervisor holds at a named step
//! while a file exists, `VPSIE_LB_TEST_HOLD_DIR`), or, for the wait on a pool's first health
//! check, while the supervisor is seen waiting on it.
//!
//! What must hold every time: serving again within 1 s of an Envoy kill, the right config (the
//! new one when it had passed validation, else the last good one), one outcome that says what
//! happened, and no hot restart tried from a parent that is gone.

use crate::supervision::upstreams;
use crate::support::supervisor::Stand;
use crate::support::upstream::Upstream;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vpsie_lb_agent::spec::ConfigHash;
use vpsie_lb_agent::supervisor::protocol::{ApplyMethod, ApplyOutcome, ApplyResult};

/// How soon a killed Envoy must serve again (docs/internals.md: a crash alone costs 0.1–0.3 s).
const BACK_WITHIN: Duration = Duration::from_secs(1);

fn backend(up: &Upstream) -> Value {
    json!({"identifier": up.name, "ip": "127.0.0.1", "port": up.port()})
}

fn spec(front: u16, max_connections: u32, pool: &[&Upstream], domain: Option<&Upstream>) -> Value {
    let mut rule = json!({"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": pool.iter().map(|u| backend(u)).collect::<Vec<_>>()});
    if let Some(d) = domain {
        rule["domains"] =
            json!([{"domainId": "x", "domainName": "x.test", "backends": [backend(d)]}]);
    }
    json!({"identifier": "lb-dying", "lbName": "dying", "maxConnections": max_connections,
        "rules": [rule]})
}

/// The supervisor's test hold: a file per step, `<step>.reached` written when it stops there.
struct Hold(PathBuf);

impl Hold {
    fn new(dir: &Path) -> Hold {
        let d = dir.join("hold");
        std::fs::create_dir_all(&d).unwrap();
        Hold(d)
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![(
            "VPSIE_LB_TEST_HOLD_DIR".into(),
            self.0.display().to_string(),
        )]
    }

    fn arm(&self, step: &str) {
        std::fs::write(self.0.join(step), b"").unwrap();
    }

    async fn reached(&self, step: &str, stand: &Stand) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.0.join(format!("{step}.reached")).exists() {
            assert!(
                Instant::now() < deadline,
                "the supervisor never reached {step}:\n{}",
                stand.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn release(&self, step: &str) {
        std::fs::remove_file(self.0.join(step)).unwrap();
    }
}

fn kill(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

/// Waits until `pid` is gone (or a zombie, as its parent has not reaped it yet).
async fn until_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return
            }
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "pid {pid} never died");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The body of `GET /` through the load balancer, or the error.
async fn get(front: u16, host: Option<&str>) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut req = client.get(format!("http://127.0.0.1:{front}/"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    match req.send().await {
        Ok(r) if r.status() == 200 => r.text().await.map_err(|e| e.to_string()),
        Ok(r) => Err(format!("status {}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

/// How long after `since` the front first answers 200 (polled every 10 ms, at most 10 s).
async fn serving_again(front: u16, since: Instant) -> Duration {
    loop {
        if get(front, None).await.is_ok() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "never served again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The supervisor's answer to an apply handed over in the background (an `Err` answer is a
/// rolled-back or critical outcome: its record is in `status`).
async fn finished(
    stand: &Stand,
    task: tokio::task::JoinHandle<Result<ApplyOutcome, vpsie_lb_agent::command::Failure>>,
) -> ApplyOutcome {
    let _ = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap_or_else(|_| panic!("the apply never finished:\n{}", stand.log()));
    stand
        .status()
        .await
        .last_apply
        .expect("the supervisor records the apply")
}

fn hand_over(
    settings: &vpsie_lb_agent::settings::Settings,
    spec: &Value,
) -> tokio::task::JoinHandle<Result<ApplyOutcome, vpsie_lb_agent::command::Failure>> {
    let p = vpsie_lb_agent::command::prepare_for_store(
        spec.to_string().as_bytes(),
        settings,
        crate::support::now(),
    )
    .unwrap();
    let settings = settings.clone();
    tokio::spawn(async move {
        vpsie_lb_agent::supervisor::client::hand_over(&p, &settings, false).await
    })
}

/// The supervisor's log from `mark` on.
fn log_since(stand: &Stand, mark: usize) -> String {
    stand.log().get(mark..).unwrap_or_default().to_owned()
}

/// What an Envoy kill at one step must end in.
struct Expect {
    result: ApplyResult,
    method: Option<ApplyMethod>,
    /// Whether the new config serves (else the old one).
    new_serves: bool,
    /// The upstreams that may answer `GET /` afterwards.
    answers: &'static [&'static str],
}

/// The new config serves from a fresh Envoy, answered by one of `answers`.
fn afresh(answers: &'static [&'static str]) -> Expect {
    Expect {
        result: ApplyResult::Applied,
        method: Some(ApplyMethod::Restart),
        new_serves: true,
        answers,
    }
}

/// Applies `from`, holds the supervisor at `step` of the apply of `to`, SIGKILLs the live Envoy
/// there, and checks what follows.
async fn envoy_killed_at(
    step: &str,
    from: &Value,
    to: &Value,
    front: u16,
    tweak: impl FnOnce(&mut vpsie_lb_agent::settings::Settings),
    expect: Expect,
) {
    let dir = tempfile::tempdir().unwrap();
    let hold = Hold::new(dir.path());
    let stand = Stand::start_with_env(tweak, hold.env()).await;
    let old = stand.apply_ok(from).await;
    let pid = stand.status().await.envoy_pid.unwrap();
    let new_hash = stand.hash_of(to);

    hold.arm(step);
    let task = hand_over(&stand.settings, to);
    hold.reached(step, &stand).await;
    let mark = stand.log().len();
    let killed = Instant::now();
    kill(pid);
    until_dead(pid).await;
    hold.release(step);
    let back = serving_again(front, killed).await;
    let out = finished(&stand, task).await;
    let after = log_since(&stand, mark);

    assert!(
        back < BACK_WITHIN,
        "{step}: serving again {back:?} after the kill:\n{after}"
    );
    assert_eq!(
        (out.result, out.method),
        (expect.result, expect.method),
        "{step}: {out:?}\n{after}"
    );
    let error = out.error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("pid {pid}")) && error.contains("signal: 9"),
        "{step}: the outcome says Envoy was killed: {error}"
    );
    assert_eq!(out.epoch, Some(0), "{step}: a fresh start is epoch 0");
    let status = stand.status().await;
    let serving = if expect.new_serves {
        &new_hash
    } else {
        &old.hash
    };
    assert_eq!(status.hash.as_ref(), Some(serving), "{step}: {status:?}");
    assert_eq!(
        status.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
    assert!(status.critical.is_none());
    let body = get(front, None).await;
    assert!(
        body.as_ref()
            .is_ok_and(|b| expect.answers.contains(&b.as_str())),
        "{step}: answered by {body:?}"
    );
    for never in [
        "hot restart back",
        "started envoy epoch epoch=1",
        "did not become LIVE",
        "did not stop after SIGTERM",
        "did not confirm",
    ] {
        assert!(
            !after.contains(never),
            "{step}: after the kill the log says {never:?}:\n{after}"
        );
    }
    // Once, and straight away: the outcome comes back in well under the time limits.
    assert_eq!(
        after.matches("starting a fresh envoy").count(),
        1,
        "{step}: one recovery:\n{after}"
    );
}

/// Envoy killed at every step of a live apply: a fresh Envoy serves the new config (it had
/// passed validation), reported as applied by `restart`, within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_killed_at_each_step_of_a_live_apply_serves_the_new_config_within_a_second() {
    let [u1, u2, u3] = upstreams().await;
    // The pool gains u3 and loses u1 while it serves (the union of both is written), and a
    // domain pool is added (routes and listeners change).
    let front = Stand::front_port();
    let a = spec(front, 1000, &[&u1, &u2], None);
    let b = spec(front, 1000, &[&u2, &u3], Some(&u1));
    for step in [
        "live-baseline",
        "live-bridge",
        "live-clusters",
        "live-listeners",
    ] {
        envoy_killed_at(step, &a, &b, front, |_| {}, afresh(&["u2", "u3"])).await;
    }
    // The last step removes a cluster nothing routes to any more: going back from b to a.
    envoy_killed_at("live-prune", &b, &a, front, |_| {}, afresh(&["u1", "u2"])).await;
}

/// Envoy refuses the new config live (a listener port held by another process), then dies
/// while the last good resources are put back: a fresh Envoy serves the last good config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_killed_while_the_last_good_resources_go_back_serves_them_afresh() {
    let [u1, u2, _u3] = upstreams().await;
    let front = Stand::front_port();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = spec(front, 1000, &[&u1], None);
    let mut bad = spec(front, 1000, &[&u2], None);
    bad["rules"].as_array_mut().unwrap().push(json!({
        "ruleId": "extra", "scheme": "tcp", "frontPort": held.local_addr().unwrap().port(),
        "backPort": u1.port(), "backends": [{"identifier": "t", "ip": "127.0.0.1"}]
    }));
    envoy_killed_at(
        "put-back",
        &a,
        &bad,
        front,
        |s| s.supervisor.preflight_ports = false,
        Expect {
            result: ApplyResult::RolledBack,
            method: None,
            new_serves: false,
            answers: &["u1"],
        },
    )
    .await;
    drop(held);
}

/// The parent dies as a hot restart begins (a bootstrap change: maxConnections): no child is
/// left waiting for it; a fresh Envoy serves the new config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_killed_as_a_hot_restart_begins_serves_the_new_config_afresh() {
    let [u1, u2, _u3] = upstreams().await;
    let front = Stand::front_port();
    let a = spec(front, 1000, &[&u1], None);
    let b = spec(front, 2000, &[&u2], None);
    envoy_killed_at("hot-restart-spawn", &a, &b, front, |_| {}, afresh(&["u2"])).await;
}

/// The child of a hot restart dies once LIVE, before the supervisor confirmed it: the parent
/// still runs, so the last good config comes back by hot restart (as after any failed start);
/// and the parent dying at that point costs nothing: the child serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_of_a_hot_restart_dying_leaves_a_serving_envoy() {
    let [u1, u2, _u3] = upstreams().await;
    let front = Stand::front_port();
    let a = spec(front, 1000, &[&u1], None);
    let b = spec(front, 2000, &[&u2], None);
    let c = spec(front, 3000, &[&u2], None);
    let dir = tempfile::tempdir().unwrap();
    let hold = Hold::new(dir.path());
    let stand = Stand::start_with_env(|_| {}, hold.env()).await;
    let good = stand.apply_ok(&a).await;

    // The child dies.
    hold.arm("hot-restart-live");
    let task = hand_over(&stand.settings, &b);
    hold.reached("hot-restart-live", &stand).await;
    let child = stand.status().await.envoy_pid.unwrap();
    let mut child_pid = None;
    for p in procfs_children(stand.supervisor_pid()) {
        if p != child {
            child_pid = Some(p);
        }
    }
    let child_pid = child_pid.expect("the hot restart's child runs");
    let killed = Instant::now();
    kill(child_pid);
    until_dead(child_pid).await;
    std::fs::remove_file(dir.path().join("hold/hot-restart-live.reached")).unwrap();
    hold.release("hot-restart-live");
    let out = finished(&stand, task).await;
    let back = serving_again(front, killed).await;
    assert!(back < BACK_WITHIN, "serving again after {back:?}");
    assert_eq!(
        out.result,
        ApplyResult::RolledBack,
        "{out:?}\n{}",
        stand.log()
    );
    let s = stand.status().await;
    assert_eq!(s.hash.as_ref(), Some(&good.hash));
    assert_eq!(
        s.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
    assert_eq!(get(front, None).await.unwrap(), "u1");

    // The parent dies once the child is LIVE: nothing to recover.
    let parent = s.envoy_pid.unwrap();
    hold.arm("hot-restart-live");
    let task = hand_over(&stand.settings, &c);
    hold.reached("hot-restart-live", &stand).await;
    kill(parent);
    until_dead(parent).await;
    hold.release("hot-restart-live");
    let out = finished(&stand, task).await;
    assert_eq!(
        (out.result, out.method),
        (ApplyResult::Applied, Some(ApplyMethod::HotRestart)),
        "{out:?}\n{}",
        stand.log()
    );
    assert_eq!(get(front, None).await.unwrap(), "u2");
    let s = stand.status().await;
    assert_eq!(
        s.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
    assert_ne!(s.envoy_pid, Some(parent));
}

/// The processes whose parent is `pid`.
fn procfs_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.get(1).and_then(|f| f.parse::<u32>().ok()) == Some(pid)
            && fields.first().is_none_or(|s| *s != "Z")
        {
            out.push(p);
        }
    }
    out
}

/// Envoy killed while a moved pool waits for its new host's first health check (which never
/// answers): the apply was done when Envoy took the change; the kill is a crash like any
/// other, the new config serves from a fresh Envoy within a second, and nothing is left
/// waiting on the dead process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_killed_during_a_first_check_wait_is_recovered_at_once() {
    let [u1, u2, _u3] = upstreams().await;
    // A backend that accepts connections and never answers: its first check takes until the
    // check's timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let front = Stand::front_port();
    let a = spec(front, 1000, &[&u1, &u2], None);
    let mut b = spec(front, 1000, &[&u2], None);
    b["rules"][0]["backends"]
        .as_array_mut()
        .unwrap()
        .push(json!({"identifier": "silent", "ip": "127.0.0.1", "port": silent_port}));
    let stand = Stand::start(|s| s.supervisor.confirm_timeout_s = 30).await;
    stand.apply_ok(&a).await;
    // The pool serves (both hosts past their first check): only a pool that carries traffic
    // keeps its old hosts while the new one is checked, which is the wait this test kills into.
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::support::envoy::stats(&stand.settings, "^cluster\\.web\\.membership_healthy$")
        .await("cluster.web.membership_healthy")
        < 2
    {
        assert!(Instant::now() < deadline, "the pool never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = stand.status().await.envoy_pid.unwrap();
    let out = stand.apply(&b).await.unwrap();
    assert_eq!(
        (out.result, out.method),
        (ApplyResult::Applied, Some(ApplyMethod::Live)),
        "applied once Envoy took it: {out:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no health check reached the silent backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let moving = stand.status().await.transitions;
    assert!(
        moving.len() == 1 && moving[0].pool == "web" && moving[0].old_hosts == 1,
        "the pool keeps u1 while the silent host waits for its check: {moving:?}"
    );
    let mark = stand.log().len();
    let killed = Instant::now();
    kill(pid);
    let back = serving_again(front, killed).await;
    assert!(back < BACK_WITHIN, "serving again after {back:?}");
    // Envoy serves a moment before the supervisor has confirmed its start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = stand.status().await;
        if s.envoy_pid.is_some_and(|p| p != pid)
            && s.envoy_state == vpsie_lb_agent::envoy::admin::EnvoyState::Live
        {
            break s;
        }
        assert!(Instant::now() < deadline, "no new Envoy: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(s.hash, Some(out.hash.clone()), "the new config serves");
    assert_eq!(
        s.epoch,
        Some(0),
        "a fresh start: {}",
        log_since(&stand, mark)
    );
    assert!(
        s.transitions.is_empty(),
        "a fresh Envoy starts from the config's own list: {:?}",
        s.transitions
    );
    // The silent backend closes: the fresh Envoy's check finds it down, and u2 alone answers.
    keep.abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(front, None).await.as_deref() != Ok("u2") {
        assert!(Instant::now() < deadline, "u2 never answered alone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The supervisor itself killed in the middle of an apply (a live one at two steps, and a hot
/// restart whose child is LIVE): Envoy goes with it; started again, it serves the last good
/// config at once, and the same apply then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_killed_mid_apply_comes_back_with_the_last_good_config() {
    let [u1, u2, u3] = upstreams().await;
    let front = Stand::front_port();
    let a = spec(front, 1000, &[&u1, &u2], None);
    let b = spec(front, 1000, &[&u2, &u3], Some(&u1));
    let c = spec(front, 2000, &[&u3], None);
    let dir = tempfile::tempdir().unwrap();
    let hold = Hold::new(dir.path());
    let mut stand = Stand::start_with_env(|_| {}, hold.env()).await;
    let good = stand.apply_ok(&a).await;
    for (step, to) in [
        ("live-bridge", &b),
        ("live-clusters", &b),
        ("hot-restart-live", &c),
    ] {
        let envoys = procfs_children(stand.supervisor_pid());
        hold.arm(step);
        let task = hand_over(&stand.settings, to);
        hold.reached(step, &stand).await;
        stand.signal_supervisor(Signal::SIGKILL);
        assert!(stand.wait_supervisor(Duration::from_secs(5)));
        for pid in envoys {
            until_dead(pid).await;
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(answer.is_err(), "{step}: the client is told: {answer:?}");
        hold.release(step);
        std::fs::remove_file(dir.path().join(format!("hold/{step}.reached"))).unwrap();

        let restarted = Instant::now();
        stand.spawn_supervisor().await;
        let back = serving_again(front, restarted).await;
        assert!(back < Duration::from_secs(5), "{step}: back after {back:?}");
        let s = stand.status().await;
        assert_eq!(s.hash.as_ref(), Some(&good.hash), "{step}: {s:?}");
        assert_eq!((s.epoch, s.envoy_state.as_str()), (Some(0), "LIVE"));
        let body = get(front, None).await.unwrap();
        assert!(body == "u1" || body == "u2", "{step}: {body}");
    }
    let out = stand.apply_ok(&b).await;
    assert_eq!(
        (out.result, out.method),
        (ApplyResult::Applied, Some(ApplyMethod::Live))
    );
    assert_eq!(get(front, Some("x.test")).await.unwrap(), "u1");
}

/// The `config_applied` events the stand-in API recorded for `hash`.
async fn applied_events(sim: &crate::support::sim::Sim, hash: &ConfigHash) -> Vec<Value> {
    sim.events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "config_applied" && e["metadata"]["config_hash"] == hash.as_str())
        .collect()
}

/// The whole product: the agent killed while it hands a config over (the supervisor finishes
/// the apply without it), then Envoy killed in the middle of the next one. Each ends in one
/// event at the API that says what serves and, for the kill, what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_hears_once_of_an_apply_whose_agent_or_envoy_died_midway() {
    use crate::support::sim::{agent_process, agent_settings, Sim};
    let [u1, u2, u3] = upstreams().await;
    let front = Stand::front_port();
    let a = spec(front, 1000, &[&u1], None);
    let b = spec(front, 1000, &[&u2], None);
    let c = spec(front, 1000, &[&u3], None);
    let dir = tempfile::tempdir().unwrap();
    let hold = Hold::new(dir.path());
    let stand = Stand::start_with_env(|_| {}, hold.env()).await;
    let sim = Sim::start(&a);
    let settings = agent_settings(&stand, &sim);
    let start_agent = agent_process(&stand, &settings);
    let mut agent = start_agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(front, None).await.as_deref() != Ok("u1") {
        assert!(Instant::now() < deadline, "a never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The agent dies while the supervisor applies b.
    hold.arm("live-clusters");
    sim.write_spec(&b);
    hold.reached("live-clusters", &stand).await;
    agent.kill().unwrap();
    agent.wait().unwrap();
    hold.release("live-clusters");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(front, None).await.as_deref() != Ok("u2") {
        assert!(Instant::now() < deadline, "b never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Envoy serves a moment before the supervisor has confirmed the apply.
    let first = sim
        .events()
        .await
        .into_iter()
        .find(|e| e["type"] == "config_applied")
        .unwrap();
    let a_hash: ConfigHash = first["metadata"]["config_hash"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let b_hash = loop {
        if let Some(h) = stand.status().await.hash.filter(|h| *h != a_hash) {
            break h;
        }
        assert!(Instant::now() < deadline, "b was never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        applied_events(&sim, &b_hash).await.is_empty(),
        "{:?}\n{}",
        sim.events().await,
        stand.log()
    );
    let mut agent = start_agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reported = loop {
        let events = applied_events(&sim, &b_hash).await;
        if !events.is_empty() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted agent never reported b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reported[0]["metadata"]["method"], "live", "{reported:?}");

    // Envoy dies while the supervisor applies c.
    let pid = stand.status().await.envoy_pid.unwrap();
    std::fs::remove_file(dir.path().join("hold/live-clusters.reached")).unwrap();
    hold.arm("live-clusters");
    sim.write_spec(&c);
    hold.reached("live-clusters", &stand).await;
    kill(pid);
    until_dead(pid).await;
    hold.release("live-clusters");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (c_hash, reported) = loop {
        let s = stand.status().await;
        if let Some(h) = s.hash.filter(|h| *h != b_hash) {
            let events = applied_events(&sim, &h).await;
            if !events.is_empty() {
                break (h, events);
            }
        }
        assert!(Instant::now() < deadline, "c was never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(get(front, None).await.as_deref(), Ok("u3"));
    // A few polls later: still one event for each, and no failure reported.
    let polls = Instant::now();
    let mut seen = sim.events().await.len();
    while polls.elapsed() < Duration::from_secs(3) || sim.events().await.len() != seen {
        seen = sim.events().await.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = sim.events().await;
    assert_eq!(applied_events(&sim, &b_hash).await.len(), 1, "{events:?}");
    assert_eq!(reported.len(), 1);
    assert_eq!(applied_events(&sim, &c_hash).await.len(), 1, "{events:?}");
    let e = &reported[0];
    assert_eq!(e["metadata"]["method"], "restart", "{e}");
    let what = e["metadata"]["error"].as_str().unwrap_or_default();
    assert!(
        what.contains(&format!("pid {pid}")) && what.contains("SIGKILL"),
        "{e}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "reload_failed" || e["type"] == "critical_failure"),
        "{events:?}"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// An agent killed after it reported an apply but before it saved that it had (its state file
/// still names the previous config) hears of the apply again from the supervisor, as unchanged,
/// and reports it again: with the supervisor's id of the apply as the event's id, so that the
/// API, which drops duplicates by id, records it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_reported_twice_is_one_event_at_the_api() {
    use crate::support::sim::{agent_metric, agent_process, agent_settings, Sim};
    let [u1, u2, _] = upstreams().await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, 1000, &[&u1], None));
    let settings = agent_settings(&stand, &sim);
    let start_agent = agent_process(&stand, &settings);
    let mut agent = start_agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    let a_hash = loop {
        if let Some(e) = sim
            .events()
            .await
            .into_iter()
            .find(|e| e["type"] == "config_applied")
        {
            break e["metadata"]["config_hash"]
                .as_str()
                .unwrap()
                .parse::<ConfigHash>()
                .unwrap();
        }
        assert!(Instant::now() < deadline, "a was never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sim.write_spec(&spec(front, 1000, &[&u2], None));
    let deadline = Instant::now() + Duration::from_secs(20);
    let (b_hash, first) = loop {
        if let Some(h) = stand.status().await.hash.filter(|h| *h != a_hash) {
            let events = applied_events(&sim, &h).await;
            if let [e] = events.as_slice() {
                break (h, e.clone());
            }
        }
        assert!(Instant::now() < deadline, "b was never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The agent dies; its state file is put back to before b, as if it had died between
    // queueing b's event and saving its state.
    agent.kill().unwrap();
    agent.wait().unwrap();
    let path = settings.agent_state_path();
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["applied_hash"], b_hash.as_str());
    state["applied_hash"] = json!(a_hash);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let mut again = start_agent();
    // It sends its agent_started and b's event again; both acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent_metric(settings.metrics.port, "vpsie_lb_agent_events_sent_total").await < Some(2.0)
    {
        assert!(
            Instant::now() < deadline,
            "the restarted agent sent nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = applied_events(&sim, &b_hash).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["id"], first["id"]);
    let started = sim
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "agent_started")
        .count();
    assert_eq!(started, 2);
    again.kill().unwrap();
    again.wait().unwrap();
}
