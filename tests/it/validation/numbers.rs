//! Ports and numbers.

use super::*;

#[test]
fn ports_are_1_to_65535_as_numbers_or_numeric_strings() {
    use Base::*;
    let fields: &[(&str, Base, &str, bool)] = &[
        ("frontPort", Http, "/rules/0/frontPort", true),
        ("backPort", Http, "/rules/0/backPort", true),
        ("backend port", Http, "/rules/0/backends/0/port", false),
        (
            "domain backPort",
            Https,
            "/rules/0/domains/0/backPort",
            false,
        ),
        (
            "domain backend port",
            Https,
            "/rules/0/domains/0/backends/0/port",
            false,
        ),
    ];
    let mut cases = Vec::new();
    for &(name, base, ptr, required) in fields {
        let path = ptr;
        for good in [
            json!(1),
            json!(80),
            json!("80"),
            json!("1"),
            json!(65535),
            json!("65535"),
        ] {
            cases.push(ok(format!("{name} = {good}"), base, set(ptr, good)));
        }
        for (bad, frag) in [
            (json!("8o"), "must be a whole number"),
            (json!("-1"), "must be a whole number"),
            (json!(" 80"), "must be a whole number"),
            (json!("80 "), "must be a whole number"),
            (json!("+80"), "must be a whole number"),
            (json!("0x50"), "must be a whole number"),
            (json!("8e1"), "must be a whole number"),
            (json!("99999999999"), "must be a whole number"),
            (json!(true), "must be a whole number"),
            (json!([80]), "must be a whole number"),
            (json!({"port": 80}), "must be a whole number"),
            (json!(0), "must be between 1 and 65535"),
            (json!("0"), "must be between 1 and 65535"),
            (json!(65536), "must be between 1 and 65535"),
            (json!("65536"), "must be between 1 and 65535"),
            (json!(-1), "must be between 1 and 65535"),
            (json!(80.5), "must be between 1 and 65535"),
            (json!(u64::MAX), "must be between 1 and 65535"),
        ] {
            cases.push(err(
                format!("{name} = {bad}"),
                base,
                set(ptr, bad),
                path,
                frag,
            ));
        }
        if required {
            cases.push(err(
                format!("{name} missing"),
                base,
                unset(ptr),
                path,
                "is required",
            ));
            cases.push(err(
                format!("{name} null"),
                base,
                set(ptr, Value::Null),
                path,
                "is required",
            ));
            cases.push(err(
                format!("{name} \"\""),
                base,
                set(ptr, json!("")),
                path,
                "is required",
            ));
        } else {
            cases.push(ok(format!("{name} missing"), base, unset(ptr)));
            cases.push(ok(format!("{name} \"\""), base, set(ptr, json!(""))));
        }
    }
    run(cases);
}

#[test]
fn numeric_string_ports_mean_the_number() {
    let mut v = http_spec();
    put(&mut v, "/rules/0/frontPort", json!("80"));
    put(&mut v, "/rules/0/backPort", json!("0081"));
    put(&mut v, "/rules/0/backends/0/port", json!("82"));
    let s = load_ok(&v).spec;
    let r = &s.rules[0];
    assert_eq!(r.front_port, 80);
    assert_eq!(r.pool.back_port, 81);
    let port = |id: &str| r.pool.backends.iter().find(|b| b.id == id).unwrap().port;
    assert_eq!(port("b1"), 82);
    assert_eq!(port("b2"), 81, "a backend without port takes the pool's");
}

#[test]
fn reserved_ports_are_refused_as_front_port() {
    use Base::*;
    run(vec![
        err(
            "frontPort 9101",
            Http,
            set("/rules/0/frontPort", json!(9101)),
            "/rules/0/frontPort",
            "reserved for the agent's metrics",
        ),
        err(
            "frontPort \"9101\"",
            Http,
            set("/rules/0/frontPort", json!("9101")),
            "/rules/0/frontPort",
            "reserved",
        ),
        err(
            "https frontPort 9101",
            Https,
            set("/rules/0/frontPort", json!(9101)),
            "/rules/0/frontPort",
            "reserved",
        ),
        ok(
            "frontPort 9100",
            Http,
            set("/rules/0/frontPort", json!(9100)),
        ),
        ok(
            "backPort 9101 is a backend's port",
            Http,
            set("/rules/0/backPort", json!(9101)),
        ),
    ]);
}

#[test]
fn flags_are_0_1_false_or_true() {
    use Base::*;
    let fields: &[(&str, Base, &str)] = &[
        ("cookieCheck", Http, "/rules/0/cookieCheck"),
        ("LB-wide cookieCheck", Http, "/cookieCheck"),
        ("redirectHTTP", Https, "/rules/0/redirectHTTP"),
        ("LB-wide redirectHTTP", Https, "/redirectHTTP"),
        (
            "domain redirectHTTP",
            Https,
            "/rules/0/domains/0/redirectHTTP",
        ),
        (
            "domain cookieCheck",
            Https,
            "/rules/0/domains/0/cookieCheck",
        ),
        ("backend enabled", Http, "/rules/0/backends/0/enabled"),
    ];
    let mut cases = Vec::new();
    for &(name, base, ptr) in fields {
        let path = ptr;
        // The real API sends every one of these forms; "" is absent like null.
        for good in [
            json!(0),
            json!(1),
            json!(true),
            json!(false),
            json!("0"),
            json!("1"),
            json!("true"),
            json!("false"),
            json!(""),
            Value::Null,
        ] {
            cases.push(ok(format!("{name} = {good}"), base, set(ptr, good)));
        }
        for bad in [
            json!(2),
            json!(-1),
            json!(0.5),
            json!("yes"),
            json!("2"),
            json!("TRUE"),
            json!(" 1"),
            json!([]),
        ] {
            cases.push(err(
                format!("{name} = {bad}"),
                base,
                set(ptr, bad),
                path,
                "must be 0, 1, false or true (or one of them as a string)",
            ));
        }
    }
    run(cases);
}

#[test]
fn flags_mean_what_they_say() {
    let mut v = http_spec();
    put(&mut v, "/rules/0/cookieCheck", json!(1));
    put(&mut v, "/rules/0/backends/0/enabled", json!(0));
    put(&mut v, "/rules/0/backends/1/enabled", json!(true));
    let r = load_ok(&v).spec.rules[0].clone();
    assert!(r.pool.sticky_cookie.is_some());
    let enabled = |id: &str| r.pool.backends.iter().find(|b| b.id == id).unwrap().enabled;
    assert!(!enabled("b1"));
    assert!(enabled("b2"));
    put(&mut v, "/rules/0/cookieCheck", json!(false));
    put(&mut v, "/rules/0/backends/0/enabled", json!(1));
    let r = load_ok(&v).spec.rules[0].clone();
    assert!(r.pool.sticky_cookie.is_none());
    assert!(r.pool.backends.iter().all(|b| b.enabled));
}
