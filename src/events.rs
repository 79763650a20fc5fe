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

use crate::spec::Finding;
use crate::store;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The closed set of event types the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AgentStarted,
    ConfigApplied,
    ConfigRejected,
    ReloadFailed,
    CriticalFailure,
    /// Not in the contract's list yet (issue 11): a backend host name's answer held addresses
    /// that carry no traffic, or the name stopped resolving.
    BackendHostProblem,
    /// Not in the contract's list yet (issue 12): a managed certificate was obtained for the
    /// first time, renewed, or an attempt failed (with the CA's own words).
    CertificateIssued,
    CertificateRenewed,
    CertificateFailed,
}

impl EventKind {
    /// The wire name, also fit for a metrics label (a fixed set of five values).
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
        config_hash: &str,
        previous_hash: Option<&str>,
        epoch: u32,
        apply_ms: u64,
        method: &str,
        incident: Option<&str>,
        now: SystemTime,
    ) -> Event {
        let mut message = format!(
            "config {} applied in {apply_ms} ms by {} (Envoy epoch {epoch})",
            short(config_hash),
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
    pub fn config_rejected(config_hash: &str, errors: &[Finding], now: SystemTime) -> Event {
        let noun = if errors.len() == 1 { "error" } else { "errors" };
        let mut message = format!(
            "config {} rejected, nothing changed: {} {noun}",
            short(config_hash),
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
        config_hash: &str,
        epoch: Option<u32>,
        error: &str,
        now: SystemTime,
    ) -> Event {
        Event::new(
            EventKind::ReloadFailed,
            format!(
                "config {} failed to load, the previous config still serves: {error}",
                short(config_hash)
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
        config_hash: &str,
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
            format!("config {}: {error}", short(config_hash)),
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
        config_hash: &str,
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
                    .map(|(ip, why)| json!({"address": ip.to_string(), "reason": why}))
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
        let expires = rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(not_after.max(0) as u64));
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
        let next = rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(next_attempt.max(0) as u64));
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

/// The first 12 characters of a hash: enough to tell configs apart in a message.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
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
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of a count of days since
/// 1970-01-01. Howard Hinnant's `civil_from_days`: eras of 400 years (146,097 days) starting on
/// 1 March, so that the leap day is the last day of a year and needs no special case.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from 1 March, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both casts are in range: month is 1..=12 and day 1..=31 by construction.
    (year, month as u32, day as u32)
}

/// What the queue file holds.
#[derive(Serialize)]
struct FileRef<'a> {
    dropped: u64,
    events: &'a VecDeque<Event>,
}

#[derive(Deserialize)]
struct FileOwned {
    dropped: u64,
    events: VecDeque<Event>,
}

/// Events waiting to be accepted by the API, oldest first, at most `capacity` of them.
///
/// Every change rewrites the whole file atomically (`store::write_private`: temporary file,
/// fsync, rename) before it returns. With a capacity around 1000 events the file is a few hundred
/// KiB at most and events come minutes apart, so rewriting it is cheap and far simpler than an
/// append-only log with compaction.
///
/// When a write fails (a full or read-only disk) the change is kept in memory all the same and
/// the error returned: the events are still sent, and every later change, or [`EventQueue::save_pending`],
/// tries the write again. A full disk must not silence the load balancer's reports; only an
/// agent restart before the disk takes writes again loses what never reached it.
///
/// When full, a push drops the *oldest* event: the newest says most about the state the load
/// balancer is in now. Drops are counted, and the count is kept in the file.
#[derive(Debug)]
pub struct EventQueue {
    path: PathBuf,
    capacity: usize,
    events: VecDeque<Event>,
    dropped: u64,
    /// Set while the file is behind the queue in memory (the last write failed).
    unsaved: bool,
}

impl EventQueue {
    /// Opens the queue kept at `path`, loading the events a previous run left there. A missing
    /// file is an empty queue. A file that cannot be parsed is moved aside to
    /// `<path>.corrupt-<unix time>` with a warning and the queue starts empty: losing old events
    /// is better than an agent that cannot start. If the file holds more events than `capacity`
    /// (the capacity was lowered), the oldest are dropped and counted.
    pub fn open(path: &Path, capacity: usize) -> anyhow::Result<EventQueue> {
        anyhow::ensure!(
            capacity > 0,
            "the event queue capacity must be at least 1 (got 0)"
        );
        let mut queue = EventQueue {
            path: path.to_path_buf(),
            capacity,
            events: VecDeque::new(),
            dropped: 0,
            unsaved: false,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(queue),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the event queue {}", path.display()))
            }
        };
        match serde_json::from_slice::<FileOwned>(&bytes) {
            Ok(file) => {
                queue.events = file.events;
                queue.dropped = file.dropped;
                // Events queued by an agent before ids existed get theirs now, and on disk at
                // once, so a resend after another restart still carries the same id.
                let mut named = false;
                for e in queue.events.iter_mut().filter(|e| e.id.is_empty()) {
                    e.id = uuid::Uuid::new_v4().to_string();
                    named = true;
                }
                if named {
                    queue.save()?;
                }
                if queue.events.len() > capacity {
                    let excess = queue.events.len() - capacity;
                    queue.events.drain(..excess);
                    queue.dropped = queue.dropped.saturating_add(excess as u64);
                    tracing::warn!(
                        path = %path.display(),
                        dropped = excess,
                        capacity,
                        "the event queue held more events than its capacity; dropped the oldest"
                    );
                    queue.save()?;
                }
            }
            Err(parse_error) => {
                let aside = corrupt_path(path);
                std::fs::rename(path, &aside).with_context(|| {
                    format!(
                        "the event queue {} is corrupt ({parse_error}) and cannot be moved aside \
                         to {}",
                        path.display(),
                        aside.display()
                    )
                })?;
                tracing::warn!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "the event queue file is corrupt ({parse_error}); moved it aside and started \
                     an empty queue"
                );
            }
        }
        Ok(queue)
    }

    /// Appends an event, dropping the oldest one first when the queue is full. Returns once the
    /// queue is on disk.
    pub fn push(&mut self, event: Event) -> anyhow::Result<()> {
        let evicted = if self.events.len() >= self.capacity {
            self.events.pop_front()
        } else {
            None
        };
        if evicted.is_some() {
            self.dropped = self.dropped.saturating_add(1);
        }
        self.events.push_back(event);
        let saved = self.save();
        if evicted.is_some() {
            tracing::warn!(
                capacity = self.capacity,
                dropped_total = self.dropped,
                "the event queue is full; dropped the oldest event"
            );
        }
        saved
    }

    /// The oldest event: the next one to send.
    pub fn peek(&self) -> Option<&Event> {
        self.events.front()
    }

    /// Removes the oldest event, once the API has accepted it. Returns once the queue is on disk;
    /// when it cannot be written, the event is gone from memory all the same (it was delivered:
    /// keeping it would send it again and again) and the error is returned.
    pub fn pop(&mut self) -> anyhow::Result<Option<Event>> {
        let Some(event) = self.events.pop_front() else {
            return Ok(None);
        };
        self.save()?;
        Ok(Some(event))
    }

    /// Whether the file is behind the queue in memory (a write failed and none has worked since).
    pub fn unsaved(&self) -> bool {
        self.unsaved
    }

    /// Writes the queue again if an earlier write failed. The agent calls it every cycle, so the
    /// file catches up by itself once the disk takes writes again.
    pub fn save_pending(&mut self) -> anyhow::Result<()> {
        if self.unsaved {
            self.save()?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events dropped because the queue was full, since the queue file was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn save(&mut self) -> anyhow::Result<()> {
        let file = FileRef {
            dropped: self.dropped,
            events: &self.events,
        };
        let result = serde_json::to_vec(&file)
            .context("cannot serialize the event queue")
            .and_then(|bytes| {
                store::write_private(&self.path, &bytes).with_context(|| {
                    format!(
                        "cannot save the event queue {}; the events are kept in memory and sent, \
                         and the file is written again once the disk takes it",
                        self.path.display()
                    )
                })
            });
        self.unsaved = result.is_err();
        result
    }
}

/// `<path>.corrupt-<unix time>`, with a counter added if that name is taken (two corrupt files
/// in the same second must not overwrite each other's evidence).
fn corrupt_path(path: &Path) -> PathBuf {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}.corrupt-{unix}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const PREV: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-11-24T05:00:00Z
    fn now() -> SystemTime {
        at(1_795_496_400)
    }

    /// The event's body without its id, after checking that the id is a UUID.
    fn body(e: &Event) -> Value {
        let mut v = serde_json::to_value(e).unwrap();
        let id = v.as_object_mut().unwrap().remove("id").unwrap();
        assert!(uuid::Uuid::try_parse(id.as_str().unwrap()).is_ok(), "{id}");
        v
    }

    /// Event number `i`, with a fixed id so that two calls make equal events.
    fn numbered(i: u32) -> Event {
        let mut e = Event::reload_failed(HASH, Some(i), &format!("failure {i}"), now());
        e.id = format!("00000000-0000-4000-8000-{i:012}");
        e
    }

    fn epochs(q: &EventQueue) -> Vec<Value> {
        q.events
            .iter()
            .map(|e| e.metadata["epoch"].clone())
            .collect()
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
        let e = Event::config_applied(HASH, Some(PREV), 3, 1250, "hot_restart", None, now());
        assert_eq!(
            body(&e),
            json!({
                "type": "config_applied",
                "message": "config 0123456789ab applied in 1250 ms by hot restart (Envoy epoch 3)",
                "timestamp": "2026-11-24T05:00:00Z",
                "metadata": {
                    "config_hash": HASH,
                    "previous_hash": PREV,
                    "epoch": 3,
                    "apply_ms": 1250,
                    "method": "hot_restart",
                },
            })
        );
        let first = Event::config_applied(HASH, None, 0, 7, "hot_restart", None, now());
        assert_eq!(body(&first)["metadata"]["previous_hash"], Value::Null);
        assert_eq!(
            first.metadata.len(),
            5,
            "every key is present, even when null"
        );
        let crash = "envoy epoch 0 (pid 9) exited (signal: 9 (SIGKILL)) during the apply";
        let restarted =
            Event::config_applied(HASH, Some(PREV), 0, 180, "restart", Some(crash), now());
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
        let e = Event::config_rejected(HASH, &errors, now());
        assert_eq!(
            body(&e),
            json!({
                "type": "config_rejected",
                "message": "config 0123456789ab rejected, nothing changed: 2 errors, \
                            first: rules[0].port: must be between 1 and 65535",
                "timestamp": "2026-11-24T05:00:00Z",
                "metadata": {
                    "config_hash": HASH,
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
        let e = Event::reload_failed(HASH, Some(4), "listener 443: address in use", now());
        assert_eq!(
            body(&e),
            json!({
                "type": "reload_failed",
                "message": "config 0123456789ab failed to load, the previous config still \
                            serves: listener 443: address in use",
                "timestamp": "2026-11-24T05:00:00Z",
                "metadata": {
                    "config_hash": HASH,
                    "epoch": 4,
                    "error": "listener 443: address in use",
                },
            })
        );
        let before_start = Event::reload_failed(HASH, None, "invalid config", now());
        assert_eq!(body(&before_start)["metadata"]["epoch"], Value::Null);
    }

    #[test]
    fn critical_failure_body() {
        let e = Event::critical_failure(
            HASH,
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
                    "config_hash": HASH,
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
            HASH,
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
    }

    /// Checks `civil_from_days` against a plain day-by-day calendar walk, from 1970 forwards and
    /// backwards over about 550 years each way (every century rule included).
    #[test]
    fn civil_from_days_matches_a_day_by_day_walk() {
        fn days_in_month(y: i64, m: u32) -> u32 {
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..200_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in (-200_000..=0).rev() {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d -= 1;
            if d == 0 {
                if m == 1 {
                    m = 12;
                    y -= 1;
                } else {
                    m -= 1;
                }
                d = days_in_month(y, m);
            }
        }
    }

    #[test]
    fn every_event_has_its_own_uuid_and_keeps_it_through_the_queue() {
        let (a, b) = (
            Event::agent_started("0.1.0", "1.40.0", now()),
            Event::agent_started("0.1.0", "1.40.0", now()),
        );
        assert_ne!(a.id, b.id, "two events, two ids, even when alike");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        q.push(a.clone()).unwrap();
        drop(q);
        // A restart (the agent killed before it popped) resends the same id.
        let q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(q.peek().map(|e| e.id.as_str()), Some(a.id.as_str()));
        assert_eq!(body(q.peek().unwrap()), body(&a));
    }

    #[test]
    fn events_queued_before_ids_existed_get_one_that_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut old = serde_json::to_value(numbered(0)).unwrap();
        old.as_object_mut().unwrap().remove("id");
        std::fs::write(&path, json!({"dropped": 0, "events": [old]}).to_string()).unwrap();
        let first = EventQueue::open(&path, 10)
            .unwrap()
            .peek()
            .unwrap()
            .id
            .clone();
        assert!(uuid::Uuid::try_parse(&first).is_ok(), "{first}");
        let again = EventQueue::open(&path, 10)
            .unwrap()
            .peek()
            .unwrap()
            .id
            .clone();
        assert_eq!(first, again, "the id given on open is on disk");
    }

    #[test]
    fn fifo_order_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        for i in 0..4 {
            q.push(numbered(i)).unwrap();
        }
        drop(q);
        let mut q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(q.len(), 4);
        for i in 0..4 {
            assert_eq!(q.peek(), Some(&numbered(i)));
            assert_eq!(q.pop().unwrap(), Some(numbered(i)));
        }
        assert!(q.is_empty());
        assert_eq!(q.peek(), None);
        assert_eq!(q.pop().unwrap(), None);
    }

    #[test]
    fn pushed_events_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/events.json");
        let started = Event::agent_started("0.1.0", "1.40.0", now());
        let mut q = EventQueue::open(&path, 10).unwrap();
        assert!(!path.exists(), "opening an absent queue writes nothing");
        q.push(started.clone()).unwrap();
        // No explicit flush or close: what push returned from is already on disk.
        drop(q);
        let q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.peek(), Some(&started));
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 3).unwrap();
        for i in 0..5 {
            q.push(numbered(i)).unwrap();
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        assert_eq!(epochs(&q), [json!(2), json!(3), json!(4)]);
        drop(q);
        let q = EventQueue::open(&path, 3).unwrap();
        assert_eq!(q.dropped(), 2);
        assert_eq!(epochs(&q), [json!(2), json!(3), json!(4)]);
    }

    #[test]
    fn lowered_capacity_drops_the_oldest_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        for i in 0..5 {
            q.push(numbered(i)).unwrap();
        }
        drop(q);
        let q = EventQueue::open(&path, 2).unwrap();
        assert_eq!(epochs(&q), [json!(3), json!(4)]);
        assert_eq!(q.dropped(), 3);
        drop(q);
        assert_eq!(
            EventQueue::open(&path, 10).unwrap().len(),
            2,
            "trim persisted"
        );
        assert!(EventQueue::open(&path, 0).is_err());
    }

    #[test]
    fn pop_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        for i in 0..3 {
            q.push(numbered(i)).unwrap();
        }
        assert_eq!(q.pop().unwrap(), Some(numbered(0)));
        drop(q);
        let q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(epochs(&q), [json!(1), json!(2)]);
    }

    #[test]
    fn file_format_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 1).unwrap();
        q.push(numbered(0)).unwrap();
        q.push(numbered(1)).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            on_disk,
            json!({ "dropped": 1, "events": [serde_json::to_value(numbered(1)).unwrap()] })
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_the_queue_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        // Truncated JSON, then valid JSON of the wrong shape: both are corrupt.
        for garbage in [&b"{\"dropped\": 1, \"ev"[..], &b"[1, 2, 3]"[..]] {
            std::fs::write(&path, garbage).unwrap();
            let mut q = EventQueue::open(&path, 10).unwrap();
            assert!(q.is_empty());
            assert_eq!(q.dropped(), 0);
            assert!(!path.exists());
            q.push(numbered(7)).unwrap();
            assert_eq!(EventQueue::open(&path, 10).unwrap().len(), 1);
            std::fs::remove_file(&path).unwrap();
        }
        let mut aside: Vec<Vec<u8>> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("events.json.corrupt-")
            })
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        aside.sort();
        // Both kept, even when moved aside within the same second.
        assert_eq!(
            aside,
            [b"[1, 2, 3]".to_vec(), b"{\"dropped\": 1, \"ev".to_vec()]
        );
    }

    /// A write that fails keeps the change in memory (the event is still sent) and says so; the
    /// next write that works brings the file up to date, with nothing lost.
    #[test]
    fn a_failed_save_keeps_the_change_in_memory_and_catches_up_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 3).unwrap();
        q.push(numbered(0)).unwrap();
        q.push(numbered(1)).unwrap();
        // A directory where the file should be: the rename fails, even for root.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = q.push(numbered(2)).unwrap_err();
        assert!(format!("{e:#}").contains("kept in memory"), "{e:#}");
        assert!(q.unsaved());
        assert_eq!(epochs(&q), [json!(0), json!(1), json!(2)]);
        // Delivered while the disk refuses: gone from memory, the file still behind.
        assert!(q.pop().is_err());
        assert_eq!(epochs(&q), [json!(1), json!(2)]);
        assert!(q.save_pending().is_err());
        assert!(q.unsaved());
        // The disk takes writes again: the file catches up.
        std::fs::remove_dir(&path).unwrap();
        q.save_pending().unwrap();
        assert!(!q.unsaved());
        let again = EventQueue::open(&path, 3).unwrap();
        assert_eq!(epochs(&again), [json!(1), json!(2)]);
    }

    #[test]
    fn an_apply_id_becomes_the_event_id_when_it_is_a_uuid() {
        let now = SystemTime::UNIX_EPOCH;
        let e = || Event::config_applied("h", None, 0, 1, "live", None, now);
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(e().with_id(Some(&id)).id, id);
        let random = e().with_id(Some("not-a-uuid")).id;
        assert!(uuid::Uuid::try_parse(&random).is_ok() && random != id);
        assert_ne!(e().with_id(None).id, e().with_id(None).id);
    }
}
