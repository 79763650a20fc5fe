//! A moved pool's new cluster object (`supervisor::transition`): the EDS file of its own
//! generation and how its first checks are spread, written into its CDS entry.

use super::{source, Kind};
use serde_json::Value;
use std::path::Path;

/// The file a pool's cluster reads its endpoints from after its `generation`-th move as a new
/// cluster object that Envoy warms (`supervisor::transition`): a name of its own, so that the
/// object still serving keeps reading the file it was given.
pub fn warm_file_name(name: &str, generation: u64) -> String {
    format!(
        "{}-{}.{generation}.pb",
        Kind::Endpoints.prefix(),
        hex::encode(name.as_bytes())
    )
}

/// A pool's cluster as a moved pool's new object: the EDS file it reads ([`warm_file_name`])
/// and how many hosts it warms with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub file: String,
    pub hosts: usize,
}

/// How long the first checks of a warming object of `hosts` hosts are spread over, at least:
/// 0.05 ms a host (1 s for a pool of 10,000 moved beside its old hosts), so that they come at
/// no more than ~20 a millisecond. Measured: 20,000 first checks within 250 ms (the rendered
/// spread) kept Envoy's main thread busy enough for its admin API to answer in 292 ms at p99;
/// within 1 s, 36 ms. The rendered config keeps its own spread (a pool's cluster must not
/// change with its number of backends: that would be a new object at every change).
fn warm_spread_ms(hosts: usize) -> u64 {
    hosts as u64 / 20
}

/// An Envoy duration as the templates write it (`"1.500s"`), in milliseconds.
fn duration_ms(v: &Value) -> Option<u64> {
    let secs: f64 = v.as_str()?.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as u64)
}

/// Points cluster `c` at `m`'s file and spreads its first checks for `m`'s hosts (never past a
/// check's interval, never less than rendered).
pub(super) fn point(c: &mut Value, m: &Moved, dir: &Path) -> Option<()> {
    let eds = c.get_mut("eds_cluster_config")?.as_object_mut()?;
    eds.insert("eds_config".into(), source(dir, &m.file));
    if let Some(checks) = c.get_mut("health_checks").and_then(Value::as_array_mut) {
        for hc in checks.iter_mut().filter_map(Value::as_object_mut) {
            let rendered = hc.get("initial_jitter").and_then(duration_ms).unwrap_or(0);
            let interval = hc.get("interval").and_then(duration_ms).unwrap_or(u64::MAX);
            let spread = warm_spread_ms(m.hosts).max(rendered).min(interval);
            hc.insert(
                "initial_jitter".into(),
                Value::String(format!("{}.{:03}s", spread / 1000, spread % 1000)),
            );
        }
    }
    Some(())
}
