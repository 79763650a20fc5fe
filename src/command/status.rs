//! `status`: the supervisor's view and the agent's, as a summary for people or as JSON.

use crate::settings::Settings;
use crate::supervisor::client::status;
use crate::supervisor::protocol::Status;

/// What `status` prints: the supervisor's view and the agent's.
#[derive(Debug, serde::Serialize)]
pub struct FullStatus {
    pub supervisor: Option<Status>,
    pub supervisor_error: Option<String>,
    pub agent: crate::agent::AgentState,
    pub queued_events: usize,
    pub dropped_events: u64,
    /// With high availability: each virtual IP's VRRP state on this node.
    #[serde(default)]
    pub vrrp: Vec<VipReport>,
    /// Where listeners bind (`envoy.listen_addresses`, as this host resolves the default).
    pub listen_addresses: Vec<std::net::IpAddr>,
    /// The default left IPv6 out: this host's kernel has none, and IPv6 clients reach nothing.
    pub ipv6_left_out: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VipReport {
    pub vip: String,
    /// Whether this node owns it (holds it whenever it serves).
    pub owner: bool,
    /// `master`, `backup`, `fault`, `stop`, or `unknown` (keepalived has not reported yet).
    pub state: String,
    pub since: Option<i64>,
    pub transitions: u64,
}

/// `status`: the supervisor's answer (if it answers) plus the agent's state files.
pub async fn full_status(settings: &Settings) -> FullStatus {
    let (supervisor, supervisor_error) = match status(settings).await {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let agent = std::fs::read(settings.agent_state_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (queued_events, dropped_events) =
        crate::events::EventQueue::open(&settings.event_queue_path(), crate::agent::QUEUE_CAPACITY)
            .map(|q| (q.len(), q.dropped()))
            .unwrap_or((0, 0));
    let vrrp = settings
        .ha
        .as_ref()
        .map(|ha| {
            crate::ha::states(ha)
                .into_iter()
                .map(|(i, rec)| VipReport {
                    vip: i.vip,
                    owner: i.owner,
                    state: rec.as_ref().map_or("unknown".into(), |r| r.state.clone()),
                    since: rec.as_ref().map(|r| r.since),
                    transitions: rec.map_or(0, |r| r.transitions),
                })
                .collect()
        })
        .unwrap_or_default();
    FullStatus {
        supervisor,
        supervisor_error,
        agent,
        queued_events,
        dropped_events,
        vrrp,
        listen_addresses: settings.envoy.listen_addresses(),
        ipv6_left_out: settings.envoy.ipv6_left_out(),
    }
}

/// `status` for people: a few lines that say whether traffic is served, by what, and whether
/// anything needs attention. `--json` prints the whole [`FullStatus`] instead.
pub fn status_summary(s: &FullStatus) -> String {
    let mut out = Vec::new();
    match (&s.supervisor, &s.supervisor_error) {
        (Some(sup), _) => supervisor_lines(sup, &s.agent, &mut out),
        (None, e) => out.push(format!(
            "Supervisor  UNREACHABLE: {}",
            line(e.as_deref().unwrap_or("no answer"))
        )),
    }
    let a = &s.agent;
    out.push(match (&a.last_poll, &a.last_poll_result) {
        (Some(at), Some(r)) => format!("Last poll   {at}: {}", line(&String::from(r.clone()))),
        (Some(at), None) => format!("Last poll   {at}"),
        _ => "Last poll   never (is `vpsie-lb-agent run` running?)".to_owned(),
    });
    out.extend(a.certificates.iter().map(certificate_line));
    out.extend(s.vrrp.iter().map(vip_line));
    out.push(listen_line(&s.listen_addresses, s.ipv6_left_out));
    let mut events = format!("Events      {} queued", s.queued_events);
    if s.dropped_events > 0 {
        events.push_str(&format!(", {} DROPPED (queue was full)", s.dropped_events));
    }
    if let Some(at) = &a.last_event_sent {
        events.push_str(&format!(", last sent {at}"));
    }
    out.push(events);
    out.push(String::new());
    out.join("\n")
}

/// Where listeners bind; a default that left IPv6 out says so, since IPv6 clients then reach
/// nothing.
fn listen_line(addrs: &[std::net::IpAddr], ipv6_left_out: bool) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut l = format!("Listening   on {}", list.join(", "));
    if ipv6_left_out {
        l.push_str(" (IPv4 only: this kernel has no IPv6, so IPv6 clients reach nothing)");
    }
    l
}

/// One line, whatever a message holds (errors can quote Envoy or the API): control characters
/// blanked, cut at 200 characters.
fn line(t: &str) -> String {
    let mut l: String = t
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if t.chars().count() > 200 {
        l.push('…');
    }
    l
}

use crate::events::rfc3339_unix as at;

/// What the supervisor says: Envoy, the config, the live resources, moving pools, the last
/// apply, anything critical.
fn supervisor_lines(sup: &Status, agent: &crate::agent::AgentState, out: &mut Vec<String>) {
    let mut envoy = format!("Envoy       {}", sup.envoy_state);
    if let Some(e) = sup.epoch {
        envoy.push_str(&format!(", epoch {e}"));
    }
    if let Some(pid) = sup.envoy_pid {
        envoy.push_str(&format!(", pid {pid}"));
    }
    out.push(envoy);
    let mut config = match &sup.hash {
        Some(h) => format!("Config      {}", h.short()),
        None => "Config      none applied yet".to_owned(),
    };
    if sup.hash.is_some() && sup.hash == agent.applied_hash {
        if let Some(at) = &agent.applied_at {
            config.push_str(&format!(", applied {at}"));
        }
    }
    config.push_str(&format!(" ({} known-good kept)", sup.good.len()));
    out.push(config);
    if let Some(r) = &sup.resources {
        out.push(format!(
            "Resources   listeners {}, clusters {}, {} live applies into this epoch",
            r.lds_version, r.cds_version, r.live_applies
        ));
    }
    for t in &sup.transitions {
        let mut text = format!(
            "Moving      pool {}: {} new hosts, {} hosts not healthy, {} old kept, {:.1} s",
            t.pool,
            t.new_hosts,
            t.unhealthy,
            t.old_hosts,
            t.age_ms as f64 / 1000.0
        );
        if let Some(hosts) = &t.stuck {
            text.push_str(&format!("; STUCK: not passed: {}", line(&hosts.join(", "))));
        }
        out.push(text);
    }
    if let Some(last) = &sup.last_apply {
        let result = serde_json::to_value(last.result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let how = last
            .method
            .map(|m| format!(" {}", m.as_str().replace('_', " ")))
            .unwrap_or_default();
        let mut text = format!(
            "Last apply  {result}{how} {} in {} ms",
            last.hash.short(),
            last.apply_ms
        );
        if let Some(e) = &last.error {
            text.push_str(&format!(": {}", line(e)));
        }
        out.push(text);
    }
    if let Some(c) = &sup.critical {
        out.push(format!("CRITICAL    {}", line(c)));
    }
}

fn certificate_line(c: &crate::acme::CertStatus) -> String {
    let mut text = match c.not_after {
        Some(t) => format!("Certificate {} (managed) valid until {}", c.name, at(t)),
        None => format!("Certificate {} (managed) NOT YET OBTAINED", c.name),
    };
    if let Some(n) = c.next_renewal {
        let what = if c.failures > 0 {
            "next attempt"
        } else {
            "renews"
        };
        text.push_str(&format!(", {what} {}", at(n)));
    }
    if let Some(e) = &c.last_error {
        text.push_str(&format!("; {} failed: {}", c.failures, line(e)));
    }
    text
}

fn vip_line(v: &VipReport) -> String {
    let mut text = format!(
        "Virtual IP  {} {}{}",
        v.vip,
        v.state.to_uppercase(),
        if v.owner { " (owner)" } else { "" }
    );
    if let Some(t) = v.since {
        text.push_str(&format!(" since {}, {} changes", at(t), v.transitions));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::protocol::{ApplyOutcome, ApplyResult, Status};

    fn full(supervisor: Option<Status>) -> FullStatus {
        FullStatus {
            supervisor_error: supervisor
                .is_none()
                .then(|| "cannot reach the supervisor at /run/x.sock".to_owned()),
            supervisor,
            agent: crate::agent::AgentState::default(),
            queued_events: 3,
            dropped_events: 2,
            vrrp: vec![VipReport {
                vip: "198.18.0.100/24".into(),
                owner: true,
                state: "fault".into(),
                since: Some(0),
                transitions: 4,
            }],
            listen_addresses: vec!["0.0.0.0".parse().unwrap()],
            ipv6_left_out: true,
        }
    }

    #[test]
    fn the_summary_says_what_needs_attention() {
        let s = status_summary(&full(None));
        assert!(
            s.contains(
                "Virtual IP  198.18.0.100/24 FAULT (owner) since 1970-01-01T00:00:00Z, 4 changes"
            ),
            "{s}"
        );
        assert!(
            s.contains("Supervisor  UNREACHABLE: cannot reach the supervisor"),
            "{s}"
        );
        assert!(s.contains("Last poll   never"), "{s}");
        assert!(s.contains("3 queued, 2 DROPPED"), "{s}");
        assert!(
            s.contains("Listening   on 0.0.0.0 (IPv4 only: this kernel has no IPv6"),
            "{s}"
        );
        let both = listen_line(&["0.0.0.0".parse().unwrap(), "::".parse().unwrap()], false);
        assert_eq!(both, "Listening   on 0.0.0.0, ::");

        let hash: crate::spec::ConfigHash = "a".repeat(64).parse().unwrap();
        let mut f = full(Some(Status {
            epoch: Some(4),
            hash: Some(hash.clone()),
            envoy_state: crate::envoy::admin::EnvoyState::Live,
            envoy_pid: Some(42),
            good: vec![hash.clone(), "b".repeat(64).parse().unwrap()],
            critical: Some("envoy exited\nagain".into()),
            resources: Some(crate::supervisor::protocol::ResourcesStatus {
                hash: hash.clone(),
                lds_version: "1a2b".into(),
                cds_version: "3c4d".into(),
                live_applies: 9,
            }),
            last_apply: Some(ApplyOutcome {
                result: ApplyResult::RolledBack,
                method: None,
                hash: "c".repeat(64).parse().unwrap(),
                previous_hash: None,
                epoch: Some(4),
                apply_ms: 17,
                error: Some("port 80 is held".into()),
                restore_error: None,
                envoy_log: vec![],
                envoy_us: None,
                apply_id: None,
            }),
            ..Status::default()
        }));
        f.agent.applied_hash = Some(hash);
        f.agent.applied_at = Some("2026-11-30T10:00:00Z".into());
        f.agent.last_poll = Some("2026-11-30T10:01:00Z".into());
        f.agent.last_poll_result = Some(crate::agent::PollRecord::new(
            crate::metrics::Poll::Unchanged,
            None,
        ));
        let cert =
            |name: &str, not_after, next, failures, error: Option<&str>| crate::acme::CertStatus {
                name: name.into(),
                certificate_id: crate::spec::managed_id(name),
                not_after,
                next_renewal: next,
                failures,
                last_error: error.map(str::to_owned),
            };
        f.agent.certificates = vec![
            cert(
                "shop.example.com",
                Some(1_800_000_000),
                Some(1_790_000_000),
                0,
                None,
            ),
            cert(
                "api.example.com",
                None,
                Some(1_780_000_000),
                2,
                Some("policy forbids\nit"),
            ),
        ];
        let s = status_summary(&f);
        let want = [
            "Envoy       LIVE, epoch 4, pid 42",
            "Config      aaaaaaaaaaaa, applied 2026-11-30T10:00:00Z (2 known-good kept)",
            "Resources   listeners 1a2b, clusters 3c4d, 9 live applies into this epoch",
            "Last apply  rolled_back cccccccccccc in 17 ms: port 80 is held",
            "CRITICAL    envoy exited again",
            "Last poll   2026-11-30T10:01:00Z: unchanged",
            "Certificate shop.example.com (managed) valid until 2027-01-15T08:00:00Z, renews 2026-09-21T14:13:20Z",
            "Certificate api.example.com (managed) NOT YET OBTAINED, next attempt 2026-05-28T20:26:40Z; 2 failed: policy forbids it",
        ];
        for w in want {
            assert!(s.lines().any(|l| l == w), "missing {w:?} in:\n{s}");
        }
    }
}
