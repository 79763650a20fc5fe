//! Health checks: intervals, thresholds, the check path, the statuses that count as healthy,
//! outlier detection.

use super::{
    field, get, kind, Map, Value, Walker, MAX_HEALTH_PATH, MAX_STATUS_RANGES, SLOW_THRESHOLD,
};
use crate::spec::error::shown;
use crate::spec::model::*;
use crate::spec::path::Path;

impl Walker<'_> {
    /// An interval in ms, raised to `floor` with a warning when set below it.
    pub(super) fn interval(
        &mut self,
        obj: &Map<'_>,
        p: &Path,
        key: &'static str,
        floor: u32,
    ) -> Option<u32> {
        let n = self.u32_in(obj, p, key, 1, 3_600_000)?;
        if n < floor {
            self.f.warning(
                p.field(key),
                format!("{n} ms is raised to {floor} ms: no backend is checked more often"),
            );
        }
        Some(n.max(floor))
    }

    /// A health-check threshold; unusually large ones are accepted but warned about.
    pub(super) fn threshold(&mut self, obj: &Map<'_>, p: &Path, key: &'static str) -> Option<u32> {
        let n = self.u32_in(obj, p, key, 1, 10_000)?;
        if n > SLOW_THRESHOLD {
            self.f.warning(
                p.field(key),
                format!("{n} checks in a row are needed to change a backend's health state; recovery or removal will be slow"),
            );
        }
        Some(n)
    }

    /// `Some(None)`: an explicit TCP check (`""`, which `get` would call absent);
    /// `Some(Some(path))`: an HTTP check; `None`: not set here (or refused).
    pub(super) fn health_path(&mut self, obj: &Map<'_>, p: &Path) -> Option<Option<String>> {
        if field(obj, "healthCheckPath").and_then(Value::as_str) == Some("") {
            return Some(None);
        }
        let s = self.string(obj, p, "healthCheckPath")?;
        let ok = s.len() <= MAX_HEALTH_PATH
            && s.starts_with('/')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.~%-".contains(&b));
        if ok {
            return Some(Some(s.to_owned()));
        }
        self.f.error(
            p.field("healthCheckPath"),
            format!(
                "must be empty or match ^/[A-Za-z0-9/_.~%-]*$ with at most {MAX_HEALTH_PATH} characters, got {}",
                shown(s)
            ),
        );
        None
    }

    /// `healthCheckStatuses`: `"200"`, `"200-399"` (numbers accepted too), each within 100-599.
    pub(super) fn statuses(&mut self, obj: &Map<'_>, p: &Path) -> Option<Vec<(u16, u16)>> {
        let list = self.array(obj, p, "healthCheckStatuses")?;
        let sp = p.field("healthCheckStatuses");
        if list.is_empty() {
            self.f.error(
                sp,
                "must hold at least one status or range (or be left out for 200-399)",
            );
            return None;
        }
        if list.len() > MAX_STATUS_RANGES {
            self.f.error(
                sp,
                format!("holds {} entries; at most {MAX_STATUS_RANGES}", list.len()),
            );
            return None;
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let text = match item {
                Value::Str(s) => s.trim().to_owned(),
                Value::Number(n) => n.to_string(),
                other => {
                    self.f.error(
                        sp.index(i),
                        format!(
                            "must be a status like \"200\" or a range like \"200-399\", got {}",
                            kind(other)
                        ),
                    );
                    continue;
                }
            };
            let code = |t: &str| {
                t.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
            };
            let range = match text.split_once('-') {
                Some((a, b)) => code(a).zip(code(b)).filter(|(a, b)| a <= b),
                None => code(&text).map(|c| (c, c)),
            };
            match range {
                Some(r) => out.push(r),
                None => self.f.error(
                    sp.index(i),
                    format!("must be a status 100-599 like \"200\" or a range like \"200-399\" (low to high), got {}", shown(&text)),
                ),
            }
        }
        (out.len() == list.len()).then_some(out)
    }

    /// `outlierDetection`: `{consecutive5xx, ejectionTime}`; `null` or absent: off.
    pub(super) fn outlier(&mut self, obj: &Map<'_>, p: &Path) -> Option<Option<Outlier>> {
        let v = get(obj, "outlierDetection")?;
        let op = p.field("outlierDetection");
        let o = self.object(v, &op)?;
        for k in o.keys() {
            if !["consecutive5xx", "ejectionTime"].contains(&k) {
                self.f.error(
                    op,
                    format!(
                        "holds an unknown field {}; its fields are consecutive5xx and ejectionTime",
                        shown(k)
                    ),
                );
            }
        }
        let consecutive = self.u32_in(o, &op, "consecutive5xx", 1, 100);
        if get(o, "consecutive5xx").is_none() {
            self.f.error(
                op.field("consecutive5xx"),
                "is required: how many 5xx answers or connect failures in a row eject a backend (1-100)",
            );
        }
        let ejection = self.u32_in(o, &op, "ejectionTime", 1, 3600).unwrap_or(30);
        Some(consecutive.map(|c| Outlier {
            consecutive_5xx: c,
            ejection_time_s: ejection,
        }))
    }
}
