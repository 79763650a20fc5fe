//! A TLS load of new connections, one request each, from rustls: unlike wrk (which resumes its
//! sessions), it can be told never to resume, so that every connection is a full handshake, or
//! to resume as browsers do; and it reports what each handshake was.

use super::Round;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::HandshakeKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one load run saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each connection: when it started, how its handshake went, how long the request took,
    /// and whether its client held a session to offer (every connection of a client but its
    /// first, when clients resume).
    pub connections: Vec<(Instant, HandshakeKind, Duration, bool)>,
    pub failed: Vec<String>,
}

impl Seen {
    pub fn round(&self, seconds: f64) -> Round {
        let mut ms: Vec<f64> = self
            .connections
            .iter()
            .map(|(_, _, d, _)| d.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1)));
        Round {
            rps: self.connections.len() as f64 / seconds,
            p50_ms: at(0.5).copied().unwrap_or(f64::NAN),
            p99_ms: at(0.99).copied().unwrap_or(f64::NAN),
            cpu_us: 0.0,
        }
    }

    /// Of the resumption attempts (connections whose client held a session) started at or
    /// after `from`: (resumed, attempts).
    pub fn resumed_since(&self, from: Instant) -> (usize, usize) {
        let after: Vec<_> = self
            .connections
            .iter()
            .filter(|(t, _, _, offered)| *t >= from && *offered)
            .collect();
        let resumed = after
            .iter()
            .filter(|(_, k, _, _)| *k == HandshakeKind::Resumed)
            .count();
        (resumed, after.len())
    }
}

/// A client that keeps sessions between connections only if `resume`. It checks the server's
/// handshake signature as any client does, but not the certificate's chain (the benchmark's
/// certificates are self-signed by `openssl req -x509`, and chain checks are client work).
pub fn client(resume: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(1024)
    } else {
        rustls::client::Resumption::disabled()
    };
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `conns` clients for `seconds`, each making new TLS connections one after another, each
/// asking `GET /` once (`Connection: close`), to `port` on loopback; the server name of the n-th
/// connection is `names[n % names.len()]`. With `resume`, each client keeps its own sessions,
/// as a browser does (one cache shared by all would hand one ticket to many at once). Run on
/// the caller's runtime (one thread: like `wrk -t1`).
pub async fn run(
    resume: bool,
    port: u16,
    names: Arc<Vec<String>>,
    conns: usize,
    seconds: f64,
) -> Seen {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let shared = client(resume);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let names = Arc::clone(&names);
        let config = if resume {
            client(true)
        } else {
            Arc::clone(&shared)
        };
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut n = c;
            let mut first = true;
            while Instant::now() < end {
                let name = &names[n % names.len()];
                n += conns;
                let t = Instant::now();
                match crate::support::tls::get_once(&config, port, name).await {
                    Ok(kind) => seen
                        .connections
                        .push((t, kind, t.elapsed(), resume && !first)),
                    Err(e) => seen.failed.push(e),
                }
                first = false;
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await.expect("a load task");
        all.connections.extend(s.connections);
        all.failed.extend(s.failed);
    }
    all
}
