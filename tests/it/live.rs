//! Live apply with the real Envoy: changes go into the running epoch through xDS, long-lived
//! connections live through them, an apply is done when Envoy took the change, a pool that
//! moves keeps its old hosts until the new ones passed their first check (in the background),
//! and what Envoy does not confirm is put back.

use crate::grpc::{self, GrpcServer};
use crate::support::certs;
use crate::support::envoy::free_port;
use crate::support::load::Load;
use crate::support::supervisor::Stand;
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vpsie_lb_agent::supervisor::protocol::{ApplyMethod, ApplyResult};

fn backend(id: &str, up: &Upstream, weight: u32) -> Value {
    json!({"identifier": id, "ip": "127.0.0.1", "port": up.port(), "weight": weight})
}

/// Writes `msg` and reads the echo, which must come from `from` (`from:msg`).
async fn echo_round(conn: &mut TcpStream, msg: &str, from: &str, what: &str) {
    conn.write_all(msg.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{what}: the connection was cut: {e}"));
    let want = format!("{from}:{msg}");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: no echo within 5 s"))
            .unwrap_or_else(|e| panic!("{what}: the connection was cut: {e}"));
        assert!(n > 0, "{what}: the connection was closed");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), want, "{what}");
}

/// A WebSocket through the http rule on `port`: the upgrade answered 101, then bytes flow.
async fn websocket(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nhost: ws.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("the upgrade is answered")
            .unwrap();
        assert!(
            n > 0,
            "closed during the upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Whether the https rule on `port` serves `cert` (trusted alone: each test certificate is
/// self-signed with its own key, so the handshake succeeds only with that very certificate).
async fn serves_cert(port: u16, cert: &certs::TestCert) -> bool {
    let c = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap())
        .resolve("secure.test", ([127, 0, 0, 1], port).into())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    c.get(format!("https://secure.test:{port}/"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// The load balancer of the fifty changes, at step `i`. The pools of the long-lived
/// connections gain, lose and re-weight backends (the TCP connection's own backend `ta` leaves
/// and comes back); another rule and a domain come and go; the https certificate rotates.
struct Fifty<'a> {
    ports: [u16; 4],
    tcp: [&'a Upstream; 3],
    ws: [&'a Upstream; 2],
    web: &'a Upstream,
    grpc: &'a GrpcServer,
    certs: [certs::TestCert; 2],
}

impl Fifty<'_> {
    fn spec(&self, i: usize) -> Value {
        let [p_tcp, p_ws, p_grpc, p_tls] = self.ports;
        let [ta, tb, tc] = self.tcp;
        let tcp_backends = match i % 4 {
            0 => vec![backend("ta", ta, 100)],
            1 => vec![backend("ta", ta, 100), backend("tb", tb, 100)],
            2 => vec![backend("ta", ta, 30), backend("tb", tb, 70)],
            _ => vec![backend("tb", tb, 100), backend("tc", tc, 100)],
        };
        let mut ws_backends = vec![backend("wa", self.ws[0], 100)];
        if i % 3 == 1 {
            ws_backends.push(backend("wb", self.ws[1], 10 + i as u32));
        }
        let cert = &self.certs[(i / 5) % 2];
        let mut rules = vec![
            json!({"ruleId": "tcp", "scheme": "tcp", "frontPort": p_tcp, "backPort": 1,
                   "backends": tcp_backends}),
            json!({"ruleId": "ws", "scheme": "http", "frontPort": p_ws, "backPort": 1,
                   "backends": ws_backends}),
            json!({"ruleId": "grpc", "scheme": "http2", "frontPort": p_grpc, "backPort": 1,
                   "backends": [],
                   "domains": [{"domainId": "alpha", "domainName": "alpha.grpc.test",
                                "backends": [{"identifier": "g1", "ip": "127.0.0.1",
                                              "port": self.grpc.addr.port(),
                                              "weight": 100 + (i % 2) as u32}]}]}),
            json!({"ruleId": "secure", "scheme": "https", "frontPort": p_tls, "backPort": 1,
                   "tls": {"certificateId": "secure", "certificatePem": cert.cert_pem,
                           "privateKeyPem": cert.key_pem},
                   "backends": [backend("s1", self.web, 100)]}),
        ];
        if i % 2 == 1 {
            rules.push(json!({"ruleId": format!("extra{i}"), "scheme": "http",
                              "frontPort": free_port(), "backPort": 1,
                              "backends": [backend("x1", self.web, 100)]}));
        }
        if i % 3 == 2 {
            rules[1]["domains"] = json!([{"domainId": "d", "domainName": "d.ws.test",
                                          "backends": [backend("d1", self.web, 100)]}]);
        }
        json!({"identifier": "lb-live", "lbName": "live", "rules": rules})
    }
}

/// A long-lived TCP connection, a WebSocket and a gRPC stream through the load balancer live
/// through fifty changes made live; the TCP one's backend is removed and re-added meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_connections_survive_fifty_live_changes() {
    let (ta, tb, tc) = (
        upstream::echo("ta").await,
        upstream::echo("tb").await,
        upstream::echo("tc").await,
    );
    let (wa, wb) = (upstream::echo("wa").await, upstream::echo("wb").await);
    let web = upstream::http("web", None).await;
    let g = grpc::grpc_server("alpha", None).await;
    let lb = Fifty {
        ports: [free_port(), free_port(), free_port(), free_port()],
        tcp: [&ta, &tb, &tc],
        ws: [&wa, &wb],
        web: &web,
        grpc: &g,
        certs: [certs::cert(&["secure.test"]), certs::cert(&["secure.test"])],
    };
    // A short drain: a connection an update drained would be cut within the run.
    let stand = Stand::start(|s| {
        s.envoy.drain_time_s = 1;
        s.envoy.parent_shutdown_time_s = 2;
    })
    .await;
    let first = stand.apply_ok(&lb.spec(0)).await;
    assert_eq!(first.epoch, Some(0));

    let mut tcp = TcpStream::connect(("127.0.0.1", lb.ports[0]))
        .await
        .unwrap();
    echo_round(&mut tcp, "hello", "ta", "tcp").await;
    let mut ws = websocket(lb.ports[1]).await;
    echo_round(&mut ws, "hi", "wa", "websocket").await;
    let mut gc = grpc::client("alpha.grpc.test", lb.ports[2], None).await;
    grpc::first_answer(&mut gc, "alpha").await;
    let mut stream = gc.watch(grpc::req("alpha")).await.unwrap().into_inner();
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::ServingStatus as Set;
    assert_eq!(grpc::next(&mut stream).await, ServingStatus::Serving);

    for i in 1..=50 {
        let out = stand.apply_ok(&lb.spec(i)).await;
        assert_eq!(
            (out.result, out.method, out.epoch),
            (ApplyResult::Applied, Some(ApplyMethod::Live), Some(0)),
            "change {i}"
        );
        if i % 10 == 0 {
            // Idle in between: only the traffic of these rounds moves.
            echo_round(&mut tcp, &format!("t{i}"), "ta", "tcp").await;
            echo_round(&mut ws, &format!("w{i}"), "wa", "websocket").await;
            let (set, want) = if i % 20 == 0 {
                (Set::NotServing, ServingStatus::NotServing)
            } else {
                (Set::Serving, ServingStatus::Serving)
            };
            g.reporter.set_service_status("alpha", set).await;
            assert_eq!(grpc::next(&mut stream).await, want, "grpc stream at {i}");
            // The certificate of this step is the one new handshakes see.
            let k = (i / 5) % 2;
            assert!(
                serves_cert(lb.ports[3], &lb.certs[k]).await,
                "certificate {k} at {i}"
            );
            assert!(
                !serves_cert(lb.ports[3], &lb.certs[1 - k]).await,
                "old certificate at {i}"
            );
        }
    }
    // Whatever an update drained has finished draining (and would have been cut by now).
    crate::support::envoy::wait_not_draining(&stand.settings).await;
    echo_round(&mut tcp, "end", "ta", "tcp").await;
    echo_round(&mut ws, "end", "wa", "websocket").await;
    g.reporter
        .set_service_status("alpha", Set::NotServing)
        .await;
    assert_eq!(grpc::next(&mut stream).await, ServingStatus::NotServing);
    let s = stand.status().await;
    assert_eq!(s.epoch, Some(0), "no new epoch: {s:?}");
    assert_eq!(
        s.envoy_state,
        vpsie_lb_agent::envoy::admin::EnvoyState::Live
    );
}

/// A TCP connection and a WebSocket stay up while their pools move as warmed clusters (a new
/// cluster object that Envoy swaps in for the one that carried them): each pool is replaced by
/// `WARM_FROM` new backends, so the backend both connections were made to leaves the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_connections_survive_their_pool_moving_as_a_warmed_cluster() {
    let n = vpsie_lb_agent::supervisor::WARM_FROM;
    let (ta, wa) = (upstream::echo("ta").await, upstream::echo("wa").await);
    let mut more = Vec::new();
    for i in 0..n {
        more.push(upstream::echo(&format!("m{i}")).await);
    }
    let (p_tcp, p_ws) = (free_port(), free_port());
    let spec = |tcp: Vec<Value>, ws: Vec<Value>| {
        json!({"identifier": "lb-warm", "lbName": "warm", "rules": [
            {"ruleId": "tcp", "scheme": "tcp", "frontPort": p_tcp, "backPort": 1, "backends": tcp},
            {"ruleId": "ws", "scheme": "http", "frontPort": p_ws, "backPort": 1, "backends": ws}]})
    };
    // A short drain: a connection the move drained would be cut within the run.
    let stand = Stand::start(|s| {
        s.envoy.drain_time_s = 1;
        s.envoy.parent_shutdown_time_s = 2;
    })
    .await;
    stand
        .apply_ok(&spec(
            vec![backend("ta", &ta, 100)],
            vec![backend("wa", &wa, 100)],
        ))
        .await;
    let mut tcp = TcpStream::connect(("127.0.0.1", p_tcp)).await.unwrap();
    echo_round(&mut tcp, "hello", "ta", "tcp").await;
    let mut ws = websocket(p_ws).await;
    echo_round(&mut ws, "hi", "wa", "websocket").await;
    let modified = || async {
        crate::support::envoy::stats(&stand.settings, "cluster_manager.cluster_modified").await(
            "cluster_manager.cluster_modified",
        )
    };
    let before = modified().await;

    let moved: Vec<Value> = more
        .iter()
        .enumerate()
        .map(|(i, u)| backend(&format!("m{i}"), u, 100))
        .collect();
    stand.apply_ok(&spec(moved.clone(), moved)).await;
    assert_eq!(modified().await - before, 2, "both pools warmed anew");
    crate::support::envoy::wait_not_draining(&stand.settings).await;
    echo_round(&mut tcp, "after", "ta", "tcp").await;
    echo_round(&mut ws, "after", "wa", "websocket").await;
    // New connections go to the new backends.
    let mut fresh = TcpStream::connect(("127.0.0.1", p_tcp)).await.unwrap();
    fresh.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_secs(5), fresh.read(&mut buf))
        .await
        .expect("an echo within 5 s")
        .unwrap();
    let from = String::from_utf8_lossy(&buf[..got]).into_owned();
    assert!(from.starts_with('m'), "a new connection went to {from:?}");
}

/// The backends an answer may come from, sampled until every one of `want` has answered.
async fn reaches_exactly(client: &reqwest::Client, port: u16, want: &BTreeSet<String>, i: usize) {
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen != *want {
        let r = client
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("change {i}: {e}"));
        let status = r.status();
        let name = r.text().await.unwrap();
        assert_eq!(status, 200, "change {i}: {name}");
        assert!(
            want.contains(&name),
            "change {i}: {name} answered, but the pool is {want:?}"
        );
        seen.insert(name);
        assert!(
            Instant::now() < deadline,
            "change {i}: only {seen:?} of {want:?} answered"
        );
    }
}

/// Two hundred changes at five per second under HTTP load (the test's own clients and h2load):
/// none fails a request, and each is in effect (the new pool, all of it and nothing else,
/// answers) before the next: applied when Envoy took it, serving once `status` shows no pool
/// still moving.
/// `LIVE_CHANGES` scales it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_changes_at_five_per_second_under_load() {
    let changes: usize = std::env::var("LIVE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ups = [
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
        upstream::http("u3", None).await,
        upstream::http("u4", None).await,
    ];
    // Pools of one to three backends, each differing from the one before.
    let pools: [&[usize]; 6] = [&[0, 1], &[2], &[1, 2, 3], &[0], &[3, 0], &[1, 3]];
    let front = Stand::front_port();
    let spec = |pool: &[usize]| {
        let backends: Vec<Value> = pool
            .iter()
            .map(|&k| backend(&ups[k].name, &ups[k], 100))
            .collect();
        json!({"identifier": "lb-rate", "lbName": "rate", "rules": [{
            "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
            "healthCheckPath": "/", "backends": backends}]})
    };
    let stand = Stand::start(|_| {}).await;
    stand.apply_ok(&spec(pools[0])).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 4, 2);
    // And h2load (HTTP/1.1, 4 connections) for as long as the changes take at 5 per second.
    let url = format!("http://127.0.0.1:{front}/");
    let seconds = (changes / 5 + 2).to_string();
    let h2load = tokio::task::spawn_blocking(move || {
        std::process::Command::new("h2load")
            .args(["--h1", "-c", "4", "-t", "1", "--rps", "250", "-D", &seconds, &url])
            .output()
            .expect("h2load is required for this test: install Debian's nghttp2-client (make test does)")
    });
    let probe = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let started = Instant::now();
    let mut slow = 0;
    let (mut applying, mut settling, mut reaching) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 1..=changes {
        tick.tick().await;
        let pool = pools[i % pools.len()];
        let t = Instant::now();
        let out = stand
            .apply(&spec(pool))
            .await
            .unwrap_or_else(|e| panic!("change {i}: {e}\n{}", stand.log()));
        applying += t.elapsed();
        assert_eq!(out.method, Some(ApplyMethod::Live), "change {i}");
        // Applied means Envoy took it; the pool serves its new set once the new hosts passed
        // their first check, which `status` tells.
        let t = Instant::now();
        stand.settled().await;
        settling += t.elapsed();
        let want: BTreeSet<String> = pool.iter().map(|&k| ups[k].name.clone()).collect();
        let t = Instant::now();
        reaches_exactly(&probe, front, &want, i).await;
        reaching += t.elapsed();
        if out.apply_ms > 200 {
            slow += 1;
        }
    }
    let took = started.elapsed();
    load.more(100).await;
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    let out = h2load.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line from h2load: {text}"));
    // "requests: N total, N started, N done, N succeeded, 0 failed, 0 errored, 0 timeout"
    let n = |word: &str| -> u64 {
        line.split(", ")
            .find_map(|p| p.trim_start_matches("requests: ").strip_suffix(word))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{word} in {line}"))
    };
    assert!(n(" succeeded") > 1000, "h2load ran: {line}");
    assert_eq!(
        (n(" failed"), n(" errored"), n(" timeout")),
        (0, 0, 0),
        "h2load: {line}"
    );
    assert_eq!(n(" succeeded"), n(" done"), "h2load: {line}");
    assert_eq!(stand.status().await.epoch, Some(0));
    println!(
        "{changes} live changes in {took:?} ({:.1}/s; applying {applying:?}, then until every moved pool's new hosts passed {settling:?}, then until the new pool answers {reaching:?}), {} requests ok, {slow} applies over 200 ms; h2load: {line}",
        changes as f64 / took.as_secs_f64(),
        counts.ok
    );
}

/// A change Envoy does not confirm in time (a new pool whose only backend never answers its
/// first health check, so the cluster never warms) is put back: the old config serves, the
/// error says what was missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_envoy_does_not_confirm_in_time_is_put_back() {
    let u1 = upstream::http("u1", None).await;
    // Accepts connections and never answers: a health check there waits for its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let front = Stand::front_port();
    let good = json!({"identifier": "lb-slow", "lbName": "slow", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [backend("u1", &u1, 100)]}]});
    let mut slow = good.clone();
    slow["rules"].as_array_mut().unwrap().push(json!({
        "ruleId": "slow", "scheme": "http", "frontPort": free_port(), "backPort": silent_port,
        "healthCheckPath": "/", "checkInterval": 10000,
        "backends": [{"identifier": "s", "ip": "127.0.0.1"}]}));
    let stand = Stand::start(|s| s.supervisor.confirm_timeout_s = 2).await;
    let applied = stand.apply_ok(&good).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 2, 1);
    load.more(20).await;

    let err = stand.apply(&slow).await.unwrap_err();
    assert!(
        matches!(err, vpsie_lb_agent::command::Failure::RolledBack(_)),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("did not confirm") && msg.contains("cluster slow warm"),
        "the error says what Envoy did not confirm: {msg}"
    );
    let s = stand.status().await;
    assert_eq!(s.hash, Some(applied.hash), "the old config serves");
    assert_eq!(
        s.epoch,
        Some(0),
        "put back live, no new epoch: {}",
        stand.log()
    );
    assert_eq!(s.last_apply.unwrap().result, ApplyResult::RolledBack);
    load.more(20).await;
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    drop(silent);
}

/// A bootstrap change (maxConnections) needs a new process: a hot restart under load fails
/// nothing, and the new epoch starts from the resources applied live before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_change_hot_restarts_from_the_current_resources() {
    let (u1, u2) = (
        upstream::http("u1", None).await,
        upstream::http("u2", None).await,
    );
    let front = Stand::front_port();
    let spec = |b: &Upstream, max: u32| {
        json!({"identifier": "lb-boot", "lbName": "boot", "maxConnections": max, "rules": [{
            "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
            "backends": [backend(&b.name, b, 100)]}]})
    };
    let stand = Stand::start(|s| {
        s.envoy.drain_time_s = 1;
        s.envoy.parent_shutdown_time_s = 2;
    })
    .await;
    stand.apply_ok(&spec(&u1, 1000)).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 3, 2);
    let live = stand.apply_ok(&spec(&u2, 1000)).await;
    assert_eq!(live.method, Some(ApplyMethod::Live));
    load.more(50).await;
    let restarted = stand.apply_ok(&spec(&u2, 2000)).await;
    assert_eq!(restarted.method, Some(ApplyMethod::HotRestart));
    assert_eq!(restarted.epoch, Some(1));
    load.more(100).await;
    let probe = reqwest::Client::builder().no_proxy().build().unwrap();
    reaches_exactly(&probe, front, &["u2".to_owned()].into(), 0).await;
    // And the new epoch takes live changes in its own turn.
    let back = stand.apply_ok(&spec(&u1, 2000)).await;
    assert_eq!(
        (back.method, back.epoch),
        (Some(ApplyMethod::Live), Some(1))
    );
    reaches_exactly(&probe, front, &["u1".to_owned()].into(), 1).await;
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
}

/// A new Envoy binary on disk (an upgrade replaces the file) is taken by the next apply with a
/// hot restart, even when only resources changed; after that, applies go live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_envoy_binary_is_taken_by_hot_restart() {
    let u1 = upstream::http("u1", None).await;
    let front = Stand::front_port();
    let spec = |w: u32| {
        json!({"identifier": "lb-bin", "lbName": "bin", "rules": [{
            "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
            "backends": [backend("u1", &u1, w)]}]})
    };
    // A private copy of the binary, so that replacing it touches no other test.
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = bin_dir.path().join("envoy");
    std::fs::copy(crate::support::envoy_bin(), &binary).unwrap();
    let stand = Stand::start(|s| {
        s.envoy.binary = binary.clone();
        s.envoy.drain_time_s = 1;
        s.envoy.parent_shutdown_time_s = 2;
    })
    .await;
    stand.apply_ok(&spec(10)).await;
    let live = stand.apply_ok(&spec(20)).await;
    assert_eq!(live.method, Some(ApplyMethod::Live));

    // Replaced the way a package upgrade does it: a new file renamed over the old.
    let staged = bin_dir.path().join("envoy.new");
    std::fs::copy(crate::support::envoy_bin(), &staged).unwrap();
    std::fs::rename(&staged, &binary).unwrap();
    let upgraded = stand.apply_ok(&spec(30)).await;
    assert_eq!(
        (upgraded.method, upgraded.epoch),
        (Some(ApplyMethod::HotRestart), Some(1))
    );
    let again = stand.apply_ok(&spec(40)).await;
    assert_eq!(
        (again.method, again.epoch),
        (Some(ApplyMethod::Live), Some(1))
    );
}

/// An endpoint-only change (addresses, weights: what the agent's splice produces) goes to Envoy
/// without `envoy --mode validate`: the rest of the config is the validated one Envoy runs. Any
/// other change, and a forced resync, is validated as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_only_change_skips_validation_and_nothing_else_does() {
    let ups = [
        upstream::http("a", None).await,
        upstream::http("b", None).await,
        upstream::http("c", None).await,
    ];
    let front = free_port();
    let stand = Stand::start(|_| {}).await;
    let spec = |pool: &[(&str, usize, u32)], domain: bool| -> Value {
        let backends: Vec<Value> = pool
            .iter()
            .map(|(id, i, w)| backend(id, &ups[*i], *w))
            .collect();
        let mut rule = json!({"ruleId": "web", "scheme": "http", "frontPort": front,
                              "backPort": 1, "backends": backends});
        if domain {
            rule["domains"] = json!([{"domainId": "d", "domainName": "d.test",
                                      "backends": [backend("d1", &ups[2], 1)]}]);
        }
        json!({"identifier": "lb-eo", "lbName": "eo", "rules": [rule]})
    };
    let skipped = || {
        stand
            .log()
            .matches("only endpoint lists changed: validation skipped")
            .count()
    };
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let want = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    let live = |o: &vpsie_lb_agent::supervisor::protocol::ApplyOutcome| {
        assert_eq!(o.result, ApplyResult::Applied, "{o:?}");
        assert_eq!(o.method, Some(ApplyMethod::Live), "{o:?}");
    };

    stand.apply_ok(&spec(&[("x", 0, 1)], false)).await;
    assert_eq!(skipped(), 0, "the first config is validated");
    // Re-addressed and re-weighted: endpoints only.
    live(
        &stand
            .apply_ok(&spec(&[("x", 1, 3), ("y", 0, 1)], false))
            .await,
    );
    assert_eq!(skipped(), 1);
    reaches_exactly(&c, front, &want(&["a", "b"]), 1).await;
    // A domain added: routes and clusters change, so it is validated.
    live(
        &stand
            .apply_ok(&spec(&[("x", 1, 3), ("y", 0, 1)], true))
            .await,
    );
    assert_eq!(skipped(), 1);
    // Endpoints only again, over the new config.
    live(&stand.apply_ok(&spec(&[("x", 1, 1)], true)).await);
    assert_eq!(skipped(), 2);
    reaches_exactly(&c, front, &want(&["b"]), 3).await;
    // A forced resync of the same config is validated.
    let p = vpsie_lb_agent::command::prepare_for_store(
        spec(&[("x", 1, 1)], true).to_string().as_bytes(),
        &stand.settings,
        crate::support::now(),
    )
    .unwrap();
    let forced = vpsie_lb_agent::supervisor::client::hand_over(&p, &stand.settings, true)
        .await
        .unwrap();
    live(&forced);
    assert_eq!(skipped(), 2);
}

/// A spec of one http rule whose pool is `pool`, checked on `/healthz` every 200 ms (two passes
/// to become healthy again, one failure to go).
fn checked_spec(front: u16, pool: &[&Upstream]) -> Value {
    let backends: Vec<Value> = pool.iter().map(|u| backend(&u.name, u, 100)).collect();
    json!({"identifier": "lb-move", "lbName": "move", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
        "healthCheckPath": "/healthz", "checkInterval": 200, "fastInterval": 100,
        "rise": 2, "fall": 1, "backends": backends}]})
}

fn paths(u: &Upstream) -> Vec<String> {
    u.paths_seen.lock().unwrap().clone()
}

/// Requests (not health checks) an upstream answered.
fn served(u: &Upstream) -> usize {
    paths(u).iter().filter(|p| *p == "/").count()
}

/// A pool replaced wholesale under HTTP load, its new backends failing their health checks at
/// first: the apply is done at once (Envoy took it), the old backends carry every request
/// until the new ones pass, no request reaches a new backend before it passed a check, none
/// fails, and once the transition is over the old backends get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_replaced_wholesale_moves_once_its_new_hosts_pass() {
    replaced_wholesale(2, 2).await;
}

/// The same for a pool large enough to move as a new cluster object that Envoy warms (every
/// first check in one pass, `WARM_FROM` new hosts or more): the old object serves until the
/// new one is swapped in, and the swap loses no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_pool_replaced_wholesale_moves_as_a_warmed_cluster() {
    replaced_wholesale(4, vpsie_lb_agent::supervisor::WARM_FROM).await;
}

/// A pool redefined (its health check changed) and replaced wholesale in the same change,
/// under HTTP load: Envoy warms the redefined cluster while the old one serves its old
/// backends, so no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_redefined_and_replaced_at_once_loses_no_request() {
    let (o1, o2) = (
        upstream::http("o1", None).await,
        upstream::http("o2", None).await,
    );
    let (n1, n2) = (
        upstream::http("n1", None).await,
        upstream::http("n2", None).await,
    );
    let front = Stand::front_port();
    let stand = Stand::start(|s| s.supervisor.confirm_timeout_s = 30).await;
    stand.apply_ok(&checked_spec(front, &[&o1, &o2])).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 4, 1);
    load.more(50).await;
    let mut next = checked_spec(front, &[&n1, &n2]);
    next["rules"][0]["checkInterval"] = json!(300);
    stand.apply_ok(&next).await;
    load.more(200).await;
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    assert!(served(&n1) > 0 && served(&n2) > 0, "the new backends serve");
}

/// `from` backends replaced by `n` new ones.
async fn replaced_wholesale(from: usize, n: usize) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut old = Vec::new();
    let mut new = Vec::new();
    for i in 0..from {
        old.push(upstream::http(&format!("o{i}"), None).await);
    }
    for i in 0..n {
        new.push(upstream::http(&format!("n{i}"), None).await);
    }
    for u in &new {
        u.failing_health.store(true, SeqCst);
    }
    let old: Vec<&Upstream> = old.iter().collect();
    let new: Vec<&Upstream> = new.iter().collect();
    let front = Stand::front_port();
    let stand = Stand::start(|s| s.supervisor.confirm_timeout_s = 30).await;
    stand.apply_ok(&checked_spec(front, &old)).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 4, 1);
    load.more(50).await;
    let modified = || async {
        crate::support::envoy::stats(&stand.settings, "cluster_manager.cluster_modified").await(
            "cluster_manager.cluster_modified",
        )
    };
    let modified_before = modified().await;

    let out = stand.apply(&checked_spec(front, &new)).await.unwrap();
    assert_eq!(out.method, Some(ApplyMethod::Live));
    let moving = stand.status().await.transitions;
    assert!(
        moving.len() == 1
            && moving[0].pool == "web"
            && moving[0].new_hosts == n
            && moving[0].old_hosts == from,
        "{moving:?}"
    );
    // A new cluster object (Envoy counts it as a modified cluster) only from WARM_FROM hosts.
    let warmed = usize::from(n >= vpsie_lb_agent::supervisor::WARM_FROM) as u64;
    assert_eq!(modified().await - modified_before, warmed);
    // The new backends are checked and fail; the old ones carry the traffic meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while new
        .iter()
        .any(|u| paths(u).iter().filter(|p| *p == "/healthz").count() < 2)
    {
        assert!(
            Instant::now() < deadline,
            "the new backends were not checked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    load.more(100).await;
    assert_eq!(
        new.iter().map(|u| served(u)).sum::<usize>(),
        0,
        "no traffic before a check passed"
    );
    let s = stand.status().await;
    assert_eq!(s.transitions.len(), 1, "still moving: {:?}", s.transitions);
    assert!(s.transitions[0].stuck.is_none());

    // They pass: each gets traffic only after a check it passed, and the old ones go.
    let flipped: Vec<usize> = new.iter().map(|u| paths(u).len()).collect();
    for u in &new {
        u.failing_health.store(false, SeqCst);
    }
    stand.settled().await;
    for (u, from) in new.iter().zip(flipped) {
        let after = &paths(u)[from..];
        if let Some(first) = after.iter().position(|p| p == "/") {
            assert!(
                after[..first].iter().any(|p| p == "/healthz"),
                "{}: a request before a passing check: {after:?}",
                u.name
            );
        }
    }
    let old_served = || old.iter().map(|u| served(u)).sum::<usize>();
    // A request routed to an old backend just before the transition ended may still be on its
    // way: let every load connection finish a few requests first.
    load.more(20).await;
    let before = old_served();
    load.more(200).await;
    assert_eq!(old_served(), before, "the old backends are gone");
    let serving = new.iter().filter(|u| served(u) > 0).count();
    assert_eq!(serving, n, "only {serving} of {n} new backends serve");
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    let m = stand.metrics().await;
    assert!(
        m.contains("vpsie_lb_supervisor_pool_transitions_total{result=\"finished\"} 1"),
        "{m}"
    );
}

/// The first transition `status` reports stuck, waited for up to 20 s.
async fn stuck_transition(stand: &Stand) -> vpsie_lb_agent::supervisor::protocol::TransitionStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stand.status().await;
        if let Some(t) = s.transitions.iter().find(|t| t.stuck.is_some()) {
            return t.clone();
        }
        assert!(Instant::now() < deadline, "never reported stuck: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pool moved as a warmed cluster whose new hosts never pass: Envoy swaps the new object in
/// once every first check is in (passed or not), the old host still in it carries every
/// request, the transition is reported stuck with every new host, and the next change
/// supersedes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_pool_whose_new_hosts_never_pass_keeps_its_old_host() {
    use std::sync::atomic::Ordering::SeqCst;
    let n = vpsie_lb_agent::supervisor::WARM_FROM;
    let o1 = upstream::http("o1", None).await;
    let mut dead = Vec::new();
    for i in 0..n {
        let u = upstream::http(&format!("d{i}"), None).await;
        u.failing_health.store(true, SeqCst);
        dead.push(u);
    }
    let front = Stand::front_port();
    let stand = Stand::start(|s| s.supervisor.confirm_timeout_s = 2).await;
    stand.apply_ok(&checked_spec(front, &[&o1])).await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 2, 1);
    load.more(20).await;

    let dead_refs: Vec<&Upstream> = dead.iter().collect();
    let out = stand.apply(&checked_spec(front, &dead_refs)).await.unwrap();
    assert_eq!(out.method, Some(ApplyMethod::Live));
    let stuck = stuck_transition(&stand).await;
    assert_eq!(stuck.stuck.as_ref().map(Vec::len), Some(n), "{stuck:?}");
    // Swapped in (nothing warming), every new host checked and failing, the old one serving.
    let warming =
        crate::support::envoy::stats(&stand.settings, "cluster_manager.warming_clusters").await;
    assert_eq!(warming("cluster_manager.warming_clusters"), 0);
    assert!(dead
        .iter()
        .all(|u| paths(u).iter().any(|p| p == "/healthz")));
    let before = served(&o1);
    load.more(100).await;
    // (Up to one request per load connection may have reached o1 before `before` was read
    // and be counted by the load after it.)
    assert!(
        served(&o1) >= before + 98,
        "the old host carries the traffic"
    );
    assert_eq!(dead.iter().map(served).sum::<usize>(), 0);

    // The next change (back to the old host alone) supersedes it.
    stand.apply_ok(&checked_spec(front, &[&o1])).await;
    assert!(stand.status().await.transitions.is_empty());
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    let m = stand.metrics().await;
    assert!(
        m.contains("vpsie_lb_supervisor_pool_transitions_total{result=\"superseded\"} 1"),
        "{m}"
    );
}

/// A pool whose new host never passes: the whole product (stand-in API, agent, supervisor,
/// Envoy). Applied at once; after `confirm_timeout_s` the transition is reported once (status,
/// metric, one `reload_failed` event naming the pool and the host), the old host keeps serving,
/// and the next change supersedes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_whose_new_hosts_never_pass_is_reported_once_and_superseded() {
    use crate::support::sim::{agent_process, agent_settings, Sim};
    let (o1, dead, n2) = (
        upstream::http("o1", None).await,
        upstream::http("dead", None).await,
        upstream::http("n2", None).await,
    );
    dead.failing_health
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let front = Stand::front_port();
    let stand = Stand::start(|s| s.supervisor.confirm_timeout_s = 2).await;
    let a = checked_spec(front, &[&o1]);
    let sim = Sim::start(&a);
    let settings = agent_settings(&stand, &sim);
    let mut agent = agent_process(&stand, &settings)();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stand.status().await.hash.is_none() {
        assert!(Instant::now() < deadline, "a never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stand.settled().await;
    let load = Load::start(&format!("http://127.0.0.1:{front}/"), 2, 1);
    load.more(20).await;

    sim.write_spec(&checked_spec(front, &[&dead]));
    let stuck = stuck_transition(&stand).await;
    assert_eq!(
        stuck.stuck.as_deref(),
        Some(&[format!("127.0.0.1:{}", dead.port())][..])
    );
    let applied = stand.status().await.last_apply.unwrap();
    assert_eq!(applied.result, ApplyResult::Applied);
    assert!(
        applied.apply_ms < 2000,
        "applied before the transition's deadline: {applied:?}"
    );
    // Reported once, however long it stays: wait until it has been stuck for as long again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let events: Vec<Value> = sim
            .events()
            .await
            .into_iter()
            .filter(|e| e["type"] == "reload_failed")
            .collect();
        if !events.is_empty() && stand.status().await.transitions[0].age_ms > 5000 {
            assert_eq!(events.len(), 1, "{events:?}");
            break events[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no event: {:?}",
            sim.events().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["id"], stuck.id.as_str(), "{event}");
    assert_eq!(event["metadata"]["pool"], "web", "{event}");
    assert_eq!(
        event["metadata"]["hosts"],
        json!([format!("127.0.0.1:{}", dead.port())]),
        "{event}"
    );
    assert_eq!(
        stand.log().matches("pool transition not finished").count(),
        1
    );
    let m = stand.metrics().await;
    assert!(
        m.contains("vpsie_lb_supervisor_pool_transitions{state=\"stuck\"} 1"),
        "{m}"
    );
    load.more(50).await;
    assert_eq!(paths(&dead).iter().filter(|p| *p == "/").count(), 0);

    // The next change supersedes it.
    sim.write_spec(&checked_spec(front, &[&n2]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stand.status().await;
        if s.transitions.is_empty() && served(&n2) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the next change did not take over: {:?}",
            s.transitions
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = served(&o1);
    load.more(100).await;
    assert_eq!(served(&o1), old, "o1 is gone once n2 passed");
    let counts = load.finish().await;
    assert_eq!(counts.failed, 0, "failed requests: {:?}", counts.errors);
    let m = stand.metrics().await;
    assert!(
        m.contains("vpsie_lb_supervisor_pool_transitions_total{result=\"superseded\"} 1"),
        "{m}"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}
