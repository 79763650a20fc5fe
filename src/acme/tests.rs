//! Unit tests of the parent module.

use super::*;

#[test]
fn renewal_comes_at_the_fraction_of_the_lifetime() {
    assert_eq!(renew_at(0, 90, 2.0 / 3.0), 60);
    assert_eq!(renew_at(1000, 1300, 0.5), 1150);
}

#[test]
fn backoff_doubles_up_to_the_ceiling() {
    assert_eq!(backoff(1, 60, 3600), 60);
    assert_eq!(backoff(2, 60, 3600), 120);
    assert_eq!(backoff(3, 60, 3600), 240);
    assert_eq!(backoff(10, 60, 3600), 3600);
    assert_eq!(backoff(200, 60, 3600), 3600);
}

fn problem(kind: &str, detail: &str) -> instant_acme::Error {
    // As the CA sends it: a problem document (RFC 7807).
    let p: instant_acme::Problem = serde_json::from_value(serde_json::json!({
        "type": kind, "detail": detail, "status": 400
    }))
    .unwrap();
    instant_acme::Error::Api(p)
}

#[test]
fn the_cas_answers_are_told_apart() {
    let limited = problem(
        "urn:ietf:params:acme:error:rateLimited",
        "too many certificates already issued",
    );
    assert!(rate_limited(&limited));
    assert!(!account_gone(&limited));
    assert_eq!(
        ca_text(&limited),
        "too many certificates already issued (urn:ietf:params:acme:error:rateLimited)"
    );
    let gone = problem(
        "urn:ietf:params:acme:error:accountDoesNotExist",
        "unable to find existing account",
    );
    assert!(account_gone(&gone) && !rate_limited(&gone));
    let refused = problem(
        "urn:ietf:params:acme:error:rejectedIdentifier",
        "policy forbids issuing for name",
    );
    assert!(!account_gone(&refused) && !rate_limited(&refused));
    let other_unauthorized = problem(
        "urn:ietf:params:acme:error:unauthorized",
        "wrong key authorization",
    );
    assert!(!account_gone(&other_unauthorized));
}

#[test]
fn only_dns_names_become_file_names() {
    assert!(file_safe("shop.example.com"));
    for bad in [
        "",
        "../x",
        "a/b",
        ".hidden",
        "*.example.com",
        "Shop.example.com",
    ] {
        assert!(!file_safe(bad), "{bad}");
    }
}
