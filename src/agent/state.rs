//! What the agent remembers across restarts, and how a refused spec is known again.

use crate::acme;
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
    pub last_poll_result: Option<String>,
    pub last_event_sent: Option<String>,
    /// Managed certificates the spec needs: expiry, next renewal, failures.
    #[serde(default)]
    pub certificates: Vec<acme::CertStatus>,
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
}
