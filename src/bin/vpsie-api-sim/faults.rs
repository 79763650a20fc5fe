//! Injected faults: a queue of "the next N API requests get fault K", consumed one request at a
//! time in the order they were posted. This module only keeps the queue; what each fault does to
//! a response is decided in `api`.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// The longest `delay` accepted: long enough for any client timeout, short enough that a typo
/// does not hang a test run for hours.
const MAX_DELAY_MS: u64 = 600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "status_500")]
    Status500,
    #[serde(rename = "status_429")]
    Status429,
    #[serde(rename = "delay")]
    Delay,
    /// For event posts only (spec requests pass it by and leave it queued): record the event,
    /// then answer only after `delay_ms`, so a test can kill the agent while the API has its
    /// event and the agent has not heard back.
    #[serde(rename = "delay_after_record")]
    DelayAfterRecord,
    #[serde(rename = "error_envelope")]
    ErrorEnvelope,
    #[serde(rename = "oversize")]
    Oversize,
    #[serde(rename = "drop")]
    Drop,
}

/// The body of `POST /sim/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    kind: Kind,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    delay_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

/// A queued fault, as `GET /sim/faults` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub kind: Kind,
    /// Requests it still applies to.
    pub remaining: u32,
    pub delay_ms: u64,
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Status500,
    Status429,
    Delay(Duration),
    DelayAfterRecord(Duration),
    ErrorEnvelope,
    Oversize,
    Drop,
}

/// A std mutex: the queue is only touched for a push or a pop, never across an `.await`.
#[derive(Default)]
pub struct Faults {
    queue: Mutex<VecDeque<Pending>>,
}

impl Faults {
    /// Checks a request and queues it behind the faults already pending.
    pub fn add(&self, req: Request) -> Result<Vec<Pending>, String> {
        if req.count == 0 {
            return Err("count must be at least 1".into());
        }
        let delay_ms = match (req.kind, req.delay_ms) {
            (Kind::Delay | Kind::DelayAfterRecord, None) => {
                return Err("kinds delay and delay_after_record need delay_ms".into())
            }
            (Kind::Delay | Kind::DelayAfterRecord, Some(ms)) if ms > MAX_DELAY_MS => {
                return Err(format!("delay_ms must be at most {MAX_DELAY_MS}, got {ms}"))
            }
            (Kind::Delay | Kind::DelayAfterRecord, Some(ms)) => ms,
            // Only `delay` waits; a delay_ms sent with another kind means nothing.
            (_, _) => 0,
        };
        let mut queue = self.lock();
        queue.push_back(Pending {
            kind: req.kind,
            remaining: req.count,
            delay_ms,
        });
        Ok(queue.iter().cloned().collect())
    }

    /// The fault for the request being answered now, if any; counts it against its queue entry.
    /// `event` says whether the request posts an event (only those take `delay_after_record`).
    pub fn take(&self, event: bool) -> Option<Fault> {
        let mut queue = self.lock();
        let front = queue.front_mut()?;
        if front.kind == Kind::DelayAfterRecord && !event {
            return None;
        }
        let fault = match front.kind {
            Kind::Status500 => Fault::Status500,
            Kind::Status429 => Fault::Status429,
            Kind::Delay => Fault::Delay(Duration::from_millis(front.delay_ms)),
            Kind::DelayAfterRecord => {
                Fault::DelayAfterRecord(Duration::from_millis(front.delay_ms))
            }
            Kind::ErrorEnvelope => Fault::ErrorEnvelope,
            Kind::Oversize => Fault::Oversize,
            Kind::Drop => Fault::Drop,
        };
        front.remaining -= 1;
        if front.remaining == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    pub fn pending(&self) -> Vec<Pending> {
        self.lock().iter().cloned().collect()
    }

    /// Removes every pending fault; returns how many queue entries there were.
    pub fn clear(&self) -> usize {
        let mut queue = self.lock();
        let n = queue.len();
        queue.clear();
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        // A panic while holding this lock leaves the queue consistent (every change is one
        // push, pop or decrement), so a poisoned lock is still safe to use.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Request {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn faults_are_consumed_in_order_and_counted() {
        let f = Faults::default();
        f.add(req(r#"{"kind": "status_500", "count": 2}"#)).unwrap();
        f.add(req(r#"{"kind": "delay", "delay_ms": 5}"#)).unwrap();
        assert_eq!(f.take(false), Some(Fault::Status500));
        assert_eq!(f.take(false), Some(Fault::Status500));
        assert_eq!(f.take(false), Some(Fault::Delay(Duration::from_millis(5))));
        assert_eq!(f.take(false), None);
        // delay_after_record waits for an event post; spec requests pass it by.
        f.add(req(r#"{"kind": "delay_after_record", "delay_ms": 7}"#))
            .unwrap();
        assert_eq!(f.take(false), None);
        assert_eq!(
            f.take(true),
            Some(Fault::DelayAfterRecord(Duration::from_millis(7)))
        );
        assert_eq!(f.take(true), None);
    }

    #[test]
    fn bad_requests_are_refused() {
        let f = Faults::default();
        assert!(f.add(req(r#"{"kind": "drop", "count": 0}"#)).is_err());
        assert!(f.add(req(r#"{"kind": "delay"}"#)).is_err());
        assert!(f.add(req(r#"{"kind": "delay_after_record"}"#)).is_err());
        assert!(f
            .add(req(r#"{"kind": "delay", "delay_ms": 600001}"#))
            .is_err());
        assert!(serde_json::from_str::<Request>(r#"{"kind": "boom"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"kind": "drop", "cont": 1}"#).is_err());
        assert!(f.pending().is_empty());
    }
}
