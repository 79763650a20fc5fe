//! Events the agent reports: checked against the contract, numbered (`seq`), kept in memory per
//! load balancer in arrival order, and optionally appended to a file as JSON lines. An event
//! whose `id` was already recorded for that load balancer is acknowledged and not recorded again
//! (delivery is at least once). Events are never dropped or reordered here; the log grows until
//! `DELETE /sim/events` (a development tool's runs are short).

use anyhow::Context;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Types the contract lists. Others are accepted (the API may learn new ones) but logged, so a
/// misspelt type shows up in the sim's output.
const KNOWN_TYPES: [&str; 5] = [
    "agent_started",
    "config_applied",
    "config_rejected",
    "reload_failed",
    "critical_failure",
];

/// Checks an event body against the contract; every problem at once, one per line.
pub fn validate(body: &[u8]) -> Result<Map<String, Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(event) = value else {
        return Err("the body must be a JSON object".into());
    };
    let mut problems = Vec::new();
    match event.get("id") {
        Some(Value::String(id)) if uuid::Uuid::try_parse(id).is_ok() => {}
        Some(Value::String(id)) => problems.push(format!("id: {id:?} is not a UUID")),
        Some(_) => problems.push("id: must be a string (a UUID)".to_owned()),
        None => {
            problems.push("id: missing (a UUID, the same when an event is sent again)".to_owned())
        }
    }
    for field in ["type", "message", "timestamp"] {
        match event.get(field) {
            Some(Value::String(_)) => {}
            Some(_) => problems.push(format!("{field}: must be a string")),
            None => problems.push(format!("{field}: missing")),
        }
    }
    match event.get("metadata") {
        Some(Value::Object(_)) => {}
        Some(_) => problems.push("metadata: must be an object".to_owned()),
        None => problems.push("metadata: missing".to_owned()),
    }
    if let Some(Value::String(t)) = event.get("type") {
        if t.is_empty() {
            problems.push("type: must not be empty".to_owned());
        }
    }
    if let Some(Value::String(ts)) = event.get("timestamp") {
        if !is_rfc3339_utc(ts) {
            problems.push(format!(
                "timestamp: {ts:?} is not an RFC 3339 UTC time (e.g. 2026-11-23T08:15:00Z)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(event)
    } else {
        Err(problems.join("\n"))
    }
}

pub fn is_known_type(t: &str) -> bool {
    KNOWN_TYPES.contains(&t)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00|-00:00)`, as the contract asks ("RFC 3339 UTC").
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))
    };
    if b.len() < 20
        || !(digits(0..4) && digits(5..7) && digits(8..10))
        || !(digits(11..13) && digits(14..16) && digits(17..19))
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return false;
    }
    // Seconds may be 60 (a leap second), as RFC 3339 allows.
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    matches!(rest, "Z" | "z" | "+00:00" | "-00:00")
}

/// What recording an event did.
pub enum Recorded {
    /// Recorded under this sequence number.
    New(u64),
    /// Its id was recorded before, under this number; nothing was recorded now.
    Duplicate(u64),
}

/// The recorded events. Behind a tokio mutex: recording holds it across the file append, so
/// ids, the in-memory order and the file's line order always agree.
pub struct Log {
    next_seq: u64,
    by_lb: HashMap<String, Vec<Value>>,
    /// (load balancer, event id) → seq, for deduplication.
    seen: HashMap<(String, String), u64>,
    file: Option<(PathBuf, tokio::fs::File)>,
}

impl Log {
    pub async fn open(file: Option<&Path>) -> anyhow::Result<Log> {
        let file = match file {
            None => None,
            Some(path) => {
                let f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .with_context(|| format!("cannot open the events file {}", path.display()))?;
                Some((path.to_path_buf(), f))
            }
        };
        Ok(Log {
            next_seq: 1,
            by_lb: HashMap::new(),
            seen: HashMap::new(),
            file,
        })
    }

    /// Records a valid event and returns its sequence number, or the number it was recorded
    /// under before when its `id` was seen already. If the file cannot be written the event is
    /// not recorded anywhere, so memory and file never disagree.
    pub async fn record(
        &mut self,
        lb: &str,
        mut event: Map<String, Value>,
    ) -> anyhow::Result<Recorded> {
        let event_id = event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(seq) = self.seen.get(&(lb.to_owned(), event_id.clone())) {
            return Ok(Recorded::Duplicate(*seq));
        }
        let seq = self.next_seq;
        event.insert("seq".into(), seq.into());
        if let Some((path, file)) = &mut self.file {
            let mut line = Map::new();
            line.insert("lb".into(), lb.into());
            line.extend(event.clone());
            let mut text = Value::Object(line).to_string();
            text.push('\n');
            // tokio's File writes in the background: flush, so the line is in the file (and a
            // reader sees it) before the event counts as recorded.
            file.write_all(text.as_bytes())
                .await
                .with_context(|| format!("cannot append to the events file {}", path.display()))?;
            file.flush()
                .await
                .with_context(|| format!("cannot append to the events file {}", path.display()))?;
        }
        self.next_seq += 1;
        self.seen.insert((lb.to_owned(), event_id), seq);
        self.by_lb
            .entry(lb.to_owned())
            .or_default()
            .push(Value::Object(event));
        Ok(Recorded::New(seq))
    }

    pub fn list(&self, lb: &str) -> Vec<Value> {
        self.by_lb.get(lb).cloned().unwrap_or_default()
    }

    /// Forgets the events of one load balancer (the file keeps them); returns how many.
    pub fn clear(&mut self, lb: &str) -> usize {
        self.seen.retain(|(l, _), _| l != lb);
        self.by_lb.remove(lb).map_or(0, |v| v.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_must_be_rfc3339_utc() {
        for ok in [
            "2026-11-23T08:15:00Z",
            "2026-11-23T08:15:00.123456789Z",
            "2026-11-23t08:15:00z",
            "2026-11-23T08:15:00+00:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(is_rfc3339_utc(ok), "{ok}");
        }
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23 08:15:00Z",
            "2026-11-23T08:15:00",
            "2026-11-23T08:15:00+02:00",
            "2026-13-23T08:15:00Z",
            "2026-11-23T24:15:00Z",
            "2026-11-23T08:15:00.Z",
            "2026-11-23T08:15:00ZZ",
            "2026-11-23T08:15:0éZ",
        ] {
            assert!(!is_rfc3339_utc(bad), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let e = validate(br#"{"type": 1, "timestamp": "yesterday", "metadata": []}"#).unwrap_err();
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            [
                "id: missing (a UUID, the same when an event is sent again)",
                "type: must be a string",
                "message: missing",
                "metadata: must be an object",
                "timestamp: \"yesterday\" is not an RFC 3339 UTC time (e.g. 2026-11-23T08:15:00Z)",
            ]
        );
        assert!(validate(b"[]").is_err());
        assert!(validate(b"{").is_err());
        let not_uuid = br#"{"id": "7", "type": "t", "message": "m",
                           "timestamp": "2026-11-23T08:15:00Z", "metadata": {}}"#;
        assert_eq!(validate(not_uuid).unwrap_err(), "id: \"7\" is not a UUID");
        let ok = br#"{"id": "6f1c1f7e-2d0b-4a53-9a55-0c3c7f2f5b21", "type": "agent_started", "message": "m",
                      "timestamp": "2026-11-23T08:15:00Z", "metadata": {}}"#;
        assert!(validate(ok).is_ok());
    }
}
