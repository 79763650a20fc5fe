//! The agent end to end, on loopback: the API stand-in (`vpsie-api-sim`), a real supervisor and
//! Envoy, and the agent, in-process (a cycle at a time, for exact control of faults) or as the
//! real `vpsie-lb-agent run` process (for the loop, its signals and restarts).

use crate::support::load::Load;
use crate::support::sim::{agent_process, agent_settings, client, wait_polls, Sim, LB};
use crate::support::supervisor::Stand;
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use vpsie_lb_agent::agent::{Agent, Outcome};
use vpsie_lb_agent::api::ApiClient;
use vpsie_lb_agent::settings::Settings;

fn backend(id: &str, up: &Upstream) -> Value {
    json!({"identifier": id, "ip": "127.0.0.1", "port": up.port()})
}

fn spec(front: u16, backends: &[(&str, &Upstream)]) -> Value {
    let b: Vec<Value> = backends.iter().map(|(id, u)| backend(id, u)).collect();
    json!({"identifier": LB, "lbName": "agent", "updated_on": "2026-11-24 10:00:00",
           "rules": [{"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1, "backends": b}]})
}

async fn flush_all(agent: &mut Agent) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.queued_events() > 0 {
        agent.flush_events().await;
        assert!(Instant::now() < deadline, "events never delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_edit_is_applied_and_every_event_arrives_with_its_metadata() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let mut agent = Agent::new(agent_settings(&stand, &sim)).unwrap();
    agent.started().await;

    let first = agent.cycle(false).await;
    let Outcome::Applied { epoch: 0, hash: h1 } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        agent.cycle(false).await,
        Outcome::Unchanged,
        "304: nothing to do"
    );
    let body = client()
        .get(format!("http://127.0.0.1:{front}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.text().await.unwrap(), "u1");

    sim.write_spec(&spec(front, &[("u2", &u2)]));
    let second = agent.cycle(false).await;
    let Outcome::Applied { epoch: 0, hash: h2 } = second else {
        panic!("{second:?}")
    };
    flush_all(&mut agent).await;

    let events = sim.events().await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["agent_started", "config_applied", "config_applied"]);
    assert_eq!(events[0]["metadata"]["envoy_version"], "1.40.0");
    assert_eq!(events[1]["metadata"]["config_hash"], h1.as_str());
    assert_eq!(events[1]["metadata"]["epoch"], 0);
    assert_eq!(events[2]["metadata"]["config_hash"], h2.as_str());
    assert_eq!(events[2]["metadata"]["previous_hash"], h1.as_str());
    assert_eq!(events[2]["metadata"]["epoch"], 0);
    assert!(events[2]["metadata"]["apply_ms"].as_u64().is_some());
    // The first config needs a process; a backend change goes into it live.
    assert_eq!(events[1]["metadata"]["method"], "hot_restart");
    assert_eq!(events[2]["metadata"]["method"], "live");
    assert!(events[2]["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_once_and_changes_nothing() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let good = spec(front, &[("u1", &u1)]);
    let sim = Sim::start(&good);
    let mut agent = Agent::new(agent_settings(&stand, &sim)).unwrap();
    let Outcome::Applied { hash, .. } = agent.cycle(false).await else {
        panic!()
    };

    let mut bad = good.clone();
    bad["rules"][0]["backends"][0]["ip"] = json!("169.254.169.254");
    bad["rules"][0]["frontPort"] = json!(0);
    sim.write_spec(&bad);
    let out = agent.cycle(false).await;
    assert!(
        matches!(&out, Outcome::Rejected { by_envoy: false, errors, .. } if errors.len() == 2),
        "{out:?}"
    );
    assert_eq!(
        vpsie_lb_agent::command::exit_code(&vpsie_lb_agent::command::once_result(out).map(drop)),
        2
    );
    // A 304: the same spec is judged again (a certificate's validity depends on the clock),
    // refused again, and not reported again (counted below).
    let again = agent.cycle(false).await;
    assert!(
        matches!(&again, Outcome::Rejected { by_envoy: false, errors, .. } if errors.len() == 2),
        "{again:?}"
    );
    // Only informational fields change (as `traffic` does all the time): the same mistake, so no
    // second report.
    bad["updated_on"] = json!("2026-11-24 11:00:00");
    bad["traffic"] = json!(12345);
    sim.write_spec(&bad);
    assert!(matches!(agent.cycle(false).await, Outcome::Rejected { .. }));
    flush_all(&mut agent).await;
    let events = sim.events().await;
    let rejected: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "config_rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "one config_rejected per distinct spec: {events:?}"
    );
    let errors = rejected[0]["metadata"]["errors"].as_array().unwrap();
    let paths: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["rules[0].frontPort", "rules[0].backends[0].ip"],
        "all errors at once"
    );
    assert_eq!(
        stand.status().await.hash,
        Some(hash),
        "the running config is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_never_touch_traffic_and_queued_events_arrive_in_order() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let mut agent = Agent::new(agent_settings(&stand, &sim)).unwrap();
    agent.started().await;
    assert!(matches!(agent.cycle(false).await, Outcome::Applied { .. }));
    flush_all(&mut agent).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 3, 1);

    // Each kind of fault while polling: nothing applies, nothing breaks, the agent recovers.
    for kind in [
        "status_500",
        "status_429",
        "error_envelope",
        "oversize",
        "drop",
    ] {
        sim.fault(kind, 3).await;
        let out = agent.cycle(false).await;
        assert!(matches!(out, Outcome::Unreachable(_)), "{kind}: {out:?}");
        let Outcome::Unreachable(msg) = &out else {
            unreachable!()
        };
        match kind {
            "oversize" => assert!(msg.contains("10 MiB"), "{msg}"),
            "error_envelope" => assert!(msg.contains("error"), "{msg}"),
            _ => {}
        }
        sim.clear_faults().await;
    }
    sim.fault("delay", 1).await;
    assert_eq!(
        agent.cycle(false).await,
        Outcome::Unchanged,
        "a slow answer is still an answer"
    );

    // Events made while the API refuses them are queued and arrive afterwards, in order.
    sim.write_spec(&spec(front, &[("u2", &u2)]));
    assert!(matches!(
        agent.cycle(false).await,
        Outcome::Applied { epoch: 0, .. }
    ));
    sim.write_spec(&spec(front, &[("u1", &u1), ("u2", &u2)]));
    assert!(matches!(
        agent.cycle(false).await,
        Outcome::Applied { epoch: 0, .. }
    ));
    sim.fault("status_500", 100).await;
    assert_eq!(agent.flush_events().await, 0);
    assert_eq!(agent.queued_events(), 2, "queued while the API is down");
    sim.clear_faults().await;
    flush_all(&mut agent).await;
    let events = sim.events().await;
    let applied: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "config_applied")
        .map(|e| &e["metadata"])
        .collect();
    assert_eq!(applied.len(), 3, "none lost: {events:?}");
    for pair in applied.windows(2) {
        assert_eq!(
            pair[1]["previous_hash"], pair[0]["config_hash"],
            "in order: {events:?}"
        );
    }

    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_forbidden_api_addresses_before_connecting() {
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&json!({}));
    let mut s = agent_settings(&stand, &sim);
    // A name allowed by the settings that resolves to loopback, in production mode: refused at
    // connect time by the resolver (the test maps the name; nothing is looked up or reached).
    s.vpsie.api_url = format!("https://api.test:{}", sim.port);
    s.vpsie.allowed_hosts = vec!["api.test".into()];
    s.dev.allow_insecure_http = false;
    let overrides = HashMap::from([("api.test".to_owned(), vec!["127.0.0.1".parse().unwrap()])]);
    let mut agent = Agent::with_api(ApiClient::with_resolver(&s, overrides).unwrap(), s).unwrap();
    let out = agent.cycle(false).await;
    let Outcome::Unreachable(msg) = &out else {
        panic!("{out:?}")
    };
    assert!(msg.contains("SSRF") && msg.contains("127.0.0.1"), "{msg}");
    assert!(sim.events().await.is_empty());
}

/// The real `vpsie-lb-agent run`: edits go live within a poll, a restart with an unchanged spec
/// causes no reload, SIGHUP forces a resync (live, no new epoch), and kill -9 of the agent under
/// load drops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_process_follows_edits_restarts_without_reloading_and_resyncs_on_hup() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let settings = agent_settings(&stand, &sim);
    let start_agent = agent_process(&stand, &settings);
    // Waits until the API has `n` config_applied events (the agent sends each after its apply).
    let wait_applied = |n: usize| {
        let sim = &sim;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let events = sim.events().await;
                let applied: Vec<Value> = events
                    .into_iter()
                    .filter(|e| e["type"] == "config_applied")
                    .collect();
                if applied.len() >= n {
                    return applied;
                }
                assert!(
                    Instant::now() < deadline,
                    "config_applied {n} never came: {applied:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut agent = start_agent();
    wait_applied(1).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 3, 1);

    let edited = Instant::now();
    sim.write_spec(&spec(front, &[("u2", &u2)]));
    wait_applied(2).await;
    assert!(
        edited.elapsed() < Duration::from_secs(4),
        "live within about one poll: {:?}",
        edited.elapsed()
    );
    let applied_hash = stand.status().await.hash;

    // kill -9 under load, then a restart with the same spec: no reload. "No reload" is
    // judged once the new agent has finished a poll that read the whole spec and found it
    // applied: its own counter says so. (Its state file is no witness: the next poll, a 304,
    // overwrites "Unchanged" a second later.)
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGKILL).unwrap();
    agent.wait().unwrap();
    let mut agent = start_agent();
    wait_polls(&settings, "unchanged").await;
    let s = stand.status().await;
    assert_eq!(
        (s.epoch, s.hash.clone(), s.good.len()),
        (Some(0), applied_hash, 2),
        "an unchanged spec causes no reload: {s:?}"
    );

    kill(Pid::from_raw(agent.id() as i32), Signal::SIGHUP).unwrap();
    wait_applied(3).await;

    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    let stopped = Instant::now();
    while agent.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "the agent stops on TERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agent.wait().unwrap().code(), Some(0));
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    // An event resent after the kill carries its id again, and the API keeps it once.
    let applied = wait_applied(3).await;
    let how: Vec<(u64, &str)> = applied
        .iter()
        .map(|e| {
            (
                e["metadata"]["epoch"].as_u64().unwrap(),
                e["metadata"]["method"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        how,
        [(0, "hot_restart"), (0, "live"), (0, "live")],
        "the first config starts Envoy; the edit and the forced resync go in live"
    );
}

/// The events the agent still holds (its durable queue), read from its file.
fn queued_on_disk(settings: &Settings) -> usize {
    std::fs::read(settings.event_queue_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["events"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Killed between the API's recording of an event and its own queue write, the agent sends the
/// event again after its restart with the same id, and the API keeps one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_resent_after_a_kill_is_recorded_once() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let settings = agent_settings(&stand, &sim);
    let start_agent = agent_process(&stand, &settings);
    // Config applies are told apart by their hash (both go into epoch 0, the second live).
    let hash_of = |spec: &Value| {
        vpsie_lb_agent::command::prepare_for_store(
            spec.to_string().as_bytes(),
            &settings,
            crate::support::now(),
        )
        .unwrap()
        .hash
    };
    let hashes = [
        hash_of(&spec(front, &[("u1", &u1)])),
        hash_of(&spec(front, &[("u2", &u2)])),
    ];
    let applied = |events: &[Value], n: usize| -> Vec<Value> {
        events
            .iter()
            .filter(|e| {
                e["type"] == "config_applied" && e["metadata"]["config_hash"] == hashes[n].as_str()
            })
            .cloned()
            .collect()
    };
    let wait_events = |n: usize| {
        let sim = &sim;
        let applied = &applied;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let events = sim.events().await;
                if !applied(&events, n).is_empty() {
                    return events;
                }
                assert!(
                    Instant::now() < deadline,
                    "no config_applied for config {n}: {events:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut agent = start_agent();
    wait_events(0).await;

    // The next event is recorded, then its answer held back for a minute: the agent is killed
    // while the API has the event and the agent's queue still holds it.
    sim.fault_ms("delay_after_record", 1, 60_000).await;
    sim.write_spec(&spec(front, &[("u2", &u2)]));
    let events = wait_events(1).await;
    let first = applied(&events, 1);
    assert_eq!(queued_on_disk(&settings), 1, "the agent has not heard back");
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGKILL).unwrap();
    agent.wait().unwrap();

    let mut agent = start_agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    while queued_on_disk(&settings) > 0 || sim.events().await.len() < events.len() + 1 {
        assert!(
            Instant::now() < deadline,
            "the queued event was never resent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = sim.events().await;
    let again = applied(&events, 1);
    assert_eq!(
        again, first,
        "one config_applied for the second config, as first recorded: {events:?}"
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        events.len(),
        "every recorded event has its own id"
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "agent_started",
            "config_applied",
            "config_applied",
            "agent_started"
        ],
        "the restart adds its own agent_started, nothing else"
    );
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    agent.wait().unwrap();
}

/// A spec fetched while the supervisor is down is applied once it is back, even though the API
/// then answers 304 (the agent forgets the ETag of a spec it could not hand over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_fetched_while_the_supervisor_is_down_is_applied_when_it_returns() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let mut stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let mut agent = Agent::new(agent_settings(&stand, &sim)).unwrap();

    stand.signal_supervisor(nix::sys::signal::Signal::SIGKILL);
    assert!(stand.wait_supervisor(Duration::from_secs(5)));
    let out = agent.cycle(false).await;
    assert!(matches!(out, Outcome::Unreachable(_)), "{out:?}");

    stand.spawn_supervisor().await;
    let out = agent.cycle(false).await;
    assert!(matches!(out, Outcome::Applied { epoch: 0, .. }), "{out:?}");
    assert_eq!(agent.cycle(false).await, Outcome::Unchanged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_clearly_and_nothing_is_applied() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let settings = agent_settings(&stand, &sim);
    std::fs::write(&settings.vpsie.api_key_file, "not-the-token").unwrap();
    let mut agent = Agent::new(settings).unwrap();
    let out = agent.cycle(false).await;
    let Outcome::Unreachable(msg) = &out else {
        panic!("{out:?}")
    };
    assert!(msg.contains("401"), "the refusal says why: {msg}");
    assert!(
        !msg.contains("not-the-token"),
        "the token never reaches a message"
    );
    assert_eq!(stand.status().await.hash, None, "nothing applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_what_a_spec_would_change() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let a = spec(front, &[("u1", &u1)]);
    stand.apply_ok(&a).await;
    let file = stand.dir.path().join("spec.json");
    std::fs::write(&file, a.to_string()).unwrap();
    let same = vpsie_lb_agent::command::diff(&file, &stand.settings)
        .await
        .unwrap();
    assert_eq!(same, "", "the running spec changes nothing");

    std::fs::write(&file, spec(front, &[("u2", &u2)]).to_string()).unwrap();
    let d = vpsie_lb_agent::command::diff(&file, &stand.settings)
        .await
        .unwrap();
    assert!(d.starts_with("--- running "), "{d}");
    assert!(
        d.lines()
            .any(|l| l.starts_with('-') && l.contains(&u1.port().to_string())),
        "{d}"
    );
    assert!(
        d.lines()
            .any(|l| l.starts_with('+') && l.contains(&u2.port().to_string())),
        "{d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_retried_within_the_poll_honouring_retry_after() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let mut agent = Agent::new(agent_settings(&stand, &sim)).unwrap();
    sim.fault("status_500", 1).await;
    assert!(
        matches!(agent.cycle(false).await, Outcome::Applied { .. }),
        "one 500, then success"
    );
    sim.write_spec(&spec(front, &[("u1b", &u1)]));
    sim.fault("status_429", 1).await;
    let t = Instant::now();
    assert!(matches!(agent.cycle(false).await, Outcome::Applied { .. }));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The "elsewhere" a redirect points to: a loopback listener that counts connections.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_port = target.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = target.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // An "API" that answers every request with a redirect.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = api.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = api.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target_port}/api/v1/lb/{LB}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&json!({}));
    let mut settings = agent_settings(&stand, &sim);
    settings.vpsie.api_url = format!("http://127.0.0.1:{api_port}");
    let mut agent = Agent::new(settings).unwrap();
    let out = agent.cycle(false).await;
    let Outcome::Unreachable(msg) = &out else {
        panic!("{out:?}")
    };
    assert!(msg.contains("302"), "{msg}");
    // The cycle is over: a followed redirect would have been requested within it.
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_with_the_outcome() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let good = spec(front, &[("u1", &u1)]);
    let sim = Sim::start(&good);
    let settings = agent_settings(&stand, &sim);
    let conf = stand.dir.path().join("once.yaml");
    std::fs::write(&conf, serde_yaml::to_string(&settings).unwrap()).unwrap();
    let once = || {
        Command::new(env!("CARGO_BIN_EXE_vpsie-lb-agent"))
            .args(["once", "--config"])
            .arg(&conf)
            .output()
            .unwrap()
    };
    let o = once();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("APPLIED epoch 0"));
    let o = once();
    assert_eq!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("UNCHANGED"),
        "a new process, an unchanged spec: no reload"
    );
    let mut bad = good.clone();
    bad["rules"][0]["scheme"] = json!("udp");
    sim.write_spec(&bad);
    let o = once();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rules[0].scheme"));
}

fn text_of(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// One scrape port through Envoy: Envoy's stats and the agent's (and supervisor's) metrics, and
/// nothing else of the admin API; only sources inside `metrics.allowed_cidrs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_port_serves_two_paths_to_allowed_sources_only() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let mut settings = agent_settings(&stand, &sim);
    settings.metrics.allowed_cidrs = vec!["127.0.0.1/32".into()];
    settings.metrics.scrape_port = crate::support::envoy::free_port();
    let scrape = settings.metrics.scrape_port;
    let mut agent = Agent::new(settings.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind((settings.metrics.address, settings.metrics.port))
        .await
        .unwrap();
    tokio::spawn(vpsie_lb_agent::agent::serve_metrics(
        listener,
        agent.metrics(),
        agent.health(),
        settings.clone(),
    ));
    let first = agent.cycle(false).await;
    assert!(
        matches!(first, Outcome::Applied { .. }),
        "{first:?}\n{}",
        stand.log()
    );
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{scrape}{p}");

    let envoy_stats = c.get(url("/stats/prometheus")).send().await.unwrap();
    assert_eq!(envoy_stats.status(), 200);
    let envoy_stats = envoy_stats.text().await.unwrap();
    assert!(
        envoy_stats.contains("envoy_server_live"),
        "Envoy's own stats"
    );
    let agent_metrics = c.get(url("/metrics/agent")).send().await.unwrap();
    assert_eq!(agent_metrics.status(), 200);
    let m = agent_metrics.text().await.unwrap();
    assert_eq!(
        text_of(&m, "vpsie_lb_agent_applies_total{result=\"applied\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        text_of(&m, "vpsie_lb_supervisor_envoy_up"),
        Some(1.0),
        "the supervisor's too"
    );
    assert_eq!(text_of(&m, "vpsie_lb_agent_envoy_up"), Some(1.0));

    // Nothing else of the admin API, however the path is spelt.
    for (method, path) in [
        ("GET", "/config_dump"),
        ("POST", "/quitquitquit"),
        ("GET", "/quitquitquit"),
        ("POST", "/healthcheck/fail"),
        ("GET", "/healthcheck/fail"),
        ("GET", "/server_info"),
        ("GET", "/stats"),
        ("POST", "/stats/prometheus"),
        ("GET", "/stats/prometheus/../../quitquitquit"),
        ("GET", "//config_dump"),
        ("GET", "/metrics/agent/../../config_dump"),
        ("GET", "/stats%2Fprometheus"),
        ("GET", "/stats/prometheus%2F..%2F..%2Fconfig_dump"),
        ("GET", "/"),
    ] {
        let r = c
            .request(method.parse().unwrap(), url(path))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert!(
            status == 404 || status == 400,
            "{method} {path} answered {status}: {body:.200}"
        );
        assert!(
            !body.contains("\"configs\""),
            "{method} {path} leaked admin output"
        );
    }
    let admin = crate::support::envoy::admin_client(&settings)
        .get("http://envoy-admin/ready")
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        200,
        "Envoy is still LIVE: nothing got through"
    );

    // A source outside the allowed CIDRs is refused.
    let outsider = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let r = outsider.get(url("/stats/prometheus")).send().await;
    assert!(
        r.is_err() || r.is_ok_and(|r| r.status() != 200),
        "127.0.0.2 must not scrape"
    );

    // Metric values move: a rejected spec, then a failed epoch rolled back.
    let mut bad = spec(front, &[("u1", &u1)]);
    bad["rules"][0]["backends"][0]["ip"] = json!("169.254.169.254");
    sim.write_spec(&bad);
    assert!(matches!(agent.cycle(false).await, Outcome::Rejected { .. }));
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut failing = spec(front, &[("u1", &u1)]);
    failing["rules"].as_array_mut().unwrap().push(json!({
        "ruleId": "extra", "scheme": "tcp", "frontPort": held.local_addr().unwrap().port(),
        "backPort": u1.port(), "backends": [{"identifier": "t", "ip": "127.0.0.1"}]}));
    sim.write_spec(&failing);
    assert!(matches!(
        agent.cycle(false).await,
        Outcome::RolledBack { .. }
    ));
    let m = c
        .get(url("/metrics/agent"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text_of(&m, "vpsie_lb_agent_spec_rejections_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        text_of(&m, "vpsie_lb_agent_polls_total{result=\"rejected\"}"),
        Some(1.0)
    );
    assert_eq!(
        text_of(&m, "vpsie_lb_agent_applies_total{result=\"rolled_back\"}"),
        Some(1.0)
    );
    assert_eq!(
        text_of(
            &m,
            "vpsie_lb_supervisor_applies_total{result=\"rolled_back\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        text_of(&m, "vpsie_lb_agent_envoy_epoch"),
        Some(0.0),
        "the old epoch serves"
    );

    // Health endpoints on the agent's own loopback port.
    let base = format!("http://127.0.0.1:{}", settings.metrics.port);
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(held);
}

/// Reads systemd notifications sent to `sock` until `want` arrives or the time runs out.
fn notifications_until(
    sock: &std::os::unix::net::UnixDatagram,
    want: &str,
    timeout: Duration,
) -> Vec<String> {
    notifications_while(sock, timeout, |seen| {
        !seen.iter().any(|m| m.lines().any(|l| l == want))
    })
}

/// Reads systemd notifications sent to `sock` while `more` says the ones so far are not enough,
/// or until the time runs out.
fn notifications_while(
    sock: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
    more: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && more(&seen) {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

/// READY, STATUS, WATCHDOG and STOPPING reach systemd from both daemons; and at trace level, with
/// an https spec, neither the API token nor any private key appears in any log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_and_no_secret_reaches_a_log() {
    use std::os::unix::net::UnixDatagram;
    let u1 = upstream::http("u1", None).await;
    let cert = crate::support::certs::cert(&["secure.test"]);
    let front = Stand::front_port();
    let notify_dir = tempfile::tempdir().unwrap();
    let sup_sock_path = notify_dir.path().join("sup.sock");
    let sup_sock = UnixDatagram::bind(&sup_sock_path).unwrap();
    let stand = Stand::start_with_env(
        |_| {},
        vec![
            ("NOTIFY_SOCKET".into(), sup_sock_path.display().to_string()),
            ("RUST_LOG".into(), "trace".into()),
        ],
    )
    .await;
    let sup_msgs = notifications_until(&sup_sock, "READY=1", Duration::from_secs(10));
    assert!(
        sup_msgs.iter().any(|m| m.contains("READY=1")),
        "supervisor READY: {sup_msgs:?}"
    );

    let https = json!({"identifier": LB, "lbName": "secure", "rules": [{
        "ruleId": "web", "scheme": "https", "frontPort": front, "backPort": u1.port(),
        "tls": {"certificateId": "c1", "certificatePem": cert.cert_pem, "privateKeyPem": cert.key_pem},
        "backends": [{"identifier": "b", "ip": "127.0.0.1"}]}]});
    let sim = Sim::start(&https);
    let settings = agent_settings(&stand, &sim);
    let conf = stand.dir.path().join("notify.yaml");
    std::fs::write(&conf, serde_yaml::to_string(&settings).unwrap()).unwrap();
    let agent_sock_path = notify_dir.path().join("agent.sock");
    let agent_sock = UnixDatagram::bind(&agent_sock_path).unwrap();
    let agent_log = stand.dir.path().join("agent-trace.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_vpsie-lb-agent"))
        .args(["run", "--config"])
        .arg(&conf)
        .env("NOTIFY_SOCKET", &agent_sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("RUST_LOG", "trace")
        .stdout(std::fs::File::create(stand.dir.path().join("agent-out.log")).unwrap())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    let msgs = notifications_until(&agent_sock, "READY=1", Duration::from_secs(20));
    assert!(
        msgs.iter().any(|m| m.contains("READY=1")),
        "agent READY: {msgs:?}"
    );
    // Until the loop has said its status and pinged the watchdog three times (every 0.5 s).
    let more = notifications_while(&agent_sock, Duration::from_secs(10), |seen| {
        let all = msgs.iter().chain(seen);
        let (mut status, mut pings) = (false, 0);
        for m in all {
            status |= m.contains("STATUS=epoch 0, config ");
            pings += usize::from(m.contains("WATCHDOG=1"));
        }
        !(status && pings >= 3)
    });
    let all: Vec<&String> = msgs.iter().chain(&more).collect();
    assert!(
        all.iter().any(|m| m.contains("STATUS=epoch 0, config ")),
        "{all:?}"
    );
    assert!(
        all.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "the loop pings the watchdog (every 0.5 s): {all:?}"
    );
    let sup_more = notifications_while(&sup_sock, Duration::from_secs(10), |seen| {
        !seen.iter().any(|m| m.contains("STATUS=epoch 0"))
    });
    assert!(
        sup_more.iter().any(|m| m.contains("STATUS=epoch 0")),
        "supervisor STATUS: {sup_more:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = notifications_until(&agent_sock, "STOPPING=1", Duration::from_secs(10));
    assert!(
        stopping.iter().any(|m| m.contains("STOPPING=1")),
        "{stopping:?}"
    );
    agent.wait().unwrap();

    // The secrets: the token and every line of the private key's body. Envoy writes its log
    // file once a second, and all of it when it exits: stop the supervisor (and so Envoy).
    let mut stand = stand;
    stand.signal_supervisor(nix::sys::signal::Signal::SIGTERM);
    assert!(
        stand.wait_supervisor(Duration::from_secs(30)),
        "the supervisor stops on TERM"
    );
    let key_lines: Vec<&str> = cert
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_lines.is_empty());
    for (name, text) in [
        ("agent", std::fs::read_to_string(&agent_log).unwrap()),
        ("supervisor", stand.log()),
        (
            "envoy",
            std::fs::read_to_string(&stand.settings.envoy.log_file).unwrap_or_default(),
        ),
    ] {
        assert!(
            text.len() > 1000,
            "{name} logged at trace level ({} bytes)",
            text.len()
        );
        assert!(
            !text.contains(&sim.token),
            "the API token appears in the {name} log"
        );
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key appears in the {name} log"
        );
        for l in &key_lines {
            assert!(
                !text.contains(l),
                "private key material appears in the {name} log"
            );
        }
    }
}

fn map_resolver(entries: &[(&str, &[&str])], ttl: Duration) -> vpsie_lb_agent::resolve::Resolver {
    vpsie_lb_agent::resolve::Resolver::Map {
        answers: entries
            .iter()
            .map(|(n, a)| {
                (
                    n.to_string(),
                    a.iter().map(|s| s.parse().unwrap()).collect(),
                )
            })
            .collect(),
        ttl,
    }
}

/// Which upstreams answer on `front`, over `n` requests.
async fn answering(front: u16, n: usize) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        if let Ok(r) = client()
            .get(format!("http://127.0.0.1:{front}/"))
            .send()
            .await
        {
            if r.status() == 200 {
                seen.insert(r.text().await.unwrap());
            }
        }
    }
    seen
}

/// A backend given as a host name: the agent resolves it (here through a map, to loopback),
/// Envoy gets the addresses as endpoints, and a changed answer is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_named_backends_are_resolved_by_the_agent_and_changes_are_followed() {
    // The same port on another loopback address: only the name's answer tells them apart. (A
    // port free on 127.0.0.1 may be held on 127.0.0.2: another one is tried then.)
    let mut tries = 0;
    let (_u1, port) = loop {
        let u1 = upstream::http("u1", None).await;
        let port = u1.port();
        if std::net::TcpListener::bind(("127.0.0.2", port)).is_ok() {
            break (u1, port);
        }
        tries += 1;
        assert!(tries < 50, "no port free on both loopback addresses");
    };
    let _u2 = upstream::http_at("u2", None, format!("127.0.0.2:{port}").parse().unwrap()).await;
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let named = json!({"identifier": LB, "lbName": "named", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": port,
        "backends": [{"identifier": "app", "ip": "app.test"}]}]});
    let sim = Sim::start(&named);
    let mut agent = Agent::new(agent_settings(&stand, &sim)).unwrap();
    // Answers expire at once, so every cycle looks again.
    agent.set_resolver(map_resolver(
        &[("app.test", &["127.0.0.1"])],
        Duration::ZERO,
    ));
    let Outcome::Applied { epoch: 0, hash: h1 } = agent.cycle(false).await else {
        panic!("the first config applies")
    };
    assert_eq!(answering(front, 20).await, ["u1".to_owned()].into());

    // The same answer: nothing to do, though the name was looked up again.
    assert_eq!(agent.cycle(false).await, Outcome::Unchanged);

    // The name moves (same spec, the API answers 304): the new address serves, the old none.
    agent.set_resolver(map_resolver(
        &[("app.test", &["127.0.0.2"])],
        Duration::ZERO,
    ));
    let Outcome::Applied { epoch: 0, hash: h2 } = agent.cycle(false).await else {
        panic!("a changed answer is a changed config, applied live")
    };
    assert_ne!(h1, h2);
    // Applied once Envoy took it; u1 serves beside u2 until u2 has passed its first check.
    stand.settled().await;
    assert_eq!(answering(front, 20).await, ["u2".to_owned()].into());

    // Both: traffic reaches both addresses.
    agent.set_resolver(map_resolver(
        &[("app.test", &["127.0.0.2", "127.0.0.1"])],
        Duration::ZERO,
    ));
    assert!(matches!(agent.cycle(false).await, Outcome::Applied { .. }));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = answering(front, 20).await;
        if seen.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "only {seen:?} answer");
    }
}

/// A name whose answer holds a forbidden address (here loopback, where the admin API used to
/// listen) carries no traffic there, and the problem is reported once, as an event and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_resolving_to_a_forbidden_address_gets_no_endpoint_and_is_reported_once() {
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let spec = json!({"identifier": LB, "lbName": "evil", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 9901,
        "backends": [{"identifier": "evil", "ip": "evil.test"}]}]});
    let sim = Sim::start(&spec);
    let mut settings = agent_settings(&stand, &sim);
    // Production rules for backend addresses: loopback is forbidden.
    settings.dev.allow_loopback_backends = false;
    let mut agent = Agent::new(settings).unwrap();
    agent.set_resolver(map_resolver(
        &[("evil.test", &["127.0.0.1"])],
        Duration::ZERO,
    ));
    let Outcome::Applied { hash, .. } = agent.cycle(false).await else {
        panic!("the config applies, without the refused address")
    };
    assert_eq!(agent.cycle(false).await, Outcome::Unchanged);
    flush_all(&mut agent).await;

    // What Envoy runs has no endpoint at all for that pool.
    let store = vpsie_lb_agent::store::ConfigStore::new(&stand.settings.envoy.config_dir);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(store.config_path(&hash)).unwrap()).unwrap();
    let cluster = &config["static_resources"]["clusters"][0];
    assert_eq!(cluster["name"], "web");
    assert_eq!(
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"],
        json!([]),
        "{cluster}"
    );
    let r = client()
        .get(format!("http://127.0.0.1:{front}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "no endpoint: no traffic");

    let problems: Vec<Value> = sim
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "backend_host_problem")
        .collect();
    assert_eq!(
        problems.len(),
        1,
        "reported once over two cycles: {problems:?}"
    );
    assert_eq!(problems[0]["metadata"]["host"], "evil.test");
    assert_eq!(problems[0]["metadata"]["problem"], "refused");
    assert_eq!(
        problems[0]["metadata"]["refused"][0]["address"],
        "127.0.0.1"
    );
    let metrics = agent.metrics().render();
    assert!(
        metrics.contains("vpsie_lb_agent_backend_host_problems_total{kind=\"refused\"} 1"),
        "{metrics}"
    );
}

/// The agent's state and event queue files damaged on disk (truncated mid-write by a crash of the
/// machine): the agent starts all the same, the queue file is moved aside (kept for a person to
/// read), it finds what serves and applies the spec, and reports from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_state_files_are_set_aside_and_the_agent_carries_on() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let sim = Sim::start(&spec(front, &[("u1", &u1)]));
    let settings = agent_settings(&stand, &sim);
    let mut agent = Agent::new(settings.clone()).unwrap();
    assert!(matches!(agent.cycle(false).await, Outcome::Applied { .. }));
    flush_all(&mut agent).await;
    drop(agent);
    // Cut mid-write: valid JSON's first half.
    for path in [settings.agent_state_path(), settings.event_queue_path()] {
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    }
    let mut agent = Agent::new(settings.clone()).unwrap();
    let aside: Vec<String> = std::fs::read_dir(&settings.state_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("events.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged queue is kept aside");
    // What serves is found again: the same spec is no new apply.
    let before = sim.events().await.len();
    assert!(matches!(
        agent.cycle(false).await,
        Outcome::Applied { .. } | Outcome::Unchanged
    ));
    sim.write_spec(&spec(front, &[("u2", &u2)]));
    assert!(matches!(agent.cycle(false).await, Outcome::Applied { .. }));
    flush_all(&mut agent).await;
    // The pool moved while serving: u2 takes over once its first check passed.
    stand.settled().await;
    let events = sim.events().await;
    assert!(
        events[before..]
            .iter()
            .any(|e| e["type"] == "config_applied"),
        "{events:?}"
    );
    let body = reqwest::get(format!("http://127.0.0.1:{front}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "u2");
}
