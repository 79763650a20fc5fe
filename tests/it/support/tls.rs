//! One HTTPS request on a new TLS connection, and how its handshake went (full or resumed):
//! what the session-ticket tests and the data-plane benchmark's TLS load both make.

use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /` with `Connection: close` to `name` on 127.0.0.1:`port`. The whole answer is read, so
/// the tickets a TLS 1.3 server sends after the handshake are in the client's store after it.
pub async fn get_once(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    name: &str,
) -> Result<HandshakeKind, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let server = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(server, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let kind = tls.get_ref().1.handshake_kind().ok_or("no handshake")?;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    // A server may close without close_notify after `Connection: close`: what was read counts.
    let _ = tls.read_to_end(&mut answer).await;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answered: {}", String::from_utf8_lossy(&answer)));
    }
    Ok(kind)
}
