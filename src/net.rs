//! What kind of place an IP address is, judged from its bits alone, and the two policies the
//! agent judges addresses by: where a backend may be, and where the VPSie API may be.
//!
//! One classifier for both, so that a form one policy sees through (an IPv4 address written in
//! IPv6: `::ffff:169.254.169.254`, `64:ff9b::a9fe:a9fe`, `2002:a9fe:a9fe::`) the other sees
//! through too. Nothing here resolves or connects.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Public,
    Loopback,
    Unspecified,
    /// 0.0.0.0/8 other than 0.0.0.0.
    ThisNetwork,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10.
    SharedNat,
    /// 169.254.0.0/16: the metadata service lives there.
    LinkLocal,
    /// fe80::/10.
    LinkLocalV6,
    Multicast,
    Broadcast,
    /// 240.0.0.0/4 but the broadcast address.
    Reserved,
    /// fc00::/7.
    UniqueLocal,
}

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `::ffff:a.b.c.d`
    Mapped,
    /// `::a.b.c.d` (deprecated)
    Compatible,
    /// `64:ff9b::a.b.c.d`
    Nat64,
    /// `2002:aabb:ccdd::/48`
    SixToFour,
}

/// An address judged: what it is, and, for an IPv6 address that carries an IPv4 one, how and
/// which (then `kind` is the IPv4 address's: it reaches the same place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub kind: Kind,
    pub embedded: Option<(Form, Ipv4Addr)>,
}

pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => Class {
            kind: kind_v4(v4),
            embedded: None,
        },
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some((form, v4)) => Class {
                kind: kind_v4(v4),
                embedded: Some((form, v4)),
            },
            None => Class {
                kind: kind_v6(v6),
                embedded: None,
            },
        },
    }
}

fn kind_v4(ip: Ipv4Addr) -> Kind {
    let o = ip.octets();
    if ip.is_loopback() {
        Kind::Loopback
    } else if ip.is_unspecified() {
        Kind::Unspecified
    } else if o[0] == 0 {
        Kind::ThisNetwork
    } else if ip.is_private() {
        Kind::Private
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Kind::SharedNat
    } else if ip.is_link_local() {
        Kind::LinkLocal
    } else if ip.is_multicast() {
        Kind::Multicast
    } else if ip.is_broadcast() {
        Kind::Broadcast
    } else if o[0] >= 240 {
        Kind::Reserved
    } else {
        Kind::Public
    }
}

fn kind_v6(ip: Ipv6Addr) -> Kind {
    let s0 = ip.segments()[0];
    if ip.is_loopback() {
        Kind::Loopback
    } else if ip.is_unspecified() {
        Kind::Unspecified
    } else if ip.is_multicast() {
        Kind::Multicast
    } else if ip.is_unicast_link_local() {
        Kind::LinkLocalV6
    } else if s0 & 0xfe00 == 0xfc00 {
        Kind::UniqueLocal
    } else {
        Kind::Public
    }
}

/// The IPv4 address an IPv6 one carries, and how.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Form, Ipv4Addr)> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some((Form::Mapped, v4(hi, lo))),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some((Form::Compatible, v4(hi, lo))),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some((Form::Nat64, v4(hi, lo))),
        [0x2002, hi, lo, ..] => Some((Form::SixToFour, v4(hi, lo))),
        _ => None,
    }
}

/// Why an address is refused: shown after the address ("10.0.0.1 is private (...)").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(Class);

impl Refusal {
    pub fn kind(self) -> Kind {
        self.0.kind
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.0.kind {
            Kind::Public => "is public",
            Kind::Loopback => "is a loopback address",
            Kind::Unspecified => "is unspecified",
            Kind::ThisNetwork => "is in 0.0.0.0/8 (this network), which is not a destination",
            Kind::Private => "is private (10/8, 172.16/12, 192.168/16)",
            Kind::SharedNat => "is carrier-grade NAT space (100.64.0.0/10)",
            Kind::LinkLocal => "is link-local (169.254.0.0/16 holds the metadata service)",
            Kind::LinkLocalV6 => "is link-local (fe80::/10)",
            Kind::Multicast => "is a multicast address",
            Kind::Broadcast => "is the broadcast address",
            Kind::Reserved => "is in the reserved range 240.0.0.0/4",
            Kind::UniqueLocal => "is a unique local (private) address, fc00::/7",
        };
        match self.0.embedded {
            None => f.write_str(what),
            Some((form, v4)) => {
                let form = match form {
                    Form::Mapped => "an IPv4-mapped",
                    Form::Compatible => "an IPv4-compatible",
                    Form::Nat64 => "a NAT64",
                    Form::SixToFour => "a 6to4",
                };
                match self.0.kind {
                    Kind::Public => {
                        write!(f, "is {form} form of {v4}, which is deprecated: write {v4}")
                    }
                    _ => write!(f, "is {form} form of {v4}, which {what}"),
                }
            }
        }
    }
}

/// Why a backend may not be at `ip`, or `None` when it may. Private ranges are normal: backends
/// live on the customer's private network. Loopback only in development (`allow_loopback`).
pub fn backend_refusal(ip: IpAddr, allow_loopback: bool) -> Option<Refusal> {
    let class = classify(ip);
    let refused = match class.kind {
        Kind::Public | Kind::Private | Kind::SharedNat | Kind::UniqueLocal => false,
        Kind::Loopback => !allow_loopback,
        Kind::Unspecified
        | Kind::ThisNetwork
        | Kind::LinkLocal
        | Kind::LinkLocalV6
        | Kind::Multicast
        | Kind::Broadcast
        | Kind::Reserved => true,
    };
    refused.then_some(Refusal(class))
}

/// Why the VPSie API may not be reached at `ip`, or `None` when it may: only public unicast
/// addresses (a token sent anywhere else could reach the metadata service or a tenant's
/// network). Loopback only in development, for the local stand-in.
pub fn api_refusal(ip: IpAddr, allow_loopback: bool) -> Option<Refusal> {
    let class = classify(ip);
    let refused = match class.kind {
        // The deprecated IPv4-compatible form is no way to name a real API.
        Kind::Public => matches!(class.embedded, Some((Form::Compatible, _))),
        Kind::Loopback => !allow_loopback,
        _ => true,
    };
    refused.then_some(Refusal(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Class {
        classify(s.parse().unwrap())
    }

    #[test]
    fn every_ipv6_form_of_an_ipv4_address_is_judged_as_that_address() {
        let metadata = Ipv4Addr::new(169, 254, 169, 254);
        for (text, form) in [
            ("::ffff:169.254.169.254", Form::Mapped),
            ("::169.254.169.254", Form::Compatible),
            ("64:ff9b::a9fe:a9fe", Form::Nat64),
            ("2002:a9fe:a9fe::", Form::SixToFour),
            ("2002:a9fe:a9fe:1::5", Form::SixToFour),
        ] {
            let c = class(text);
            assert_eq!(c.kind, Kind::LinkLocal, "{text}");
            assert_eq!(c.embedded, Some((form, metadata)), "{text}");
            for refusal in [
                backend_refusal(text.parse().unwrap(), true),
                api_refusal(text.parse().unwrap(), true),
            ] {
                let why = refusal.expect(text).to_string();
                assert!(
                    why.contains("169.254.169.254") && why.contains("metadata service"),
                    "{text}: {why}"
                );
            }
        }
        // `::` and `::1` are IPv6's own.
        assert_eq!(class("::").kind, Kind::Unspecified);
        assert_eq!(class("::1").kind, Kind::Loopback);
        assert_eq!(class("::1").embedded, None);
    }

    #[test]
    fn the_two_policies_differ_only_where_they_should() {
        let both = |s: &str, loopback: bool| {
            let ip: IpAddr = s.parse().unwrap();
            (
                backend_refusal(ip, loopback).is_some(),
                api_refusal(ip, loopback).is_some(),
            )
        };
        // (backend refused, API refused)
        for (s, want) in [
            ("203.0.113.7", (false, false)),
            ("2606:4700::1", (false, false)),
            ("2002:cb00:7107::1", (false, false)),
            ("10.0.0.1", (false, true)),
            ("100.64.0.1", (false, true)),
            ("fd00::1", (false, true)),
            ("::ffff:10.0.0.1", (false, true)),
            ("::203.0.113.7", (false, true)),
            ("127.0.0.1", (true, true)),
            ("::ffff:127.0.0.1", (true, true)),
            ("0.1.2.3", (true, true)),
            ("fe80::1", (true, true)),
            ("ff02::1", (true, true)),
            ("255.255.255.255", (true, true)),
            ("240.0.0.1", (true, true)),
        ] {
            assert_eq!(both(s, false), want, "{s}");
        }
        // Development opens loopback, and only loopback.
        assert_eq!(both("127.0.0.1", true), (false, false));
        assert_eq!(both("::1", true), (false, false));
        assert_eq!(both("10.0.0.1", true), (false, true));
    }

    #[test]
    fn a_refusal_names_the_rule() {
        let why = |s: &str| {
            backend_refusal(s.parse().unwrap(), false)
                .unwrap()
                .to_string()
        };
        assert_eq!(why("127.0.0.1"), "is a loopback address");
        assert_eq!(
            why("::ffff:7f00:1"),
            "is an IPv4-mapped form of 127.0.0.1, which is a loopback address"
        );
        assert_eq!(why("fe80::1"), "is link-local (fe80::/10)");
        let api = api_refusal("::8.8.8.8".parse().unwrap(), false).unwrap();
        assert_eq!(
            api.to_string(),
            "is an IPv4-compatible form of 8.8.8.8, which is deprecated: write 8.8.8.8"
        );
    }
}
