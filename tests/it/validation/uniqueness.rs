//! Uniqueness.

use super::*;

#[test]
fn ids_ports_and_hosts_are_unique_where_the_contract_says() {
    use Base::*;
    let cases = vec![
        ok(
            "two rules, distinct ids and ports",
            Http,
            set("/rules/1", extra_rule("r2", json!(8081))),
        ),
        err(
            "duplicate ruleId",
            Http,
            set("/rules/1", extra_rule("r1", json!(8081))),
            "/rules/1/ruleId",
            "rule ids must be unique",
        ),
        err(
            "duplicate frontPort",
            Http,
            set("/rules/1", extra_rule("r2", json!(8080))),
            "/rules/1/frontPort",
            "front ports must be unique",
        ),
        err(
            "duplicate frontPort, once as a numeric string",
            Http,
            set("/rules/1", extra_rule("r2", json!("8080"))),
            "/rules/1/frontPort",
            "front ports must be unique",
        ),
        err(
            "duplicate backend identifier in a pool",
            Http,
            set("/rules/0/backends/1/identifier", json!("b1")),
            "/rules/0/backends/1/identifier",
            "unique in a pool",
        ),
        err(
            "duplicate backend identifier in a domain pool",
            Https,
            set(
                "/rules/0/domains/0/backends/1",
                json!({"identifier": "a1", "ip": "10.0.1.2"}),
            ),
            "/rules/0/domains/0/backends/1/identifier",
            "unique in a pool",
        ),
        ok(
            "same backend identifier in two pools",
            Https,
            set("/rules/0/domains/0/backends/0/identifier", json!("b1")),
        ),
        ok(
            "same backend identifier in two rules",
            Http,
            set("/rules/1", {
                let mut r = extra_rule("r2", json!(8081));
                r["backends"][0]["identifier"] = json!("b1");
                r
            }),
        ),
        ok(
            "two domains, distinct ids and hosts",
            Https,
            set("/rules/0/domains/1", extra_domain("d2", "www.example.com")),
        ),
        err(
            "duplicate domainId in a rule",
            Https,
            set("/rules/0/domains/1", extra_domain("d1", "www.example.com")),
            "/rules/0/domains/1/domainId",
            "domain ids must be unique in a rule",
        ),
        err(
            "duplicate host in a rule",
            Https,
            set("/rules/0/domains/1", extra_domain("d2", "api.example.com")),
            "/rules/0/domains/1/domainName",
            "each host may appear once in a rule",
        ),
        err(
            "duplicate host, differing in case",
            Https,
            set("/rules/0/domains/1", extra_domain("d2", "API.Example.COM")),
            "/rules/0/domains/1/domainName",
            "each host may appear once in a rule",
        ),
        err(
            "duplicate host, once spelt with subdomain",
            Https,
            set("/rules/0/domains/1", {
                let mut d = extra_domain("d2", "example.com");
                d["subdomain"] = json!("api");
                d
            }),
            "/rules/0/domains/1/domainName",
            "each host may appear once in a rule",
        ),
        ok(
            "a wildcard and its base name are different hosts",
            Https,
            set(
                "/rules/0/domains/1",
                extra_domain("d2", "*.api.example.com"),
            ),
        ),
        ok(
            "same domainId and host in two rules",
            Http,
            all(vec![
                set(
                    "/rules/0/domains",
                    json!([extra_domain("d1", "a.example.com")]),
                ),
                set("/rules/1", {
                    let mut r = extra_rule("r2", json!(8081));
                    r["domains"] = json!([extra_domain("d1", "a.example.com")]);
                    r
                }),
            ]),
        ),
    ];
    run(cases);
}
