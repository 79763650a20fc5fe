//! The http2 scheme with a real gRPC client and server (tonic's gRPC health service: a unary
//! `Check` and a server-streaming `Watch`) through the real Envoy: status codes and messages
//! arrive intact, a stream carries every update, hosts route by domain, the TLS front negotiates
//! h2 by ALPN, TLS backends speak h2, and h2load loses no request.

use crate::support::certs::{self, TestCert};
use crate::support::envoy::{free_port, Envoy};
use crate::support::upstream;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;

/// A gRPC server on loopback whose health service reports `service` as SERVING.
pub(crate) struct GrpcServer {
    pub addr: SocketAddr,
    pub reporter: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn grpc_server(service: &str, tls: Option<&TestCert>) -> GrpcServer {
    let (reporter, svc) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = tonic::transport::Server::builder();
    if let Some(c) = tls {
        builder = builder
            .tls_config(
                ServerTlsConfig::new().identity(Identity::from_pem(&c.cert_pem, &c.key_pem)),
            )
            .unwrap();
    }
    let router = builder.add_service(svc);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    GrpcServer {
        addr,
        reporter,
        task,
    }
}

fn backend(id: &str, addr: SocketAddr) -> Value {
    json!({"identifier": id, "ip": "127.0.0.1", "port": addr.port()})
}

/// A client whose requests carry `host` as :authority (and SNI), sent to 127.0.0.1:`port`.
pub(crate) async fn client(host: &str, port: u16, tls: Option<&TestCert>) -> HealthClient<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}"))
        .unwrap()
        .origin(format!("{scheme}://{host}:{port}").parse().unwrap())
        .connect_timeout(Duration::from_secs(5));
    if let Some(c) = tls {
        ep = ep
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&c.cert_pem))
                    .domain_name(host),
            )
            .unwrap();
    }
    HealthClient::new(ep.connect().await.unwrap())
}

pub(crate) fn req(service: &str) -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    })
}

/// Calls Check until it answers at all (Envoy's first health check has passed), with a deadline.
pub(crate) async fn first_answer(c: &mut HealthClient<Channel>, service: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.check(req(service)).await {
            Ok(_) => return,
            Err(s) if s.code() == Code::NotFound => return,
            Err(s) => assert!(
                Instant::now() < deadline,
                "no gRPC answer through Envoy within 20 s: {s:?}"
            ),
        }
        tokio::task::yield_now().await;
    }
}

/// Unary calls, status codes, a server stream and host routing, through one listener.
async fn grpc_through(envoy_port: u16, front: Option<&TestCert>, a: &GrpcServer) {
    let mut ca = client("alpha.grpc.test", envoy_port, front).await;
    let mut cb = client("beta.grpc.test", envoy_port, front).await;
    first_answer(&mut ca, "alpha").await;
    first_answer(&mut cb, "beta").await;

    // Unary: the answer and its trailers (tonic fails a call whose trailers lack grpc-status).
    let ok = ca.check(req("alpha")).await.expect("alpha via its domain");
    assert_eq!(ok.get_ref().status(), ServingStatus::Serving);
    // A status other than OK arrives with its code and message (trailers-only response).
    let e = ca.check(req("beta")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(e.message(), "service not registered");
    // Host routing: beta's domain reaches the other server.
    let ok = cb.check(req("beta")).await.expect("beta via its domain");
    assert_eq!(ok.get_ref().status(), ServingStatus::Serving);
    assert_eq!(
        cb.check(req("alpha")).await.unwrap_err().code(),
        Code::NotFound
    );

    // Server streaming: every status change arrives on the open stream, in order.
    let mut stream = ca.watch(req("alpha")).await.unwrap().into_inner();
    assert_eq!(next(&mut stream).await, ServingStatus::Serving);
    use tonic_health::ServingStatus as Set;
    for (set, want) in [
        (Set::NotServing, ServingStatus::NotServing),
        (Set::Serving, ServingStatus::Serving),
        (Set::NotServing, ServingStatus::NotServing),
    ] {
        a.reporter.set_service_status("alpha", set).await;
        assert_eq!(next(&mut stream).await, want);
    }
    a.reporter.set_service_status("alpha", Set::Serving).await;
    drop(stream);
}

/// The next message of a Watch stream, with a deadline.
pub(crate) async fn next(
    s: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a stream message within 10 s")
        .expect("the stream stays healthy")
        .expect("the stream stays open")
        .status()
}

fn grpc_rule(port: u16, a: &GrpcServer, b: &GrpcServer, extra: Value) -> Value {
    let mut rule = json!({
        "ruleId": "grpc",
        "scheme": "http2",
        "frontPort": port,
        "backPort": 1,
        "backends": [],
        "domains": [
            {"domainId": "alpha", "domainName": "alpha.grpc.test", "backends": [backend("a1", a.addr)]},
            {"domainId": "beta", "domainName": "beta.grpc.test", "backends": [backend("b1", b.addr)]}
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        rule[k] = v.clone();
    }
    json!({"identifier": "lb-grpc", "lbName": "grpc", "rules": [rule]})
}

#[tokio::test]
async fn grpc_unary_streaming_status_and_host_routing_over_h2c() {
    let (a, b) = (
        grpc_server("alpha", None).await,
        grpc_server("beta", None).await,
    );
    let port = free_port();
    let envoy = Envoy::start(&grpc_rule(port, &a, &b, json!({}))).await;
    grpc_through(port, None, &a).await;
    drop(envoy);
}

/// TLS at the front (ALPN h2) and TLS to the backends (backendScheme https, ALPN h2).
#[tokio::test]
async fn grpc_over_a_tls_front_to_tls_backends() {
    let backend_cert = certs::cert(&["localhost"]);
    let a = grpc_server("alpha", Some(&backend_cert)).await;
    let b = grpc_server("beta", Some(&backend_cert)).await;
    let front = certs::cert(&["alpha.grpc.test", "beta.grpc.test"]);
    let port = free_port();
    let spec = grpc_rule(
        port,
        &a,
        &b,
        json!({
            "backendScheme": "https",
            "tls": {"certificateId": "front", "certificatePem": front.cert_pem, "privateKeyPem": front.key_pem}
        }),
    );
    let envoy = Envoy::start(&spec).await;
    grpc_through(port, Some(&front), &a).await;

    // A plain HTTP client on the same TLS front: ALPN offers h2 and http/1.1, both are served.
    for (http2, want) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .resolve("alpha.grpc.test", SocketAddr::from(([127, 0, 0, 1], port)));
        if !http2 {
            b = b.http1_only();
        }
        let r = b
            .build()
            .unwrap()
            .post(format!(
                "https://alpha.grpc.test:{port}/grpc.health.v1.Health/Check"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0])
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), want, "ALPN chose {:?}", r.version());
    }
    drop(envoy);
}

/// h2load (nghttp2's load generator) through an http2 rule to HTTP/2 backends: 0 failed.
#[tokio::test]
async fn h2load_through_an_http2_rule_loses_nothing() {
    let h2load = Command::new("h2load").arg("--version").output();
    assert!(
        h2load.is_ok_and(|o| o.status.success()),
        "h2load is required for this test but is not on PATH: install Debian's nghttp2-client (make test does)"
    );
    let u1 = upstream::http("u1", None).await;
    let u2 = upstream::http("u2", None).await;
    let port = free_port();
    let spec = json!({
        "identifier": "lb-h2load", "lbName": "h2load",
        "rules": [{
            "ruleId": "h2", "scheme": "http2", "frontPort": port, "backPort": 1,
            "backends": [
                {"identifier": "u1", "ip": "127.0.0.1", "port": u1.port()},
                {"identifier": "u2", "ip": "127.0.0.1", "port": u2.port()}
            ]
        }]
    });
    let envoy = Envoy::start(&spec).await;
    envoy.wait_healthy("h2", 2).await;
    let url = format!("http://127.0.0.1:{port}/");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("h2load")
            .args(["-n", "5000", "-c", "4", "-m", "16", "-t", "1", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line: {text}"));
    assert!(
        line.contains("5000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{line}\n{text}"
    );
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap();
    assert!(codes.starts_with("status codes: 5000 2xx"), "{codes}");
    assert!(text.contains("Application protocol: h2c"), "{text}");
    drop(envoy);
}
