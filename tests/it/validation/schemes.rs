//! What each scheme allows.

use super::*;

#[test]
fn fields_that_belong_to_some_schemes_only() {
    use Base::*;
    let c = certs::cert(&["shop.example.com"]);
    let tls =
        json!({"certificateId": "c9", "certificatePem": c.cert_pem, "privateKeyPem": c.key_pem});
    let tcp = || set("/rules/0/scheme", json!("tcp"));
    let cases = vec![
        err(
            "https without tls or domains",
            Https,
            all(vec![unset("/rules/0/tls"), unset("/rules/0/domains")]),
            "/rules/0/tls",
            "is required for an https rule without domains",
        ),
        err(
            "https with tls null and no domains",
            Https,
            all(vec![
                set("/rules/0/tls", Value::Null),
                set("/rules/0/domains", json!([])),
            ]),
            "/rules/0/tls",
            "is required for an https rule without domains",
        ),
        ok(
            "https without tls: its domains get managed certificates",
            Https,
            all(vec![unset("/rules/0/tls"), unset("/rules/0/domains/0/tls")]),
        ),
        ok(
            "https with tls null: a domain with its own certificate",
            Https,
            set("/rules/0/tls", Value::Null),
        ),
        err(
            "a wildcard domain waiting for a managed certificate",
            Https,
            all(vec![
                unset("/rules/0/tls"),
                unset("/rules/0/domains/0/tls"),
                set("/rules/0/domains/0/domainName", json!("*.example.com")),
            ]),
            "/rules/0/domains/0/tls",
            "which cannot validate a wildcard",
        ),
        ok(
            "a wildcard domain under the rule's certificate",
            Https,
            all(vec![
                unset("/rules/0/domains/0/tls"),
                set("/rules/0/domains/0/domainName", json!("*.example.com")),
            ]),
        ),
        ok(
            "https domain without tls (rule's certificate)",
            Https,
            unset("/rules/0/domains/0/tls"),
        ),
        err(
            "tls on an http rule",
            Http,
            set("/rules/0/tls", tls.clone()),
            "/rules/0/tls",
            "applies to https and http2 rules only",
        ),
        err(
            "tls on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/tls", tls.clone())]),
            "/rules/0/tls",
            "applies to https and http2 rules only",
        ),
        ok(
            "tls null on an http rule",
            Http,
            set("/rules/0/tls", Value::Null),
        ),
        err(
            "tls on a domain of an http rule",
            Https,
            all(vec![
                set("/rules/0/scheme", json!("http")),
                unset("/rules/0/tls"),
            ]),
            "/rules/0/domains/0/tls",
            "applies to https rules, and to http2 rules that have their own tls",
        ),
        err(
            "domains on a tcp rule",
            Http,
            all(vec![
                tcp(),
                set(
                    "/rules/0/domains",
                    json!([extra_domain("d1", "a.example.com")]),
                ),
            ]),
            "/rules/0/domains",
            "applies to http, https and http2 rules only",
        ),
        ok(
            "empty domains on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/domains", json!([]))]),
        ),
        ok(
            "domains on an http rule",
            Http,
            set(
                "/rules/0/domains",
                json!([extra_domain("d1", "a.example.com")]),
            ),
        ),
        err(
            "cookieCheck on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/cookieCheck", json!(1))]),
            "/rules/0/cookieCheck",
            "applies to http, https and http2 rules only",
        ),
        err(
            "cookieCheck true on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/cookieCheck", json!(true))]),
            "/rules/0/cookieCheck",
            "applies to http, https and http2 rules only",
        ),
        ok(
            "cookieCheck 0 on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/cookieCheck", json!(0))]),
        ),
        ok(
            "cookieCheck on an http rule",
            Http,
            set("/rules/0/cookieCheck", json!(1)),
        ),
        ok(
            "cookieCheck on an https rule",
            Https,
            set("/rules/0/cookieCheck", json!(1)),
        ),
        ok(
            "LB-wide cookieCheck with a tcp rule",
            Http,
            all(vec![tcp(), set("/cookieCheck", json!(1))]),
        ),
        ok(
            "redirectHTTP on an http rule",
            Http,
            set("/rules/0/redirectHTTP", json!(1)),
        ),
        ok(
            "redirectHTTP on a tcp rule",
            Http,
            all(vec![tcp(), set("/rules/0/redirectHTTP", json!(true))]),
        ),
        ok(
            "redirectHTTP on a domain of an http rule",
            Http,
            all(vec![
                set(
                    "/rules/0/domains",
                    json!([extra_domain("d1", "a.example.com")]),
                ),
                set("/rules/0/domains/0/redirectHTTP", json!(1)),
            ]),
        ),
        ok(
            "redirectHTTP 0 on an http rule",
            Http,
            set("/rules/0/redirectHTTP", json!(0)),
        ),
        ok(
            "redirectHTTP on an https rule",
            Https,
            set("/rules/0/redirectHTTP", json!(1)),
        ),
        ok(
            "LB-wide redirectHTTP with an http rule",
            Http,
            set("/redirectHTTP", json!(1)),
        ),
        err(
            "tcp rule without backends",
            Http,
            all(vec![tcp(), set("/rules/0/backends", json!([]))]),
            "/rules/0/backends",
            "must hold at least one backend",
        ),
        err(
            "http rule without backends or domains",
            Http,
            set("/rules/0/backends", json!([])),
            "/rules/0/backends",
            "must hold at least one backend",
        ),
        err(
            "http rule, backends missing, no domains",
            Http,
            unset("/rules/0/backends"),
            "/rules/0/backends",
            "must hold at least one backend",
        ),
        ok(
            "https rule without backends, domains route",
            Https,
            set("/rules/0/backends", json!([])),
        ),
        ok(
            "https rule, backends missing, domains route",
            Https,
            unset("/rules/0/backends"),
        ),
        err(
            "domain without backends",
            Https,
            set("/rules/0/domains/0/backends", json!([])),
            "/rules/0/domains/0/backends",
            "must hold at least one backend",
        ),
        err(
            "domain, backends missing",
            Https,
            unset("/rules/0/domains/0/backends"),
            "/rules/0/domains/0/backends",
            "must hold at least one backend",
        ),
        err(
            "no rules",
            Http,
            set("/rules", json!([])),
            "/rules",
            "must hold at least one rule",
        ),
        err(
            "rules missing",
            Http,
            unset("/rules"),
            "/rules",
            "must hold at least one rule",
        ),
        err_among(
            "rules is an object",
            Http,
            set("/rules", json!({})),
            "/rules",
            "must be an array",
        ),
        err(
            "a rule that is a string",
            Http,
            set("/rules/0", json!("r1")),
            "/rules/0",
            "must be an object",
        ),
        err(
            "a backend that is a number",
            Http,
            set("/rules/0/backends/1", json!(5)),
            "/rules/0/backends/1",
            "must be an object",
        ),
        err(
            "a domain that is null",
            Https,
            set("/rules/0/domains/0", Value::Null),
            "/rules/0/domains/0",
            "must be an object",
        ),
    ];
    run(cases);
}

#[test]
fn redirect_port_conflicts() {
    use Base::*;
    let plain80 = |port: Value| set("/rules/1", extra_rule("plain", port));
    let mut cases = vec![
        ok("port 80 without any redirect", Https, plain80(json!(80))),
        ok(
            "redirect with port 80 free",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                plain80(json!(8080)),
            ]),
        ),
        err(
            "an http rule on the redirect port",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                plain80(json!(80)),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "an http rule on the redirect port, as a string",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(true)),
                plain80(json!("80")),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "the redirect comes from a domain",
            Https,
            all(vec![
                set("/rules/0/domains/0/redirectHTTP", json!(1)),
                plain80(json!(80)),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "the redirect comes LB-wide",
            Https,
            all(vec![set("/redirectHTTP", json!(1)), plain80(json!(80))]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "a tcp rule on the redirect port",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                plain80(json!(80)),
                set("/rules/1/scheme", json!("tcp")),
            ]),
            "/rules/1/frontPort",
            "is the redirect port",
        ),
        err(
            "the https rule itself on the redirect port",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(1)),
                set("/rules/0/frontPort", json!(80)),
            ]),
            "/rules/0/frontPort",
            "is the redirect port",
        ),
        ok(
            "redirectHTTP 0 leaves port 80 free",
            Https,
            all(vec![
                set("/rules/0/redirectHTTP", json!(0)),
                plain80(json!(80)),
            ]),
        ),
    ];
    // Two https rules cannot both redirect every host.
    cases.push(err(
        "two https rules redirect all hosts",
        Https,
        Box::new(|d: &mut Value| {
            let mut second = d["rules"][0].clone();
            second["ruleId"] = json!("r-https-2");
            second["frontPort"] = json!(9443);
            second["domains"] = json!([]);
            d["rules"][0]["redirectHTTP"] = json!(1);
            second["redirectHTTP"] = json!(1);
            d["rules"].as_array_mut().unwrap().push(second);
        }),
        "/rules/1/redirectHTTP",
        "only one https rule can redirect all hosts",
    ));
    run(cases);

    // The redirect port is a setting: with 8081, port 80 is free and 8081 is taken.
    let opts = Options {
        redirect_port: 8081,
        ..options()
    };
    run_with(
        vec![
            ok(
                "port 80 with redirect_port 8081",
                Https,
                all(vec![
                    set("/rules/0/redirectHTTP", json!(1)),
                    plain80(json!(80)),
                ]),
            ),
            err(
                "port 8081 with redirect_port 8081",
                Https,
                all(vec![
                    set("/rules/0/redirectHTTP", json!(1)),
                    plain80(json!(8081)),
                ]),
                "/rules/1/frontPort",
                "port 8081 is the redirect port",
            ),
        ],
        &opts,
    );
}
