//! Prometheus metrics of the agent and of the supervisor: their names, their labels and the text
//! exposition. Owns no HTTP; the agent serves it, and Envoy's metrics listener routes to it.
//!
//! Label values come only from closed sets (results, kinds, ops) or from ids the spec bounds
//! (certificate ids, one config hash at a time), never from free text of the API, so the number of
//! series stays bounded. Every labelled series of a closed set exists from the start (at 0), so
//! dashboards and alerts never see a missing series.

use crate::spec::ConfigHash;
mod labels;

pub use labels::{
    Acme, ApiOp, Apply, BackendProblem, Counters, Gauges, Histograms, Label, LiveApply, Poll,
    Render, Restart, Rotation, Transition, TransitionEnd, Vrrp,
};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const DURATION_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Builds a metric and registers it; names and help are constants, so this cannot fail except by
/// a duplicate name, which the tests below would catch.
fn reg<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<M>,
) -> M {
    let m = m.unwrap_or_else(|e| panic!("metric definition: {e}"));
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric registration: {e}"));
    m
}

pub struct AgentMetrics {
    pub registry: Registry,
    pub polls: Counters<Poll>,
    pub api_request_duration: Histograms<ApiOp>,
    pub applies: Counters<Apply>,
    pub apply_duration: Histogram,
    /// Configs rendered, by how: from the templates, or the last config with only its endpoint
    /// lists rewritten.
    pub renders: Counters<Render>,
    pub envoy_epoch: IntGauge,
    pub config_info: IntGaugeVec,
    pub last_apply: Gauge,
    pub spec_rejections: IntCounter,
    /// Backend host names reported for an answer that could not be used as it came.
    pub backend_problems: Counters<BackendProblem>,
    pub events_queued: IntGauge,
    pub events_sent: IntCounter,
    pub events_dropped: IntCounter,
    /// 1 while the event queue's file is behind the queue in memory (the disk refuses writes).
    pub events_unsaved: IntGauge,
    pub envoy_up: IntGauge,
    pub certificate_expiry: GaugeVec,
    /// Attempts to obtain or renew a managed certificate, by result.
    pub acme_attempts: Counters<Acme>,
    /// High availability: 1 for each virtual IP's current VRRP state, as keepalived reported it.
    pub vrrp_state: IntGaugeVec,
    /// VRRP state changes of each virtual IP on this node.
    pub vrrp_transitions: IntCounterVec,
    /// The transitions already counted per virtual IP (the notify script keeps a running total).
    vrrp_seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    pub build_info: IntGaugeVec,
}

/// One virtual IP's VRRP state for [`AgentMetrics::set_vrrp`]: the address, `master`,
/// `backup`, `fault`, `stop` or `unknown`, and the running count of changes.
pub struct VrrpReading<'a> {
    pub vip: &'a str,
    pub state: Vrrp,
    pub transitions: u64,
}

impl AgentMetrics {
    #[allow(clippy::new_without_default)]
    pub fn new() -> AgentMetrics {
        let r = Registry::new();
        let p = "vpsie_lb_agent_";
        let hist = |name: &str, help: &str| {
            HistogramOpts::new(format!("{p}{name}"), help).buckets(DURATION_BUCKETS.to_vec())
        };
        let m = AgentMetrics {
            polls: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}polls_total"),
                        "Polls of the VPSie API, by result",
                    ),
                    &["result"],
                ),
            )),
            api_request_duration: Histograms::new(reg(
                &r,
                HistogramVec::new(
                    hist(
                        "api_request_duration_seconds",
                        "Duration of VPSie API requests, retries included",
                    ),
                    &["op"],
                ),
            )),
            applies: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}applies_total"),
                        "Configs handed to the supervisor, by result",
                    ),
                    &["result"],
                ),
            )),
            apply_duration: reg(
                &r,
                Histogram::with_opts(hist(
                    "apply_duration_seconds",
                    "From render to the new epoch LIVE",
                )),
            ),
            renders: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}renders_total"),
                        "Configs rendered, by how: full (the templates) or spliced (an endpoint-only change: the last config with the changed endpoint lists rewritten)",
                    ),
                    &["how"],
                ),
            )),
            envoy_epoch: reg(
                &r,
                IntGauge::new(
                    format!("{p}envoy_epoch"),
                    "Hot-restart epoch of the live Envoy",
                ),
            ),
            config_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{p}config_info"),
                        "The applied config hash (value 1)",
                    ),
                    &["config_hash"],
                ),
            ),
            last_apply: reg(
                &r,
                Gauge::new(
                    format!("{p}last_apply_timestamp_seconds"),
                    "Unix time of the last successful apply",
                ),
            ),
            spec_rejections: reg(
                &r,
                IntCounter::new(
                    format!("{p}spec_rejections_total"),
                    "Specs refused by validation or by Envoy",
                ),
            ),
            backend_problems: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}backend_host_problems_total"),
                        "Backend host names whose answer held refused addresses (refused) or that did not resolve (unresolved); reported once per distinct answer",
                    ),
                    &["kind"],
                ),
            )),
            events_queued: reg(
                &r,
                IntGauge::new(format!("{p}events_queued"), "Events waiting for the API"),
            ),
            events_sent: reg(
                &r,
                IntCounter::new(format!("{p}events_sent_total"), "Events the API accepted"),
            ),
            events_dropped: reg(
                &r,
                IntCounter::new(
                    format!("{p}events_dropped_total"),
                    "Events dropped because the queue was full",
                ),
            ),
            events_unsaved: reg(
                &r,
                IntGauge::new(
                    format!("{p}events_unsaved"),
                    "1 while the event queue cannot be written to disk (the events are kept in memory and sent)",
                ),
            ),
            envoy_up: reg(
                &r,
                IntGauge::new(
                    format!("{p}envoy_up"),
                    "1 when the supervisor reports Envoy LIVE",
                ),
            ),
            certificate_expiry: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        format!("{p}certificate_expiry_timestamp_seconds"),
                        "notAfter of each certificate in the applied spec",
                    ),
                    &["certificate_id"],
                ),
            ),
            acme_attempts: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}acme_attempts_total"),
                        "Attempts to obtain (issued) or renew (renewed) a managed certificate, and those that failed",
                    ),
                    &["result"],
                ),
            )),
            vrrp_state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{p}vrrp_state"),
                        "1 for each virtual IP's VRRP state on this node (master, backup, fault, stop, unknown: not reported yet)",
                    ),
                    &["vip", "state"],
                ),
            ),
            vrrp_transitions: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}vrrp_transitions_total"),
                        "VRRP state changes of each virtual IP on this node",
                    ),
                    &["vip"],
                ),
            ),
            vrrp_seen: Default::default(),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{p}build_info"),
                        "Agent and Envoy versions (value 1)",
                    ),
                    &["version", "envoy_version"],
                ),
            ),
            registry: r,
        };
        m
    }

    /// Marks `hash` as the applied config (one series at a time).
    pub fn set_config(&self, hash: &ConfigHash, epoch: u32) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash.as_str()]).set(1);
        self.envoy_epoch.set(epoch.into());
    }

    /// Certificate expiry of the applied spec: the old ids go, so the series stay bounded.
    /// The expiry of every certificate `spec` serves (managed ones filled in).
    pub fn set_certificates(&self, spec: &crate::spec::Spec) {
        self.certificate_expiry.reset();
        for t in spec.certificates() {
            self.certificate_expiry
                .with_label_values(&[&t.id])
                .set(t.not_after as f64);
        }
    }

    /// This node's virtual IPs as keepalived last reported them.
    pub fn set_vrrp(&self, readings: &[VrrpReading]) {
        self.vrrp_state.reset();
        let Ok(mut seen) = self.vrrp_seen.lock() else {
            return;
        };
        for r in readings {
            for s in Vrrp::ALL {
                self.vrrp_state
                    .with_label_values(&[r.vip, s.as_label()])
                    .set(i64::from(*s == r.state));
            }
            let before = seen.insert(r.vip.to_owned(), r.transitions);
            // A smaller total: the record started again (a reboot); count from there.
            let new = match before {
                Some(b) if r.transitions >= b => r.transitions - b,
                _ => r.transitions,
            };
            self.vrrp_transitions
                .with_label_values(&[r.vip])
                .inc_by(new);
        }
    }

    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

pub struct SupervisorMetrics {
    pub registry: Registry,
    pub envoy_up: IntGauge,
    pub envoy_epoch: IntGauge,
    pub envoy_restarts: Counters<Restart>,
    pub applies: Counters<Apply>,
    pub apply_duration: Histogram,
    pub live_applies: Counters<LiveApply>,
    pub resources_info: IntGaugeVec,
    pub access_log_bytes: IntGauge,
    pub access_log_files: IntGauge,
    pub access_log_rotations: IntCounter,
    pub access_log_reopen_failures: IntCounter,
    pub access_log_disk_free: IntGauge,
    pub access_log_disk_size: IntGauge,
    pub transitions: Gauges<Transition>,
    pub transitions_ended: Counters<TransitionEnd>,
    pub ticket_rotations: Counters<Rotation>,
}

impl SupervisorMetrics {
    #[allow(clippy::new_without_default)]
    pub fn new() -> SupervisorMetrics {
        let r = Registry::new();
        let p = "vpsie_lb_supervisor_";
        let m = SupervisorMetrics {
            envoy_up: reg(
                &r,
                IntGauge::new(format!("{p}envoy_up"), "1 while an Envoy epoch is LIVE"),
            ),
            envoy_epoch: reg(
                &r,
                IntGauge::new(
                    format!("{p}envoy_epoch"),
                    "Hot-restart epoch of the live Envoy",
                ),
            ),
            envoy_restarts: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}envoy_restarts_total"),
                        "Envoy starts, by kind: hot restart or full (crash, rollback, upgrade)",
                    ),
                    &["kind"],
                ),
            )),
            applies: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(format!("{p}applies_total"), "Applies handled, by result"),
                    &["result"],
                ),
            )),
            apply_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        format!("{p}apply_duration_seconds"),
                        "From request to the new epoch LIVE",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                ),
            ),
            live_applies: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}live_applies_total"),
                        "Updates put into the running Envoy without a new epoch, by result (applied; rolled_back: Envoy rejected or did not confirm them)",
                    ),
                    &["result"],
                ),
            )),
            resources_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{p}resources_info"),
                        "The config whose dynamic resources the live Envoy serves (1 for that hash)",
                    ),
                    &["config_hash"],
                ),
            ),
            access_log_bytes: reg(
                &r,
                IntGauge::new(
                    format!("{p}access_log_bytes"),
                    "Size of the access log files together (the current one and the rotated ones)",
                ),
            ),
            access_log_files: reg(
                &r,
                IntGauge::new(
                    format!("{p}access_log_files"),
                    "Access log files on disk, the current one included",
                ),
            ),
            access_log_rotations: reg(
                &r,
                IntCounter::new(
                    format!("{p}access_log_rotations_total"),
                    "Access log rotations (the file renamed, Envoy asked to reopen)",
                ),
            ),
            access_log_reopen_failures: reg(
                &r,
                IntCounter::new(
                    format!("{p}access_log_reopen_failures_total"),
                    "Requests to Envoy to reopen its log files that failed (retried at the next check)",
                ),
            ),
            access_log_disk_free: reg(
                &r,
                IntGauge::new(
                    format!("{p}access_log_disk_free_bytes"),
                    "Bytes available to unprivileged users on the access log's file system",
                ),
            ),
            access_log_disk_size: reg(
                &r,
                IntGauge::new(
                    format!("{p}access_log_disk_size_bytes"),
                    "Size of the access log's file system",
                ),
            ),
            transitions: Gauges::new(reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{p}pool_transitions"),
                        "Pools moving to new hosts, by state (checking: new hosts not all passed yet; stuck: not finished within confirm_timeout_s, old hosts still serve)",
                    ),
                    &["state"],
                ),
            )),
            transitions_ended: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}pool_transitions_total"),
                        "Pool transitions ended, by how (finished; superseded by a later change; dropped by a new Envoy epoch)",
                    ),
                    &["result"],
                ),
            )),
            ticket_rotations: Counters::new(reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        format!("{p}session_ticket_rotations_total"),
                        "Session-ticket key rotations, by result (failed: Envoy did not confirm the new keys; the last ones stay in force)",
                    ),
                    &["result"],
                ),
            )),
            registry: r,
        };
        m
    }

    pub fn render(&self) -> String {
        encode(&self.registry)
    }

    /// The config the live resources come from: one series at a time.
    pub fn set_resources(&self, hash: &ConfigHash) {
        self.resources_info.reset();
        self.resources_info
            .with_label_values(&[hash.as_str()])
            .set(1);
    }
}

fn encode(r: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&r.gather(), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_of_a_closed_set_exists_from_the_start() {
        let a = AgentMetrics::new().render();
        for r in Poll::ALL.iter().map(|p| p.as_label()) {
            assert!(
                a.contains(&format!("vpsie_lb_agent_polls_total{{result=\"{r}\"}} 0")),
                "{r}"
            );
        }
        assert!(a.contains("vpsie_lb_agent_api_request_duration_seconds_bucket{op=\"fetch\""));
        let s = SupervisorMetrics::new().render();
        assert!(s.contains("vpsie_lb_supervisor_envoy_restarts_total{kind=\"hot\"} 0"));
    }

    #[test]
    fn one_config_hash_at_a_time() {
        let m = AgentMetrics::new();
        let (a, b): (ConfigHash, ConfigHash) = (
            "a".repeat(64).parse().unwrap(),
            "b".repeat(64).parse().unwrap(),
        );
        m.set_config(&a, 1);
        m.set_config(&b, 2);
        let t = m.render();
        assert!(t.contains(&format!(
            "vpsie_lb_agent_config_info{{config_hash=\"{b}\"}} 1"
        )));
        assert!(!t.contains(a.as_str()));
        assert!(t.contains("vpsie_lb_agent_envoy_epoch 2"));
    }
}
