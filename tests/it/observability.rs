//! The operator's view in `dashboards/`: the Grafana dashboard and the Prometheus alerts name only
//! metrics that real scrapes carry (the agent's, the supervisor's and a real Envoy's), every metric
//! the agent and the supervisor export is on the dashboard, the rules pass promtool and fire on
//! the failures they name, and the dashboard is well-formed Grafana JSON.
//!
//! The PromQL reading here is deliberately small: enough to pull metric names out of the
//! expressions we write, and it refuses a function it does not know rather than guess.

use crate::support::envoy::{free_port, Envoy};
use crate::support::upstream;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use vpsie_lb_agent::metrics::{AgentMetrics, SupervisorMetrics};

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

const DASHBOARD: &str = "dashboards/vpsie-lb.json";
const RULES: &str = "dashboards/alerts.yml";

fn dashboard() -> Value {
    let p = repo_file(DASHBOARD);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

fn rules() -> serde_yaml::Value {
    let p = repo_file(RULES);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{RULES} is not YAML: {e}"))
}

/// Every PromQL expression of the dashboard, with where it is: each `expr` anywhere (panel
/// targets, annotations) and the metric selector of each `label_values(...)` variable query.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let here = m
                    .get("title")
                    .or_else(|| m.get("name"))
                    .and_then(Value::as_str)
                    .map_or(at.to_owned(), |t| format!("{at} / {t}"));
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push((here.clone(), e.clone())),
                        _ => walk(v, &here, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], "panel", &mut out);
    walk(&d["annotations"], "annotation", &mut out);
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or("?");
        let queries = [&var["definition"], &var["query"], &var["query"]["query"]];
        for q in queries.into_iter().filter_map(Value::as_str) {
            out.push((format!("variable {name}"), label_values_selector(q)));
        }
    }
    out
}

/// `label_values(SELECTOR, label)` gives SELECTOR (its last argument is a label, not a metric).
fn label_values_selector(q: &str) -> String {
    match q.trim().strip_prefix("label_values(") {
        Some(rest) => {
            let inner = rest.strip_suffix(')').unwrap_or(rest);
            inner.rsplit_once(',').map_or(inner, |(s, _)| s).to_owned()
        }
        None => q.to_owned(),
    }
}

/// Every alerting or recording rule's expression, by rule name.
fn rule_exprs(r: &serde_yaml::Value) -> Vec<(String, String)> {
    let groups = r["groups"].as_sequence().expect("groups: a list");
    let mut out = Vec::new();
    for g in groups {
        for rule in g["rules"].as_sequence().expect("rules: a list") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("a rule has `alert` or `record`");
            let expr = rule["expr"].as_str().expect("a rule has `expr`");
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

/// PromQL functions and aggregation operators (Prometheus 2.x), and Grafana's `label_values`.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "label_values",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "present_over_time",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stddev_over_time",
    "stdvar",
    "stdvar_over_time",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
    "year",
];
/// Aggregation operators, which may take their grouping before their operand.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other keywords and literals that look like identifiers.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "group_left",
    "group_right",
];

/// The metric names an expression reads: identifiers outside strings, label matchers (`{...}`),
/// ranges (`[...]`), Grafana variables (`$x`) and grouping lists (`by (...)`), that are not
/// functions (an identifier followed by `(`) or keywords. Panics on an unknown function.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let is_start = |ch: char| ch.is_ascii_alphabetic() || ch == '_' || ch == ':';
    let is_part = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    // The index just past the string that opens at `i`.
    let skip_string = |mut i: usize| {
        let quote = c[i];
        i += 1;
        while i < c.len() && c[i] != quote {
            i += if c[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    // The index just past the `close` that matches the `open` at `i`, strings skipped.
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < c.len() {
            match c[i] {
                '"' | '\'' | '`' => {
                    i = skip_string(i);
                    continue;
                }
                ch if ch == open => depth += 1,
                ch if ch == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open}{close} in: {expr}");
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => i = skip_string(i),
            '{' => i = skip_group(i, '{', '}'),
            '[' => i = skip_group(i, '[', ']'),
            '$' => {
                i += 1;
                if c.get(i) == Some(&'{') {
                    i = skip_group(i, '{', '}');
                }
                while i < c.len() && is_part(c[i]) {
                    i += 1;
                }
            }
            ch if ch.is_ascii_digit() || ch == '.' => {
                while i < c.len() && (is_part(c[i]) || c[i] == '.') {
                    i += 1;
                }
            }
            ch if is_start(ch) => {
                let start = i;
                while i < c.len() && is_part(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let mut j = i;
                while j < c.len() && c[j].is_whitespace() {
                    j += 1;
                }
                let call = c.get(j) == Some(&'(');
                // `sum by (le) (...)`: an aggregation whose grouping comes first.
                let grouped_aggregation = AGGREGATIONS.contains(&word.as_str())
                    && ["by", "without"].iter().any(|k| {
                        c[j..].starts_with(&k.chars().collect::<Vec<_>>())
                            && !c.get(j + k.len()).is_some_and(|&ch| is_part(ch))
                    });
                if grouped_aggregation {
                    continue;
                } else if GROUPING.contains(&word.as_str()) {
                    if call {
                        i = skip_group(j, '(', ')');
                    }
                } else if call {
                    assert!(
                        FUNCTIONS.contains(&word.as_str()),
                        "`{word}(` is not a PromQL function this test knows, in: {expr}"
                    );
                } else if !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The metric families of a Prometheus text exposition, with their type (`untyped` for a sample
/// without a `# TYPE` line).
fn families(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.insert(name.to_owned(), kind.to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if !in_scrape(name, &out) {
                out.insert(name.to_owned(), "untyped".to_owned());
            }
        }
    }
    out
}

/// Whether `name` is a series of the scrape: a family, or the `_bucket`, `_sum` or `_count` of a
/// histogram or summary family.
fn in_scrape(name: &str, fams: &BTreeMap<String, String>) -> bool {
    fams.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|base| fams.get(base))
                .is_some_and(|kind| kind == "histogram" || kind == "summary")
        })
}

/// The agent's and the supervisor's scrapes as the agent leaves them after start-up and an apply:
/// versions, the config hash and epoch, and the applied spec's certificates set (those series
/// exist only from then on).
fn own_scrapes() -> (String, String) {
    let agent = AgentMetrics::new();
    agent
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), "1.40.0"])
        .set(1);
    agent.set_config(&"0123abcd".repeat(8).parse().unwrap(), 1);
    agent.set_certificates(&crate::support::load_ok(&crate::support::https_spec()).spec);
    agent.set_vrrp(&[vpsie_lb_agent::metrics::VrrpReading {
        vip: "198.18.0.100",
        state: vpsie_lb_agent::metrics::Vrrp::Master,
        transitions: 2,
    }]);
    (agent.render(), SupervisorMetrics::new().render())
}

/// A real Envoy serving one http rule to a loopback upstream, after a few requests through it.
async fn envoy_scrape() -> String {
    let up = upstream::http("b1", None).await;
    let front = free_port();
    let spec = json!({
        "identifier": "lb-obs", "lbName": "obs",
        "rules": [{
            "ruleId": "r1", "scheme": "http", "frontPort": front, "backPort": 1,
            // A source list, so the refused-connection counter is in the scrape.
            "allowedSources": ["127.0.0.0/8"],
            "backends": [{"identifier": "b1", "ip": "127.0.0.1", "port": up.port()}]
        }]
    });
    let envoy = Envoy::start(&spec).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = client
            .get(format!("http://127.0.0.1:{front}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a request through Envoy");
    }
    let text = envoy.admin_text("/stats/prometheus").await;
    assert!(
        text.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name="),
        "Envoy's scrape has request counters: {text}"
    );
    text
}

/// Metrics the brief of each file promises; a dashboard or rules file without them (or a reader
/// that finds nothing) fails here.
const DASHBOARD_MUST_USE: &[&str] = &[
    "vpsie_lb_agent_applies_total",
    "vpsie_lb_agent_apply_duration_seconds_bucket",
    "vpsie_lb_agent_envoy_epoch",
    "vpsie_lb_agent_config_info",
    "vpsie_lb_agent_polls_total",
    "vpsie_lb_agent_api_request_duration_seconds_bucket",
    "vpsie_lb_agent_events_queued",
    "vpsie_lb_agent_events_sent_total",
    "vpsie_lb_agent_events_dropped_total",
    "vpsie_lb_supervisor_envoy_up",
    "vpsie_lb_supervisor_envoy_restarts_total",
    "envoy_http_downstream_rq_xx",
    "envoy_cluster_upstream_rq_total",
    "envoy_listener_downstream_cx_active",
    "envoy_http_downstream_cx_active",
    "envoy_cluster_membership_healthy",
    "envoy_cluster_membership_total",
    "vpsie_lb_agent_certificate_expiry_timestamp_seconds",
    "envoy_tcp_downstream_cx_no_route",
    "vpsie_lb_agent_vrrp_state",
    "vpsie_lb_agent_vrrp_transitions_total",
    "envoy_filesystem_write_buffered",
    "envoy_filesystem_write_failed",
    "vpsie_lb_supervisor_access_log_bytes",
];
const RULES_MUST_USE: &[&str] = &[
    "vpsie_lb_agent_applies_total",
    "vpsie_lb_agent_polls_total",
    "vpsie_lb_agent_last_apply_timestamp_seconds",
    "vpsie_lb_supervisor_envoy_up",
    "vpsie_lb_agent_envoy_up",
    "envoy_server_live",
    "vpsie_lb_agent_certificate_expiry_timestamp_seconds",
    "vpsie_lb_agent_events_queued",
    "vpsie_lb_agent_events_dropped_total",
    "vpsie_lb_agent_events_unsaved",
    "vpsie_lb_agent_vrrp_state",
    "envoy_filesystem_write_failed",
    "vpsie_lb_supervisor_access_log_disk_free_bytes",
];

fn names_by_use(exprs: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (at, e) in exprs {
        for n in metric_names(e) {
            out.entry(n).or_default().push(at.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_exists() {
    let dash = names_by_use(&dashboard_exprs(&dashboard()));
    let alerts = names_by_use(&rule_exprs(&rules()));
    for (file, used, must) in [
        (DASHBOARD, &dash, DASHBOARD_MUST_USE),
        (RULES, &alerts, RULES_MUST_USE),
    ] {
        let absent: Vec<_> = must.iter().filter(|n| !used.contains_key(**n)).collect();
        assert!(absent.is_empty(), "{file} does not use {absent:?}");
    }

    let (agent, supervisor) = own_scrapes();
    let envoy = envoy_scrape().await;
    let mut fams = families(&agent);
    fams.extend(families(&supervisor));
    fams.extend(families(&envoy));
    // Prometheus itself writes `up` for every target it scrapes; no exporter exposes it.
    fams.insert("up".to_owned(), "gauge".to_owned());

    let mut missing = Vec::new();
    for (file, used) in [(DASHBOARD, &dash), (RULES, &alerts)] {
        for (name, places) in used {
            if !in_scrape(name, &fams) {
                missing.push(format!("{name} (in {file}: {})", places.join("; ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics used but in no real scrape (agent, supervisor, Envoy 1.40):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_agent_and_supervisor_metric_is_on_the_dashboard() {
    let used = names_by_use(&dashboard_exprs(&dashboard()));
    let (agent, supervisor) = own_scrapes();
    let mut fams = families(&agent);
    fams.extend(families(&supervisor));
    assert!(
        fams.len() >= 15,
        "the own scrapes have their families: {fams:?}"
    );
    let absent: Vec<_> = fams
        .iter()
        .filter(|(name, kind)| {
            let forms = if *kind == "histogram" {
                vec![
                    format!("{name}_bucket"),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ]
            } else {
                vec![name.to_string()]
            };
            !forms.iter().any(|f| used.contains_key(f))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        absent.is_empty(),
        "exported by src/metrics.rs but on no panel of {DASHBOARD}: {absent:?}"
    );
}

#[test]
fn the_metric_reader_reads_promql() {
    let got = metric_names(
        r#"histogram_quantile(0.95, sum by (op, le) (rate(a_bucket{instance=~"$instance", x="y{}"}[$__rate_interval])))
           / on (instance) group_left (version) b_info offset 5m
           and ignoring(job) c:recorded - time() < 14 * 86400 or vector(0)
           unless max without (x) (d) > bool 1e3"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b_info", "c:recorded", "d"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
    assert_eq!(
        label_values_selector("label_values(up{job=\"x\"}, instance)"),
        "up{job=\"x\"}"
    );
    let fams = families("# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_sum 0\nh_count 0\nu 1\n");
    assert!(in_scrape("h_bucket", &fams) && in_scrape("h", &fams) && in_scrape("u", &fams));
    assert!(!in_scrape("u_count", &fams) && !in_scrape("v", &fams));
    assert_eq!(fams.len(), 2, "h's samples are h's: {fams:?}");
}

/// promtool, from Debian's `prometheus` package (`make test` installs it).
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is required for this test but is not on PATH: \
         `apt-get install -y --no-install-recommends prometheus` (`make test` does it)"
    );
    Command::new("promtool")
}

fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_rules_file_passes_promtool() {
    let mut cmd = promtool();
    cmd.args(["check", "rules"]).arg(repo_file(RULES));
    let out = run_ok(cmd, &format!("promtool check rules {RULES}"));
    let n = rule_exprs(&rules()).len();
    assert!(
        out.contains(&format!("SUCCESS: {n} rules found")),
        "promtool checked every rule: {out}"
    );
    for g in rules()["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap();
            assert!(r["for"].as_str().is_some(), "{name}: no `for`");
            let sev = r["labels"]["severity"].as_str();
            assert!(
                matches!(sev, Some("warning" | "critical")),
                "{name}: severity {sev:?}"
            );
            for a in ["summary", "description"] {
                assert!(
                    r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: no {a}"
                );
            }
        }
    }
}

/// Series replaced in a healthy load balancer: (series, promtool values).
type Changes<'a> = &'a [(&'a str, &'a str)];

/// The series of one load balancer as it looks when all is well, with `changed` replacing (or,
/// with an empty value, removing) some of them. Values are promtool's expanding notation, one
/// sample a minute for two hours.
fn lb_series(instance: &str, changed: Changes) -> String {
    let healthy = [
        (
            "vpsie_lb_agent_polls_total{result=\"not_modified\"}",
            "0+2x120",
        ),
        (
            "vpsie_lb_agent_polls_total{result=\"unreachable\"}",
            "0x120",
        ),
        ("vpsie_lb_agent_polls_total{result=\"failed\"}", "0x120"),
        (
            "vpsie_lb_agent_applies_total{result=\"rolled_back\"}",
            "0x120",
        ),
        ("vpsie_lb_agent_applies_total{result=\"critical\"}", "0x120"),
        (
            "vpsie_lb_agent_backend_host_problems_total{kind=\"refused\"}",
            "0x120",
        ),
        ("vpsie_lb_agent_last_apply_timestamp_seconds", "0x120"),
        ("vpsie_lb_agent_envoy_up", "1x120"),
        ("vpsie_lb_supervisor_envoy_up", "1x120"),
        (
            "vpsie_lb_supervisor_pool_transitions{state=\"stuck\"}",
            "0x120",
        ),
        (
            "vpsie_lb_supervisor_envoy_restarts_total{kind=\"full\"}",
            "1x120",
        ),
        ("envoy_server_live", "1x120"),
        ("vpsie_lb_agent_events_queued", "0x120"),
        ("vpsie_lb_agent_events_dropped_total", "0x120"),
        ("vpsie_lb_agent_events_unsaved", "0x120"),
        (
            "vpsie_lb_agent_acme_attempts_total{result=\"failed\"}",
            "0x120",
        ),
        (
            "vpsie_lb_agent_acme_attempts_total{result=\"renewed\"}",
            "0x60 1x60",
        ),
        // 100 days after the test's time 0.
        (
            "vpsie_lb_agent_certificate_expiry_timestamp_seconds{certificate_id=\"c1\"}",
            "8640000x120",
        ),
        (
            "envoy_cluster_membership_healthy{envoy_cluster_name=\"r1\"}",
            "2x120",
        ),
        (
            "envoy_cluster_membership_total{envoy_cluster_name=\"r1\"}",
            "2x120",
        ),
        ("envoy_filesystem_write_failed", "0x120"),
        ("vpsie_lb_supervisor_access_log_disk_free_bytes", "5e9x120"),
        ("vpsie_lb_supervisor_access_log_disk_size_bytes", "1e10x120"),
        (
            "envoy_overload_envoy_resource_monitors_fixed_heap_pressure",
            "10x120",
        ),
        (
            "envoy_overload_envoy_overload_actions_disable_http_keepalive_active",
            "0x120",
        ),
        (
            "envoy_overload_envoy_overload_actions_stop_accepting_requests_active",
            "0x120",
        ),
        (
            "envoy_listener_downstream_cx_overflow{envoy_listener_address=\"0.0.0.0_80\"}",
            "0x120",
        ),
        (
            "envoy_listener_downstream_global_cx_overflow{envoy_listener_address=\"0.0.0.0_80\"}",
            "0x120",
        ),
    ];
    let mut out = String::new();
    for (series, values) in healthy {
        let values = changed
            .iter()
            .find(|(s, _)| *s == series)
            .map_or(values, |(_, v)| *v);
        if values.is_empty() {
            continue;
        }
        let series = match series.split_once('{') {
            Some((name, rest)) => format!("{name}{{instance=\"{instance}\",{rest}"),
            None => format!("{series}{{instance=\"{instance}\"}}"),
        };
        out += &format!("      - series: '{series}'\n        values: '{values}'\n");
    }
    out
}

#[test]
fn the_alerts_fire_on_the_failures_they_name_and_not_on_a_healthy_lb() {
    let cases: &[(&str, Changes, &[&str])] = &[
        ("lb-ok", &[], &[]),
        (
            "lb-rolled-back",
            &[(
                "vpsie_lb_agent_applies_total{result=\"rolled_back\"}",
                "0x90 1x30",
            )],
            &["VpsieLbConfigRolledBack"],
        ),
        (
            "lb-critical",
            &[(
                "vpsie_lb_agent_applies_total{result=\"critical\"}",
                "0x90 1x30",
            )],
            &["VpsieLbApplyCritical"],
        ),
        (
            "lb-disk-refuses",
            &[(
                "vpsie_lb_agent_polls_total{result=\"failed\"}",
                "0x90 1+1x30",
            )],
            &["VpsieLbApplyFailing"],
        ),
        (
            "lb-unreachable",
            &[
                (
                    "vpsie_lb_agent_polls_total{result=\"not_modified\"}",
                    "0x120",
                ),
                (
                    "vpsie_lb_agent_polls_total{result=\"unreachable\"}",
                    "0+2x120",
                ),
            ],
            &["VpsieLbApiUnreachable"],
        ),
        (
            "lb-stuck",
            &[(
                "vpsie_lb_agent_polls_total{result=\"not_modified\"}",
                "0x120",
            )],
            &["VpsieLbPollingStopped"],
        ),
        (
            "lb-down",
            &[
                ("vpsie_lb_supervisor_envoy_up", "1x30 0x90"),
                ("vpsie_lb_agent_envoy_up", "1x30 0x90"),
                ("envoy_server_live", ""),
            ],
            &["VpsieLbEnvoyDown", "VpsieLbEnvoyNotLive"],
        ),
        (
            "lb-flapping",
            &[(
                "vpsie_lb_supervisor_envoy_restarts_total{kind=\"full\"}",
                "1+1x120",
            )],
            &["VpsieLbEnvoyRestartLoop"],
        ),
        (
            "lb-refused-host",
            &[(
                "vpsie_lb_agent_backend_host_problems_total{kind=\"refused\"}",
                "0x90 1x30",
            )],
            &["VpsieLbBackendHostRefused"],
        ),
        (
            "lb-no-backend",
            &[(
                "envoy_cluster_membership_healthy{envoy_cluster_name=\"r1\"}",
                "0x120",
            )],
            &["VpsieLbBackendsAllUnhealthy"],
        ),
        (
            "lb-cert",
            // 10 days after time 0.
            &[(
                "vpsie_lb_agent_certificate_expiry_timestamp_seconds{certificate_id=\"c1\"}",
                "864000x120",
            )],
            &["VpsieLbCertificateExpiringSoon"],
        ),
        (
            "lb-acme-failing",
            &[(
                "vpsie_lb_agent_acme_attempts_total{result=\"failed\"}",
                "0x90 1x30",
            )],
            &["VpsieLbManagedCertificateFailing"],
        ),
        (
            "lb-dropping",
            &[("vpsie_lb_agent_events_dropped_total", "0x80 5x40")],
            &["VpsieLbEventsDropped"],
        ),
        (
            "lb-queue",
            &[("vpsie_lb_agent_events_queued", "0+2x120")],
            &["VpsieLbEventQueueGrowing"],
        ),
        (
            "lb-disk-full",
            &[("vpsie_lb_agent_events_unsaved", "0x60 1x60")],
            &["VpsieLbEventQueueNotOnDisk"],
        ),
        (
            "lb-log-lost",
            &[("envoy_filesystem_write_failed", "0x90 1+3x30")],
            &["VpsieLbAccessLogWritesFailing"],
        ),
        (
            "lb-log-disk",
            &[(
                "vpsie_lb_supervisor_access_log_disk_free_bytes",
                "5e9x90 3e8x30",
            )],
            &["VpsieLbAccessLogDiskFilling"],
        ),
        (
            "lb-pool-stuck",
            &[(
                "vpsie_lb_supervisor_pool_transitions{state=\"stuck\"}",
                "0x90 1x30",
            )],
            &["VpsieLbPoolTransitionStuck"],
        ),
        (
            "lb-heap-high",
            &[(
                "envoy_overload_envoy_resource_monitors_fixed_heap_pressure",
                "10x90 90x30",
            )],
            &["VpsieLbMemoryPressure"],
        ),
        (
            "lb-shedding",
            &[
                (
                    "envoy_overload_envoy_resource_monitors_fixed_heap_pressure",
                    "10x90 96x30",
                ),
                (
                    "envoy_overload_envoy_overload_actions_disable_http_keepalive_active",
                    "0x90 1x30",
                ),
            ],
            &["VpsieLbMemoryPressure", "VpsieLbSheddingLoad"],
        ),
        (
            "lb-conn-cap",
            &[(
                "envoy_listener_downstream_cx_overflow{envoy_listener_address=\"0.0.0.0_80\"}",
                "0x90 0+10x30",
            )],
            &["VpsieLbConnectionsRefused"],
        ),
        (
            "lb-global-cap",
            &[(
                "envoy_listener_downstream_global_cx_overflow{envoy_listener_address=\"0.0.0.0_80\"}",
                "0x90 0+10x30",
            )],
            &["VpsieLbConnectionsRefused"],
        ),
    ];
    let mut series = String::new();
    let mut firing = String::new();
    for (lb, changed, alerts) in cases {
        series += &lb_series(lb, changed);
        for a in *alerts {
            firing += &format!(
                "          - labels: '{{alertname=\"{a}\", instance=\"{lb}\"}}'\n            value: 1\n"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("alerts_test.yml");
    std::fs::write(
        &test,
        format!(
            "rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    promql_expr_test:\n      - expr: count by (alertname, instance) (ALERTS{{alertstate=\"firing\"}})\n        eval_time: 100m\n        exp_samples:\n{firing}",
            rules = repo_file(RULES).display()
        ),
    )
    .unwrap();
    let mut cmd = promtool();
    cmd.args(["test", "rules"]).arg(&test);
    run_ok(
        cmd,
        &format!("promtool test rules (firing alerts of {RULES})"),
    );
}

/// The virtual-IP alerts look across a load balancer's nodes: three addresses, two nodes each;
/// one has its master, one none (both backup or in fault), one two masters.
#[test]
fn the_virtual_ip_alerts_fire_on_no_master_and_on_two() {
    let mut series = String::new();
    for (vip, states) in [
        ("198.18.0.100", ["master", "backup"]),
        ("198.18.0.101", ["backup", "fault"]),
        ("198.18.0.102", ["master", "master"]),
    ] {
        for (node, state) in ["n1", "n2"].iter().zip(states) {
            for s in ["master", "backup", "fault"] {
                let v = if s == state { 1 } else { 0 };
                series += &format!(
                    "      - series: 'vpsie_lb_agent_vrrp_state{{instance=\"{node}\", vip=\"{vip}\", state=\"{s}\"}}'\n        values: '{v}x10'\n"
                );
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("vip_alerts_test.yml");
    std::fs::write(
        &test,
        format!(
            "rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    promql_expr_test:\n      - expr: count by (alertname, vip) (ALERTS{{alertstate=\"firing\"}})\n        eval_time: 5m\n        exp_samples:\n          - labels: '{{alertname=\"VpsieLbVirtualIpNoMaster\", vip=\"198.18.0.101\"}}'\n            value: 1\n          - labels: '{{alertname=\"VpsieLbVirtualIpTwoMasters\", vip=\"198.18.0.102\"}}'\n            value: 1\n",
            rules = repo_file(RULES).display()
        ),
    )
    .unwrap();
    let mut cmd = promtool();
    cmd.args(["test", "rules"]).arg(&test);
    run_ok(cmd, "promtool test rules (virtual IP alerts)");
}

#[test]
fn the_dashboard_is_valid_grafana_json() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()), "uid");
    let input = d["__inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS input");
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");
    let ds_ok = |ds: &Value| ds["uid"] == "${DS_PROMETHEUS}" && ds["type"] == "prometheus";

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` variable");
    assert!(ds_ok(&instance["datasource"]), "the variable's datasource");

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut drawn = 0;
    for p in panels.iter().chain(
        panels
            .iter()
            .flat_map(|p| p["panels"].as_array().into_iter().flatten()),
    ) {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: panel id {id} is used twice");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h), (Some(x), Some(w), Some(h)) if w > 0 && h > 0 && x + w <= 24)
                && g["y"].as_u64().is_some(),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        drawn += 1;
        assert!(p["type"].as_str().is_some(), "{title}: no type");
        assert!(
            ds_ok(&p["datasource"]),
            "{title}: datasource {}",
            p["datasource"]
        );
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title}: no targets"));
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(ds_ok(&t["datasource"]), "{title}: target datasource {t}");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr"
            );
            let r = t["refId"].as_str().unwrap_or_default();
            assert!(
                !r.is_empty() && refs.insert(r),
                "{title}: refId {r:?} missing or twice"
            );
        }
    }
    assert!(drawn >= 10, "the dashboard has its panels ({drawn})");
    // Anywhere else (annotations, variables): Prometheus only through the input.
    fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| match k.as_str() {
                "datasource" => out.push(v),
                _ => datasources(v, out),
            }),
            Value::Array(a) => a.iter().for_each(|v| datasources(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    datasources(&d, &mut all);
    for ds in all.into_iter().filter(|ds| ds["type"] != "grafana") {
        assert!(ds_ok(ds), "a datasource that is not the input: {ds}");
    }
}
