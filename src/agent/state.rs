//! What the agent remembers across restarts, and how a refused spec is known again.

use crate::acme;
use crate::metrics::{Label, Poll};
use crate::spec::ConfigHash;
use serde::{Deserialize, Serialize};

/// What the agent remembers across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentState {
    pub applied_hash: Option<ConfigHash>,
    /// When the agent saw `applied_hash` go live (RFC 3339).
    pub applied_at: Option<String>,
    pub epoch: Option<u32>,
    /// The last spec refused, by the hash of its body, so that it is reported once.
    pub rejected: Option<ConfigHash>,
    /// The last config that could not be handed over or stored (a full disk...), so that the
    /// failure is reported once while every poll tries again.
    #[serde(default)]
    pub failed: Option<ConfigHash>,
    /// The last config that left the supervisor critical, likewise reported once. Kept apart
    /// from `failed`: a config that failed to store first and then left Envoy down must still
    /// report the critical failure.
    #[serde(default)]
    pub critical: Option<ConfigHash>,
    pub last_poll: Option<String>,
    /// How the last poll ended. Unreadable text (a file from a future version) reads as none.
    #[serde(default, deserialize_with = "lenient_poll")]
    pub last_poll_result: Option<PollRecord>,
    pub last_event_sent: Option<String>,
    /// Managed certificates the spec needs: expiry, next renewal, failures.
    #[serde(default)]
    pub certificates: Vec<acme::CertStatus>,
}

/// How a poll ended: its result (the label of `polls_total`) and, where there is more to say,
/// a line (the error, the config applied). Kept in the state file as `result` or
/// `result: detail`, which is also how `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct PollRecord {
    pub result: Poll,
    pub detail: Option<String>,
}

impl PollRecord {
    pub fn new(result: Poll, detail: Option<String>) -> PollRecord {
        PollRecord { result, detail }
    }

    /// Reads the kept form, and the forms earlier versions kept (`not modified`, `error: ...`,
    /// and an outcome's debug text such as `Applied { hash: ".." }`).
    pub fn parse(text: &str) -> Option<PollRecord> {
        let (result, rest) = if let Some(rest) = text.strip_prefix("not modified") {
            (Poll::NotModified, rest)
        } else if let Some(rest) = text.strip_prefix("error") {
            (Poll::Unreachable, rest)
        } else {
            let end = text
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(text.len());
            let word = text[..end].replace('_', "").to_ascii_lowercase();
            let result = Poll::ALL
                .iter()
                .copied()
                .find(|p| p.as_label().replace('_', "") == word)?;
            (result, &text[end..])
        };
        let rest = rest.trim_start_matches(':').trim();
        Some(PollRecord {
            result,
            detail: (!rest.is_empty()).then(|| rest.to_owned()),
        })
    }
}

impl From<PollRecord> for String {
    fn from(r: PollRecord) -> String {
        match r.detail {
            Some(d) => format!("{}: {d}", r.result.as_label()),
            None => r.result.as_label().to_owned(),
        }
    }
}

fn lenient_poll<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PollRecord>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    Ok(text.as_deref().and_then(PollRecord::parse))
}

/// Fields the contract calls informational: they change without the load balancer changing.
const INFORMATIONAL: &[&str] = &[
    "created_on",
    "updated_on",
    "traffic",
    "dc_name",
    "dcId",
    "boxsize_id",
    "user_id",
    "created_by",
    "default_ip",
    "vmIdentifier",
    "status",
    "type",
    "proxy_mode",
];

/// Identifies a refused spec so that it is reported once: SHA-256 of its JSON without the
/// informational fields, keys sorted. (A hash of the raw body would change with every
/// `traffic` update and report the same mistake at every poll.)
pub fn rejected_hash(body: &[u8]) -> ConfigHash {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !INFORMATIONAL.contains(&k.as_str()));
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            strip(&mut v);
            // serde_json's map is ordered by key, so this serialisation is canonical.
            ConfigHash::of_bytes(v.to_string().as_bytes())
        }
        Err(_) => ConfigHash::of_bytes(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_spec_keeps_its_identity_when_only_informational_fields_change() {
        let a = br#"{"error":false,"data":{"identifier":"x","traffic":1,"updated_on":"a","rules":[{"ruleId":"r","backends":[{"identifier":"b","status":"up"}]}]}}"#;
        let b = br#"{"data":{"rules":[{"backends":[{"status":"down","identifier":"b"}],"ruleId":"r"}],"updated_on":"b","identifier":"x","traffic":99},"error":false}"#;
        let c = br#"{"error":false,"data":{"identifier":"y","traffic":1,"rules":[]}}"#;
        assert_eq!(rejected_hash(a), rejected_hash(b));
        assert_ne!(rejected_hash(a), rejected_hash(c));
        assert_eq!(
            rejected_hash(b"not json"),
            ConfigHash::of_bytes(b"not json")
        );
    }

    #[test]
    fn a_poll_record_reads_back_and_so_do_the_forms_of_earlier_versions() {
        for r in [
            PollRecord::new(Poll::NotModified, None),
            PollRecord::new(Poll::Unreachable, Some("connection refused: x".into())),
            PollRecord::new(Poll::RolledBack, Some("config 0123abcd".into())),
        ] {
            let kept = String::from(r.clone());
            assert_eq!(PollRecord::parse(&kept), Some(r));
        }
        let old = |text: &str| PollRecord::parse(text).map(|r| r.result);
        assert_eq!(old("not modified"), Some(Poll::NotModified));
        assert_eq!(old("error: timed out"), Some(Poll::Unreachable));
        assert_eq!(old("Unchanged"), Some(Poll::Unchanged));
        assert_eq!(old("RolledBack { hash: \"ab\" }"), Some(Poll::RolledBack));
        assert_eq!(old("Unreachable(\"x\")"), Some(Poll::Unreachable));
        assert_eq!(old("dancing"), None);
        let state: AgentState =
            serde_json::from_str(r#"{"last_poll_result":"Dancing {}","applied_hash":null}"#)
                .unwrap();
        assert_eq!(
            state.last_poll_result, None,
            "unreadable text reads as none"
        );
        let state: AgentState =
            serde_json::from_str(r#"{"last_poll_result":"error: refused"}"#).unwrap();
        assert_eq!(
            serde_json::to_value(&state).unwrap()["last_poll_result"],
            "unreachable: refused"
        );
    }
}
