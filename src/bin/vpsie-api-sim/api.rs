//! The HTTP side: the two API routes of the contract (`docs/contract.md`) and the `/sim/*` control routes for tests and demos. Answers are envelopes (but
//! a 304, and what a fault breaks on purpose); every route needs the token.
//!
//! Faults apply to the API routes only, and answer before the token or the id is looked at (the
//! API is "down", it checks nothing). The spec file is read on every request, never cached, so
//! editing it is how a test or a demo changes the load balancer.

use crate::conn::Conn;
use crate::events;
use crate::faults::{self, Fault, Faults};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// The contract refuses bodies over 10 MiB; `oversize` answers a little more than that.
const OVERSIZE_BYTES: usize = 10 * 1024 * 1024 + 1024;

pub struct Sim {
    pub token: String,
    pub lbs: BTreeMap<String, PathBuf>,
    pub faults: Faults,
    pub events: tokio::sync::Mutex<events::Log>,
}

type Shared = Arc<Sim>;

pub fn router(sim: Shared) -> Router {
    Router::new()
        .route("/api/v1/lb/{id}", get(get_spec))
        .route("/api/v1/lb/{id}/events", post(post_event))
        .route("/sim/events", get(list_events).delete(clear_events))
        .route(
            "/sim/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .fallback(|| async { envelope_error(StatusCode::NOT_FOUND, "no such route") })
        // axum's default (2 MB) could refuse a legitimate `config_rejected` event listing errors
        // for thousands of backends; the contract's own bound on bodies is 10 MiB.
        .layer(DefaultBodyLimit::max(10 * 1024 * 1024))
        .with_state(sim)
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

fn envelope_ok(status: StatusCode, data: Value) -> Response {
    json_response(status, json!({"error": false, "data": data}).to_string())
}

fn envelope_error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        json!({"error": true, "code": status.as_u16(), "message": message}).to_string(),
    )
}

/// A request refused with an error envelope (small, unlike a whole `Response`).
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        envelope_error(self.status, &self.message)
    }
}

/// The token check. A plain comparison: loopback only, a development token; timing does not
/// matter here.
fn check_token(sim: &Sim, headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get("vpsie-auth").map(HeaderValue::as_bytes) {
        Some(t) if t == sim.token.as_bytes() => Ok(()),
        Some(_) => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid Vpsie-Auth token",
        )),
        None => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "missing Vpsie-Auth header",
        )),
    }
}

fn unknown_lb(id: &str) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        format!("load balancer {id:?} not found"),
    )
}

/// How an API request is answered, given the pending faults.
enum Answer {
    /// As usual (after the delay, if the fault was `delay`).
    Normal,
    /// With an oversize body, which each route builds from its own data.
    Oversize,
    /// With this response and nothing else.
    Fault(Response),
    /// As usual, but only after this wait, which comes after any recording the route does.
    Late(std::time::Duration),
}

async fn fault_answer(sim: &Sim, conn: &Conn, route: &str) -> Answer {
    let Some(fault) = sim.faults.take(route == "POST event") else {
        return Answer::Normal;
    };
    info!(?fault, route, peer = %conn.peer, "injecting fault");
    match fault {
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            Answer::Normal
        }
        Fault::DelayAfterRecord(d) => Answer::Late(d),
        Fault::Oversize => Answer::Oversize,
        Fault::Status500 => Answer::Fault(envelope_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected fault: status_500",
        )),
        Fault::Status429 => {
            let mut r = envelope_error(StatusCode::TOO_MANY_REQUESTS, "injected fault: status_429");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Answer::Fault(r)
        }
        Fault::ErrorEnvelope => Answer::Fault(json_response(
            StatusCode::OK,
            json!({"error": true, "code": 500, "message": "injected"}).to_string(),
        )),
        Fault::Drop => {
            conn.cut();
            // Never written: the cut stream fails the write and hyper closes the socket.
            Answer::Fault(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

/// A valid JSON envelope over 10 MiB: `data` as usual plus a huge field no client knows, so
/// only a size limit (not a parse error) can refuse it.
fn oversize(data: Value) -> Response {
    // Written by hand rather than through `json!`: escaping 10 MiB char by char is slow in debug
    // builds, and the padding needs no escaping.
    let body = format!(
        r#"{{"error":false,"data":{data},"sim_padding":"{}"}}"#,
        "x".repeat(OVERSIZE_BYTES)
    );
    json_response(StatusCode::OK, body)
}

/// The body served for a spec file: an envelope already (served byte for byte), or wrapped in
/// one. A file that is not JSON is served as it is, so clients can be tested against garbage.
fn spec_body(id: &str, file: Vec<u8>) -> Vec<u8> {
    match serde_json::from_slice::<Value>(&file) {
        Ok(Value::Object(o)) if o.contains_key("error") => file,
        Ok(_) => {
            let text = String::from_utf8_lossy(&file);
            format!(r#"{{"error":false,"data":{}}}"#, text.trim()).into_bytes()
        }
        Err(e) => {
            warn!(
                lb = id,
                "the spec file is not JSON ({e}); serving it as it is"
            );
            file
        }
    }
}

enum SpecFile {
    Body(Vec<u8>),
    Missing,
}

async fn read_spec(sim: &Sim, id: &str) -> Result<SpecFile, Refusal> {
    let Some(path) = sim.lbs.get(id) else {
        return Ok(SpecFile::Missing);
    };
    match tokio::fs::read(path).await {
        Ok(file) => Ok(SpecFile::Body(spec_body(id, file))),
        // A deleted file is a deleted load balancer: 404, as the real API would answer.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SpecFile::Missing),
        Err(e) => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the sim cannot read {}: {e}", path.display()),
        )),
    }
}

fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Sha256::digest(body)))
}

/// `If-None-Match` holds a list of tags (maybe weak, `W/"..."`) or `*`.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

async fn get_spec(
    State(sim): State<Shared>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match fault_answer(&sim, &conn, "GET spec").await {
        Answer::Normal => {}
        Answer::Late(d) => tokio::time::sleep(d).await,
        Answer::Fault(r) => return r,
        Answer::Oversize => {
            let data = match read_spec(&sim, &id).await {
                Ok(SpecFile::Body(b)) => serde_json::from_slice::<Value>(&b)
                    .ok()
                    .and_then(|mut v| v.get_mut("data").map(Value::take))
                    .unwrap_or_else(|| json!({})),
                _ => json!({}),
            };
            return oversize(data);
        }
    }
    if let Err(r) = check_token(&sim, &headers) {
        return r.into_response();
    }
    let body = match read_spec(&sim, &id).await {
        Ok(SpecFile::Body(b)) => b,
        Ok(SpecFile::Missing) => return unknown_lb(&id).into_response(),
        Err(r) => return r.into_response(),
    };
    let etag = etag_of(&body);
    if matches_etag(&headers, &etag) {
        info!(lb = id, "GET spec: 304 not modified");
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    info!(lb = id, bytes = body.len(), "GET spec: 200");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}

async fn post_event(
    State(sim): State<Shared>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The API is "down" while a fault answers: the event is not recorded.
    let late = match fault_answer(&sim, &conn, "POST event").await {
        Answer::Normal => None,
        Answer::Late(d) => Some(d),
        Answer::Fault(r) => return r,
        Answer::Oversize => return oversize(json!({})),
    };
    if let Err(r) = check_token(&sim, &headers) {
        return r.into_response();
    }
    if !sim.lbs.contains_key(&id) {
        return unknown_lb(&id).into_response();
    }
    let event = match events::validate(&body) {
        Ok(e) => e,
        Err(problems) => {
            warn!(lb = id, "event refused: {}", problems.replace('\n', "; "));
            return envelope_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid event:\n{problems}"),
            );
        }
    };
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !events::is_known_type(&kind) {
        warn!(
            lb = id,
            kind, "event type not in the contract (recorded anyway)"
        );
    }
    let recorded = sim.events.lock().await.record(&id, event).await;
    if let Some(d) = late {
        tokio::time::sleep(d).await;
    }
    match recorded {
        Ok(events::Recorded::New(seq)) => {
            info!(lb = id, seq, kind, "event recorded");
            envelope_ok(StatusCode::CREATED, json!({"seq": seq}))
        }
        // Delivery is at least once: the same event again is acknowledged, not recorded twice.
        Ok(events::Recorded::Duplicate(seq)) => {
            info!(
                lb = id,
                seq, kind, "event already recorded (same id); not recorded again"
            );
            envelope_ok(StatusCode::OK, json!({"seq": seq, "duplicate": true}))
        }
        Err(e) => {
            warn!("{e:#}");
            envelope_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}"))
        }
    }
}

#[derive(Deserialize)]
struct LbQuery {
    lb: Option<String>,
}

fn lb_of(sim: &Sim, q: LbQuery) -> Result<String, Refusal> {
    let Some(lb) = q.lb else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the query parameter lb is required, e.g. /sim/events?lb=lb-basic-01",
        ));
    };
    if !sim.lbs.contains_key(&lb) {
        return Err(unknown_lb(&lb));
    }
    Ok(lb)
}

async fn list_events(
    State(sim): State<Shared>,
    Query(q): Query<LbQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_token(&sim, &headers) {
        return r.into_response();
    }
    match lb_of(&sim, q) {
        Ok(lb) => envelope_ok(
            StatusCode::OK,
            Value::Array(sim.events.lock().await.list(&lb)),
        ),
        Err(r) => r.into_response(),
    }
}

async fn clear_events(
    State(sim): State<Shared>,
    Query(q): Query<LbQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_token(&sim, &headers) {
        return r.into_response();
    }
    match lb_of(&sim, q) {
        Ok(lb) => {
            let n = sim.events.lock().await.clear(&lb);
            info!(lb, cleared = n, "events cleared");
            envelope_ok(StatusCode::OK, json!({"cleared": n}))
        }
        Err(r) => r.into_response(),
    }
}

async fn list_faults(State(sim): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = check_token(&sim, &headers) {
        return r.into_response();
    }
    envelope_ok(StatusCode::OK, json!({"pending": sim.faults.pending()}))
}

async fn add_fault(State(sim): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_token(&sim, &headers) {
        return r.into_response();
    }
    let added = serde_json::from_slice::<faults::Request>(&body)
        .map_err(|e| {
            format!(
                "{e} (expected {{\"kind\": K, \"count\": N, \"delay_ms\": M}} with K one of \
                 status_500, status_429, delay, error_envelope, oversize, drop)"
            )
        })
        .and_then(|req| sim.faults.add(req));
    match added {
        Ok(pending) => {
            info!(?pending, "fault queued");
            envelope_ok(StatusCode::CREATED, json!({"pending": pending}))
        }
        Err(e) => envelope_error(StatusCode::BAD_REQUEST, &format!("invalid fault: {e}")),
    }
}

async fn clear_faults(State(sim): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = check_token(&sim, &headers) {
        return r.into_response();
    }
    let n = sim.faults.clear();
    info!(cleared = n, "faults cleared");
    envelope_ok(StatusCode::OK, json!({"cleared": n}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_specs_are_wrapped_and_envelopes_kept() {
        assert_eq!(
            spec_body("x", b" {\"a\": 1}\n".to_vec()),
            b"{\"error\":false,\"data\":{\"a\": 1}}"
        );
        let env = b"{\"error\": true, \"code\": 503, \"message\": \"m\"}".to_vec();
        assert_eq!(spec_body("x", env.clone()), env);
        assert_eq!(spec_body("x", b"not json".to_vec()), b"not json");
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let tag = "\"abc\"";
        let check = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            matches_etag(&h, tag)
        };
        assert!(check("\"abc\""));
        assert!(check("\"x\", W/\"abc\""));
        assert!(check("*"));
        assert!(!check("\"abd\""));
        assert!(!matches_etag(&HeaderMap::new(), tag));
    }
}
