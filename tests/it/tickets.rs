//! TLS session tickets: a client resumes its session across a hot restart, a certificate
//! rotation and a move to the other HA node (the keys come from one secret the nodes share),
//! and the keys rotate live without a failed handshake.

use crate::support::certs::{self, TestCert};
use crate::support::envoy::free_port;
use crate::support::supervisor::Stand;
use crate::support::upstream::{self, Upstream};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use rustls::HandshakeKind;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vpsie_lb_agent::supervisor::protocol::ApplyMethod;

const NAME: &str = "secure.test";

fn spec(port: u16, cert: &TestCert, web: &Upstream, max_connections: u32) -> Value {
    json!({"identifier": "lb-tickets", "lbName": "tickets", "maxConnections": max_connections,
           "rules": [{"ruleId": "secure", "scheme": "https", "frontPort": port, "backPort": 1,
                      "tls": {"certificateId": "secure", "certificatePem": cert.cert_pem,
                              "privateKeyPem": cert.key_pem},
                      "backends": [{"identifier": "w1", "ip": "127.0.0.1",
                                    "port": web.port(), "weight": 100}]}]})
}

/// A client of one TLS version that trusts `roots` and keeps its sessions (tickets) between
/// connections, as browsers do.
fn client(
    roots: &[&TestCert],
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store
            .add(CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(64);
    Arc::new(config)
}

/// One request on a new connection: how its handshake went.
async fn handshake(config: &Arc<rustls::ClientConfig>, port: u16) -> Result<HandshakeKind, String> {
    crate::support::tls::get_once(config, port, NAME).await
}

fn shared_secret(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("shared-tickets.key");
    std::fs::write(&path, [0x5a; 48]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Each TLS version in turn: a session made before a hot restart resumes after it, one made
/// before a certificate rotation resumes after it, and one made on this node resumes on a
/// second node given the same secret, but not on a third with a secret of its own (the proof
/// that resumption comes from the shared keys, not from something every Envoy does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_a_hot_restart_a_certificate_rotation_and_another_node() {
    let web = upstream::http("web", None).await;
    let (first, second) = (certs::cert(&[NAME]), certs::cert(&[NAME]));
    let secrets = tempfile::tempdir().unwrap();
    let secret = shared_secret(secrets.path());
    let shared = |s: &mut vpsie_lb_agent::settings::Settings| {
        s.session_tickets.secret_file = Some(secret.clone());
    };
    let (port, other_port, own_port) = (free_port(), free_port(), free_port());
    let a = Stand::start(shared).await;
    let b = Stand::start(shared).await;
    let c = Stand::start(|_| {}).await;
    a.apply_ok(&spec(port, &first, &web, 1000)).await;
    b.apply_ok(&spec(other_port, &first, &web, 1000)).await;
    c.apply_ok(&spec(own_port, &first, &web, 1000)).await;

    let mut max_connections = 1000;
    for (i, version) in [&rustls::version::TLS13, &rustls::version::TLS12]
        .into_iter()
        .enumerate()
    {
        let v = format!("{:?}", version.version);
        let cli = client(&[&first, &second], version);
        let go = |port| handshake(&cli, port);
        // Put the first certificate back (the rotation below leaves the second in place).
        a.apply_ok(&spec(port, &first, &web, max_connections)).await;
        assert_eq!(
            go(port).await,
            Ok(HandshakeKind::Full),
            "{v}: a first visit"
        );
        assert_eq!(
            go(port).await,
            Ok(HandshakeKind::Resumed),
            "{v}: a second visit"
        );

        max_connections += 1;
        let out = a.apply_ok(&spec(port, &first, &web, max_connections)).await;
        assert_eq!(out.method, Some(ApplyMethod::HotRestart), "{v}");
        assert_eq!(
            go(port).await,
            Ok(HandshakeKind::Resumed),
            "{v}: after hot restart {i}\n{}",
            a.log()
        );

        let out = a
            .apply_ok(&spec(port, &second, &web, max_connections))
            .await;
        assert_eq!(out.method, Some(ApplyMethod::Live), "{v}");
        assert_eq!(
            go(port).await,
            Ok(HandshakeKind::Resumed),
            "{v}: after the rotation"
        );
        let fresh = client(&[&second], version);
        assert_eq!(
            handshake(&fresh, port).await,
            Ok(HandshakeKind::Full),
            "{v}: a new client sees the rotated certificate (it trusts only that one)"
        );

        assert_eq!(
            go(other_port).await,
            Ok(HandshakeKind::Resumed),
            "{v}: on the other node"
        );
        assert_eq!(
            go(own_port).await,
            Ok(HandshakeKind::Full),
            "{v}: a node with a secret of its own"
        );
    }
    // Envoy counted the same: every resumption it granted.
    let stats =
        crate::support::envoy::admin_page(&a.settings, "/stats?filter=ssl.session_reused").await;
    let reused: u64 = stats
        .lines()
        .filter(|l| l.starts_with("listener."))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(
        reused >= 2,
        "the live epoch counted its resumptions: {stats}"
    );
}

/// Keys that rotate every 2 s, under a stream of new connections: no handshake fails, every
/// returning client resumes (a ticket outlives the window it was issued in), and a ticket two
/// windows old no longer decrypts (the keys really moved on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_keys_rotate_live_without_a_failed_handshake() {
    let web = upstream::http("web", None).await;
    let cert = certs::cert(&[NAME]);
    let port = free_port();
    let stand = Stand::start(|s| s.session_tickets.rotate_s = 2).await;
    stand.apply_ok(&spec(port, &cert, &web, 1000)).await;
    let rotations = || async {
        let m = stand.metrics().await;
        let count = |result: &str| -> u64 {
            let key = format!(
                "vpsie_lb_supervisor_session_ticket_rotations_total{{result=\"{result}\"}} "
            );
            m.lines()
                .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in\n{m}"))
        };
        (count("ok"), count("failed"))
    };

    let early = client(&[&cert], &rustls::version::TLS13);
    assert_eq!(handshake(&early, port).await, Ok(HandshakeKind::Full));
    let (start, _) = rotations().await;
    let cli = client(&[&cert], &rustls::version::TLS13);
    let (mut full, mut resumed, mut failed) = (0, 0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match handshake(&cli, port).await {
            Ok(HandshakeKind::Resumed) => resumed += 1,
            Ok(_) => full += 1,
            Err(e) => failed.push(e),
        }
        let (ok, bad) = rotations().await;
        assert_eq!(bad, 0, "a rotation failed:\n{}", stand.log());
        if ok >= start + 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 rotations not seen within 20 s:\n{}",
            stand.log()
        );
    }
    assert!(
        failed.is_empty(),
        "{} handshakes failed: {failed:?}",
        failed.len()
    );
    assert_eq!(
        full, 1,
        "only the first visit is a full handshake ({resumed} resumed)"
    );
    assert!(resumed > 10, "{resumed} resumed");
    assert_eq!(
        handshake(&early, port).await,
        Ok(HandshakeKind::Full),
        "a ticket from three windows ago"
    );
}
