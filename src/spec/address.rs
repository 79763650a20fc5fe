//! Rules for addresses and names, as pure functions: backend IPs and host names, domain names.
//!
//! These never resolve or connect; they judge the text alone. A backend host name is resolved
//! later by Envoy, so what it resolves to is outside what this module can promise.

use super::error::shown;
use super::model::BackendAddress;
use ipnet::IpNet;
use std::net::IpAddr;

/// Checks an RFC 1123 DNS name: labels of 1-63 letters, digits and hyphens, no hyphen at either
/// end of a label, 253 characters at most. Lower-case only: callers lower-case first.
pub fn dns_name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 253 {
        return Some(format!("is {} characters long; at most 253", name.len()));
    }
    if name.ends_with('.') {
        return Some("must not end with a dot".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Some(format!(
                "has a label of {} characters; at most 63",
                label.len()
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Some("may hold only letters, digits, hyphens and dots (RFC 1123)".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("has a label that starts or ends with a hyphen".into());
        }
    }
    None
}

/// Parses a backend's `ip` field: an IP literal or a host name, judged by the rules of the
/// contract. Returns the address or the reason it is refused.
pub fn backend_address(text: &str, allow_loopback: bool) -> Result<BackendAddress, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return match crate::net::backend_refusal(ip, allow_loopback) {
            Some(why) => Err(format!(
                "{ip} {why}; backends must be reachable unicast addresses"
            )),
            None => Ok(BackendAddress::Ip(ip)),
        };
    }
    if text.contains(':') {
        return Err(
            "is not a valid IPv6 address (zone ids like %eth0 are not allowed either)".into(),
        );
    }
    let name = text.to_ascii_lowercase();
    if let Some(why) = dns_name_error(&name) {
        return Err(format!(
            "is neither an IP address nor a valid host name: the name {why}"
        ));
    }
    // A numeric last label would let a resolver read the name as an IPv4 address ("127.1",
    // "2130706433"), slipping past the IP rules above. Top-level domains are never numeric.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(
            "is not a valid IP address, and a host name cannot end in a numeric label".into(),
        );
    }
    // glibc's inet_aton also reads hexadecimal and octal parts ("0x7f000001", "0x7f.0.0.1"):
    // a name made only of such parts is an address in disguise.
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x"))
    {
        return Err("looks like a numeric IPv4 address in another notation (hexadecimal or octal); write the address as a plain dotted quad".into());
    }
    if !allow_loopback && (name == "localhost" || name.ends_with(".localhost")) {
        return Err("names the loopback host (localhost); backends must be remote".into());
    }
    Ok(BackendAddress::Name(name))
}

/// One entry of `allowedSources` / `deniedSources`: `address/prefix`, or a bare address for
/// one host. Host bits must be zero, so that what is written is what is matched.
pub fn source_cidr(text: &str) -> Result<IpNet, String> {
    let rule = "must be a CIDR like \"203.0.113.0/24\" or \"2001:db8::/32\", or one address";
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("{rule}, got {}", shown(text))),
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{} has host bits set; the network is {}",
            shown(text),
            net.trunc()
        ));
    }
    if let IpNet::V6(v6) = net {
        // Envoy sees an IPv4 client as its IPv4 address, never in this form: such an entry would
        // match nobody.
        let mapped = matches!(v6.network().segments(), [0, 0, 0, 0, 0, 0xffff, _, _]);
        if mapped && v6.prefix_len() >= 96 {
            return Err(format!(
                "{} is an IPv4 address written in IPv6 form; write the IPv4 form",
                shown(text)
            ));
        }
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        backend_address(s, false).is_err()
    }

    #[test]
    fn refuses_every_forbidden_range() {
        for s in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "239.255.255.255",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
            "::127.0.0.1",
            "64:ff9b::169.254.169.254",
            "fe80::1%eth0",
            "localhost",
            "api.localhost",
            "127.1",
            "2130706433",
            "0x7f.1",
            "0x7f000001",
            "0x7f.0x0.0x0.0x1",
            "0177.0.0.1",
            "bad_name.example.com",
            "-bad.example.com",
            "example.com.",
            "a..b",
        ] {
            assert!(refused(s), "{s} should be refused");
        }
    }

    #[test]
    fn accepts_normal_backends() {
        for s in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "203.0.113.7",
            "100.64.0.1",
            "fd00::1",
            "2001:db8::1",
            "::ffff:10.1.2.3",
            "db.internal",
            "Backend-1.Example.COM",
            "web",
            "0xdeadbeef.example.com",
            "123.example.com",
        ] {
            assert!(backend_address(s, false).is_ok(), "{s} should be accepted");
        }
        assert_eq!(
            backend_address("Web.Example.com", false),
            Ok(BackendAddress::Name("web.example.com".into()))
        );
    }

    #[test]
    fn loopback_only_with_the_development_setting() {
        for s in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost"] {
            assert!(refused(s));
            assert!(backend_address(s, true).is_ok(), "{s} with allow_loopback");
        }
        // The setting opens loopback only, not the metadata service.
        assert!(backend_address("169.254.169.254", true).is_err());
    }

    #[test]
    fn dns_names() {
        assert!(dns_name_error("example.com").is_none());
        assert!(dns_name_error(&"a".repeat(63)).is_none());
        assert!(dns_name_error(&"a".repeat(64)).is_some());
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(dns_name_error(&long).is_none());
        assert!(dns_name_error(&format!("{long}e")).is_some());
        assert!(
            dns_name_error("Example.com").is_some(),
            "callers lower-case first"
        );
        assert!(dns_name_error("ex ample.com").is_some());
        assert!(dns_name_error("exa\u{2028}mple.com").is_some());
    }
}
