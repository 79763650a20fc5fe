//! What every level of the spec can set for a pool (LB-wide, rule, domain), and the pool made
//! from it.

use super::{
    get, ident_ok, ramps, Map, PoolFields, Value, Walker, ALGORITHMS, BACKEND_SCHEMES,
    DEFAULT_COOKIE_NAME, MIN_CHECK_INTERVAL_MS, MIN_FAST_INTERVAL_MS,
};
use crate::spec::error::shown;
use crate::spec::model::*;
use crate::spec::path::Path;

impl Walker<'_> {
    pub(super) fn pool_fields(&mut self, obj: &Map<'_>, p: &Path, with_ports: bool) -> PoolFields {
        let health_path = self.health_path(obj, p);
        let cookie_name = self.string(obj, p, "cookieName").and_then(|s| {
            if ident_ok(s, 64) {
                Some(s.to_owned())
            } else {
                self.f.error(
                    p.field("cookieName"),
                    format!("must match ^[A-Za-z0-9_-]{{1,64}}$, got {}", shown(s)),
                );
                None
            }
        });
        PoolFields {
            back_port: if with_ports {
                self.port(obj, p, "backPort")
            } else {
                None
            },
            backend_scheme: if with_ports {
                self.choice(obj, p, "backendScheme", BACKEND_SCHEMES)
            } else {
                None
            },
            algorithm: self.choice(obj, p, "algorithm", ALGORITHMS),
            health_path,
            check_interval: self.interval(obj, p, "checkInterval", MIN_CHECK_INTERVAL_MS),
            fast_interval: self.interval(obj, p, "fastInterval", MIN_FAST_INTERVAL_MS),
            rise: self.threshold(obj, p, "rise"),
            fall: self.threshold(obj, p, "fall"),
            cookie_check: self.flag(obj, p, "cookieCheck"),
            cookie_name,
            redirect: self.flag(obj, p, "redirectHTTP"),
            statuses: self.statuses(obj, p),
            outlier: self.outlier(obj, p),
            slow_start: self.slow_start(obj, p),
        }
    }

    /// `slowStart`: seconds 0-600. Envoy ramps a host up only under round robin and least
    /// connections; set beside another algorithm on the same level, it is said to be ignored.
    pub(super) fn slow_start(&mut self, obj: &Map<'_>, p: &Path) -> Option<u32> {
        let s = self.u32_in(obj, p, "slowStart", 0, 600)?;
        let algorithm = ALGORITHMS
            .iter()
            .find(|(n, _)| get(obj, "algorithm").and_then(Value::as_str) == Some(*n))
            .map(|(_, a)| *a);
        if s > 0 && algorithm.is_some_and(|a| !ramps(a)) {
            self.f.warning(
                p.field("slowStart"),
                "is ignored: slow start applies to the roundrobin and leastconn algorithms only",
            );
        }
        Some(s)
    }

    pub(super) fn pool(
        &mut self,
        fields: &PoolFields,
        scheme: Scheme,
        backends: Vec<Backend>,
    ) -> Pool {
        let interval_ms = fields.check_interval.unwrap_or(5000);
        Pool {
            back_port: fields.back_port.unwrap_or(0),
            backend_scheme: fields.backend_scheme.unwrap_or(BackendScheme::Http),
            algorithm: fields.algorithm.unwrap_or(Algorithm::Roundrobin),
            health: Health {
                http_path: fields.health_path.clone().flatten(),
                interval_ms,
                fast_interval_ms: fields.fast_interval.unwrap_or((interval_ms / 2).max(50)),
                rise: fields.rise.unwrap_or(2),
                fall: fields.fall.unwrap_or(3),
                statuses: fields.statuses.clone().unwrap_or_else(|| vec![(200, 399)]),
            },
            outlier: fields.outlier.flatten(),
            // Only these two ramp a new host up; another algorithm ignores the window.
            slow_start_s: match fields.algorithm.unwrap_or(Algorithm::Roundrobin) {
                a if ramps(a) => fields.slow_start.unwrap_or(0),
                _ => 0,
            },
            sticky_cookie: (scheme.is_http() && fields.cookie_check == Some(true)).then(|| {
                fields
                    .cookie_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned())
            }),
            backends,
        }
    }
}
