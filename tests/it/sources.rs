//! Source lists (`allowedSources` / `deniedSources`) with a real Envoy: clients bound to other
//! loopback addresses (127.0.0.2, .3, ...) are served or refused on every scheme, a refused one
//! never reaches a backend and is counted per rule, and list changes made live keep what is
//! still allowed.

use crate::support::certs;
use crate::support::envoy::{client_from as http_client, free_port, Envoy};
use crate::support::load::Load;
use crate::support::supervisor::Stand;
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vpsie_lb_agent::supervisor::protocol::{ApplyMethod, ApplyResult};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn backend(up: &Upstream) -> Value {
    json!({"identifier": up.name, "ip": "127.0.0.1", "port": up.port()})
}

/// The load balancer's loopback address in the family of `from`.
fn lb(from: IpAddr) -> IpAddr {
    if from.is_ipv6() {
        IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16])
    } else {
        IpAddr::from([127, 0, 0, 1])
    }
}

/// The URL host of the load balancer for a client at `from`.
fn lb_host(from: IpAddr) -> String {
    match lb(from) {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    }
}

/// A TCP connection to the load balancer's `port` from the loopback address `from`.
async fn connect_from(from: IpAddr, port: u16) -> TcpStream {
    let s = if from.is_ipv6() {
        TcpSocket::new_v6().unwrap()
    } else {
        TcpSocket::new_v4().unwrap()
    };
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(SocketAddr::new(lb(from), port)).await.unwrap()
}

/// Whether the connection is closed without a byte (read gives end of stream or a reset),
/// within `within`.
async fn closed_without_a_byte(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A connection from `from` that says `request` and must be closed by the load balancer at
/// once, without any answer.
async fn refused(from: IpAddr, port: u16, request: &[u8]) -> bool {
    let mut c = connect_from(from, port).await;
    // The write may already meet the close; the read says what happened.
    let _ = c.write_all(request).await;
    closed_without_a_byte(&mut c, Duration::from_secs(5)).await
}

fn tls_client(from: IpAddr, name: &str, port: u16, cert: &certs::TestCert) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap())
        .resolve(name, SocketAddr::new(lb(from), port))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The `x-backend` a GET answered with, or why there was none.
async fn served_by(c: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = c.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    Ok(r.headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned())
}

/// http, https (two certificates picked by SNI), http2 and tcp rules, each admitting 127.0.0.2
/// and 127.0.0.4/30 but denying 127.0.0.5 inside it: .2 and .4 are served, .3 (not allowed)
/// and .5 (denied) are closed before any byte, and no backend sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_clients_are_served_and_refused_ones_closed_on_every_scheme() {
    every_scheme(&["127.0.0.1"]).await;
}

/// The same on a dual-stack listener (the default listen addresses, `0.0.0.0` and `::`): an
/// IPv4 client is judged by the IPv4 entries, never as `::ffff:a.b.c.d`, and an IPv6 client
/// (::1, allowed by its own entry) is served on every scheme too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_listener_judges_each_family_by_its_own_entries() {
    every_scheme(&["0.0.0.0", "::"]).await;
}

async fn every_scheme(listen: &[&str]) {
    let web = upstream::http("web", None).await;
    let tcp = upstream::tcp("tcp").await;
    let (secure_cert, other_cert) = (certs::cert(&["secure.test"]), certs::cert(&["other.test"]));
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let [p_web, p_tls, p_h2, p_tcp] = ports;
    let lists = json!({"allowedSources": ["127.0.0.2", "127.0.0.4/30", "::1/128"],
                       "deniedSources": ["127.0.0.5/32"]});
    let mut rules = vec![
        json!({"ruleId": "web", "scheme": "http", "frontPort": p_web, "backPort": 1,
               "backends": [backend(&web)]}),
        json!({"ruleId": "secure", "scheme": "https", "frontPort": p_tls, "backPort": 1,
               "tls": {"certificateId": "secure", "certificatePem": secure_cert.cert_pem,
                       "privateKeyPem": secure_cert.key_pem},
               "backends": [backend(&web)],
               "domains": [{"domainId": "other", "domainName": "other.test",
                            "tls": {"certificateId": "other",
                                    "certificatePem": other_cert.cert_pem,
                                    "privateKeyPem": other_cert.key_pem},
                            "backends": [backend(&web)]}]}),
        json!({"ruleId": "grpc", "scheme": "http2", "frontPort": p_h2, "backPort": 1,
               "backends": [backend(&web)]}),
        // Checked once an hour: after the first check, every connection the backend accepts
        // is a client's.
        json!({"ruleId": "tcp", "scheme": "tcp", "frontPort": p_tcp, "backPort": 1,
               "checkInterval": 3_600_000, "backends": [backend(&tcp)]}),
    ];
    for r in &mut rules {
        for (k, v) in lists.as_object().unwrap() {
            r[k] = v.clone();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::support::envoy::test_settings(dir.path());
    settings.envoy.listen_addresses = Some(listen.iter().map(|a| a.parse().unwrap()).collect());
    let spec = json!({"identifier": "lb-sources", "lbName": "sources", "rules": rules});
    let envoy = Envoy::start_with(&spec, settings, dir).await;
    envoy.wait_healthy("web", 1).await;
    envoy.wait_healthy("tcp", 1).await;

    // An IPv6 client reaches only a dual-stack listener.
    let mut allowed_clients = vec![ip(2), ip(4)];
    if listen.contains(&"::") {
        allowed_clients.push("::1".parse().unwrap());
    }
    for allowed in allowed_clients {
        let c = http_client(allowed, false);
        assert_eq!(
            served_by(&c, &format!("http://{}:{p_web}/", lb_host(allowed))).await,
            Ok("web".into()),
            "http from {allowed}"
        );
        let c = http_client(allowed, true);
        assert_eq!(
            served_by(&c, &format!("http://{}:{p_h2}/", lb_host(allowed))).await,
            Ok("web".into()),
            "http2 from {allowed}"
        );
        for (name, cert) in [("secure.test", &secure_cert), ("other.test", &other_cert)] {
            let c = tls_client(allowed, name, p_tls, cert);
            assert_eq!(
                served_by(&c, &format!("https://{name}:{p_tls}/")).await,
                Ok("web".into()),
                "https {name} from {allowed}"
            );
        }
        let mut conn = connect_from(allowed, p_tcp).await;
        let mut got = String::new();
        conn.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "tcp", "tcp from {allowed}");
    }
    let tcp_accepted = tcp.accepted.load(Ordering::SeqCst);
    let seen_before = web.paths_seen.lock().unwrap().len();

    for refused_ip in [ip(3), ip(5)] {
        let path = format!("/from-{refused_ip}");
        let get = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(
            refused(refused_ip, p_web, get.as_bytes()).await,
            "http from {refused_ip}"
        );
        // HTTP/2 prior knowledge: the connection preface.
        assert!(
            refused(refused_ip, p_h2, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await,
            "http2 from {refused_ip}"
        );
        assert!(
            refused(refused_ip, p_tcp, b"hello").await,
            "tcp from {refused_ip}"
        );
        // TLS: the handshake is refused for either name, and for a plain byte stream.
        for (name, cert) in [("secure.test", &secure_cert), ("other.test", &other_cert)] {
            let c = tls_client(refused_ip, name, p_tls, cert);
            let r = c.get(format!("https://{name}:{p_tls}{path}")).send().await;
            assert!(r.is_err(), "https {name} from {refused_ip}: {r:?}");
        }
        assert!(
            refused(refused_ip, p_tls, get.as_bytes()).await,
            "https from {refused_ip}"
        );
    }
    assert_eq!(
        tcp.accepted.load(Ordering::SeqCst),
        tcp_accepted,
        "the tcp backend saw no refused client"
    );
    let seen = web.paths_seen.lock().unwrap().clone();
    assert!(
        seen.len() == seen_before && !seen.iter().any(|p| p.starts_with("/from-")),
        "no refused request reached a backend: {seen:?}"
    );
    // Counted per rule: two refused clients, each once per connection above.
    for (rule, want) in [("web", 2), ("grpc", 2), ("tcp", 2), ("secure", 6)] {
        assert_eq!(envoy.refused_count(rule).await, want, "refusals of {rule}");
    }
}

/// Writes `msg` and expects the echo from backend `from`.
async fn echoes(conn: &mut TcpStream, msg: &str, from: &str) -> bool {
    if conn.write_all(msg.as_bytes()).await.is_err() {
        return false;
    }
    let want = format!("{from}:{msg}");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    got == want.as_bytes()
}

/// Lists changed live under load: the still-allowed client's requests all succeed and its
/// long-lived connection stays; the client no longer allowed is closed within the drain time
/// and refused afterwards; a newly allowed one gets in; a newly denied one is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changes_keep_the_still_allowed_and_close_the_no_longer_allowed() {
    let echo = upstream::echo("e").await;
    let web = upstream::http("web", None).await;
    let (p_tcp, p_web) = (free_port(), free_port());
    let spec = |allowed: &[&str], denied: &[&str]| {
        json!({"identifier": "lb-sources-live", "lbName": "sources-live", "rules": [
            {"ruleId": "tcp", "scheme": "tcp", "frontPort": p_tcp, "backPort": 1,
             "allowedSources": allowed, "deniedSources": denied,
             "backends": [backend(&echo)]},
            {"ruleId": "web", "scheme": "http", "frontPort": p_web, "backPort": 1,
             "allowedSources": allowed, "deniedSources": denied,
             "backends": [backend(&web)]}]})
    };
    let stand = Stand::start(|s| {
        s.envoy.drain_time_s = 1;
        s.envoy.parent_shutdown_time_s = 2;
    })
    .await;
    stand
        .apply_ok(&spec(&["127.0.0.2", "127.0.0.3"], &[]))
        .await;
    let mut c2 = connect_from(ip(2), p_tcp).await;
    let mut c3 = connect_from(ip(3), p_tcp).await;
    assert!(echoes(&mut c2, "a", "e").await, "from .2");
    assert!(echoes(&mut c3, "a", "e").await, "from .3");
    let load = Load::start_from(&format!("http://127.0.0.1:{p_web}/"), 2, 1, Some(ip(2)));
    load.more(50).await;

    // .3 leaves the list, .4 joins it.
    let changed = Instant::now();
    let out = stand
        .apply_ok(&spec(&["127.0.0.2", "127.0.0.4"], &[]))
        .await;
    assert_eq!(
        (out.result, out.method, out.epoch),
        (ApplyResult::Applied, Some(ApplyMethod::Live), Some(0))
    );
    load.more(100).await;
    assert!(
        closed_without_a_byte(&mut c3, Duration::from_secs(10)).await,
        "the connection from .3, no longer allowed, is closed"
    );
    let closed_after = changed.elapsed();
    println!("no longer allowed: closed {closed_after:?} after the change (drain time 1 s)");
    assert!(
        closed_after < Duration::from_secs(6),
        "closed within the drain time (1 s) and the apply: {closed_after:?}"
    );
    crate::support::envoy::wait_not_draining(&stand.settings).await;
    assert!(
        echoes(&mut c2, "b", "e").await,
        "the still-allowed connection lives through the change and its drain"
    );
    assert!(
        refused(ip(3), p_tcp, b"x").await,
        ".3 is refused from now on"
    );
    let mut c4 = connect_from(ip(4), p_tcp).await;
    assert!(echoes(&mut c4, "a", "e").await, ".4 gets in");
    let counts = load.finish().await;
    println!(
        "load from the still-allowed .2: {} ok, {} failed",
        counts.ok, counts.failed
    );
    assert_eq!(counts.failed, 0, "{:?}", counts.errors);

    // Everyone but .4: the denied client's open connection is closed within the drain time.
    let changed = Instant::now();
    let out = stand.apply_ok(&spec(&[], &["127.0.0.4"])).await;
    assert_eq!(out.method, Some(ApplyMethod::Live));
    assert!(
        closed_without_a_byte(&mut c4, Duration::from_secs(10)).await,
        "the connection from .4, denied now, is closed"
    );
    println!("denied: closed {:?} after the change", changed.elapsed());
    assert!(refused(ip(4), p_tcp, b"x").await, ".4 is refused");
    let mut c3 = connect_from(ip(3), p_tcp).await;
    assert!(echoes(&mut c3, "c", "e").await, ".3 gets in again");
    let c = http_client(ip(6), false);
    assert_eq!(
        served_by(&c, &format!("http://127.0.0.1:{p_web}/")).await,
        Ok("web".into())
    );
}
