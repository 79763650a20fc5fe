//! What the HTTP health check counts as healthy (`healthCheckStatuses`), passive health
//! checking (`outlierDetection`) and slow start (`slowStart`), with a real Envoy and loopback
//! upstreams.

use crate::support::envoy::{free_port, Envoy};
use crate::support::upstream::{self, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn backend(up: &Upstream) -> Value {
    json!({"identifier": up.name, "ip": "127.0.0.1", "port": up.port()})
}

async fn wait_for_healthy(envoy: &Envoy, cluster: &str, want: &BTreeSet<u16>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = envoy.healthy_ports(cluster).await;
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
    let healthy = envoy.healthy_ports("web").await;
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

/// A backend added live to a loaded pool with `slowStart` starts with a small share that grows
/// over the window (the share per second is printed); one failing its first health check gets
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_new_backend_up_over_the_window() {
    use crate::support::supervisor::Stand;
    use std::sync::{Arc, Mutex};
    let ups = [
        upstream::http("a", None).await,
        upstream::http("b", None).await,
        upstream::http("new", None).await,
        upstream::http("sick", None).await,
    ];
    ups[3].failing_health.store(true, Ordering::SeqCst);
    let front = Stand::front_port();
    let stand = Stand::start(|_| {}).await;
    let spec = |n: usize| {
        json!({"identifier": "lb-slow-start", "lbName": "slow", "rules": [
            {"ruleId": "web", "scheme": "http", "frontPort": front, "backPort": 1,
             "healthCheckPath": "/healthz", "checkInterval": 200, "rise": 1, "fall": 1,
             "slowStart": 4, "backends": ups[..n].iter().map(backend).collect::<Vec<_>>()}]})
    };
    stand.apply_ok(&spec(2)).await;
    // Hosts are in slow start for the window after they join, the first ones too: the new one
    // can only be seen ramping up beside hosts whose window is over (Envoy's documentation:
    // when every host is new, all get the same share). The condition is the clock itself.
    let joined = Instant::now();
    while joined.elapsed() < Duration::from_millis(4500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Load: every answer with when it came and who gave it.
    let answers: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (answers, stop) = (answers.clone(), stop.clone());
        load.spawn(async move {
            let c = reqwest::Client::builder().no_proxy().build().unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = c.get(format!("http://127.0.0.1:{front}/")).send().await {
                    if r.status() == 200 {
                        let who = r.text().await.unwrap_or_default();
                        answers.lock().unwrap().push((Instant::now(), who));
                    }
                }
            }
        });
    }
    let added = Instant::now();
    // Applied once Envoy took it; the sick backend never passes, so its pool's transition is
    // not waited for.
    let out = stand.apply(&spec(4)).await.unwrap();
    assert_eq!(
        out.method,
        Some(vpsie_lb_agent::supervisor::protocol::ApplyMethod::Live)
    );
    // The measurement window: the slow-start window and two seconds more.
    let seconds = 6;
    while added.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}

    let answers = answers.lock().unwrap();
    let mut shares = Vec::new();
    for second in 0..seconds {
        let in_second: Vec<&String> = answers
            .iter()
            .filter(|(t, _)| {
                t.checked_duration_since(added)
                    .is_some_and(|d| d.as_secs() == second)
            })
            .map(|(_, who)| who)
            .collect();
        let new = in_second.iter().filter(|w| w.as_str() == "new").count();
        let share = new as f64 / in_second.len().max(1) as f64;
        println!(
            "second {second}: {} requests, the new backend answered {new} ({:.0} %)",
            in_second.len(),
            share * 100.0
        );
        assert!(in_second.len() > 20, "the load ran in second {second}");
        shares.push(share);
    }
    assert!(
        !answers.iter().any(|(_, w)| w == "sick"),
        "a backend failing its first health check gets nothing"
    );
    assert!(shares[0] < 0.2, "a small share first: {shares:?}");
    assert!(shares[1] < shares[3], "growing: {shares:?}");
    assert!(
        shares[5] > 0.25,
        "a full share (a third) after the window: {shares:?}"
    );
}
