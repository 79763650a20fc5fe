//! Endpoint lists as values: what a `ClusterLoadAssignment` holds, how two differ, and the
//! union a pool that moves is written as (the supervisor's transitions).

use serde_json::{json, Value};

/// One cluster's endpoint list (its `ClusterLoadAssignment`) as the JSON text Envoy is given.
/// The supervisor holds every live list: as text, 1,000 endpoints take a tenth of the memory
/// of the parsed form, and only a pool that moves needs the structure (parsed then, that pool
/// alone). Equal lists are equal texts: serde_json writes a value's keys sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointList(String);

impl EndpointList {
    pub fn new(la: &Value) -> EndpointList {
        EndpointList(la.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The list as a value. It was written from one, so it parses; `Null` (no endpoints) if
    /// it ever did not.
    pub fn parse(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

/// The endpoints of a `ClusterLoadAssignment` as (address, port, weight).
pub fn endpoint_list(la: &Value) -> Vec<(&str, u32, u32)> {
    la.get("endpoints")
        .and_then(Value::as_array)
        .map(|v| v.as_slice())
        .unwrap_or(&[])
        .iter()
        .flat_map(|l| {
            l.get("lb_endpoints")
                .and_then(Value::as_array)
                .map(|v| v.as_slice())
                .unwrap_or(&[])
        })
        .filter_map(|le| {
            let sa = le.pointer("/endpoint/address/socket_address")?;
            let w = le
                .get("load_balancing_weight")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            Some((
                sa.get("address")?.as_str()?,
                u32::try_from(sa.get("port_value")?.as_u64()?).ok()?,
                u32::try_from(w).ok()?,
            ))
        })
        .collect()
}

/// Whether going from `old` to `new` endpoints gains hosts, and whether it loses any
/// (a host is its address and port; a weight change is neither).
pub fn host_changes(old: &Value, new: &Value) -> (bool, bool) {
    use std::collections::HashSet;
    let hosts = |la| -> HashSet<(&str, u32)> {
        endpoint_list(la).into_iter().map(|e| (e.0, e.1)).collect()
    };
    let (old, new) = (hosts(old), hosts(new));
    (
        new.iter().any(|h| !old.contains(h)),
        old.iter().any(|h| !new.contains(h)),
    )
}

/// `new` with the endpoints of `old` it does not have added, as they were.
pub fn union_endpoints(new: &Value, old: &Value) -> Value {
    let mut out = new.clone();
    let have: std::collections::HashSet<(String, u32)> = endpoint_list(new)
        .into_iter()
        .map(|(a, p, _)| (a.to_owned(), p))
        .collect();
    let extra: Vec<Value> = old
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("lb_endpoints").and_then(Value::as_array))
        .flatten()
        .filter(|le| {
            let sa = le.pointer("/endpoint/address/socket_address");
            let key = sa.and_then(|sa| {
                Some((
                    sa.get("address")?.as_str()?.to_owned(),
                    u32::try_from(sa.get("port_value")?.as_u64()?).ok()?,
                ))
            });
            key.is_some_and(|k| !have.contains(&k))
        })
        .cloned()
        .collect();
    if let Some(Value::Array(localities)) = out.get_mut("endpoints") {
        match localities
            .first_mut()
            .and_then(|l| l.get_mut("lb_endpoints"))
        {
            Some(Value::Array(eps)) => eps.extend(extra),
            _ => localities.push(json!({ "lb_endpoints": extra })),
        }
    }
    out
}
