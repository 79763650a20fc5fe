//! What the HTTP health check counts as healthy (`healthCheckStatuses`) and passive health
//! checking (`outlierDetection`), with a real Envoy and loopback upstreams.

use crate::support::envoy::{free_port, Envoy};
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn backend(up: &Upstream) -> Value {
    json!({"identifier": up.name, "ip": "127.0.0.1", "port": up.port()})
}

/// The ports of the hosts Envoy counts healthy in `cluster` (active check passed, not ejected).
async fn healthy_ports(envoy: &Envoy, cluster: &str) -> BTreeSet<u16> {
    let v: Value = serde_json::from_str(&envoy.admin_text("/clusters?format=json").await).unwrap();
    v["cluster_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == cluster)
        .flat_map(|c| c["host_statuses"].as_array().cloned().unwrap_or_default())
        .filter(|h| {
            let s = &h["health_status"];
            s["eds_health_status"] == "HEALTHY"
                && s.get("failed_active_health_check").is_none()
                && s.get("failed_outlier_check").is_none()
        })
        .filter_map(|h| h["address"]["socket_address"]["port_value"].as_u64())
        .map(|p| p as u16)
        .collect()
}

async fn wait_for_healthy(envoy: &Envoy, cluster: &str, want: &BTreeSet<u16>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = healthy_ports(envoy, cluster).await;
        if &now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{cluster}: healthy {now:?}, waited for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_count_the_statuses_the_spec_names() {
    let ups = [
        upstream::http("ok", None).await,
        upstream::http("no-content", None).await,
        upstream::http("found", None).await,
        upstream::http("error", None).await,
    ];
    for (u, code) in ups.iter().zip([200u16, 204, 302, 500]) {
        u.health_code.store(code, Ordering::SeqCst);
    }
    let pool: Vec<Value> = ups.iter().map(backend).collect();
    let check = json!({"healthCheckPath": "/healthz", "checkInterval": 200, "rise": 1, "fall": 1});
    let mut default = json!({"ruleId": "default", "scheme": "http", "frontPort": free_port(),
                             "backPort": 1, "backends": pool});
    let mut custom = json!({"ruleId": "custom", "scheme": "http", "frontPort": free_port(),
                            "backPort": 1, "backends": pool,
                            "healthCheckStatuses": ["500", "204-204"]});
    for r in [&mut default, &mut custom] {
        for (k, v) in check.as_object().unwrap() {
            r[k] = v.clone();
        }
    }
    let envoy = Envoy::start(&json!({"identifier": "lb-statuses", "lbName": "statuses",
                                     "rules": [default, custom]}))
    .await;
    let port = |i: usize| ups[i].port();
    // Default 200-399: 200, 204 and 302 are healthy, 500 is not.
    wait_for_healthy(&envoy, "default", &[port(0), port(1), port(2)].into()).await;
    // The spec's own list: exactly 500 and 204.
    wait_for_healthy(&envoy, "custom", &[port(1), port(3)].into()).await;
}

/// A pool of four: three start answering 503. After three in a row each is ejected, but never
/// more than half the pool (two); ejected hosts come back after the ejection time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_failing_backends_never_more_than_half_and_brings_them_back() {
    let ups = [
        upstream::http("a", None).await,
        upstream::http("b", None).await,
        upstream::http("c", None).await,
        upstream::http("d", None).await,
    ];
    let front = free_port();
    let envoy = Envoy::start(
        &json!({"identifier": "lb-outlier", "lbName": "outlier", "rules": [
        {"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
         "outlierDetection": {"consecutive5xx": 3, "ejectionTime": 2},
         "backends": ups.iter().map(backend).collect::<Vec<_>>()}]}),
    )
    .await;
    let all: BTreeSet<u16> = ups.iter().map(Upstream::port).collect();
    wait_for_healthy(&envoy, "web", &all).await;
    let ejected = || async {
        let stats = envoy
            .admin_text("/stats?filter=^cluster\\.web\\.outlier_detection\\.ejections_active$")
            .await;
        stats
            .rsplit(": ")
            .next()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };

    for u in &ups[1..] {
        u.failing_requests.store(true, Ordering::SeqCst);
    }
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut most = 0;
    let first_ejection = loop {
        for _ in 0..8 {
            let _ = c.get(format!("http://127.0.0.1:{front}/")).send().await;
        }
        let now = ejected().await;
        most = most.max(now);
        if now >= 2 {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "never ejected two: {now}");
    };
    // More failing traffic: still never more than half.
    for _ in 0..40 {
        let _ = c.get(format!("http://127.0.0.1:{front}/")).send().await;
        most = most.max(ejected().await);
    }
    assert_eq!(most, 2, "at most half of the four backends are ejected");
    let healthy = healthy_ports(&envoy, "web").await;
    assert!(
        healthy.contains(&ups[0].port()),
        "the good backend stays: {healthy:?}"
    );

    // The failures stop: the ejected come back after the ejection time (2 s, checked every 1 s).
    for u in &ups {
        u.failing_requests.store(false, Ordering::SeqCst);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while ejected().await > 0 {
        assert!(Instant::now() < deadline, "the ejected never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back_after = first_ejection.elapsed();
    assert!(
        back_after >= Duration::from_millis(1500),
        "back before the ejection time: {back_after:?}"
    );
    wait_for_healthy(&envoy, "web", &all).await;
}

/// Both settings change live: no new epoch, and the new list is what Envoy checks with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_change_live_without_a_new_epoch() {
    use crate::support::supervisor::Stand;
    use vpsie_lb_agent::supervisor::protocol::ApplyMethod;
    let (ok, error) = (
        upstream::http("ok", None).await,
        upstream::http("error", None).await,
    );
    error.health_code.store(500, Ordering::SeqCst);
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let spec = |extra: Value| {
        let mut rule = json!({"ruleId": "web", "scheme": "http", "frontPort": front,
            "backPort": 1, "healthCheckPath": "/healthz", "checkInterval": 200, "rise": 1,
            "fall": 1, "backends": [backend(&ok), backend(&error)]});
        for (k, v) in extra.as_object().unwrap() {
            rule[k] = v.clone();
        }
        json!({"identifier": "lb-live-health", "lbName": "live", "rules": [rule]})
    };
    let first = stand.apply_ok(&spec(json!({}))).await;
    let answered_by = |want: &'static str| async move {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = BTreeSet::new();
            for _ in 0..10 {
                if let Ok(r) = c.get(format!("http://127.0.0.1:{front}/")).send().await {
                    if r.status() == 200 {
                        seen.insert(r.text().await.unwrap_or_default());
                    }
                }
            }
            if seen == [want.to_owned()].into() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "answered by {seen:?}, waited for {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    answered_by("ok").await;
    let second = stand
        .apply_ok(&spec(json!({"healthCheckStatuses": ["500"],
                                "outlierDetection": {"consecutive5xx": 3}})))
        .await;
    assert_eq!(second.method, Some(ApplyMethod::Live), "{second:?}");
    assert_eq!(second.epoch, first.epoch, "no new epoch");
    answered_by("error").await;
}
