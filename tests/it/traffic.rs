//! End-to-end: a real Envoy serving a rendered spec, real upstreams, real requests, all on
//! loopback. Each test states one promise of the contract and checks it with traffic.

use crate::support::envoy::Envoy;
use crate::support::{certs, upstream, upstream::Upstream};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn client() -> reqwest::Client {
    client_resolving(&[])
}

/// A client that sends `names` to 127.0.0.1 (so Host and SNI carry the name), accepts the test
/// certificates and follows no redirect.
fn client_resolving(names: &[(&str, u16)]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(Duration::from_secs(5));
    for (name, port) in names {
        b = b.resolve(name, SocketAddr::from(([127, 0, 0, 1], *port)));
    }
    b.build().unwrap()
}

fn backend(id: &str, up: &Upstream) -> Value {
    json!({"identifier": id, "ip": "127.0.0.1", "port": up.port()})
}

fn lb(rules: Vec<Value>) -> Value {
    json!({"identifier": "lb-e2e", "lbName": "e2e", "rules": rules})
}

/// Sends `n` GETs and counts which backend answered each; every answer must be a 200.
async fn spread(client: &reqwest::Client, url: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {url}");
        *seen.entry(r.text().await.unwrap()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_reaches_every_backend() {
    let ups = [
        upstream::http("b1", None).await,
        upstream::http("b2", None).await,
        upstream::http("b3", None).await,
    ];
    let front = crate::support::envoy::free_port();
    let spec = lb(vec![json!({
        "ruleId": "r1", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [backend("b1", &ups[0]), backend("b2", &ups[1]), backend("b3", &ups[2])]
    })]);
    let _envoy = Envoy::start(&spec).await;
    let seen = spread(&client(), &format!("http://127.0.0.1:{front}/"), 30).await;
    assert_eq!(seen.len(), 3, "every backend is reached: {seen:?}");
    let (min, max) = (seen.values().min().unwrap(), seen.values().max().unwrap());
    assert!(max - min <= 2, "round robin spreads evenly: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_shift_the_share_and_disabled_backends_get_nothing() {
    let ups = [
        upstream::http("light", None).await,
        upstream::http("heavy", None).await,
        upstream::http("off", None).await,
    ];
    let front = crate::support::envoy::free_port();
    let mut off = backend("off", &ups[2]);
    off["enabled"] = json!(0);
    let mut heavy = backend("heavy", &ups[1]);
    heavy["weight"] = json!("300");
    let mut light = backend("light", &ups[0]);
    light["weight"] = json!(100);
    let spec = lb(vec![json!({
        "ruleId": "r1", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [light, heavy, off]
    })]);
    let _envoy = Envoy::start(&spec).await;
    let seen = spread(&client(), &format!("http://127.0.0.1:{front}/"), 400).await;
    assert_eq!(
        seen.get("off"),
        None,
        "a disabled backend gets no traffic: {seen:?}"
    );
    let heavy = *seen.get("heavy").unwrap_or(&0) as f64 / 400.0;
    assert!(
        (0.65..=0.85).contains(&heavy),
        "weight 300 vs 100 gives ~75%: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routing_picks_the_domain_pool() {
    let (d, a, w, s) = (
        upstream::http("default", None).await,
        upstream::http("api", None).await,
        upstream::http("wild", None).await,
        upstream::http("static", None).await,
    );
    let front = crate::support::envoy::free_port();
    let spec = lb(vec![json!({
        "ruleId": "r1", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [backend("d1", &d)],
        "domains": [
            {"domainId": "api", "domainName": "API.example.test", "backends": [backend("a1", &a)]},
            {"domainId": "wild", "domainName": "*.wild.test", "backends": [backend("w1", &w)]},
            {"domainId": "st", "domainName": "example.test", "subdomain": "static", "backends": [backend("s1", &s)]}
        ]
    })]);
    let _envoy = Envoy::start(&spec).await;
    let hosts = [
        "api.example.test",
        "x.wild.test",
        "static.example.test",
        "other.test",
    ];
    let c = client_resolving(&hosts.map(|h| (h, front)));
    for (host, want) in hosts.iter().zip(["api", "wild", "static", "default"]) {
        let r = c
            .get(format!("http://{host}:{front}/p"))
            .header("x-forwarded-for", "198.51.100.7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let xff = r.headers()["x-seen-xff"].to_str().unwrap().to_owned();
        let proto = r.headers()["x-seen-proto"].to_str().unwrap().to_owned();
        assert_eq!(r.text().await.unwrap(), want, "Host {host}");
        // Envoy appends the connection's address (for a loopback client, the host's own address,
        // by Envoy's design) after what the client sent.
        let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
        assert_eq!(hops.len(), 2, "X-Forwarded-For: {xff}");
        assert_eq!(hops[0], "198.51.100.7");
        assert!(
            hops[1].parse::<std::net::IpAddr>().is_ok(),
            "X-Forwarded-For: {xff}"
        );
        assert_eq!(proto, "http");
    }
}

fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().contents().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_domain_certificate_and_redirect_answers_301() {
    let (d, a) = (
        upstream::http("shop", None).await,
        upstream::http("api", None).await,
    );
    let shop_cert = certs::cert(&["shop.test"]);
    let api_cert = certs::cert(&["api.test"]);
    let front = crate::support::envoy::free_port();
    let spec = lb(vec![json!({
        "ruleId": "r-https", "scheme": "https", "frontPort": front, "backPort": 1,
        "redirectHTTP": 1,
        "tls": {"certificateId": "shop", "certificatePem": shop_cert.cert_pem, "privateKeyPem": shop_cert.key_pem},
        "backends": [backend("d1", &d)],
        "domains": [{
            "domainId": "api", "domainName": "api.test", "backends": [backend("a1", &a)],
            "tls": {"certificateId": "api", "certificatePem": api_cert.cert_pem, "privateKeyPem": api_cert.key_pem,
                    "minVersion": "TLSv1.3"}
        }]
    })]);
    let envoy = Envoy::start(&spec).await;
    let redirect = envoy.settings.envoy.redirect_port;
    let names = ["api.test", "shop.test", "unknown.test"];
    let c = client_resolving(&names.map(|h| (h, front)));
    for (host, cert, body) in [
        ("api.test", &api_cert, "api"),
        ("shop.test", &shop_cert, "shop"),
        ("unknown.test", &shop_cert, "shop"),
    ] {
        let r = c
            .get(format!("https://{host}:{front}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            peer_cert(&r),
            der(&cert.cert_pem),
            "certificate served for SNI {host}"
        );
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "ALPN offers h2 by default"
        );
        assert_eq!(r.text().await.unwrap(), body);
    }

    let c = client_resolving(&names.map(|h| (h, redirect)));
    let r = c
        .get(format!("http://api.test:{redirect}/a/b?c=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://api.test:{front}/a/b?c=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_keeps_a_client_on_one_backend_and_source_hash_too() {
    let ups = [
        upstream::http("s1", None).await,
        upstream::http("s2", None).await,
        upstream::http("s3", None).await,
    ];
    let (sticky, hashed) = (
        crate::support::envoy::free_port(),
        crate::support::envoy::free_port(),
    );
    let backends = json!([
        backend("s1", &ups[0]),
        backend("s2", &ups[1]),
        backend("s3", &ups[2])
    ]);
    let spec = lb(vec![
        json!({"ruleId": "sticky", "scheme": "http", "frontPort": sticky, "backPort": 1,
               "cookieCheck": true, "cookieName": "SRV", "backends": backends}),
        json!({"ruleId": "hashed", "scheme": "http", "frontPort": hashed, "backPort": 1,
               "algorithm": "source", "backends": backends}),
    ]);
    let _envoy = Envoy::start(&spec).await;
    let c = client();
    let url = format!("http://127.0.0.1:{sticky}/");

    let without = spread(&c, &url, 15).await;
    assert!(
        without.len() >= 2,
        "without the cookie requests spread: {without:?}"
    );

    let first = c.get(&url).send().await.unwrap();
    let cookie = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("SRV="))
        .expect("the sticky cookie is set")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let owner = first.text().await.unwrap();
    for _ in 0..15 {
        let r = c.get(&url).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(
            r.text().await.unwrap(),
            owner,
            "the cookie keeps the backend"
        );
    }

    let hashed_seen = spread(&c, &format!("http://127.0.0.1:{hashed}/"), 20).await;
    assert_eq!(
        hashed_seen.len(),
        1,
        "source hashing keeps one client on one backend: {hashed_seen:?}"
    );
}

async fn tcp_ask(port: u16) -> (String, u16) {
    tcp_ask_at(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// What a tcp rule at `at` answers, and the client's port.
async fn tcp_ask_at(at: std::net::SocketAddr) -> (String, u16) {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    let local = s.local_addr().unwrap().port();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("tcp answer in time")
        .unwrap();
    (out, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_works_and_carries_a_proxy_v2_header() {
    let (plain, pp) = (upstream::tcp("plain").await, upstream::tcp("pp").await);
    let (p1, p2) = (
        crate::support::envoy::free_port(),
        crate::support::envoy::free_port(),
    );
    let spec = lb(vec![
        json!({"ruleId": "t1", "scheme": "tcp", "frontPort": p1, "backPort": plain.port(),
               "timeouts": {"connect": 2, "idle": 30},
               "backends": [{"identifier": "x", "ip": "127.0.0.1"}]}),
        json!({"ruleId": "t2", "scheme": "tcp", "frontPort": p2, "backPort": pp.port(),
               "proxyProtocol": "v2",
               "backends": [{"identifier": "y", "ip": "127.0.0.1"}]}),
    ]);
    let _envoy = Envoy::start(&spec).await;
    let (answer, _) = tcp_ask(p1).await;
    assert_eq!(answer, "plain");
    let (answer, client_port) = tcp_ask(p2).await;
    assert_eq!(
        answer,
        format!("pp pp2=127.0.0.1:{client_port}"),
        "the PROXY v2 header names the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backends_are_taken_out_by_health_checks() {
    let (t1, t2) = (
        upstream::http("t-live", None).await,
        upstream::http("t-dead", None).await,
    );
    let (h1, h2) = (
        upstream::http("h-live", None).await,
        upstream::http("h-sick", None).await,
    );
    let (p1, p2) = (
        crate::support::envoy::free_port(),
        crate::support::envoy::free_port(),
    );
    let spec = lb(vec![
        json!({"ruleId": "tcpcheck", "scheme": "http", "frontPort": p1, "backPort": 1,
               "checkInterval": 200, "fastInterval": 100, "rise": 1, "fall": 2,
               "backends": [backend("live", &t1), backend("dead", &t2)]}),
        json!({"ruleId": "httpcheck", "scheme": "http", "frontPort": p2, "backPort": 1,
               "healthCheckPath": "/healthz", "checkInterval": 200, "rise": 1, "fall": 2,
               "backends": [backend("live", &h1), backend("sick", &h2)]}),
    ]);
    let envoy = Envoy::start(&spec).await;
    envoy.wait_healthy("tcpcheck", 2).await;
    envoy.wait_healthy("httpcheck", 2).await;
    let c = client();

    t2.stop();
    h2.failing_health
        .store(true, std::sync::atomic::Ordering::SeqCst);
    envoy.wait_healthy("tcpcheck", 1).await;
    envoy.wait_healthy("httpcheck", 1).await;

    let seen = spread(&c, &format!("http://127.0.0.1:{p1}/"), 20).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["t-live"],
        "TCP check: {seen:?}"
    );
    let seen = spread(&c, &format!("http://127.0.0.1:{p2}/"), 20).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["h-live"],
        "HTTP check: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_sends_the_domain_as_sni() {
    let backend_cert = certs::cert(&["api.test"]);
    let (tls_up, plain) = (
        upstream::http("tls-backend", Some(&backend_cert)).await,
        upstream::http("plain", None).await,
    );
    let front = crate::support::envoy::free_port();
    let spec = lb(vec![json!({
        "ruleId": "r1", "scheme": "http", "frontPort": front, "backPort": 1,
        "backends": [backend("p", &plain)],
        "domains": [{"domainId": "api", "domainName": "api.test", "backendScheme": "https",
                     "backends": [backend("t", &tls_up)]}]
    })]);
    let _envoy = Envoy::start(&spec).await;
    let c = client_resolving(&[("api.test", front)]);
    let r = c
        .get(format!("http://api.test:{front}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "tls-backend");
    let seen = tls_up.sni_seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s == "api.test"),
        "SNI sent: {seen:?}"
    );
}

/// The contract's full example (redirect, SNI, cookies, upstream TLS, PROXY v2) served for real.
/// Its backends are rewritten to a closed loopback port, so that nothing leaves the machine; their
/// failing health checks must not keep Envoy from starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_example_starts_and_listens() {
    let mut spec: Value = serde_json::from_slice(&crate::support::example("lb-full.json")).unwrap();
    let data = &mut spec["data"];
    let (p_https, p_tcp) = (
        crate::support::envoy::free_port(),
        crate::support::envoy::free_port(),
    );
    data["rules"][0]["frontPort"] = json!(p_https);
    data["rules"][1]["frontPort"] = json!(p_tcp.to_string());
    let closed = crate::support::envoy::free_port();
    let to_loopback = |pool: &mut Value| {
        for b in pool.as_array_mut().unwrap() {
            b["ip"] = json!("127.0.0.1");
            b["port"] = json!(closed);
        }
    };
    for rule in data["rules"].as_array_mut().unwrap() {
        to_loopback(&mut rule["backends"]);
        for d in rule["domains"].as_array_mut().into_iter().flatten() {
            to_loopback(&mut d["backends"]);
        }
    }
    let envoy = Envoy::start(&spec).await;
    let r = envoy.admin_text("/listeners?format=json").await;
    let v: Value = serde_json::from_str(&r).unwrap();
    let mut names: Vec<&str> = v["listener_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    names.sort_unstable();
    let redirect =
        vpsie_lb_agent::render::redirect_listener_name(envoy.settings.envoy.redirect_port);
    assert_eq!(names, ["r-https", "r-tcp", redirect.as_str()], "{r}");
    let stats = envoy.admin_text("/stats/prometheus").await;
    assert!(
        stats.contains("envoy_cluster_name=\"r-https/d-api\""),
        "cluster names are Prometheus labels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_downstream_connections() {
    let up = upstream::tcp("capped").await;
    let front = crate::support::envoy::free_port();
    let mut spec = lb(vec![json!({
        "ruleId": "t", "scheme": "tcp", "frontPort": front, "backPort": up.port(),
        "backends": [{"identifier": "x", "ip": "127.0.0.1"}]
    })]);
    spec["maxConnections"] = json!(2);
    let _envoy = Envoy::start(&spec).await;
    // The upstream answers and closes, but Envoy keeps the downstream side open until the client
    // reads to the end, so unread connections stay counted.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", front))
            .await
            .unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"capped");
        held.push(s);
    }
    let mut third = tokio::net::TcpStream::connect(("127.0.0.1", front))
        .await
        .unwrap();
    let mut out = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("the third connection is closed at once");
    assert!(
        n.is_err() || out.is_empty(),
        "over the cap nothing is proxied: {out:?}"
    );
    drop(held);
}

/// IPv6 backends end to end: health-checked (HTTP and TCP checks), served over plain HTTP and
/// over TLS, and sent a PROXY protocol v2 header that names an IPv6 client in its own family,
/// all from a dual-stack listener reached over IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_backends_are_checked_and_served_in_every_way() {
    let v6 = |port: u16| std::net::SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1u16], port));
    let cert = certs::cert(&["localhost"]);
    let plain = upstream::http_at("v6-plain", None, v6(0)).await;
    let secure = upstream::http_at("v6-tls", Some(&cert), v6(0)).await;
    let pp = upstream::tcp_at("v6-pp", v6(0)).await;
    let ports = [
        crate::support::envoy::free_port(),
        crate::support::envoy::free_port(),
        crate::support::envoy::free_port(),
    ];
    let [p_plain, p_tls, p_pp] = ports;
    let b6 = |id: &str, up: &Upstream| json!({"identifier": id, "ip": "::1", "port": up.port()});
    let spec = lb(vec![
        json!({"ruleId": "plain6", "scheme": "http", "frontPort": p_plain, "backPort": 1,
               "healthCheckPath": "/healthz", "checkInterval": 200, "rise": 1,
               "backends": [b6("a", &plain)]}),
        json!({"ruleId": "tls6", "scheme": "http", "frontPort": p_tls, "backPort": 1,
               "backendScheme": "https", "checkInterval": 200, "rise": 1,
               "backends": [b6("b", &secure)]}),
        json!({"ruleId": "pp6", "scheme": "tcp", "frontPort": p_pp, "backPort": 1,
               "proxyProtocol": "v2", "checkInterval": 200, "rise": 1,
               "backends": [b6("c", &pp)]}),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::support::envoy::test_settings(dir.path());
    settings.envoy.listen_addresses = Some(vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()]);
    let envoy = Envoy::start_with(&spec, settings, dir).await;
    for rule in ["plain6", "tls6", "pp6"] {
        envoy.wait_healthy(rule, 1).await;
    }
    let c = client();
    for (port, want) in [(p_plain, "v6-plain"), (p_tls, "v6-tls")] {
        let r = c.get(format!("http://[::1]:{port}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), want);
    }
    // The PROXY v2 header carries the IPv6 client as IPv6.
    let (out, client_port) = tcp_ask_at(v6(p_pp)).await;
    assert_eq!(out, format!("v6-pp pp2=[::1]:{client_port}"));
}
