//! TLS.

use super::*;

fn tls_pair(ptr: &'static str, c: &certs::TestCert) -> Mutation {
    all(vec![
        set(format!("{ptr}/certificatePem"), json!(c.cert_pem)),
        set(format!("{ptr}/privateKeyPem"), json!(c.key_pem)),
    ])
}

#[test]
fn tls_certificates_and_keys() {
    use Base::*;
    let expired = certs::cert_valid(&["shop.example.com"], -30, -1);
    let future = certs::cert_valid(&["shop.example.com"], 2, 30);
    let soon = certs::cert_valid(&["shop.example.com"], -1, 7);
    let fine = certs::cert_valid(&["shop.example.com"], -1, 30);
    let other_key = certs::other_key_pem();
    let mut cases = Vec::new();
    for ptr in ["/rules/0/tls", "/rules/0/domains/0/tls"] {
        let path = ptr;
        let cp: &'static str = Box::leak(format!("{path}/certificatePem").into_boxed_str());
        let kp: &'static str = Box::leak(format!("{path}/privateKeyPem").into_boxed_str());
        cases.extend([
            ok(
                format!("{path} valid 30 more days"),
                Https,
                tls_pair(ptr, &fine),
            ),
            ok(
                format!("{path} expiring within 14 days is only a warning"),
                Https,
                tls_pair(ptr, &soon),
            ),
            err(
                format!("{path} expired"),
                Https,
                tls_pair(ptr, &expired),
                cp,
                "expired",
            ),
            err(
                format!("{path} not yet valid"),
                Https,
                tls_pair(ptr, &future),
                cp,
                "is not valid before",
            ),
            err(
                format!("{path} key of another certificate"),
                Https,
                set(format!("{ptr}/privateKeyPem"), json!(other_key)),
                kp,
                "does not match the certificate",
            ),
            err(
                format!("{path} certificate not PEM"),
                Https,
                set(format!("{ptr}/certificatePem"), json!("hello")),
                cp,
                "PEM",
            ),
            err(
                format!("{path} key not PEM"),
                Https,
                set(format!("{ptr}/privateKeyPem"), json!("hello")),
                kp,
                "PEM",
            ),
            err(
                format!("{path} broken base64 in the certificate"),
                Https,
                set(
                    format!("{ptr}/certificatePem"),
                    json!("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
                ),
                cp,
                "",
            ),
            err(
                format!("{path} DER that is no certificate"),
                Https,
                set(
                    format!("{ptr}/certificatePem"),
                    json!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                ),
                cp,
                "does not parse",
            ),
            err(
                format!("{path} the key in certificatePem"),
                Https,
                set(format!("{ptr}/certificatePem"), json!(fine.key_pem)),
                cp,
                "only CERTIFICATE blocks",
            ),
            err(
                format!("{path} the certificate in privateKeyPem"),
                Https,
                set(format!("{ptr}/privateKeyPem"), json!(fine.cert_pem)),
                kp,
                "expected PRIVATE KEY",
            ),
            err(
                format!("{path} certificate over 64 KiB"),
                Https,
                set(
                    format!("{ptr}/certificatePem"),
                    json!(fine.cert_pem.repeat(200)),
                ),
                cp,
                "at most 64 KiB",
            ),
            err(
                format!("{path} key over 16 KiB"),
                Https,
                set(
                    format!("{ptr}/privateKeyPem"),
                    json!(fine.key_pem.repeat(100)),
                ),
                kp,
                "at most 16 KiB",
            ),
            err(
                format!("{path} without certificatePem"),
                Https,
                unset(format!("{ptr}/certificatePem")),
                cp,
                "is required",
            ),
            err(
                format!("{path} without privateKeyPem"),
                Https,
                unset(format!("{ptr}/privateKeyPem")),
                kp,
                "is required",
            ),
            err(
                format!("{path} is a string"),
                Https,
                set(ptr, json!("c1")),
                path,
                "must be an object",
            ),
        ]);
    }
    cases.push(ok(
        "a chain: leaf then another certificate",
        Https,
        all(vec![
            set(
                "/rules/0/tls/certificatePem",
                json!(format!("{}\n{}", fine.cert_pem, expired.cert_pem)),
            ),
            set("/rules/0/tls/privateKeyPem", json!(fine.key_pem)),
        ]),
    ));
    cases.push(ok(
        "leaf and key both replaced (a chain's leaf must match the key)",
        Https,
        all(vec![
            set(
                "/rules/0/tls/certificatePem",
                json!(format!("{}{}", fine.cert_pem, soon.cert_pem)),
            ),
            set("/rules/0/tls/privateKeyPem", json!(fine.key_pem)),
        ]),
    ));
    cases.push(err(
        "a chain whose leaf does not match the key",
        Https,
        all(vec![
            set(
                "/rules/0/tls/certificatePem",
                json!(format!("{}{}", soon.cert_pem, fine.cert_pem)),
            ),
            set("/rules/0/tls/privateKeyPem", json!(fine.key_pem)),
        ]),
        "/rules/0/tls/privateKeyPem",
        "does not match the certificate",
    ));
    run(cases);
}

#[test]
fn expiring_certificate_is_a_warning_with_its_path() {
    let soon = certs::cert_valid(&["shop.example.com"], -1, 7);
    let mut v = https_spec();
    put(&mut v, "/rules/0/tls/certificatePem", json!(soon.cert_pem));
    put(&mut v, "/rules/0/tls/privateKeyPem", json!(soon.key_pem));
    let loaded = load_ok(&v);
    let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["rules[0].tls.certificatePem"]);
    assert!(
        loaded.warnings[0].message.contains("within 14 days"),
        "{:?}",
        loaded.warnings
    );

    put(
        &mut v,
        "/rules/0/domains/0/tls/certificatePem",
        json!(soon.cert_pem),
    );
    put(
        &mut v,
        "/rules/0/domains/0/tls/privateKeyPem",
        json!(soon.key_pem),
    );
    let paths: Vec<String> = load_ok(&v).warnings.into_iter().map(|w| w.path).collect();
    assert_eq!(
        paths,
        [
            "rules[0].tls.certificatePem",
            "rules[0].domains[0].tls.certificatePem"
        ]
    );

    // Fresh certificates (a year) give no warning; 15 days give none either.
    assert!(load_ok(&https_spec()).warnings.is_empty());
    let later = certs::cert_valid(&["shop.example.com"], -1, 15);
    let mut v = https_spec();
    put(&mut v, "/rules/0/tls/certificatePem", json!(later.cert_pem));
    put(&mut v, "/rules/0/tls/privateKeyPem", json!(later.key_pem));
    assert!(load_ok(&v).warnings.is_empty());
}

#[test]
fn tls_versions_and_alpn() {
    use Base::*;
    let t = "/rules/0/tls";
    let mut cases = Vec::new();
    for (min, max) in [
        ("TLSv1.2", "TLSv1.2"),
        ("TLSv1.2", "TLSv1.3"),
        ("TLSv1.3", "TLSv1.3"),
    ] {
        cases.push(ok(
            format!("{min}..{max}"),
            Https,
            all(vec![
                set(p(t, "minVersion"), json!(min)),
                set(p(t, "maxVersion"), json!(max)),
            ]),
        ));
    }
    cases.push(ok(
        "minVersion TLSv1.3 alone",
        Https,
        set(p(t, "minVersion"), json!("TLSv1.3")),
    ));
    cases.push(ok(
        "maxVersion TLSv1.2 alone",
        Https,
        set(p(t, "maxVersion"), json!("TLSv1.2")),
    ));
    cases.push(err(
        "minVersion above maxVersion",
        Https,
        all(vec![
            set(p(t, "minVersion"), json!("TLSv1.3")),
            set(p(t, "maxVersion"), json!("TLSv1.2")),
        ]),
        "/rules/0/tls/minVersion",
        "must not be above maxVersion",
    ));
    for key in ["minVersion", "maxVersion"] {
        cases.push(ok(format!("{key} \"\""), Https, set(p(t, key), json!(""))));
    }
    for bad in ["TLSv1.1", "TLSv1.0", "tlsv1.2", "1.2", "TLSv1.4"] {
        for key in ["minVersion", "maxVersion"] {
            cases.push(err(
                format!("{key} {bad:?}"),
                Https,
                set(p(t, key), json!(bad)),
                format!("/rules/0/tls/{key}"),
                "must be one of TLSv1.2, TLSv1.3",
            ));
        }
    }
    for good in [
        json!(["h2"]),
        json!(["http/1.1"]),
        json!(["h2", "http/1.1"]),
        json!(["http/1.1", "h2"]),
    ] {
        cases.push(ok(format!("alpn {good}"), Https, set(p(t, "alpn"), good)));
    }
    cases.push(ok(
        "domain alpn [h2]",
        Https,
        set("/rules/0/domains/0/tls/alpn", json!(["h2"])),
    ));
    for (bad, at, frag) in [
        (
            json!([]),
            "/rules/0/tls/alpn",
            "must name at least one of h2, http/1.1",
        ),
        (
            json!(["h3"]),
            "/rules/0/tls/alpn/0",
            "must be h2 or http/1.1",
        ),
        (
            json!(["H2"]),
            "/rules/0/tls/alpn/0",
            "must be h2 or http/1.1",
        ),
        (
            json!(["http/1.0"]),
            "/rules/0/tls/alpn/0",
            "must be h2 or http/1.1",
        ),
        (
            json!(["h2", "h2"]),
            "/rules/0/tls/alpn/1",
            "is listed twice",
        ),
        (
            json!(["h2", "http/1.1", "h2"]),
            "/rules/0/tls/alpn/2",
            "is listed twice",
        ),
        (
            json!(["h2", 2]),
            "/rules/0/tls/alpn/1",
            "must be h2 or http/1.1, got a number",
        ),
        (
            json!(["h2", null]),
            "/rules/0/tls/alpn/1",
            "must be h2 or http/1.1",
        ),
        (json!("h2"), "/rules/0/tls/alpn", "must be an array"),
    ] {
        cases.push(err(
            format!("alpn {bad}"),
            Https,
            set(p(t, "alpn"), bad),
            at,
            frag,
        ));
    }
    cases.push(err(
        "domain alpn []",
        Https,
        set("/rules/0/domains/0/tls/alpn", json!([])),
        "/rules/0/domains/0/tls/alpn",
        "at least one",
    ));
    run(cases);
}

#[test]
fn tls_settings_reach_the_model() {
    let mut v = https_spec();
    let s = load_ok(&v).spec;
    let tls = s.rules[0].tls.as_ref().unwrap();
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::V1_2, TlsVersion::V1_3)
    );
    assert_eq!(
        tls.alpn.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        ["h2", "http/1.1"],
        "alpn defaults to both"
    );
    put(&mut v, "/rules/0/tls/minVersion", json!("TLSv1.3"));
    put(&mut v, "/rules/0/tls/alpn", json!(["http/1.1"]));
    let s = load_ok(&v).spec;
    let tls = s.rules[0].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert_eq!(
        tls.alpn.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        ["http/1.1"]
    );
}
