//! Source lists (`allowedSources` / `deniedSources`) as Envoy filter chains.
//!
//! Envoy picks a listener's filter chain by the connection's own source address (longest prefix
//! wins) before any byte is read, and a client that no chain admits is closed at once. So a rule
//! with source lists gets, per TLS name group, one serving chain per allowed entry and one
//! refusing chain for everyone else.
//!
//! Why one chain per allowed entry, holding the entry minus every denied range inside it: when a
//! listener changes, Envoy keeps the connections of every chain that is unchanged and drains
//! those of chains that changed or went away. Adding or removing an allowed entry therefore
//! touches only that entry's connections; adding or removing a denied range drains the entry
//! that contains it (with no allow list, everyone), so that a client denied now is closed within
//! the drain time. Envoy has no way to close one address's connections on a chain that stays.

use crate::spec::Sources;
use ipnet::IpNet;
use std::collections::HashSet;

/// At most this many serving chains in one listener (entries times TLS name groups). Each chain
/// carries the rule's whole HTTP connection manager, and Envoy's cost grows with their number:
/// 1,000 entries on an https rule with 11 certificates (11,011 chains) rendered 85 MB of config
/// and Envoy took 21 s to validate it. Past the budget, each group gets one serving chain with
/// every range, and any list change drains all of the rule's connections.
pub const MAX_SERVING_CHAINS: usize = 1_024;

/// The source ranges of each serving chain, or `None` when the lists restrict nobody (the rule
/// keeps its single chain, as without lists). A serving chain whose entry is wholly denied is
/// left out; a range that two entries would both hold stays with the more specific entry, since
/// Envoy refuses two chains with the same match. `groups` is how many times the listener repeats
/// them (one per TLS name group).
pub fn serving_ranges(s: &Sources, groups: usize) -> Option<Vec<Vec<IpNet>>> {
    if !s.restricts() {
        return None;
    }
    let everyone: [IpNet; 2] = [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    let entries: &[IpNet] = if s.allowed.is_empty() {
        &everyone
    } else {
        &s.allowed
    };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(entries[i].prefix_len()));
    let mut taken: HashSet<IpNet> = HashSet::new();
    let mut chains: Vec<Vec<IpNet>> = vec![Vec::new(); entries.len()];
    for i in order {
        let mut pieces = Vec::new();
        subtract(entries[i], &s.denied, &mut pieces);
        pieces.retain(|p| taken.insert(*p));
        chains[i] = pieces;
    }
    chains.retain(|c| !c.is_empty());
    if chains.len() * groups.max(1) > MAX_SERVING_CHAINS {
        let mut all: Vec<IpNet> = chains.into_iter().flatten().collect();
        all.sort();
        return Some(vec![all]);
    }
    Some(chains)
}

/// Appends the smallest set of ranges that covers `net` minus every range of `denied`.
fn subtract(net: IpNet, denied: &[IpNet], out: &mut Vec<IpNet>) {
    if denied.iter().any(|d| d.contains(&net)) {
        return;
    }
    // Only the denied ranges inside `net` matter below it.
    let inside: Vec<IpNet> = denied
        .iter()
        .filter(|d| net.contains(*d))
        .copied()
        .collect();
    if inside.is_empty() {
        out.push(net);
        return;
    }
    // A denied range lies strictly inside: split in halves until each half is clear or gone.
    let Ok(halves) = net.subnets(net.prefix_len() + 1) else {
        return;
    };
    for half in halves {
        subtract(half, &inside, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn sources(allowed: &[&str], denied: &[&str]) -> Sources {
        Sources {
            allowed: nets(allowed),
            denied: nets(denied),
        }
    }

    fn shown(chains: Option<Vec<Vec<IpNet>>>) -> Option<Vec<Vec<String>>> {
        chains.map(|c| {
            c.iter()
                .map(|r| r.iter().map(|n| n.to_string()).collect())
                .collect()
        })
    }

    #[test]
    fn no_lists_restrict_nobody() {
        assert_eq!(serving_ranges(&Sources::default(), 1), None);
    }

    #[test]
    fn each_allowed_entry_is_its_own_chain() {
        assert_eq!(
            shown(serving_ranges(
                &sources(&["10.0.0.0/8", "2001:db8::/32"], &[]),
                1
            )),
            Some(vec![
                vec!["10.0.0.0/8".into()],
                vec!["2001:db8::/32".into()]
            ])
        );
    }

    #[test]
    fn a_denied_range_is_cut_out_of_the_entry_that_holds_it() {
        let chains = serving_ranges(
            &sources(&["10.0.0.0/30", "192.0.2.0/24"], &["10.0.0.1/32"]),
            1,
        )
        .unwrap();
        assert_eq!(
            shown(Some(chains.clone())).unwrap(),
            [
                vec!["10.0.0.0/32".to_owned(), "10.0.0.2/31".into()],
                vec!["192.0.2.0/24".into()]
            ]
        );
        // What remains is exactly the allowed addresses minus the denied one.
        let covered = |ip: &str| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            chains.iter().flatten().any(|n| n.contains(&ip))
        };
        for (ip, want) in [
            ("10.0.0.0", true),
            ("10.0.0.1", false),
            ("10.0.0.2", true),
            ("10.0.0.3", true),
            ("10.0.0.4", false),
        ] {
            assert_eq!(covered(ip), want, "{ip}");
        }
    }

    #[test]
    fn without_an_allow_list_everyone_but_the_denied_is_served() {
        let chains = serving_ranges(&sources(&[], &["203.0.113.7/32"]), 1).unwrap();
        assert_eq!(chains.len(), 2, "IPv4 and IPv6");
        assert_eq!(chains[0].len(), 32, "0.0.0.0/0 minus one host");
        assert_eq!(shown(Some(vec![chains[1].clone()])).unwrap()[0], ["::/0"]);
        let ip: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        assert!(!chains.iter().flatten().any(|n| n.contains(&ip)));
    }

    #[test]
    fn past_the_budget_each_group_has_one_serving_chain() {
        let many: Vec<String> = (0..100).map(|i| format!("10.0.{i}.0/24")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let s = sources(&many, &["10.0.7.1/32"]);
        let per_entry = serving_ranges(&s, 10).unwrap();
        assert_eq!(
            per_entry.len(),
            100,
            "100 entries, 10 groups: within the budget"
        );
        let merged = serving_ranges(&s, 11).unwrap();
        assert_eq!(merged.len(), 1, "1,100 chains would be too many");
        assert_eq!(
            merged[0],
            per_entry.into_iter().flatten().collect::<Vec<_>>(),
            "the same ranges"
        );
    }

    #[test]
    fn an_entry_wholly_denied_has_no_chain() {
        assert_eq!(
            shown(serving_ranges(
                &sources(&["10.1.0.0/16"], &["10.0.0.0/8"]),
                1
            )),
            Some(vec![])
        );
    }

    #[test]
    fn a_range_two_entries_would_hold_stays_with_the_more_specific() {
        // 10.0.0.0/8 minus 10.128.0.0/9 is 10.0.0.0/9, which is also an entry of its own.
        assert_eq!(
            shown(serving_ranges(
                &sources(&["10.0.0.0/8", "10.0.0.0/9"], &["10.128.0.0/9"]),
                1
            )),
            Some(vec![vec!["10.0.0.0/9".into()]])
        );
    }
}
