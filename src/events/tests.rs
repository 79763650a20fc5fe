//! Unit tests of the parent module.

use super::*;
use std::time::Duration;

pub(super) const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const PREV: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

pub(super) fn hash() -> ConfigHash {
    HASH.parse().unwrap()
}

fn prev() -> ConfigHash {
    PREV.parse().unwrap()
}

pub(super) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2026-11-24T05:00:00Z
pub(super) fn now() -> SystemTime {
    at(1_795_496_400)
}

/// The event's body without its id, after checking that the id is a UUID.
pub(super) fn body(e: &Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap();
    let id = v.as_object_mut().unwrap().remove("id").unwrap();
    assert!(uuid::Uuid::try_parse(id.as_str().unwrap()).is_ok(), "{id}");
    v
}

/// Event number `i`, with a fixed id so that two calls make equal events.
pub(super) fn numbered(i: u32) -> Event {
    let mut e = Event::reload_failed(&hash(), Some(i), &format!("failure {i}"), now());
    e.id = format!("00000000-0000-4000-8000-{i:012}");
    e
}

#[test]
fn agent_started_body() {
    let e = Event::agent_started("0.1.0", "1.40.0", now());
    assert_eq!(
        body(&e),
        json!({
            "type": "agent_started",
            "message": "agent 0.1.0 started with Envoy 1.40.0",
            "timestamp": "2026-11-24T05:00:00Z",
            "metadata": { "agent_version": "0.1.0", "envoy_version": "1.40.0" },
        })
    );
}

#[test]
fn config_applied_body() {
    let e = Event::config_applied(&hash(), Some(&prev()), 3, 1250, "hot_restart", None, now());
    assert_eq!(
        body(&e),
        json!({
            "type": "config_applied",
            "message": "config 0123456789ab applied in 1250 ms by hot restart (Envoy epoch 3)",
            "timestamp": "2026-11-24T05:00:00Z",
            "metadata": {
                "config_hash": &hash(),
                "previous_hash": &prev(),
                "epoch": 3,
                "apply_ms": 1250,
                "method": "hot_restart",
            },
        })
    );
    let first = Event::config_applied(&hash(), None, 0, 7, "hot_restart", None, now());
    assert_eq!(body(&first)["metadata"]["previous_hash"], Value::Null);
    assert_eq!(
        first.metadata.len(),
        5,
        "every key is present, even when null"
    );
    let crash = "envoy epoch 0 (pid 9) exited (signal: 9 (SIGKILL)) during the apply";
    let restarted = Event::config_applied(
        &hash(),
        Some(&prev()),
        0,
        180,
        "restart",
        Some(crash),
        now(),
    );
    assert_eq!(
        body(&restarted)["message"],
        format!("config 0123456789ab applied in 180 ms by restart (Envoy epoch 0): {crash}")
    );
    assert_eq!(body(&restarted)["metadata"]["error"], crash);
    assert_eq!(body(&restarted)["metadata"]["method"], "restart");
}

#[test]
fn config_rejected_body() {
    let errors = [
        Finding {
            path: "rules[0].port".into(),
            message: "must be between 1 and 65535".into(),
        },
        Finding {
            path: "backends".into(),
            message: "must not be empty".into(),
        },
    ];
    let e = Event::config_rejected(&hash(), &errors, now());
    assert_eq!(
        body(&e),
        json!({
            "type": "config_rejected",
            "message": "config 0123456789ab rejected, nothing changed: 2 errors, \
                        first: rules[0].port: must be between 1 and 65535",
            "timestamp": "2026-11-24T05:00:00Z",
            "metadata": {
                "config_hash": &hash(),
                "errors": [
                    { "path": "rules[0].port", "message": "must be between 1 and 65535" },
                    { "path": "backends", "message": "must not be empty" },
                ],
            },
        })
    );
}

#[test]
fn reload_failed_body() {
    let e = Event::reload_failed(&hash(), Some(4), "listener 443: address in use", now());
    assert_eq!(
        body(&e),
        json!({
            "type": "reload_failed",
            "message": "config 0123456789ab failed to load, the previous config still \
                        serves: listener 443: address in use",
            "timestamp": "2026-11-24T05:00:00Z",
            "metadata": {
                "config_hash": &hash(),
                "epoch": 4,
                "error": "listener 443: address in use",
            },
        })
    );
    let before_start = Event::reload_failed(&hash(), None, "invalid config", now());
    assert_eq!(body(&before_start)["metadata"]["epoch"], Value::Null);
}

#[test]
fn critical_failure_body() {
    let e = Event::critical_failure(
        &hash(),
        Some(2),
        "envoy exited with status 1",
        "epoch 0 did not become live",
        now(),
    );
    assert_eq!(
        body(&e),
        json!({
            "type": "critical_failure",
            "message": "Envoy is not serving: envoy exited with status 1; restoring it \
                        failed: epoch 0 did not become live",
            "timestamp": "2026-11-24T05:00:00Z",
            "metadata": {
                "config_hash": &hash(),
                "epoch": 2,
                "error": "envoy exited with status 1",
                "restore_error": "epoch 0 did not become live",
            },
        })
    );
}

#[test]
fn kinds_serialize_as_their_wire_names() {
    for kind in [
        EventKind::AgentStarted,
        EventKind::ConfigApplied,
        EventKind::ConfigRejected,
        EventKind::ReloadFailed,
        EventKind::CriticalFailure,
    ] {
        assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
    }
}

#[test]
fn events_round_trip_through_json() {
    let e = Event::config_rejected(
        &hash(),
        &[Finding {
            path: "".into(),
            message: "x".into(),
        }],
        now(),
    );
    let back: Event = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
    assert_eq!(back, e);
}

#[test]
fn rfc3339_of_known_instants() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(now()), "2026-11-24T05:00:00Z");
    // Leap days: an ordinary leap year, and 2000 (divisible by 400).
    assert_eq!(rfc3339(at(1_709_251_199)), "2024-02-29T23:59:59Z");
    assert_eq!(rfc3339(at(1_709_251_200)), "2024-03-01T00:00:00Z");
    assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
    // Sub-second digits are dropped, not rounded.
    assert_eq!(
        rfc3339(now() + Duration::from_millis(999)),
        "2026-11-24T05:00:00Z"
    );
    // Before 1970, rounded towards the past.
    assert_eq!(
        rfc3339(UNIX_EPOCH - Duration::from_millis(1)),
        "1969-12-31T23:59:59Z"
    );
    // A clock gone badly wrong: the calendar's end, not a panic.
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(1 << 40)),
        "9999-12-31T23:59:59Z"
    );
}

#[test]
fn an_apply_id_becomes_the_event_id_when_it_is_a_uuid() {
    let now = SystemTime::UNIX_EPOCH;
    let e = || Event::config_applied(&hash(), None, 0, 1, "live", None, now);
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(e().with_id(Some(&id)).id, id);
    let random = e().with_id(Some("not-a-uuid")).id;
    assert!(uuid::Uuid::try_parse(&random).is_ok() && random != id);
    assert_ne!(e().with_id(None).id, e().with_id(None).id);
}
