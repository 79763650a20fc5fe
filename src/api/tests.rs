//! Unit tests of the parent module.

use super::*;

#[test]
fn the_guard_refuses_every_internal_range() {
    for s in [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "::",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "::127.0.0.1",
    ] {
        let ip: IpAddr = s.parse().unwrap();
        assert!(
            crate::net::api_refusal(ip, false).is_some(),
            "{s} must be refused"
        );
    }
    for s in [
        "203.0.113.5",
        "8.8.8.8",
        "100.128.0.1",
        "172.32.0.1",
        "2001:db8::1",
        "2606:4700::1",
    ] {
        let ip: IpAddr = s.parse().unwrap();
        assert_eq!(crate::net::api_refusal(ip, false), None, "{s} is public");
    }
    // Development opens loopback only.
    assert_eq!(
        crate::net::api_refusal("127.0.0.1".parse().unwrap(), true),
        None
    );
    assert!(crate::net::api_refusal("10.0.0.1".parse().unwrap(), true).is_some());
}

#[test]
fn api_urls() {
    let allowed = vec!["api.vpsie.com".to_owned(), "127.0.0.1".to_owned()];
    assert!(check_api_url("https://api.vpsie.com", &allowed, false).is_ok());
    assert!(check_api_url("https://API.vpsie.com/", &allowed, false).is_ok());
    for (url, dev) in [
        ("http://api.vpsie.com", false),
        ("http://api.vpsie.com", true),
        ("https://evil.example.com", false),
        ("http://127.0.0.1:8080", false),
        ("ftp://api.vpsie.com", false),
        ("https://user:pw@api.vpsie.com", false),
        ("https://127.0.0.1", false),
        ("not a url", false),
    ] {
        assert!(
            check_api_url(url, &allowed, dev).is_err(),
            "{url} dev={dev}"
        );
    }
    assert!(check_api_url("http://127.0.0.1:8080", &allowed, true).is_ok());
}

#[test]
fn the_key_file_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("key");
    std::fs::write(&p, "  secret-token\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = read_key_file(&p).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read_key_file(&p).unwrap(), "secret-token");
}

/// The supervisor reads the same file but never calls the API: a wrong API URL must stop
/// the agent with a clear error and leave the supervisor (and so Envoy) able to start.
#[test]
fn api_url_mistakes_stop_only_the_agent() {
    let dev = "vpsie:\n  loadbalancer_id: lb\n  api_url: http://127.0.0.1:8080\n  allowed_hosts: [127.0.0.1]\ndev:\n  allow_insecure_http: true\n";
    let s = crate::settings::Settings::parse_with_env(dev, &|_| None).unwrap();
    assert!(check_settings(&s).is_ok());
    for url in ["http://api.vpsie.com", "https://evil.example.com"] {
        let text = format!("vpsie:\n  loadbalancer_id: lb\n  api_url: {url}\n");
        let s = crate::settings::Settings::parse_with_env(&text, &|_| None)
            .unwrap_or_else(|e| panic!("{url}: the supervisor's view must load: {e:#}"));
        let e = check_settings(&s).unwrap_err();
        assert!(format!("{e:#}").contains("vpsie.api_url"), "{url}: {e:#}");
    }
}
