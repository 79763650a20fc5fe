//! The events the agent reports to the VPSie API (`POST /api/v1/lb/{identifier}/events`) and
//! the durable queue that holds them until the API has accepted them.
//!
//! Owns: the event body exactly as the API contract spells it ([`Event`], [`EventKind`], one
//! constructor per type with that type's metadata), its RFC 3339 timestamp, and [`EventQueue`]:
//! bounded, first in first out, and written to disk before any change returns, so that neither an
//! API outage nor an agent restart loses what was pushed.
//!
//! Does not: send anything over the network, retry or back off. The agent loop does that:
//! [`EventQueue::peek`] the oldest event, POST it, [`EventQueue::pop`] it once the API answered
//! 200/201, back off otherwise. Delivery is therefore at least once: a crash between the POST and
//! the pop sends that event again.

use crate::spec::ConfigHash;
use crate::spec::Finding;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

mod queue;
pub use queue::EventQueue;

/// The closed set of event types the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AgentStarted,
    ConfigApplied,
    ConfigRejected,
    ReloadFailed,
    CriticalFailure,
    /// A backend host name's answer held addresses that carry no traffic, or the name stopped
    /// resolving.
    BackendHostProblem,
    /// A managed certificate was obtained for the first time, renewed, or an attempt failed
    /// (with the CA's own words).
    CertificateIssued,
    CertificateRenewed,
    CertificateFailed,
}

impl EventKind {
    /// Every kind (the contract lists each: `docs/contract.md`, checked by a test).
    pub const ALL: &'static [EventKind] = &[
        EventKind::AgentStarted,
        EventKind::ConfigApplied,
        EventKind::ConfigRejected,
        EventKind::ReloadFailed,
        EventKind::CriticalFailure,
        EventKind::BackendHostProblem,
        EventKind::CertificateIssued,
        EventKind::CertificateRenewed,
        EventKind::CertificateFailed,
    ];

    /// The wire name, also fit for a metrics label (a closed set).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AgentStarted => "agent_started",
            EventKind::ConfigApplied => "config_applied",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::ReloadFailed => "reload_failed",
            EventKind::CriticalFailure => "critical_failure",
            EventKind::BackendHostProblem => "backend_host_problem",
            EventKind::CertificateIssued => "certificate_issued",
            EventKind::CertificateRenewed => "certificate_renewed",
            EventKind::CertificateFailed => "certificate_failed",
        }
    }
}

/// One event, serialized as the API's body:
/// `{"id": ..., "type": ..., "message": ..., "timestamp": ..., "metadata": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// A random UUID given when the event is made and kept with it in the queue, so that the
    /// same event sent again (delivery is at least once) carries the same id and the API can
    /// drop the duplicate. Empty only in a queue file written before ids existed; `open` fills
    /// those in before anything is sent.
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// For people reading the API's event log; the metadata carries the facts.
    pub message: String,
    /// RFC 3339, UTC, whole seconds: `2026-11-24T05:00:00Z`.
    pub timestamp: String,
    pub metadata: Map<String, Value>,
}

impl Event {
    /// The agent has started, with the Envoy it drives.
    pub fn agent_started(agent_version: &str, envoy_version: &str, now: SystemTime) -> Event {
        Event::new(
            EventKind::AgentStarted,
            format!("agent {agent_version} started with Envoy {envoy_version}"),
            now,
            json!({ "agent_version": agent_version, "envoy_version": envoy_version }),
        )
    }

    /// A new config is live. `previous_hash` is `None` for the first config ever applied; it is
    /// sent as `null` rather than left out, so that every event of a type has the same keys.
    pub fn config_applied(
        config_hash: &ConfigHash,
        previous_hash: Option<&ConfigHash>,
        epoch: u32,
        apply_ms: u64,
        method: &str,
        incident: Option<&str>,
        now: SystemTime,
    ) -> Event {
        let mut message = format!(
            "config {} applied in {apply_ms} ms by {} (Envoy epoch {epoch})",
            config_hash.short(),
            method.replace('_', " ")
        );
        let mut metadata = json!({
            "config_hash": config_hash,
            "previous_hash": previous_hash,
            "epoch": epoch,
            "apply_ms": apply_ms,
            "method": method,
        });
        // What went wrong on the way (`restart`: Envoy exited mid-apply and a fresh one took
        // the config): one event says both what serves and what happened.
        if let Some(what) = incident {
            message.push_str(": ");
            message.push_str(what);
            metadata["error"] = json!(what);
        }
        Event::new(EventKind::ConfigApplied, message, now, metadata)
    }

    /// The same event with `id` as its id, when `id` is a UUID (the supervisor's id of an
    /// apply: reporting that apply twice then makes one event to the API).
    pub fn with_id(mut self, id: Option<&str>) -> Event {
        if let Some(id) = id.filter(|i| uuid::Uuid::try_parse(i).is_ok()) {
            self.id = id.to_owned();
        }
        self
    }

    /// The spec failed validation; nothing changed.
    pub fn config_rejected(config_hash: &ConfigHash, errors: &[Finding], now: SystemTime) -> Event {
        let noun = if errors.len() == 1 { "error" } else { "errors" };
        let mut message = format!(
            "config {} rejected, nothing changed: {} {noun}",
            config_hash.short(),
            errors.len()
        );
        // The first finding makes the message useful on its own; the full list is in metadata.
        if let Some(first) = errors.first() {
            message.push_str(&format!(", first: {first}"));
        }
        let errors: Vec<Value> = errors
            .iter()
            .map(|f| json!({ "path": f.path, "message": f.message }))
            .collect();
        Event::new(
            EventKind::ConfigRejected,
            message,
            now,
            json!({ "config_hash": config_hash, "errors": errors }),
        )
    }

    /// A new config failed to go live; the previous one still serves. `epoch` is the epoch that
    /// failed, `None` when it failed before an Envoy was started (`null` on the wire).
    pub fn reload_failed(
        config_hash: &ConfigHash,
        epoch: Option<u32>,
        error: &str,
        now: SystemTime,
    ) -> Event {
        Event::new(
            EventKind::ReloadFailed,
            format!(
                "config {} failed to load, the previous config still serves: {error}",
                config_hash.short()
            ),
            now,
            json!({ "config_hash": config_hash, "epoch": epoch, "error": error }),
        )
    }

    /// A pool of an applied config did not finish moving to its new hosts in time: the new ones
    /// in `hosts` had not passed their first health check. `held` old hosts keep serving beside
    /// them (nothing is rolled back); with none held, the new hosts just get no traffic. A
    /// `reload_failed` with the pool's facts added.
    pub fn transition_stuck(
        config_hash: &ConfigHash,
        epoch: Option<u32>,
        pool: &str,
        hosts: &[String],
        held: usize,
        now: SystemTime,
    ) -> Event {
        let after = if held > 0 {
            format!("its {held} old hosts keep serving")
        } else {
            "they get no traffic".to_owned()
        };
        let error = format!(
            "pool {pool}: new hosts have not passed their first health check: {}; {after}",
            hosts.join(", ")
        );
        Event::new(
            EventKind::ReloadFailed,
            format!("config {}: {error}", config_hash.short()),
            now,
            json!({
                "config_hash": config_hash,
                "epoch": epoch,
                "error": error,
                "pool": pool,
                "hosts": hosts,
                "old_hosts_serving": held,
            }),
        )
    }

    /// Envoy is not serving and could not be restored.
    pub fn critical_failure(
        config_hash: &ConfigHash,
        epoch: Option<u32>,
        error: &str,
        restore_error: &str,
        now: SystemTime,
    ) -> Event {
        Event::new(
            EventKind::CriticalFailure,
            format!("Envoy is not serving: {error}; restoring it failed: {restore_error}"),
            now,
            json!({
                "config_hash": config_hash,
                "epoch": epoch,
                "error": error,
                "restore_error": restore_error,
            }),
        )
    }

    /// A backend host name cannot be used as it resolved: `refused` addresses get no traffic;
    /// `error` says why it did not resolve at all, `kept` what it still uses.
    pub fn backend_host_problem(problem: &crate::resolve::Problem, now: SystemTime) -> Event {
        use crate::resolve::Problem;
        let metadata = match problem {
            Problem::Refused { name, refused } => json!({
                "host": name,
                "problem": "refused",
                "refused": refused
                    .iter()
                    .map(|(ip, why)| json!({"address": ip.to_string(), "reason": why.to_string()}))
                    .collect::<Vec<_>>(),
            }),
            Problem::Unresolved { name, error, kept } => json!({
                "host": name,
                "problem": "unresolved",
                "error": error,
                "kept": kept.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            }),
        };
        Event::new(
            EventKind::BackendHostProblem,
            problem.message(),
            now,
            metadata,
        )
    }

    /// A managed certificate for `name` was obtained (`renewed`: it replaces an earlier one).
    pub fn certificate_issued(
        name: &str,
        certificate_id: &str,
        not_after: i64,
        renewed: bool,
        now: SystemTime,
    ) -> Event {
        let expires = rfc3339_unix(not_after);
        Event::new(
            if renewed {
                EventKind::CertificateRenewed
            } else {
                EventKind::CertificateIssued
            },
            format!(
                "managed certificate for {name} {}, valid until {expires}",
                if renewed { "renewed" } else { "issued" }
            ),
            now,
            json!({"name": name, "certificate_id": certificate_id, "not_after": expires}),
        )
    }

    /// An attempt to obtain or renew the certificate for `name` failed; `error` holds the CA's
    /// own text where it gave one. The next attempt is at `next_attempt` (Unix seconds).
    pub fn certificate_failed(
        name: &str,
        error: &str,
        next_attempt: i64,
        now: SystemTime,
    ) -> Event {
        let next = rfc3339_unix(next_attempt);
        Event::new(
            EventKind::CertificateFailed,
            format!("managed certificate for {name} not obtained: {error}; next attempt at {next}"),
            now,
            json!({"name": name, "error": error, "next_attempt": next}),
        )
    }

    fn new(kind: EventKind, message: String, now: SystemTime, metadata: Value) -> Event {
        let metadata = match metadata {
            Value::Object(m) => m,
            // Every caller above passes a `json!({...})` literal, so this arm is never taken;
            // it exists so that no `unwrap` is needed.
            other => Map::from_iter([("value".to_owned(), other)]),
        };
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            message,
            timestamp: rfc3339(now),
            metadata,
        }
    }
}

/// [`rfc3339`] of Unix seconds (before 1970: the epoch).
pub fn rfc3339_unix(secs: i64) -> String {
    rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64))
}

/// Formats an instant as RFC 3339 in UTC, to the second (`1970-01-01T00:00:00Z`). Sub-second
/// digits are dropped: the API needs ordering to the second at most, and a fixed width is easier
/// on whoever reads the log.
pub fn rfc3339(t: SystemTime) -> String {
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Before 1970 (a clock gone wrong): round towards the past, like after 1970.
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    };
    // The calendar is the `time` crate's; out of its range (±9999 years: a clock gone badly
    // wrong) the nearest end is written, never a panic.
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) if secs < 0 => "0000-01-01T00:00:00Z".to_owned(),
        Err(_) => "9999-12-31T23:59:59Z".to_owned(),
    }
}

#[cfg(test)]
mod tests;
