//! The edge limits (Envoy's "Configuring Envoy as an edge proxy", docs/mapping.md, "Edge limits"), each
//! proven with a real Envoy on loopback by the attack it stops, with a legitimate client beside
//! the attacker where the attack could hurt others. The heavy versions (thousands of slow
//! connections) are in `benches/attacks.rs`.

use crate::support::envoy::{free_port, test_settings, Envoy};
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vpsie_lb_agent::settings::Settings;

fn spec(front: u16, up: &Upstream) -> Value {
    json!({"identifier": "lb-edge", "lbName": "edge", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [{"identifier": "b1", "ip": "127.0.0.1", "port": up.port()}]
    }]})
}

async fn start(front: u16, up: &Upstream, tweak: impl FnOnce(&mut Settings)) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    tweak(&mut settings);
    Envoy::start_with(&spec(front, up), settings, dir).await
}

/// One HTTP/1.1 response read from `c`: its status and headers (lower-cased names), the body
/// read by its `content-length`. `None` when the connection ends first.
async fn response(c: &mut TcpStream) -> Option<(u16, Vec<(String, String)>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.ok()?;
    Some((status, headers))
}

/// The status Envoy answers one raw request with, on a connection of its own.
async fn status_of(front: u16, request: &[u8]) -> Option<u16> {
    let mut c = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
    c.write_all(request).await.ok()?;
    tokio::time::timeout(Duration::from_secs(5), response(&mut c))
        .await
        .ok()
        .flatten()
        .map(|(s, _)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_an_edge_refuses_never_reach_a_backend() {
    let up = upstream::http("b1", None).await;
    let front = free_port();
    let _envoy = start(front, &up, |_| {}).await;
    let ok = b"GET /fine HTTP/1.1\r\nHost: lb\r\n\r\n".to_vec();
    assert_eq!(status_of(front, &ok).await, Some(200));

    // A header name with an underscore: refused (backends that read `x_user` and `x-user` as
    // one header could be lied to).
    let underscore = b"GET /underscore HTTP/1.1\r\nHost: lb\r\nx_user: admin\r\n\r\n";
    assert_eq!(status_of(front, underscore).await, Some(400));

    // 200 headers (the limit is 100) and 100 KiB of headers (the limit is 60 KiB).
    let mut many = b"GET /many HTTP/1.1\r\nHost: lb\r\n".to_vec();
    for i in 0..200 {
        many.extend(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(status_of(front, &many).await, Some(431));
    let mut big = b"GET /big HTTP/1.1\r\nHost: lb\r\n".to_vec();
    for i in 0..10 {
        big.extend(format!("x-big{i}: {}\r\n", "a".repeat(10 * 1024)).as_bytes());
    }
    big.extend(b"\r\n");
    assert_eq!(status_of(front, &big).await, Some(431));

    // Just under both limits is served.
    let mut under = b"GET /under HTTP/1.1\r\nHost: lb\r\n".to_vec();
    for i in 0..90 {
        under.extend(format!("x-h{i}: {}\r\n", "a".repeat(500)).as_bytes());
    }
    under.extend(b"\r\n");
    assert_eq!(status_of(front, &under).await, Some(200));

    let seen = up.paths_seen.lock().unwrap().clone();
    assert!(seen.iter().any(|p| p == "/fine") && seen.iter().any(|p| p == "/under"));
    for refused in ["/underscore", "/many", "/big"] {
        assert!(
            !seen.iter().any(|p| p == refused),
            "{refused} reached the backend: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_with_its_headers_is_cut_at_the_time_limit_while_others_are_served() {
    let up = upstream::http("b1", None).await;
    let front = free_port();
    let _envoy = start(front, &up, |s| s.envoy.request_headers_timeout_s = 2).await;
    // 50 slowloris connections: a request line, then one more header line every 300 ms, never
    // the end of the headers.
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..50 {
        slow.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
            let opened = Instant::now();
            c.write_all(format!("GET /slow{i} HTTP/1.1\r\nHost: lb\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    r = c.read(&mut buf) => {
                        // Envoy answers 408 or just closes: either way the connection ends.
                        let answer = match r {
                            Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).into_owned(),
                            _ => String::new(),
                        };
                        return (opened.elapsed(), answer);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {
                        if c.write_all(b"x-slow: 1\r\n").await.is_err() {
                            return (opened.elapsed(), String::new());
                        }
                    }
                }
                assert!(opened.elapsed() < Duration::from_secs(30), "never cut");
            }
        }));
    }
    // A legitimate client meanwhile: every request served.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut served = 0;
    while slow.iter().any(|t| !t.is_finished()) {
        let r = client
            .get(format!("http://127.0.0.1:{front}/legit"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        served += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slow ones were never cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 10, "{served}");
    for t in slow {
        let (lived, answer) = t.await.unwrap();
        // Cut at the 2 s limit (Envoy's timer is coarse: allow a little either side).
        assert!(
            lived >= Duration::from_millis(1800) && lived < Duration::from_secs(6),
            "{lived:?} {answer:?}"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer:?}"
        );
    }
    let seen = up.paths_seen.lock().unwrap().clone();
    assert!(!seen.iter().any(|p| p.starts_with("/slow")), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_connection_makes_at_most_its_share_of_requests() {
    let up = upstream::http("b1", None).await;
    let front = free_port();
    let _envoy = start(front, &up, |s| s.envoy.max_requests_per_connection = 300).await;
    let mut c = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
    let mut answered = 0;
    let mut last_headers = Vec::new();
    for _ in 0..400 {
        if c.write_all(b"GET /keep HTTP/1.1\r\nHost: lb\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), response(&mut c))
            .await
            .unwrap()
        {
            Some((200, h)) => {
                answered += 1;
                last_headers = h;
            }
            Some((s, _)) => panic!("status {s} after {answered}"),
            None => break,
        }
    }
    assert_eq!(answered, 300);
    assert!(
        last_headers.contains(&("connection".into(), "close".into())),
        "the last answer says it closes: {last_headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_capped_and_rapid_resets_end_the_connection() {
    let up = upstream::http("b1", None).await;
    let front = free_port();
    let envoy = start(front, &up, |_| {}).await;
    let tcp = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    h2 = h2.ready().await.unwrap();
    // A legitimate HTTP/2 client beside the attacker.
    let legit = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{front}/legit");
    assert_eq!(legit.get(&url).send().await.unwrap().status(), 200);

    // Rapid reset (CVE-2023-44487): open a stream, cancel it at once, again and again.
    let mut opened = 0;
    let ended = loop {
        let ready = match tokio::time::timeout(Duration::from_secs(5), h2.clone().ready()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => break format!("{e}"),
            Err(_) => break "stalled".to_owned(),
        };
        h2 = ready;
        let req = http::Request::get(format!("http://127.0.0.1:{front}/reset"))
            .body(())
            .unwrap();
        match h2.send_request(req, false) {
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(e) => break format!("{e}"),
        }
        assert!(opened < 5_000, "Envoy never ended the connection");
    };
    // Envoy's defence: once 100 streams ended (the config's runtime key; Envoy's default is
    // 500) and half of them were reset within a second of opening, it closes the connection,
    // long before the per-connection request limit.
    // (The client counts what it wrote; more than Envoy had read when it closed.)
    assert_ne!(ended, "stalled", "{opened} streams");
    let _ = driver.await;
    let runtime = envoy.admin_text("/runtime").await;
    let runtime: Value = serde_json::from_str(&runtime).unwrap();
    assert_eq!(
        runtime["entries"]["overload.premature_reset_total_stream_count"]["final_value"],
        "100"
    );
    let s = crate::support::envoy::stats(&envoy.settings, "downstream_rq_t").await;
    assert_eq!(
        s("http.web.downstream_rq_too_many_premature_resets"),
        1,
        "one connection closed for premature resets ({opened} streams written, then: {ended})"
    );
    let total = s("http.web.downstream_rq_total");
    // Streams reset before their headers were decoded are not counted as requests.
    assert!(
        total > 1 && total < 10_000,
        "closed before the per-connection request limit: {total} requests"
    );
    // The legitimate client was never hurt.
    for _ in 0..20 {
        assert_eq!(legit.get(&url).send().await.unwrap().status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_told_the_stream_and_window_limits() {
    let up = upstream::http("b1", None).await;
    let front = free_port();
    let _envoy = start(front, &up, |_| {}).await;
    let tcp = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut conn = Box::pin(conn);
    // The server's SETTINGS arrive with the first exchange.
    let req = http::Request::get(format!("http://127.0.0.1:{front}/"))
        .body(())
        .unwrap();
    let mut h2 = h2.ready().await.unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = resp => r.unwrap(),
        r = &mut conn => panic!("connection ended: {r:?}"),
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_streams_on_one_connection_is_held_to_100() {
    // A backend that accepts and never answers: Envoy holds every stream open.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            kept.push(s);
        }
    });
    let front = free_port();
    let spec = json!({"identifier": "lb-edge", "lbName": "edge", "rules": [{
        "ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [{"identifier": "b1", "ip": "127.0.0.1", "port": port}]
    }]});
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start_with(&spec, test_settings(dir.path()), dir).await;
    let tcp = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    // Until the server's SETTINGS are read, a client may open any number of streams.
    let mut conn = Box::pin(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn.max_concurrent_send_streams() != 100 {
        assert!(Instant::now() < deadline, "no SETTINGS from Envoy");
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut conn).await;
    }
    let driver = tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..150 {
        // Past the server's limit the client must wait for a stream to end: none will.
        let Ok(ready) = tokio::time::timeout(Duration::from_millis(500), h2.clone().ready()).await
        else {
            break;
        };
        h2 = ready.unwrap();
        let req = http::Request::post(format!("http://127.0.0.1:{front}/flood"))
            .body(())
            .unwrap();
        held.push(h2.send_request(req, false).unwrap());
    }
    // The client may queue past the limit; what counts is what Envoy holds open.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = crate::support::envoy::stats(&envoy.settings, "downstream_rq").await;
        let active = s("http.web.downstream_rq_active");
        if active == 100 {
            break;
        }
        assert!(
            active < 100,
            "{active} streams open at once on one connection"
        );
        assert!(
            Instant::now() < deadline,
            "Envoy never held the 100 streams"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other 50 wait on the client's side for a stream to end; none reaches Envoy.
    let settled = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settled {
        let s = crate::support::envoy::stats(&envoy.settings, "downstream_rq").await;
        assert_eq!(
            s("http.web.downstream_rq_total"),
            100,
            "{} sent",
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.abort();
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heap_over_its_limit_sheds_load_and_says_so() {
    let up = upstream::http("b1", None).await;
    let front = free_port();
    // 1 MiB: Envoy's own idle heap is far above it (the settings refuse less than 64 MiB; a
    // test may go below to saturate the monitor).
    let envoy = start(front, &up, |s| s.envoy.max_heap_mb = Some(1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = envoy.admin_text("/stats?filter=^overload\\.").await;
        if text.contains("stop_accepting_requests.active: 1") {
            break text;
        }
        assert!(Instant::now() < deadline, "never overloaded:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("{text}");
    for action in ["shrink_heap", "disable_http_keepalive"] {
        assert!(
            text.contains(&format!(
                "overload.envoy.overload_actions.{action}.active: 1"
            )),
            "{action}:\n{text}"
        );
    }
    assert!(
        text.contains("overload.envoy.overload_actions.reduce_timeouts.scale_percent: 100"),
        "{text}"
    );
    // At 98 % new connections are not even accepted (closed at once, no answer).
    let ok = b"GET /shed HTTP/1.1\r\nHost: lb\r\n\r\n".to_vec();
    assert_eq!(status_of(front, &ok).await, None);
    // The worker counts the refusal after it closed the socket: wait for the count.
    let counted = format!("listener.127.0.0.1_{front}.downstream_cx_overload_reject: 1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shed = envoy.admin_text("/stats?filter=overload").await;
        if shed.contains(&counted) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused connection is counted:\n{shed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!up.paths_seen.lock().unwrap().iter().any(|p| p == "/shed"));
    // What the scrape carries (the metrics route forwards this page).
    let prom = envoy.admin_text("/stats/prometheus").await;
    let line = prom
        .lines()
        .find(|l| {
            l.starts_with("envoy_overload_envoy_overload_actions_stop_accepting_requests_active")
        })
        .unwrap_or_else(|| panic!("no overload action in the scrape:\n{prom}"));
    assert!(line.ends_with(" 1"), "{line}");
    // Every series the alerts and the dashboard's "Edge" row read.
    for series in [
        "envoy_overload_envoy_resource_monitors_fixed_heap_pressure",
        "envoy_overload_envoy_overload_actions_disable_http_keepalive_active",
        "envoy_overload_envoy_overload_actions_reduce_timeouts_scale_percent",
        "envoy_listener_downstream_cx_overload_reject",
        "envoy_envoy_overload_actions_reset_high_memory_stream_count",
    ] {
        assert!(prom.contains(&format!("\n{series}")), "{series}");
    }
}

/// Envoy's count of open connections on the listener at `port`, and of those it refused at its
/// connection limit so far.
async fn listener_counts(settings: &Settings, port: u16) -> (u64, u64) {
    let l = format!("listener.127.0.0.1_{port}");
    let s = crate::support::envoy::stats(settings, &format!("^{l}\\.downstream_cx_")).await;
    (
        s(&format!("{l}.downstream_cx_active")),
        s(&format!("{l}.downstream_cx_overflow"))
            + s(&format!("{l}.downstream_global_cx_overflow")),
    )
}

/// Opens `n` connections to the listener at `port` (which holds none) and returns them with
/// how many Envoy holds and how many it refused at the listener's limit, read from Envoy once
/// it has counted every one of them either way.
async fn held(settings: &Settings, port: u16, n: u64) -> (Vec<TcpStream>, u64, u64) {
    let (_, refused_before) = listener_counts(settings, port).await;
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (active, refused) = listener_counts(settings, port).await;
        let refused = refused - refused_before;
        if active + refused >= n {
            return (conns, active, refused);
        }
        assert!(
            Instant::now() < deadline,
            "{active} held and {refused} refused of {n}:\n{}",
            crate::support::envoy::admin_page(settings, "/stats?filter=downstream_cx").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the listener at `port` holds no connection (the client closed them).
async fn drained(settings: &Settings, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while listener_counts(settings, port).await.0 > 0 {
        assert!(
            Instant::now() < deadline,
            "connections still open on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_holds_at_most_its_share_and_the_share_follows_the_rules_live() {
    use crate::support::supervisor::Stand;
    use vpsie_lb_agent::supervisor::protocol::ApplyMethod;
    let up = upstream::http("b1", None).await;
    let stand = Stand::start(|_| {}).await;
    let (a, b) = (free_port(), free_port());
    let rule = |id: &str, port: u16| {
        json!({"ruleId": id, "scheme": "http", "frontPort": port, "backPort": 1,
               "backends": [{"identifier": "b1", "ip": "127.0.0.1", "port": up.port()}]})
    };
    let two = json!({"identifier": "lb-edge", "lbName": "edge", "maxConnections": 20,
                     "rules": [rule("a", a), rule("b", b)]});
    stand.apply_ok(&two).await;
    // 20 in all, two listeners: each keeps 20 / 4 = 5 for itself, so one may hold 15, and the
    // other still gets its 5 while the first is full.
    let (on_a, held_a, refused_a) = held(&stand.settings, a, 18).await;
    assert_eq!((held_a, refused_a), (15, 3), "held and refused on a");
    let (on_b, held_b, refused_b) = held(&stand.settings, b, 5).await;
    assert_eq!(
        (held_b, refused_b),
        (5, 0),
        "held and refused on b while a is full"
    );
    // As the alerts and the dashboard read it.
    let prom = crate::support::envoy::admin_page(&stand.settings, "/stats/prometheus").await;
    let series = format!(
        "envoy_listener_downstream_cx_overflow{{envoy_listener_address=\"127.0.0.1_{a}\"}} 3"
    );
    assert!(prom.contains(&series), "{series}");
    assert!(prom.contains("\nenvoy_listener_downstream_global_cx_overflow{"));
    drop((on_a, on_b));

    // One rule left, live: it may now take the whole cap (the RTDS layer changed with it).
    let one = json!({"identifier": "lb-edge", "lbName": "edge", "maxConnections": 20,
                     "rules": [rule("a", a)]});
    let out = stand.apply_ok(&one).await;
    assert_eq!(out.method, Some(ApplyMethod::Live));
    // The connections above are closed by their client; Envoy counts them until it sees that.
    drained(&stand.settings, a).await;
    // The 18 that met its share of 15 before are all held now. (Past the whole cap of 20,
    // Envoy stops accepting: those wait in the kernel's queue, counted nowhere.)
    let (_held, held_a, refused_a) = held(&stand.settings, a, 18).await;
    assert_eq!((held_a, refused_a), (18, 0), "held and refused on a alone");
}
