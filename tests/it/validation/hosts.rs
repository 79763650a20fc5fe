//! Domains and host names.

use super::*;

#[test]
fn domain_names_wildcards_and_subdomains() {
    use Base::*;
    let name = "/rules/0/domains/0/domainName";
    let sub = "/rules/0/domains/0/subdomain";
    let name_p = "/rules/0/domains/0/domainName";
    let sub_p = "/rules/0/domains/0/subdomain";
    let label63 = format!("{}.com", "x".repeat(63));
    let label64 = format!("{}.com", "x".repeat(64));
    // 4 labels: 63 + 63 + 63 + 61 + 3 dots = 253.
    let n253 = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    let n254 = format!("{n253}e");
    let mut cases = vec![
        err(
            "domainName missing",
            Https,
            unset(name),
            name_p,
            "is required",
        ),
        err(
            "domainName 5",
            Https,
            set(name, json!(5)),
            name_p,
            "must be a string",
        ),
        err(
            "wildcard with a subdomain",
            Https,
            all(vec![
                set(name, json!("*.example.com")),
                set(sub, json!("www")),
            ]),
            sub_p,
            "cannot be combined with a wildcard domainName",
        ),
        ok(
            "wildcard with an empty subdomain",
            Https,
            all(vec![set(name, json!("*.example.com")), set(sub, json!(""))]),
        ),
        ok(
            "wildcard with a null subdomain",
            Https,
            all(vec![
                set(name, json!("*.example.com")),
                set(sub, Value::Null),
            ]),
        ),
        err(
            "subdomain makes the host longer than 253",
            Https,
            all(vec![
                set(
                    name,
                    json!([
                        "a".repeat(63),
                        "b".repeat(63),
                        "c".repeat(63),
                        "d".repeat(50)
                    ]
                    .join(".")),
                ),
                set(sub, json!("w".repeat(20))),
            ]),
            sub_p,
            "at most 253",
        ),
        err(
            "subdomain 5",
            Https,
            set(sub, json!(5)),
            sub_p,
            "must be a string",
        ),
    ];
    for good in [
        "api.example.com",
        "*.example.com",
        "API.Example.COM",
        "localdomain",
        "a.b",
        "xn--bcher-kva.example",
        "1.example.com",
        &label63,
        &n253,
        &format!("*.{n253}"),
    ] {
        cases.push(ok(
            format!("domainName {good:.40}"),
            Https,
            set(name, json!(good)),
        ));
    }
    cases.push(err(
        "domainName \"\"",
        Https,
        set(name, json!("")),
        "/rules/0/domains/0/domainName",
        "is required",
    ));
    for bad in [
        "exa_mple.com",
        "-a.com",
        "a-.com",
        "a..com",
        "example.com.",
        ".example.com",
        "*.*.example.com",
        "*example.com",
        "foo.*.com",
        "*",
        "*.",
        "ex ample.com",
        "exämple.com",
        "example.com:80",
        "http://example.com",
        &label64,
        &n254,
    ] {
        cases.push(err(
            format!("domainName {bad:.40?}"),
            Https,
            set(name, json!(bad)),
            name_p,
            "must be a DNS name or *. followed by one",
        ));
    }
    for good in ["www", "WWW", "a.b", "x-1", ""] {
        cases.push(ok(
            format!("subdomain {good:?}"),
            Https,
            set(sub, json!(good)),
        ));
    }
    for bad in ["bad_sub", "-x", "x-", "x.", ".x", "a..b", "*", "w w"] {
        cases.push(err(
            format!("subdomain {bad:?}"),
            Https,
            set(sub, json!(bad)),
            sub_p,
            "",
        ));
    }
    run(cases);
}

#[test]
fn hosts_are_normalised() {
    let mut v = https_spec();
    put(
        &mut v,
        "/rules/0/domains/0/domainName",
        json!("Example.COM"),
    );
    put(&mut v, "/rules/0/domains/0/subdomain", json!("WWW"));
    put(
        &mut v,
        "/rules/0/domains/1",
        extra_domain("d2", "*.Example.Org"),
    );
    let s = load_ok(&v).spec;
    let hosts: Vec<String> = s.rules[0]
        .domains
        .iter()
        .map(|d| d.host.to_string())
        .collect();
    assert_eq!(hosts, ["www.example.com", "*.example.org"]);
    assert!(s.rules[0].domains[1].host.wildcard);
    assert_eq!(s.rules[0].domains[1].host.name, "example.org");
}
