//! Both address families end to end, with clients that have addresses of their own: the load
//! balancer and its backends in one network namespace, the clients in another (198.18.0.0/24
//! and 2001:2::/64, see `support::netns`), so that Envoy sees each client's true address, not
//! loopback's. From one client address of each family: every scheme is served on the default
//! listen addresses, `X-Forwarded-For` and PROXY protocol v1 and v2 carry that address, the
//! access log names it, source hashing keys on it, and source lists admit and refuse it by its
//! own family's entries, a refusal counted per rule. The redirect port and the scrape port
//! (`metrics.allowed_cidrs`) answer both families too.

use crate::support::certs::{self, TestCert};
use crate::support::envoy::{client_from as http_client, free_port, Envoy};
use crate::support::netns::{in_netns, node_ip, node_ip6, Lab, CLIENT_IP, CLIENT_IP6};
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The second client address of each family: denied by the source-listed rule.
const DENIED: &str = "198.18.0.2";
const DENIED6: &str = "2001:2::2";

/// More client addresses, for source hashing: with 16 addresses in all, the chance that every
/// one hashes to the same of two backends is 2^-15.
fn more_clients() -> Vec<String> {
    (101..=106)
        .flat_map(|i| [format!("198.18.0.{i}"), format!("2001:2::{i}")])
        .collect()
}

#[test]
fn each_family_is_served_on_every_scheme_as_its_true_client() {
    let lab = Lab::new(1);
    Lab::add_address(&lab.client, &format!("{DENIED}/24"));
    Lab::add_address(&lab.client, &format!("{DENIED6}/64"));
    for a in more_clients() {
        let prefix = if a.contains(':') { 64 } else { 24 };
        Lab::add_address(&lab.client, &format!("{a}/{prefix}"));
    }
    let client = lab.client.clone();
    let result = in_netns(&lab.nodes[0], move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(load_balancer_side(client))
    })
    .join();
    drop(lab);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

struct Ports {
    web: u16,
    secure: u16,
    grpc: u16,
    pp1: u16,
    pp2: u16,
    hash: u16,
    redirect: u16,
    scrape: u16,
}

fn backend(up: &Upstream) -> Value {
    json!({"identifier": up.name, "ip": "127.0.0.1", "port": up.port()})
}

/// Runs inside the load balancer's namespace: backends on its loopback, Envoy on the default
/// listen addresses (both families' any address).
async fn load_balancer_side(client_ns: String) {
    let web = upstream::http("web", None).await;
    let other = upstream::http("other", None).await;
    let pp1 = upstream::tcp("pp1").await;
    let pp2 = upstream::tcp("pp2").await;
    let cert = certs::cert(&["secure.test"]);
    let p = Ports {
        web: free_port(),
        secure: free_port(),
        grpc: free_port(),
        pp1: free_port(),
        pp2: free_port(),
        hash: free_port(),
        redirect: free_port(),
        scrape: free_port(),
    };
    let spec = json!({"identifier": "lb-families", "lbName": "families", "rules": [
        {"ruleId": "web", "scheme": "http", "frontPort": p.web, "backPort": 1,
         "allowedSources": ["198.18.0.0/24", "2001:2::/64"],
         "deniedSources": [DENIED, DENIED6],
         "backends": [backend(&web)]},
        {"ruleId": "secure", "scheme": "https", "frontPort": p.secure, "backPort": 1,
         "redirectHTTP": 1, "tls": {"certificateId": "secure", "certificatePem": cert.cert_pem,
                 "privateKeyPem": cert.key_pem},
         "backends": [backend(&web)]},
        {"ruleId": "grpc", "scheme": "http2", "frontPort": p.grpc, "backPort": 1,
         "backends": [backend(&web)]},
        {"ruleId": "pp1", "scheme": "tcp", "frontPort": p.pp1, "backPort": 1,
         "proxyProtocol": "v1", "checkInterval": 3_600_000, "backends": [backend(&pp1)]},
        {"ruleId": "pp2", "scheme": "tcp", "frontPort": p.pp2, "backPort": 1,
         "proxyProtocol": "v2", "checkInterval": 3_600_000, "backends": [backend(&pp2)]},
        {"ruleId": "hash", "scheme": "http", "frontPort": p.hash, "backPort": 1,
         "algorithm": "source", "backends": [backend(&web), backend(&other)]},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::support::envoy::test_settings(dir.path());
    settings.envoy.listen_addresses = None;
    settings.envoy.redirect_port = p.redirect;
    settings.metrics.scrape_port = p.scrape;
    settings.metrics.allowed_cidrs = vec![format!("{CLIENT_IP}/32"), format!("{CLIENT_IP6}/128")];
    assert_eq!(
        settings.envoy.listen_addresses().len(),
        2,
        "this host has IPv6: the default binds both families"
    );
    let envoy = Envoy::start_with(&spec, settings, dir).await;
    for (rule, n) in [("web", 1), ("hash", 2), ("pp1", 1), ("pp2", 1)] {
        envoy.wait_healthy(rule, n).await;
    }

    let (cert_pem, ports) = (cert, p);
    let seen_by_hash = as_client(&client_ns, move || client_side(ports, cert_pem)).await;

    // Source hashing keys on the address: each client address kept its backend over fresh
    // connections (other source ports), and the addresses did not all land on one.
    for (from, backends) in &seen_by_hash {
        assert_eq!(backends.len(), 1, "{from} moved between {backends:?}");
    }
    let spread: std::collections::BTreeSet<_> = seen_by_hash.values().flatten().collect();
    assert_eq!(
        spread.len(),
        2,
        "every address on one backend: {seen_by_hash:?}"
    );
    assert_eq!(seen_by_hash.len(), 16);

    // Refused by each family's entries, counted per rule, never seen by the backend.
    assert_eq!(envoy.refused_count("web").await, 2);
    let paths = web.paths_seen.lock().unwrap().clone();
    assert!(
        !paths.iter().any(|p| p.starts_with("/refused")),
        "{paths:?}"
    );

    // The access log names each client by its own address, on http and tcp rules alike.
    let log = envoy.settings.access_log.path.clone();
    for (rule, client) in [
        ("web", CLIENT_IP),
        ("web", CLIENT_IP6),
        ("secure", CLIENT_IP),
        ("secure", CLIENT_IP6),
        ("pp1", CLIENT_IP),
        ("pp2", CLIENT_IP6),
    ] {
        wait_logged(&log, rule, client).await;
    }
}

/// Runs inside the clients' namespace. Returns, for each client address, the backends the
/// source-hashed rule sent it to.
async fn client_side(p: Ports, cert: TestCert) -> BTreeMap<IpAddr, Vec<String>> {
    for from in [ip(CLIENT_IP), ip(CLIENT_IP6)] {
        let lb = lb_for(from);
        let at = |port: u16| SocketAddr::new(lb, port);
        let c = http_client(from, false);
        let r = get(&c, &format!("http://{}/from-{from}", at(p.web))).await;
        assert_eq!(r, Ok(("web".into(), from.to_string())), "http from {from}");
        let c = http_client(from, true);
        let r = get(&c, &format!("http://{}/", at(p.grpc))).await;
        assert_eq!(r, Ok(("web".into(), from.to_string())), "http2 from {from}");
        let c = reqwest::Client::builder()
            .no_proxy()
            .local_address(from)
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap())
            .resolve("secure.test", SocketAddr::new(lb, p.secure))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let r = get(&c, &format!("https://secure.test:{}/", p.secure)).await;
        assert_eq!(r, Ok(("web".into(), from.to_string())), "https from {from}");
        let plain = reqwest::Client::builder()
            .no_proxy()
            .local_address(from)
            .redirect(reqwest::redirect::Policy::none())
            .resolve("secure.test", SocketAddr::new(lb, p.redirect))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let r = plain
            .get(format!("http://secure.test:{}/a?b=1", p.redirect))
            .send()
            .await
            .unwrap_or_else(|e| panic!("redirect port from {from}: {e:?}"));
        assert_eq!(r.status(), 301, "redirect port from {from}");
        assert_eq!(
            r.headers()["location"],
            format!("https://secure.test:{}/a?b=1", p.secure).as_str()
        );

        // The scrape port admits the allowed address of each family.
        let c = http_client(from, false);
        let r = c
            .get(format!("http://{}/stats/prometheus", at(p.scrape)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("scrape from {from}: {e:?}"));
        assert_eq!(r.status(), 200, "scrape from {from}");
        assert!(r.text().await.unwrap().contains("envoy_server_live"));

        // PROXY protocol: the backend is told the true client, in its own family.
        let (mut s, local) = connect(from, SocketAddr::new(lb, p.pp1)).await;
        let family = if from.is_ipv6() { "TCP6" } else { "TCP4" };
        let want = format!(
            "pp1 pp1=PROXY {family} {from} {lb} {} {}",
            local.port(),
            p.pp1
        );
        assert_eq!(read_all(&mut s).await, want, "PROXY v1 from {from}");
        let (mut s, local) = connect(from, SocketAddr::new(lb, p.pp2)).await;
        assert_eq!(
            read_all(&mut s).await,
            format!("pp2 pp2={local}"),
            "PROXY v2 from {from}"
        );
    }

    // The second address of each family is inside the allowed range but denied; nor may it
    // scrape.
    for from in [ip(DENIED), ip(DENIED6)] {
        let lb = lb_for(from);
        let c = http_client(from, false);
        let r = c
            .get(format!(
                "http://{}/stats/prometheus",
                SocketAddr::new(lb, p.scrape)
            ))
            .send()
            .await;
        assert!(r.is_err(), "scrape from {from}: {r:?}");
        let (mut s, _) = connect(from, SocketAddr::new(lb, p.web)).await;
        let _ = s
            .write_all(format!("GET /refused-{from} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await;
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "{from} closed without a byte: {r:?}"
        );
    }

    let mut seen = BTreeMap::new();
    let mut all = vec![
        CLIENT_IP.to_owned(),
        DENIED.into(),
        CLIENT_IP6.into(),
        DENIED6.into(),
    ];
    all.extend(more_clients());
    for from in all.iter().map(|a| ip(a)) {
        let c = http_client(from, false);
        let mut backends: Vec<String> = Vec::new();
        for _ in 0..8 {
            let (b, _) = get(
                &c,
                &format!("http://{}/", SocketAddr::new(lb_for(from), p.hash)),
            )
            .await
            .unwrap_or_else(|e| panic!("source-hashed rule from {from}: {e}"));
            if !backends.contains(&b) {
                backends.push(b);
            }
        }
        seen.insert(from, backends);
    }
    seen
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The load balancer's address in the family of a client at `from`.
fn lb_for(from: IpAddr) -> IpAddr {
    if from.is_ipv6() {
        ip(&node_ip6(0))
    } else {
        ip(&node_ip(0))
    }
}

/// The backend that answered a GET and the `X-Forwarded-For` it was given.
async fn get(c: &reqwest::Client, url: &str) -> Result<(String, String), String> {
    let r = c.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    Ok((h("x-backend"), h("x-seen-xff")))
}

async fn connect(from: IpAddr, to: SocketAddr) -> (TcpStream, SocketAddr) {
    let s = if from.is_ipv6() {
        TcpSocket::new_v6().unwrap()
    } else {
        TcpSocket::new_v4().unwrap()
    };
    s.bind(SocketAddr::new(from, 0)).unwrap();
    let s = tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connect {from} -> {to}: timed out"))
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    let local = s.local_addr().unwrap();
    (s, local)
}

async fn read_all(s: &mut TcpStream) -> String {
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
        .await
        .expect("the backend's answer within 5 s")
        .unwrap();
    got
}

/// Runs `f` in namespace `ns` on a runtime of its own (its sockets are that namespace's) and
/// waits for it; a panic there is this test's.
async fn as_client<T, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.to_owned();
    let joined = tokio::task::spawn_blocking(move || {
        in_netns(&ns, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
    })
    .await
    .unwrap();
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Waits (10 s at most: Envoy writes its access log in the background) for a line of `rule`
/// whose client is `client`.
async fn wait_logged(log: &std::path::Path, rule: &str, client: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["rule"] == rule && v["client"] == client);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line of {rule} with client {client}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
