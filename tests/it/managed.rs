//! Managed certificates end to end, on loopback: Pebble as the CA, its HTTP-01 validation
//! pointed at the load balancer's plain-HTTP port, every name mapped to 127.0.0.1 by a DNS
//! server the test runs; the real agent process, supervisor and Envoy.

use crate::support::pebble::{self, Pebble};
use crate::support::sim::{agent_process, agent_settings, Sim};
use crate::support::supervisor::Stand;
use crate::support::upstream::{self, Upstream};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpsie_lb_agent::settings::Settings;

const SHOP: &str = "shop.example.com";
const API: &str = "api.example.com";

fn backend(up: &Upstream) -> Value {
    json!([{"identifier": up.name, "ip": "127.0.0.1", "port": up.port()}])
}

/// As the real API sends it: an http rule on the plain-HTTP port, and an https rule with two
/// domains and no certificate at all.
fn spec(
    http_port: u16,
    https_port: u16,
    plain: &Upstream,
    shop: &Upstream,
    api: &Upstream,
) -> Value {
    json!({"identifier": crate::support::sim::LB, "lbName": "managed", "rules": [
        {"ruleId": "plain", "scheme": "http", "frontPort": http_port, "backPort": 1,
         "backends": backend(plain)},
        {"ruleId": "secure", "scheme": "https", "frontPort": https_port, "backPort": 1,
         "backends": [],
         "domains": [
            {"domainId": "shop", "domainName": SHOP, "backends": backend(shop)},
            {"domainId": "api", "domainName": API, "backends": backend(api)}]}
    ]})
}

/// A TLS client that trusts only `root`: connects to `port` with `name` as SNI, checks the
/// chain and the name, and asks for `/`. Returns the leaf certificate and the answer's body.
async fn fetch_tls(port: u16, name: &str, root: &str) -> Result<(Vec<u8>, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let server = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(server, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no certificate")?;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((leaf, body))
}

/// Waits until `name` is served over TLS with a certificate that chains to `root`.
async fn served(
    port: u16,
    name: &str,
    root: &str,
    within: Duration,
    log: impl Fn() -> String,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        match fetch_tls(port, name, root).await {
            Ok((leaf, _)) => return leaf,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{name} not served with a certificate from the CA within {within:?}: {e}\n{}",
                log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn acme_settings(stand: &Stand, sim: &Sim, ca: &Pebble) -> Settings {
    let mut s = agent_settings(stand, sim);
    s.acme.directory_url = ca.directory_url.clone();
    s.acme.ca_file = Some(ca.ca_file.clone());
    s.acme.retry_min_s = 1;
    s.acme.retry_max_s = 5;
    s.acme.order_timeout_s = 60;
    s
}

/// What each Pebble test runs: a supervisor with the plain-HTTP port as its redirect port,
/// Pebble validating on that port, three upstreams, the API stand-in serving [`spec`], and the
/// settings of an agent that follows it (`tweak` may change them before it starts).
struct Bed {
    http_port: u16,
    https_port: u16,
    stand: Stand,
    ca: Pebble,
    plain: Upstream,
    sim: Sim,
    settings: Settings,
    start_agent: Box<dyn Fn() -> crate::support::sim::AgentProcess>,
    /// The root Pebble issues under.
    root: String,
    _pools: (Upstream, Upstream),
}

impl Bed {
    async fn start(validity_s: u64, tweak: impl FnOnce(&mut Settings)) -> Bed {
        Self::start_with(validity_s, None, tweak).await
    }

    /// With `eab`, the CA requires external account binding with that key id and key.
    async fn start_with(
        validity_s: u64,
        eab: Option<(&str, &str)>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Bed {
        let http_port = Stand::front_port();
        let https_port = Stand::front_port();
        let stand = Stand::start(|s| s.envoy.redirect_port = http_port).await;
        let ca = Pebble::start(pebble::Options {
            http_port,
            validity_s,
            blocklist: &[],
            eab,
        })
        .await;
        let (plain, shop, api) = (
            upstream::http("plain", None).await,
            upstream::http("shop", None).await,
            upstream::http("api", None).await,
        );
        let sim = Sim::start(&spec(http_port, https_port, &plain, &shop, &api));
        let mut settings = acme_settings(&stand, &sim, &ca);
        tweak(&mut settings);
        let start_agent = Box::new(agent_process(&stand, &settings));
        let root = ca.root_pem().await;
        Bed {
            http_port,
            https_port,
            stand,
            ca,
            plain,
            sim,
            settings,
            start_agent,
            root,
            _pools: (shop, api),
        }
    }

    fn log(&self) -> String {
        format!(
            "pebble:\n{}\nsupervisor:\n{}",
            self.ca.log(),
            self.stand.log()
        )
    }

    /// Waits until `name` is served with a certificate under `root`.
    async fn served(&self, name: &str, root: &str, within: Duration) -> Vec<u8> {
        served(self.https_port, name, root, within, || self.log()).await
    }

    /// The API's events of one type (about one name, when given).
    async fn events(&self, kind: &str, name: Option<&str>) -> Vec<Value> {
        self.sim
            .events()
            .await
            .into_iter()
            .filter(|e| e["type"] == kind && name.is_none_or(|n| e["metadata"]["name"] == n))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_rule_without_tls_is_served_with_certificates_the_ca_issued() {
    let mut bed = Bed::start(90 * 24 * 3600, |_| {}).await;
    let (http_port, https_port, root) = (bed.http_port, bed.https_port, bed.root.clone());
    let mut agent = (bed.start_agent)();

    // Both names served, each with its own certificate from the CA, checked by a client that
    // trusts only the CA's root and the name it asked for.
    for (name, body) in [(SHOP, "shop"), (API, "api")] {
        let leaf = bed.served(name, &root, Duration::from_secs(90)).await;
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, [format!("DNSName({name})")], "{name}");
        // ECDSA P-256: the cheapest full handshake for Envoy (`make bench-dataplane`).
        let spki = &cert.public_key().algorithm;
        assert_eq!(
            (
                spki.algorithm.to_id_string(),
                spki.parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
            ),
            (
                "1.2.840.10045.2.1".to_owned(),
                Some("1.2.840.10045.3.1.7".to_owned())
            ),
            "{name}: the key is ECDSA P-256"
        );
        let (_, answer) = fetch_tls(https_port, name, &root).await.unwrap();
        assert_eq!(answer, body, "{name} reaches its own pool");
    }

    // The challenge path answers only pending tokens: anything else under it is Envoy's 404,
    // and the plain-HTTP rule's backend never sees the challenge path.
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    for host in [SHOP, API, "other.example.com"] {
        let r = c
            .get(format!(
                "http://127.0.0.1:{http_port}/.well-known/acme-challenge/not-a-pending-token"
            ))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{host}");
        assert_eq!(r.text().await.unwrap(), "no such challenge\n");
    }
    let r = c
        .get(format!("http://127.0.0.1:{http_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "plain",
        "the rest of port 80 is the http rule's"
    );
    assert!(
        !bed.plain
            .paths_seen
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.starts_with("/.well-known/acme-challenge/")),
        "the backend saw a challenge path: {:?}",
        bed.plain.paths_seen.lock().unwrap()
    );

    // Stored 0600, and reused by a restarted agent: no new order, the same certificates.
    let cert_file = bed
        .settings
        .state_dir
        .join("acme/certs")
        .join(format!("{SHOP}.json"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cert_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let issued = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let issued = bed.events("certificate_issued", None).await;
            if issued.len() >= 2 {
                break issued;
            }
            assert!(Instant::now() < deadline, "issued events: {issued:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let names: std::collections::BTreeSet<&str> = issued
        .iter()
        .map(|e| e["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [API, SHOP].into());
    // The rest of the spec was served first: the first config went in before any certificate
    // existed (the https rule joined when its certificates did).
    let all = bed.sim.events().await;
    let first = |kind: &str| all.iter().position(|e| e["type"] == kind).unwrap();
    assert!(
        first("config_applied") < first("certificate_issued"),
        "{all:?}"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    let before = std::fs::read(&cert_file).unwrap();
    let mut agent = (bed.start_agent)();
    crate::support::sim::wait_polls(&bed.settings, "unchanged").await;
    assert_eq!(
        std::fs::read(&cert_file).unwrap(),
        before,
        "the stored certificate is kept"
    );
    // The restarted agent reports the managed certificates' expiry at once.
    let metrics = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        bed.settings.metrics.port
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    for name in [SHOP, API] {
        let series = format!(
            "vpsie_lb_agent_certificate_expiry_timestamp_seconds{{certificate_id=\"{}\"}}",
            vpsie_lb_agent::spec::managed_id(name)
        );
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    let leaf = bed.served(SHOP, &root, Duration::from_secs(5)).await;
    let stored: Value = serde_json::from_slice(&before).unwrap();
    let stored_leaf =
        CertificateDer::pem_slice_iter(stored["certificate_pem"].as_str().unwrap().as_bytes())
            .next()
            .unwrap()
            .unwrap();
    assert_eq!(
        stored_leaf.as_ref(),
        leaf.as_slice(),
        "the restarted agent serves the stored certificate"
    );

    // The supervisor restarted (kill -9): Envoy comes back from the stored config, with the
    // same certificate, and the agent orders nothing.
    bed.stand
        .signal_supervisor(nix::sys::signal::Signal::SIGKILL);
    assert!(bed.stand.wait_supervisor(Duration::from_secs(5)));
    bed.stand.spawn_supervisor().await;
    let leaf = bed.served(SHOP, &root, Duration::from_secs(20)).await;
    assert_eq!(
        stored_leaf.as_ref(),
        leaf.as_slice(),
        "after a supervisor restart"
    );
    crate::support::sim::wait_polls(&bed.settings, "unchanged").await;
    assert_eq!(std::fs::read(&cert_file).unwrap(), before);
    assert!(bed.events("certificate_failed", None).await.is_empty());
    assert_eq!(
        bed.events("certificate_issued", None).await.len(),
        2,
        "no new order after a restart of the agent or the supervisor"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// Short-lived certificates (Pebble issues them for 30 s here) are renewed at two thirds of
/// their lifetime and rotated into the running Envoy: a TLS connection opened before carries
/// on after, new handshakes see the new certificate, and no request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_rotates_the_certificate_live_without_cutting_a_connection() {
    let bed = Bed::start(30, |_| {}).await;
    let (https_port, root) = (bed.https_port, bed.root.clone());
    let mut agent = (bed.start_agent)();
    let first = bed.served(SHOP, &root, Duration::from_secs(60)).await;
    let epoch = bed.stand.status().await.epoch;

    // A connection opened now, kept open across the renewal.
    let mut held = KeptAlive::open(https_port, SHOP, &root).await;
    assert_eq!(held.get().await.unwrap(), "shop");

    // Load: a new TLS handshake and request at a time, each checked against the CA's root.
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
    );
    let load = tokio::spawn({
        let (stop, done, root) = (stop.clone(), done.clone(), root.clone());
        async move {
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match fetch_tls(https_port, SHOP, &root).await {
                    Ok((_, body)) if body == "shop" => {}
                    Ok((_, body)) => failed.push(format!("answered {body:?}")),
                    Err(e) => failed.push(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failed
        }
    });

    // Renewed: a new certificate for the same name, served to new handshakes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let renewed = loop {
        let (leaf, _) = fetch_tls(https_port, SHOP, &root).await.unwrap();
        if leaf != first {
            break leaf;
        }
        assert!(Instant::now() < deadline, "never renewed:\n{}", bed.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let serial = |der: &[u8]| {
        x509_parser::parse_x509_certificate(der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(serial(&renewed), serial(&first));
    assert!(
        !bed.events("certificate_renewed", Some(SHOP))
            .await
            .is_empty(),
        "a certificate_renewed event for {SHOP}"
    );

    // Twenty more requests after the rotation, then the verdict.
    let after = done.load(Ordering::Relaxed) + 20;
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::Relaxed) < after {
        assert!(
            Instant::now() < deadline,
            "the load stalled after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failed = load.await.unwrap();
    let total = done.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed: {failed:?}",
        failed.len()
    );
    assert_eq!(
        held.get().await.unwrap(),
        "shop",
        "the connection opened before the renewal still carries requests"
    );
    assert_eq!(
        bed.stand.status().await.epoch,
        epoch,
        "rotated live: no new epoch"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// One TLS connection with HTTP/1.1 keep-alive, for requests one after another.
struct KeptAlive {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    name: String,
}

impl KeptAlive {
    async fn open(port: u16, name: &str, root: &str) -> KeptAlive {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await
            .unwrap();
        KeptAlive {
            tls,
            name: name.to_owned(),
        }
    }

    /// `GET /` on the same connection; the body (the answers are small and sized).
    async fn get(&mut self) -> Result<String, String> {
        let req = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.name);
        self.tls
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.tls.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection was closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return Ok(body[..len].to_owned());
                }
            }
        }
    }
}

/// The CA down, then back but refusing one name: the certificates already served keep serving,
/// each failed attempt is reported once with the CA's own words and the next one waits longer
/// (no retry storm), and the name the CA accepts again is renewed by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_is_down_or_refuses_leaves_the_served_certificates_in_place() {
    // Renewal due 12 s after issuance (a tenth of the 120 s lifetime); retries 1, 2, 4, 5 s.
    let mut bed = Bed::start(120, |s| s.acme.renew_at = 0.1).await;
    let (https_port, root) = (bed.https_port, bed.root.clone());
    let mut agent = (bed.start_agent)();
    let shop_first = bed.served(SHOP, &root, Duration::from_secs(60)).await;
    let api_first = bed.served(API, &root, Duration::from_secs(60)).await;

    // The CA goes away: renewals fail, and what is served stays.
    bed.ca.stop();
    let deadline = Instant::now() + Duration::from_secs(40);
    while bed.events("certificate_failed", Some(SHOP)).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no failed renewals reported: {:?}",
            bed.sim.events().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reports = bed.events("certificate_failed", Some(SHOP)).await;
    assert!(
        reports[0]["metadata"]["error"]
            .as_str()
            .unwrap()
            .contains("Connect")
            || reports[0]["metadata"]["error"]
                .as_str()
                .unwrap()
                .contains("connect"),
        "the error says the CA cannot be reached: {:?}",
        reports[0]
    );
    // One report per attempt, each naming a later next attempt than the one before.
    let next: Vec<&str> = reports
        .iter()
        .map(|e| e["metadata"]["next_attempt"].as_str().unwrap())
        .collect();
    assert!(next.windows(2).all(|w| w[0] <= w[1]), "{next:?}");
    let (shop_now, _) = fetch_tls(https_port, SHOP, &root).await.unwrap();
    let (api_now, _) = fetch_tls(https_port, API, &root).await.unwrap();
    assert_eq!(
        (shop_now, api_now),
        (shop_first.clone(), api_first.clone()),
        "the served certificates stay while the CA is down"
    );

    // The CA is back, refusing api.example.com: shop is renewed (under the CA's new root, with
    // a new account: the CA forgot the old one), api keeps its certificate and the CA's words.
    bed.ca.restart(&[API]).await;
    let new_root = bed.ca.root_pem().await;
    let renewed = bed.served(SHOP, &new_root, Duration::from_secs(60)).await;
    assert_ne!(renewed, shop_first);
    let deadline = Instant::now() + Duration::from_secs(40);
    let refusal = loop {
        let f = bed.events("certificate_failed", Some(API)).await;
        if let Some(e) = f.iter().find(|e| {
            e["metadata"]["error"]
                .as_str()
                .is_some_and(|t| t.contains("rejectedIdentifier") || t.contains("policy"))
        }) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no refusal reported: {f:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refusal["message"].as_str().unwrap().contains(API),
        "{refusal:?}"
    );
    let (api_now, _) = fetch_tls(https_port, API, &root).await.unwrap();
    assert_eq!(
        api_now, api_first,
        "a refused renewal keeps the last good certificate"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// The redirect port answers a pending token before it redirects anything to https, answers
/// 404 for any other path under the challenge prefix, and a token outside the RFC's alphabet
/// (as a hostile CA might send) is never rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_answered_before_the_redirect_and_nothing_else_under_their_prefix() {
    use vpsie_lb_agent::pipeline::{self, Managed};
    let http_port = Stand::front_port();
    let https_port = Stand::front_port();
    let stand = Stand::start(|s| s.envoy.redirect_port = http_port).await;
    let shop = upstream::http("shop", None).await;
    let spec = json!({"identifier": "lb-redirect", "lbName": "redirect", "rules": [
        {"ruleId": "secure", "scheme": "https", "frontPort": https_port, "backPort": 1,
         "redirectHTTP": 1, "backends": [],
         "domains": [{"domainId": "shop", "domainName": SHOP, "backends": backend(&shop)}]}]});
    let now = crate::support::now();
    let c = crate::support::certs::cert(&[SHOP]);
    let mut managed = Managed::default();
    managed.certificates.insert(
        SHOP.to_owned(),
        vpsie_lb_agent::spec::managed_tls(SHOP, &c.cert_pem, &c.key_pem, now).unwrap(),
    );
    let token = "tok_EN-123abc";
    let key_auth = format!("{token}.thumb-PRINT_456");
    managed
        .challenges
        .insert(token.to_owned(), key_auth.clone());
    managed
        .challenges
        .insert("QQBADTOKEN\"x".to_owned(), "QQBADTOKEN\"x.x\ny".to_owned());
    let loaded = pipeline::load(spec.to_string().as_bytes(), &stand.settings, now).unwrap();
    let prepared =
        pipeline::finish(loaded, &Default::default(), &managed, &stand.settings, true).unwrap();
    assert!(
        // (A marker no hash or temporary name holds: "bad" alone is hex, and a hash in a
        // certificate path held it.)
        !prepared.rendered.config.contains("QQBADTOKEN"),
        "a token outside base64url is never rendered"
    );
    let out = vpsie_lb_agent::supervisor::client::hand_over(&prepared, &stand.settings, false)
        .await
        .unwrap();
    assert_eq!(out.error, None, "{out:?}\n{}", stand.log());

    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: String| {
        let c = c.clone();
        async move {
            let r = c
                .get(format!("http://127.0.0.1:{http_port}{path}"))
                .header("host", SHOP)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        get(format!("/.well-known/acme-challenge/{token}")).await,
        (200, key_auth),
        "the pending token, before the redirect"
    );
    assert_eq!(
        get("/anything".into()).await.0,
        301,
        "everything else is redirected"
    );
    for other in ["other", "bad%22token", ""] {
        assert_eq!(
            get(format!("/.well-known/acme-challenge/{other}")).await,
            (404, "no such challenge\n".to_owned()),
            "{other}"
        );
    }
    assert!(shop.paths_seen.lock().unwrap().is_empty());
}

/// A CA that requires external account binding: an agent without it is refused with the CA's
/// words; with the key id and key in `acme.external_account`, it gets its certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_used_when_the_ca_requires_it() {
    let (kid, key) = (
        "kid-1",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    );
    let bed = Bed::start_with(3600, Some((kid, key)), |s| {
        // One refused attempt is enough to look at.
        s.acme.retry_min_s = 600;
        s.acme.retry_max_s = 600;
    })
    .await;
    let mut agent = (bed.start_agent)();
    let deadline = Instant::now() + Duration::from_secs(40);
    let refused = loop {
        if let Some(e) = bed.events("certificate_failed", None).await.pop() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no failure reported:\n{}",
            bed.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refused["metadata"]["error"]
            .as_str()
            .unwrap()
            .contains("externalAccountRequired"),
        "{refused:?}"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();

    let mut settings = bed.settings.clone();
    settings.acme.external_account = Some(vpsie_lb_agent::settings::ExternalAccount {
        kid: kid.into(),
        hmac_key: key.into(),
    });
    // A fresh state directory: the refused attempt's backoff is not this agent's.
    settings.state_dir = bed.stand.dir.path().join("agent-state-eab");
    let mut agent = agent_process(&bed.stand, &settings)();
    for name in [SHOP, API] {
        bed.served(name, &bed.root, Duration::from_secs(60)).await;
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
}
