//! Small upstream servers on loopback that answer with their own name, for traffic tests.
//! Stopping one closes its listener and every open connection, like a dead backend.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A running upstream; dropping it (or `stop`) kills it and every connection it holds.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// When set, the HTTP health path answers 503.
    pub failing_health: Arc<AtomicBool>,
    /// What the HTTP health path answers when not failing (200 unless set).
    pub health_code: Arc<std::sync::atomic::AtomicU16>,
    /// When set, every other request is answered 503.
    pub failing_requests: Arc<AtomicBool>,
    /// SNI names seen by a TLS upstream.
    pub sni_seen: Arc<Mutex<Vec<String>>>,
    /// Paths of the HTTP requests an HTTP upstream answered.
    pub paths_seen: Arc<Mutex<Vec<String>>>,
    /// Connections a TCP upstream accepted.
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn stop(self) {}
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How an HTTP upstream answers: its health path and its other requests.
#[derive(Clone)]
struct Behaviour {
    failing_health: Arc<AtomicBool>,
    health_code: Arc<std::sync::atomic::AtomicU16>,
    failing_requests: Arc<AtomicBool>,
}

async fn answer(
    name: String,
    b: Behaviour,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let header = |h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if req.uri().path() == "/slow" {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    if req.uri().path() == "/healthz" {
        let status = if b.failing_health.load(Ordering::SeqCst) {
            503
        } else {
            b.health_code.load(Ordering::SeqCst)
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health")))
            .unwrap());
    }
    if b.failing_requests.load(Ordering::SeqCst) {
        return Ok(Response::builder()
            .status(503)
            .header("x-backend", name.as_str())
            .body(Full::new(Bytes::from(name)))
            .unwrap());
    }
    Ok(Response::builder()
        .header("x-backend", name.as_str())
        .header("x-seen-host", header("host"))
        .header("x-seen-xff", header("x-forwarded-for"))
        .header("x-seen-proto", header("x-forwarded-proto"))
        .header("x-seen-version", format!("{:?}", req.version()))
        .body(Full::new(Bytes::from(name)))
        .unwrap())
}

/// An HTTP/1.1 upstream; with `tls`, it serves HTTPS with that certificate and records SNI.
pub async fn http(name: &str, tls: Option<&super::certs::TestCert>) -> Upstream {
    http_at(name, tls, "127.0.0.1:0".parse().unwrap()).await
}

/// As [`http`], on a chosen loopback address (a host name's answers can then differ only in
/// their address, the port staying the backend's).
pub async fn http_at(name: &str, tls: Option<&super::certs::TestCert>, at: SocketAddr) -> Upstream {
    assert!(at.ip().is_loopback(), "upstreams live on loopback");
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let behaviour = Behaviour {
        failing_health: failing.clone(),
        health_code: Arc::new(std::sync::atomic::AtomicU16::new(200)),
        failing_requests: Arc::new(AtomicBool::new(false)),
    };
    let sni_seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(server_config(c)));
    let paths_seen = Arc::new(Mutex::new(Vec::new()));
    let (n, f, s, ps) = (
        name.to_owned(),
        behaviour.clone(),
        sni_seen.clone(),
        paths_seen.clone(),
    );
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (n, f, s, ps, acceptor) = (
                n.clone(),
                f.clone(),
                s.clone(),
                ps.clone(),
                acceptor.clone(),
            );
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    ps.lock().unwrap().push(req.uri().path().to_owned());
                    answer(n.clone(), f.clone(), req)
                });
                // HTTP/1.1 and HTTP/2 (h2c prior knowledge, or h2 by ALPN): http2 rules speak
                // HTTP/2 to their backends.
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        if let Some(sni) = tls.get_ref().1.server_name() {
                            s.lock().unwrap().push(sni.to_owned());
                        }
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                            .await;
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
    });
    Upstream {
        name: name.to_owned(),
        addr,
        failing_health: failing,
        health_code: behaviour.health_code.clone(),
        failing_requests: behaviour.failing_requests.clone(),
        sni_seen,
        paths_seen,
        accepted: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        task,
    }
}

fn server_config(c: &super::certs::TestCert) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TCP upstream: answers each connection with its name, and, when the connection opens with a
/// PROXY protocol v2 header, with the source address the header carries: `name pp2=IP:PORT`;
/// with a v1 header, with the header's line: `name pp1=PROXY TCP4 ...`.
pub async fn tcp(name: &str) -> Upstream {
    tcp_at(name, "127.0.0.1:0".parse().unwrap()).await
}

/// As [`tcp`], on a chosen loopback address (`[::1]:0` for an IPv6 backend).
pub async fn tcp_at(name: &str, at: SocketAddr) -> Upstream {
    assert!(at.ip().is_loopback(), "upstreams live on loopback");
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = name.to_owned();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let n = n.clone();
            conns.spawn(async move {
                let mut reply = n.clone();
                let mut head = [0u8; 16];
                // Wait briefly for a header; a client that speaks first would also work.
                let read = tokio::time::timeout(
                    std::time::Duration::from_millis(300),
                    stream.peek(&mut head),
                )
                .await;
                if let Ok(Ok(16)) = read {
                    if &head[..12] == b"\r\n\r\n\0\r\nQUIT\n" {
                        let _ = stream.read_exact(&mut head).await;
                        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                        let mut body = vec![0u8; len];
                        let read = stream.read_exact(&mut body).await.is_ok();
                        // TCP over IPv4 (0x11) or over IPv6 (0x21): the source address first.
                        reply = match (read, head[13]) {
                            (true, 0x11) if len >= 12 => {
                                let ip: [u8; 4] = body[..4].try_into().unwrap();
                                let port = u16::from_be_bytes([body[8], body[9]]);
                                format!("{n} pp2={}", std::net::SocketAddr::from((ip, port)))
                            }
                            (true, 0x21) if len >= 36 => {
                                let ip: [u8; 16] = body[..16].try_into().unwrap();
                                let port = u16::from_be_bytes([body[32], body[33]]);
                                format!("{n} pp2={}", std::net::SocketAddr::from((ip, port)))
                            }
                            _ => format!("{n} pp2=other"),
                        };
                    } else if head.starts_with(b"PROXY ") {
                        // A v1 header is one line of at most 107 bytes.
                        let mut line = Vec::new();
                        let mut byte = [0u8; 1];
                        while line.len() < 107 && !line.ends_with(b"\r\n") {
                            if stream.read_exact(&mut byte).await.is_err() {
                                break;
                            }
                            line.push(byte[0]);
                        }
                        let text = String::from_utf8_lossy(&line);
                        reply = format!("{n} pp1={}", text.trim_end());
                    }
                }
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    Upstream {
        name: name.to_owned(),
        addr,
        failing_health: Arc::new(AtomicBool::new(false)),
        sni_seen: Arc::new(Mutex::new(Vec::new())),
        paths_seen: Arc::new(Mutex::new(Vec::new())),
        health_code: Arc::new(std::sync::atomic::AtomicU16::new(200)),
        failing_requests: Arc::new(AtomicBool::new(false)),
        accepted,
        task,
    }
}

/// A long-lived-connection upstream: a plain TCP client's bytes are echoed back for as long as
/// it stays; an HTTP `Upgrade: websocket` request is answered `101` and then echoed likewise
/// (Envoy only forwards bytes after the upgrade); any other HTTP request (a health check) gets
/// `200 ok`. Echoes are prefixed with the upstream's name: `name:bytes`.
pub async fn echo(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n = name.to_owned();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let n = n.clone();
            conns.spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let Ok(k) = stream.read(&mut buf).await else {
                    return;
                };
                let mut first = buf[..k].to_vec();
                if first.starts_with(b"GET ") {
                    while !first.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => first.extend_from_slice(&buf[..k]),
                        }
                    }
                    let head = String::from_utf8_lossy(&first).to_ascii_lowercase();
                    if !head.contains("upgrade: websocket") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
                        .await;
                    first.clear();
                }
                loop {
                    if !first.is_empty() {
                        let mut out = format!("{n}:").into_bytes();
                        out.extend_from_slice(&first);
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => first = buf[..k].to_vec(),
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
    });
    Upstream {
        name: name.to_owned(),
        addr,
        failing_health: Arc::new(AtomicBool::new(false)),
        sni_seen: Arc::new(Mutex::new(Vec::new())),
        paths_seen: Arc::new(Mutex::new(Vec::new())),
        health_code: Arc::new(std::sync::atomic::AtomicU16::new(200)),
        failing_requests: Arc::new(AtomicBool::new(false)),
        accepted,
        task,
    }
}
