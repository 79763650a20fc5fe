//! Health checks, intervals, weights, timeouts, limits of numbers.

use super::*;

#[test]
fn health_check_path() {
    use Base::*;
    let places: &[(Base, &str)] = &[
        (Http, "/healthCheckPath"),
        (Http, "/rules/0/healthCheckPath"),
        (Https, "/rules/0/domains/0/healthCheckPath"),
    ];
    let longest = format!("/{}", "a".repeat(1023));
    let too_long = format!("/{}", "a".repeat(1024));
    let mut cases = Vec::new();
    for &(base, ptr) in places {
        let path = ptr;
        for good in [
            "",
            "/",
            "/healthz",
            "/a/b_c.d~e%20-f",
            "//x",
            "/A-Z.0-9",
            &longest,
        ] {
            cases.push(ok(
                format!("{path} {good:.30?}"),
                base,
                set(ptr, json!(good)),
            ));
        }
        for bad in [
            "healthz",
            " /healthz",
            "/a b",
            "/a?b=1",
            "/a#b",
            "/a\\b",
            "/a\nb",
            "/ä",
            "/{x}",
            &too_long,
        ] {
            cases.push(err(
                format!("{path} {bad:.30?}"),
                base,
                set(ptr, json!(bad)),
                path,
                "must be empty or match ^/[A-Za-z0-9/_.~%-]*$ with at most 1024 characters",
            ));
        }
        cases.push(err(
            format!("{path} 1"),
            base,
            set(ptr, json!(1)),
            path,
            "must be a string",
        ));
    }
    run(cases);
}

#[test]
fn health_check_path_empty_means_tcp_check() {
    let mut v = https_spec();
    put(&mut v, "/rules/0/healthCheckPath", json!("/healthz"));
    let s = load_ok(&v).spec;
    assert_eq!(
        s.rules[0].pool.health.http_path.as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        s.rules[0].domains[0].pool.health.http_path.as_deref(),
        Some("/healthz"),
        "a domain inherits the rule's path"
    );
    put(&mut v, "/rules/0/domains/0/healthCheckPath", json!(""));
    let s = load_ok(&v).spec;
    assert_eq!(
        s.rules[0].domains[0].pool.health.http_path, None,
        "an empty path overrides the rule's with a TCP check"
    );
    put(&mut v, "/rules/0/healthCheckPath", json!(""));
    put(&mut v, "/healthCheckPath", json!("/lb"));
    let s = load_ok(&v).spec;
    assert_eq!(s.rules[0].pool.health.http_path, None);
    take(&mut v, "/rules/0/healthCheckPath");
    take(&mut v, "/rules/0/domains/0/healthCheckPath");
    let s = load_ok(&v).spec;
    assert_eq!(s.rules[0].pool.health.http_path.as_deref(), Some("/lb"));
    assert_eq!(
        s.rules[0].domains[0].pool.health.http_path.as_deref(),
        Some("/lb")
    );
    take(&mut v, "/healthCheckPath");
    assert_eq!(
        load_ok(&v).spec.rules[0].pool.health.http_path,
        None,
        "absent: TCP check"
    );
}

/// The contract names no bounds for intervals and thresholds; these are the parser's
/// (`checkInterval` 100 ms..1 h, `fastInterval` 50 ms..1 h, `rise`/`fall` 1..100).
#[test]
fn intervals_under_the_floor_are_raised_and_large_thresholds_warned_about() {
    // (pointer, value, what the model holds, words of the warning)
    let cases: &[(&str, Value, u32, &str)] = &[
        ("/rules/0/checkInterval", json!(10), 100, "raised to 100 ms"),
        (
            "/rules/0/checkInterval",
            json!("99"),
            100,
            "raised to 100 ms",
        ),
        ("/rules/0/fastInterval", json!(10), 50, "raised to 50 ms"),
        ("/rules/0/rise", json!(1000), 1000, "1000 checks in a row"),
        ("/rules/0/fall", json!("101"), 101, "101 checks in a row"),
    ];
    for (ptr, value, want, words) in cases {
        let path = &contract_path(ptr);
        let mut v = http_spec();
        put(&mut v, ptr, value.clone());
        let l = load_ok(&v);
        let h = &l.spec.rules[0].pool.health;
        let got = match path.as_str() {
            p if p.ends_with("checkInterval") => h.interval_ms,
            p if p.ends_with("fastInterval") => h.fast_interval_ms,
            p if p.ends_with("rise") => h.rise,
            _ => h.fall,
        };
        assert_eq!(got, *want, "{path} {value}");
        assert!(
            l.warnings
                .iter()
                .any(|w| w.path == *path && w.message.contains(words)),
            "{path} {value}: {:?}",
            l.warnings
        );
    }
    // At the floor and at 100 checks: no warning.
    let mut v = http_spec();
    put(&mut v, "/rules/0/checkInterval", json!(100));
    put(&mut v, "/rules/0/fastInterval", json!(50));
    put(&mut v, "/rules/0/rise", json!(100));
    assert!(load_ok(&v).warnings.is_empty());
}

#[test]
fn intervals_thresholds_weights_and_timeouts_have_ranges() {
    use Base::*;
    let ranges: &[(&str, u64, u64)] = &[
        // Intervals under the floor (100 / 50 ms) are raised, not refused: see below.
        ("checkInterval", 1, 3_600_000),
        ("fastInterval", 1, 3_600_000),
        ("rise", 1, 10_000),
        ("fall", 1, 10_000),
    ];
    let mut cases = Vec::new();
    let places: &[(Base, &str)] = &[
        (Http, ""),
        (Http, "/rules/0"),
        (Https, "/rules/0/domains/0"),
    ];
    for &(field, min, max) in ranges {
        for &(base, ptr) in places {
            let ptr = format!("{ptr}/{field}");
            let path = ptr.clone();
            let frag: &'static str =
                Box::leak(format!("must be between {min} and {max}").into_boxed_str());
            for good in [
                json!(min),
                json!(max),
                json!(min.to_string()),
                json!((min + max) / 2),
            ] {
                cases.push(ok(format!("{path} {good}"), base, set(&ptr, good)));
            }
            for bad in [json!(min - 1), json!(max + 1), json!(-1), json!(1.5)] {
                cases.push(err(
                    format!("{path} {bad}"),
                    base,
                    set(&ptr, bad),
                    &path,
                    frag,
                ));
            }
            cases.push(err(
                format!("{path} \"fast\""),
                base,
                set(&ptr, json!("fast")),
                &path,
                "must be a whole number",
            ));
        }
    }
    // Weights.
    for (ptr, base) in [
        ("/rules/0/backends/0/weight", Http),
        ("/rules/0/domains/0/backends/0/weight", Https),
    ] {
        let path = ptr;
        for good in [
            json!(1),
            json!(100),
            json!(10_000),
            json!("50"),
            Value::Null,
        ] {
            cases.push(ok(format!("{path} {good}"), base, set(ptr, good)));
        }
        for bad in [json!(0), json!(10_001), json!(-5), json!(1.5), json!("0")] {
            cases.push(err(
                format!("{path} {bad}"),
                base,
                set(ptr, bad),
                path,
                "must be between 1 and 10000",
            ));
        }
        cases.push(err(
            format!("{path} \"ten\""),
            base,
            set(ptr, json!("ten")),
            path,
            "must be a whole number",
        ));
    }
    // Timeouts: seconds; 0 = no limit for idle and request only.
    for (key, min, max) in [
        ("connect", 1u64, 3600u64),
        ("idle", 0, 604_800),
        ("request", 0, 86_400),
    ] {
        let ptr = format!("/rules/0/timeouts/{key}");
        let path = ptr.clone();
        let frag: &'static str =
            Box::leak(format!("must be between {min} and {max}").into_boxed_str());
        for good in [json!(min), json!(max), json!(max.to_string())] {
            cases.push(ok(
                format!("{path} {good}"),
                Http,
                all(vec![set("/rules/0/timeouts", json!({})), set(&ptr, good)]),
            ));
        }
        let mut bad = vec![json!(max + 1), json!(-1), json!("soon")];
        if min > 0 {
            bad.push(json!(min - 1));
        }
        for b in bad {
            let frag = if b.is_string() {
                "must be a whole number"
            } else {
                frag
            };
            cases.push(err(
                format!("{path} {b}"),
                Http,
                all(vec![set("/rules/0/timeouts", json!({})), set(&ptr, b)]),
                &path,
                frag,
            ));
        }
    }
    cases.push(ok("timeouts {}", Http, set("/rules/0/timeouts", json!({}))));
    cases.push(ok(
        "timeouts on a tcp rule",
        Http,
        all(vec![
            set("/rules/0/scheme", json!("tcp")),
            set("/rules/0/timeouts", json!({"connect": 2, "idle": 0})),
        ]),
    ));
    cases.push(err(
        "timeouts \"5\"",
        Http,
        set("/rules/0/timeouts", json!("5")),
        "/rules/0/timeouts",
        "must be an object",
    ));
    // maxConnections.
    for good in [json!(1), json!(1_000_000), json!("20000")] {
        cases.push(ok(
            format!("maxConnections {good}"),
            Http,
            set("/maxConnections", good),
        ));
    }
    for bad in [json!(0), json!(1_000_001)] {
        cases.push(err(
            format!("maxConnections {bad}"),
            Http,
            set("/maxConnections", bad),
            "/maxConnections",
            "must be between 1 and 1000000",
        ));
    }
    run(cases);
}
