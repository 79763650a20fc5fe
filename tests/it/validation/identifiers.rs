//! Identifiers and names.

use super::*;

#[test]
fn identifiers_match_their_pattern_and_length() {
    use Base::*;
    // (name, base, pointer, error path, max length, required)
    let fields: &[(&str, Base, &str, usize, bool)] = &[
        ("identifier", Http, "/identifier", 64, true),
        ("lbName", Http, "/lbName", 255, true),
        ("ruleId", Http, "/rules/0/ruleId", 64, true),
        ("domainId", Https, "/rules/0/domains/0/domainId", 64, true),
        (
            "backend identifier",
            Http,
            "/rules/0/backends/1/identifier",
            64,
            true,
        ),
        (
            "domain backend identifier",
            Https,
            "/rules/0/domains/0/backends/0/identifier",
            64,
            true,
        ),
        (
            "certificateId",
            Https,
            "/rules/0/tls/certificateId",
            64,
            true,
        ),
        (
            "domain certificateId",
            Https,
            "/rules/0/domains/0/tls/certificateId",
            64,
            true,
        ),
        ("cookieName", Http, "/rules/0/cookieName", 64, false),
        (
            "domain cookieName",
            Https,
            "/rules/0/domains/0/cookieName",
            64,
            false,
        ),
        ("LB-wide cookieName", Http, "/cookieName", 64, false),
    ];
    let mut cases = Vec::new();
    for &(name, base, ptr, max, required) in fields {
        let path = ptr;
        for good in ["aZ09_-", "-", "_", "0", &"x".repeat(max)] {
            cases.push(ok(
                format!("{name} = {good:.20}"),
                base,
                set(ptr, json!(good)),
            ));
        }
        let too_long = "y".repeat(max + 1);
        for bad in ["a.b", "a b", "a/b", "a:b", "a=b", "ä", "a\n", &too_long] {
            cases.push(err(
                format!("{name} = {bad:?}"),
                base,
                set(ptr, json!(bad)),
                path,
                "must match ^[",
            ));
        }
        cases.push(err(
            format!("{name} = 42"),
            base,
            set(ptr, json!(42)),
            path,
            "must be a string",
        ));
        // "" is absent, as the real API means it (`"cookieName": ""`).
        if required {
            cases.push(err(
                format!("{name} = \"\""),
                base,
                set(ptr, json!("")),
                path,
                "is required",
            ));
        } else {
            cases.push(ok(format!("{name} = \"\""), base, set(ptr, json!(""))));
        }
        if required {
            cases.push(err(
                format!("{name} missing"),
                base,
                unset(ptr),
                path,
                "is required",
            ));
        } else {
            cases.push(ok(format!("{name} missing"), base, unset(ptr)));
        }
    }
    run(cases);
}

#[test]
fn max_length_is_named_in_the_message() {
    let e = load_err(&{
        let mut v = http_spec();
        put(&mut v, "/lbName", json!("n".repeat(256)));
        v
    });
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].message.contains("{1,255}"), "{e}");
    let e = load_err(&{
        let mut v = http_spec();
        put(&mut v, "/rules/0/ruleId", json!("n".repeat(65)));
        v
    });
    assert!(e.0[0].message.contains("{1,64}"), "{e}");
}
