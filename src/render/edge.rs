//! The edge limits every customer listener gets: the values Envoy's guide "Configuring Envoy as
//! an edge proxy" asks for (and, where a value is a product choice, what HAProxy and nginx do),
//! and the runtime keys the config sets (each listener's share of the connection cap). README
//! "Edge limits" gives each value's reason; `tests/it/edge.rs` proves each by its attack.

use crate::settings::Settings;
use serde::Serialize;

/// The limits every customer listener gets, from Envoy's "Configuring Envoy as an edge proxy"
/// (best practices) and, where a value is a product choice, from what HAProxy and nginx do.
/// docs/mapping.md, "Edge limits" lists them with their reasons.
#[derive(Debug, Serialize)]
pub struct Edge {
    /// Per connection, on listeners and clusters (the guide: 32 KiB; Envoy's default 1 MiB lets
    /// each slow reader pin a megabyte).
    pub buffer_limit_bytes: u32,
    /// The overload manager's heap limit (`envoy.max_heap_mb`, by default from the VM's memory).
    pub max_heap_bytes: u64,
    /// Time a client has to send its request headers (`envoy.request_headers_timeout_s`, 10 s:
    /// HAProxy's recommended `timeout http-request`): a slowloris connection is closed then.
    pub request_headers_timeout: String,
    /// Request headers in all (Envoy's default and about AWS ALB's 64 KB): 431 beyond.
    pub max_request_headers_kb: u32,
    /// Request headers counted (Envoy's default, HAProxy's `tune.http.maxhdr` is 101): 431 beyond.
    pub max_headers_count: u32,
    /// Requests (HTTP/2: streams) one client connection may make before Envoy closes it
    /// gracefully (`envoy.max_requests_per_connection`, 10,000: ten times nginx's
    /// `keepalive_requests`, so that load generators that do not reconnect, h2load, are not
    /// cut short by it; HAProxy has no such limit).
    pub max_requests_per_connection: u32,
    pub h2_max_concurrent_streams: u32,
    pub h2_initial_stream_window: u32,
    pub h2_initial_connection_window: u32,
}

impl Edge {
    pub(super) fn new(settings: &Settings) -> Edge {
        Edge {
            buffer_limit_bytes: 32 * 1024,
            max_heap_bytes: settings.envoy.max_heap_bytes(),
            request_headers_timeout: format!("{}s", settings.envoy.request_headers_timeout_s),
            max_request_headers_kb: 60,
            max_headers_count: 100,
            max_requests_per_connection: settings.envoy.max_requests_per_connection,
            h2_max_concurrent_streams: 100,
            h2_initial_stream_window: 64 * 1024,
            h2_initial_connection_window: 1024 * 1024,
        }
    }
}

/// One Envoy runtime key and its value.
#[derive(Debug, Serialize)]
pub struct RuntimeKey {
    pub key: String,
    pub value: u32,
}

impl RuntimeKey {
    /// A listener's connection limit (`envoy.resource_limits.listener.<name>.connection_limit`).
    pub(super) fn listener_limit(listener: &str, limit: u32) -> RuntimeKey {
        RuntimeKey {
            key: format!("envoy.resource_limits.listener.{listener}.connection_limit"),
            value: limit,
        }
    }

    /// Limits Envoy has only as runtime keys. HTTP/2 rapid reset: Envoy closes a connection
    /// once this many streams ended and half of them were reset within a second of opening
    /// (Envoy's default 500; at 100 a rapid-reset attacker on one core raised a legitimate
    /// client's p99 8.6x instead of 48x, `make bench-attacks`; a browser cancelling half of
    /// 100 streams within a second only opens a new connection).
    pub(super) fn edge() -> Vec<RuntimeKey> {
        vec![RuntimeKey {
            key: "overload.premature_reset_total_stream_count".into(),
            value: PREMATURE_RESETS,
        }]
    }
}

/// See [`RuntimeKey::edge`].
pub const PREMATURE_RESETS: u32 = 100;

/// How many connections each of `n` customer listeners may hold under the load balancer's cap
/// `global`: half the cap is shared, the other half reserved in equal parts, so that one
/// listener under attack can hold at most `global - (n-1) * reserve` and every other listener
/// keeps its `reserve = global / 2n` for its own clients. One listener gets the whole cap.
pub fn listener_limit(global: u32, n: usize) -> u32 {
    let n = n.max(1) as u32;
    let reserve = global / (2 * n);
    global - (n - 1) * reserve
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listener_keeps_a_reserve_that_no_other_can_take() {
        assert_eq!(listener_limit(50_000, 1), 50_000);
        assert_eq!(listener_limit(50_000, 2), 37_500);
        assert_eq!(listener_limit(50_000, 10), 27_500);
        assert_eq!(listener_limit(1, 3), 1);
        for global in [1u32, 7, 100, 50_000, 1_000_000] {
            for n in 1..60usize {
                let limit = listener_limit(global, n);
                let reserve = global / (2 * n as u32);
                // One listener at its limit leaves every other one its reserve, and is never
                // held below half the cap.
                assert!(limit + (n as u32 - 1) * reserve <= global, "{global} {n}");
                assert!(limit >= global / 2, "{global} {n}");
            }
        }
    }
}
