//! Backend addresses.

use super::*;

fn ip_cases(bad: &[(&str, &'static str)], good: &[&str]) -> Vec<Case> {
    let mut cases = Vec::new();
    for &(ip, frag) in bad {
        cases.push(err(
            format!("ip {ip:?}"),
            Base::Http,
            set(p(B0, "ip"), json!(ip)),
            "/rules/0/backends/0/ip",
            frag,
        ));
        cases.push(err(
            format!("domain backend ip {ip:?}"),
            Base::Https,
            set("/rules/0/domains/0/backends/0/ip", json!(ip)),
            "/rules/0/domains/0/backends/0/ip",
            frag,
        ));
    }
    for &ip in good {
        cases.push(ok(
            format!("ip {ip:?}"),
            Base::Http,
            set(p(B0, "ip"), json!(ip)),
        ));
    }
    cases
}

#[test]
fn forbidden_backend_addresses() {
    let bad: &[(&str, &'static str)] = &[
        ("127.0.0.1", "is a loopback address"),
        ("127.1.2.3", "is a loopback address"),
        ("::1", "is a loopback address"),
        ("0.0.0.0", "is unspecified"),
        ("::", "is unspecified"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("169.254.169.254", "is link-local"),
        ("169.254.0.1", "is link-local"),
        ("fe80::1", "is link-local"),
        ("224.0.0.1", "is a multicast address"),
        ("239.255.255.250", "is a multicast address"),
        ("ff02::1", "is a multicast address"),
        ("255.255.255.255", "is the broadcast address"),
        ("240.0.0.1", "reserved range"),
        (
            "::ffff:127.0.0.1",
            "IPv4-mapped form of 127.0.0.1, which is a loopback address",
        ),
        (
            "::ffff:7f00:1",
            "IPv4-mapped form of 127.0.0.1, which is a loopback address",
        ),
        (
            "::FFFF:169.254.169.254",
            "IPv4-mapped form of 169.254.169.254, which is link-local",
        ),
        (
            "::ffff:0.0.0.0",
            "IPv4-mapped form of 0.0.0.0, which is unspecified",
        ),
        ("::ffff:224.0.0.1", "multicast"),
        ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1"),
        ("64:ff9b::169.254.169.254", "NAT64 form of 169.254.169.254"),
        ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
        ("2002:a9fe:a9fe::", "6to4 form of 169.254.169.254"),
        ("2002:7f00:1::1", "6to4 form of 127.0.0.1"),
        ("fe80::1%eth0", "not a valid IPv6 address"),
        ("[::1]", "not a valid IPv6 address"),
        ("10.0.0.1:80", "not a valid IPv6 address"),
        ("localhost", "names the loopback host"),
        ("LOCALHOST", "names the loopback host"),
        ("api.localhost", "names the loopback host"),
        ("127.1", "numeric label"),
        ("2130706433", "numeric label"),
        ("10.0.0.256", "numeric label"),
        ("", "is required"),
        ("bad_host", "neither an IP address nor a valid host name"),
        ("http://10.0.0.1", "not a valid IPv6 address"),
        ("10.0.0.1 ", "neither an IP address nor a valid host name"),
    ];
    let good = [
        "10.0.0.1",
        "10.255.255.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "203.0.113.7",
        "8.8.8.8",
        "fd00::1",
        "fc00::1",
        "2001:db8::1",
        "::ffff:10.1.2.3",
        "db.internal",
        "web",
        "Backend-1.Example.COM",
    ];
    let mut cases = ip_cases(bad, &good);
    cases.push(err(
        "ip missing",
        Base::Http,
        unset(p(B0, "ip")),
        "/rules/0/backends/0/ip",
        "is required",
    ));
    cases.push(err(
        "ip 10",
        Base::Http,
        set(p(B0, "ip"), json!(10)),
        "/rules/0/backends/0/ip",
        "must be a string",
    ));
    run(cases);
}

#[test]
fn allow_loopback_backends_opens_loopback_only() {
    let opts = Options {
        allow_loopback_backends: true,
        ..options()
    };
    let bad: &[(&str, &'static str)] = &[
        ("169.254.169.254", "is link-local"),
        ("0.0.0.0", "is unspecified"),
        ("::", "is unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:169.254.169.254", "link-local"),
    ];
    let good = [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "::ffff:127.0.0.1",
        "localhost",
        "10.0.0.1",
    ];
    run_with(ip_cases(bad, &good), &opts);

    let mut v = http_spec();
    put(&mut v, "/rules/0/backends/0/ip", json!("127.0.0.1"));
    put(&mut v, "/rules/0/backends/1/ip", json!("::1"));
    let s = spec::load(v.to_string().as_bytes(), &opts).unwrap().spec;
    let addrs: Vec<String> = s.rules[0]
        .pool
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.1", "::1"]);
    // The same spec with production options is refused at both backends.
    let e = load_err(&v);
    assert_eq!(
        e.0.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["rules[0].backends[0].ip", "rules[0].backends[1].ip"]
    );
}

#[test]
fn backend_names_are_kept_lower_case() {
    let mut v = http_spec();
    put(&mut v, "/rules/0/backends/0/ip", json!("DB.Internal"));
    let s = load_ok(&v).spec;
    let b = s.rules[0]
        .pool
        .backends
        .iter()
        .find(|b| b.id == "b1")
        .unwrap();
    assert_eq!(b.address, BackendAddress::Name("db.internal".into()));
}
