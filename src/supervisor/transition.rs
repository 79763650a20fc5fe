//! Pools that move while they serve, finished off the apply path.
//!
//! An apply is done when Envoy has accepted every resource (what HAProxy's runtime API means
//! too). A pool that gains hosts and loses others while it carries traffic must not lose its old
//! hosts before the new ones can serve: Envoy starts a host added to a health-checked cluster
//! unhealthy until its first check passes, so a pool left with only new hosts would answer "no
//! healthy upstream". So the apply writes the union (the new list plus the old hosts that
//! served) and records a [`Transition`]; the supervisor's loop then watches Envoy's stats and,
//! once every new host has passed, writes the pool's own list (the old hosts go). A later
//! change supersedes an unfinished transition (its new union is built on the hosts that served,
//! never on unchecked ones, so it cannot grow change after change). A transition that does not
//! finish within `confirm_timeout_s` is reported once, not rolled back: its old hosts still
//! serve, a host that failed its check gets no traffic.
//!
//! The signal is cheap in the usual case: every host of the pool healthy (`membership_healthy`
//! = `membership_total` in `/stats`) means every new one passed. Only when some host is not
//! healthy (an old one down, a new one failing) is the pool's per-host health read
//! (`/clusters` filtered to it), at a pace bounded by what a read costs. (Envoy's
//! `ignore_new_hosts_until_first_hc` would tell "checked" apart from "failed" in the counts,
//! but it makes every first answer rebuild the pool's host lists on Envoy's main thread: O(n²)
//! for n new hosts. Not set.)
//!
//! A pool that only gains hosts has nothing to hold: its transition only follows the new hosts
//! until they pass, for `status` (and a report when they do not). Pools that are new or
//! redefined are warmed by Envoy itself (CDS waits for every first check of a new cluster) and
//! need none.
//!
//! [`plan`] and [`judge`] are pure; the supervisor does the I/O.

use crate::envoy::admin::XdsStats;
use crate::render::xds::{self, ClusterLoadAssignment, EndpointList, Xds};
use crate::spec::ConfigHash;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A pool on its way from the hosts that served to the config's own list.
#[derive(Debug, Clone)]
pub(super) struct Transition {
    /// Names it (a UUID): the id of the event that reports it stuck.
    pub id: String,
    pub pool: String,
    /// The config whose list this is.
    pub hash: ConfigHash,
    /// The endpoint list known to serve, kept beside the new one until the new hosts passed
    /// their first check. `None`: the pool only gains hosts, nothing is held.
    pub settled: Option<EndpointList>,
    /// The pool's own endpoint list (already on disk when nothing is held).
    pub target: xds::File,
    /// The hosts (`address:port`, as Envoy names them) that may not have been checked yet.
    pub added: BTreeSet<String>,
    /// How many hosts go once it finishes.
    pub removing: usize,
    pub started: Instant,
    pub deadline: Instant,
    /// Hosts of the pool (old ones included) not healthy, as last read.
    pub unhealthy: u64,
    /// Set once the pool's own list is written: the version Envoy must report.
    pub finishing: Option<String>,
    /// Set once reported as not finished in time: the new hosts that had not passed.
    pub stuck: Option<Vec<String>>,
    /// When the per-host health may be read next (only when the counts cannot decide).
    pub next_hosts_read: Instant,
    /// The pool's healthy count as last read, and since when it has not moved: while new hosts
    /// keep passing there is no need to read them one by one.
    pub healthy: u64,
    pub healthy_since: Instant,
    /// The union went in as a new cluster object that Envoy warms (see [`WARM_FROM`]); true
    /// until Envoy has swapped it in. Meanwhile the old object serves, and the pool's counts in
    /// `/stats` (shared by both objects) say nothing about the new hosts.
    pub warming: bool,
}

/// From how many new hosts a pool moves as a new cluster object that Envoy warms rather than
/// as an endpoint update of the one that serves. Each host that passes its first
/// check in a serving cluster makes Envoy rebuild the pool's host lists on its main thread
/// (O(pool) each, so a pool moved whole costs O(n²): ~12 s at 10,000 hosts, with the admin API
/// waiting behind it); a warming cluster rebuilds them once, when every first check is in. The
/// price: every host of the union is checked again, and the old object's upstream connections
/// drain (in-flight requests finish on them) and are made anew on the new one. Both costs grow
/// with the pool: a rebuild ~0.12 µs a host (1.2 ms at 10,000), a first check ~17.5 µs of the
/// main thread (175 ms for 10,000 new hosts), so the new object costs less main-thread time
/// from ~150 new hosts whatever the pool's size (~17.5 / 0.12), and fewer churns its
/// connections for little.
pub const WARM_FROM: usize = 150;

/// What an apply writes for the pools, and the transitions it leaves.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Pool → the endpoints file to write now (the union, or the pool's own list).
    pub files: BTreeMap<String, xds::File>,
    pub transitions: BTreeMap<String, Transition>,
    /// Unfinished transitions this apply replaces or ends.
    pub superseded: usize,
    /// Pools whose file goes in as a new cluster object that Envoy warms (a file of a new
    /// generation, and the cluster pointed at it), with the number of hosts it holds.
    pub warm: BTreeMap<String, usize>,
    /// Pools redefined (their cluster changed): a file of a new generation too, but the apply
    /// waits for their warm, as for a new cluster.
    pub redefined: BTreeMap<String, usize>,
}

/// How Envoy names a host in `/clusters`.
pub(super) fn host_key(address: &str, port: u32) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn hosts(la: &ClusterLoadAssignment) -> BTreeSet<String> {
    la.list().map(|(a, p, _)| host_key(a, p)).collect()
}

/// The file of pool `name` holding `new` and every host of `old` it lacks.
fn union_file(name: &str, new: &EndpointList, old: &EndpointList) -> xds::File {
    let union = new.assignment().union(&old.assignment());
    xds::endpoints_file(name, &EndpointList::new(&union))
}

/// Decides, for every pool of `new`, what to write now and what transition follows. `live` is
/// the config Envoy was given last (its lists as configured, not the unions), `current` the
/// transitions still running, `serving(pool)` whether a pool has a healthy host now.
pub(super) fn plan(
    live: &Xds,
    current: &BTreeMap<String, Transition>,
    new: &Xds,
    hash: &ConfigHash,
    serving: impl Fn(&str) -> bool,
    timeout: Duration,
    now: Instant,
) -> Plan {
    let mut out = Plan::default();
    for (name, la) in &new.endpoints {
        let own = xds::endpoints_file(name, la);
        let prev = current.get(name);
        let same_pool =
            live.clusters.contains_key(name) && live.clusters.get(name) == new.clusters.get(name);
        let Some(live_la) = live.endpoints.get(name).filter(|_| same_pool) else {
            // New or redefined: Envoy warms it with every first check before it serves. A
            // redefined pool's list goes into a file of its own generation: the object that
            // serves until the new one is warm must keep reading its old list (the same file
            // would hand it the new hosts unchecked and take its old ones away: 503s).
            if live.clusters.contains_key(name) {
                out.redefined
                    .insert(name.clone(), la.assignment().list().count());
            }
            out.files.insert(name.clone(), own);
            continue;
        };
        if let Some(t) = prev.filter(|_| live_la == la) {
            // Not changed by this apply: its transition goes on as it is.
            let on_disk = match (&t.settled, &t.finishing) {
                (Some(old), None) => union_file(name, la, old),
                _ => own,
            };
            out.files.insert(name.clone(), on_disk);
            out.transitions.insert(name.clone(), t.clone());
            continue;
        }
        if prev.is_none() && live_la == la {
            // Unchanged and not moving: nothing to hold, and no list to parse.
            out.files.insert(name.clone(), own);
            continue;
        }
        // The hosts that served: a held list (unless the pool's own list is already going in,
        // every new host having passed), else the live one.
        let base = prev
            .filter(|t| t.finishing.is_none())
            .and_then(|t| t.settled.as_ref())
            .unwrap_or(live_la);
        let want = hosts(&la.assignment());
        let had = hosts(&base.assignment());
        // New to the pool, or added by an unfinished change and maybe still unchecked.
        let added: BTreeSet<String> = want
            .iter()
            .filter(|h| !had.contains(*h) || prev.is_some_and(|t| t.added.contains(*h)))
            .cloned()
            .collect();
        let removing = had.difference(&want).count();
        if added.is_empty() {
            out.files.insert(name.clone(), own);
            continue;
        }
        // A pool still holding its old hosts served (its counts may be a warming object's).
        let held = prev.is_some_and(|t| t.settled.is_some());
        let settled = (removing > 0 && (held || serving(name))).then(|| base.clone());
        // Hosts Envoy has no object for yet (not in the list it was given, nor among the held
        // ones): whether or not the pool holds old hosts (even one that serves nothing or only
        // gains would cost a rebuild per passing host). Hosts an earlier change added are in
        // Envoy already, checked or being checked.
        let live = if std::ptr::eq(base, live_la) {
            BTreeSet::new()
        } else {
            hosts(&live_la.assignment())
        };
        let fresh = want
            .iter()
            .filter(|h| !had.contains(*h) && !live.contains(*h))
            .count();
        let warm_now = fresh >= WARM_FROM;
        if warm_now {
            let held = settled.as_ref().map_or(0, |_| removing);
            out.warm.insert(name.clone(), want.len() + held);
        }
        // Until Envoy swaps in an object still warming from an earlier change, the counts
        // are not this pool's own either.
        let warming = warm_now || prev.is_some_and(|t| t.warming);
        let write = match &settled {
            Some(old) => union_file(name, la, old),
            None => own.clone(),
        };
        out.files.insert(name.clone(), write);
        out.transitions.insert(
            name.clone(),
            Transition {
                id: uuid::Uuid::new_v4().to_string(),
                pool: name.clone(),
                hash: hash.to_owned(),
                removing: if settled.is_some() { removing } else { 0 },
                settled,
                target: own,
                added,
                started: now,
                deadline: now + timeout,
                unhealthy: 0,
                finishing: None,
                stuck: None,
                next_hosts_read: now,
                healthy: 0,
                healthy_since: now,
                warming,
            },
        );
    }
    // Every running transition not carried over was replaced or ended by this change.
    out.superseded = current
        .iter()
        .filter(|(name, t)| out.transitions.get(*name).map(|n| &n.id) != Some(&t.id))
        .count();
    out
}

/// What to do next with a transition, from Envoy's stats (and, when the counts cannot tell, the
/// pool's per-host health).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Still waiting.
    Wait,
    /// Every new host passed: write the pool's own list.
    Finish,
    /// Over (Envoy took the pool's own list, or every host a pool that only gained got passed).
    Done,
    /// The counts cannot tell whether the new hosts passed: read the pool's hosts.
    ReadHosts,
}

pub(super) fn judge(
    t: &Transition,
    s: &XdsStats,
    health: Option<&BTreeMap<String, bool>>,
) -> Verdict {
    if let Some(v) = &t.finishing {
        let stat = format!("cluster.{}", crate::envoy::admin::stat_name(&t.pool));
        return if s.version(&stat) == Some(v) {
            Verdict::Done
        } else {
            Verdict::Wait
        };
    }
    let healthy = s.cluster_number(&t.pool, "membership_healthy");
    let passed = if healthy >= s.cluster_number(&t.pool, "membership_total") {
        // Every host of the pool healthy: the new ones passed, whatever the old ones did.
        true
    } else if usize::try_from(healthy).unwrap_or(usize::MAX) < t.added.len() {
        // Fewer healthy hosts than new ones: some new one has not passed, no need to read
        // which (a read costs Envoy's main thread ~1 s at 10,000 hosts).
        return Verdict::Wait;
    } else {
        match health {
            Some(h) => t.added.iter().all(|a| h.get(a) == Some(&true)),
            None => return Verdict::ReadHosts,
        }
    };
    match (passed, t.settled.is_some()) {
        (false, _) => Verdict::Wait,
        (true, true) => Verdict::Finish,
        (true, false) => Verdict::Done,
    }
}

/// The new hosts that have not passed, for a report.
pub(super) fn not_passed(t: &Transition, health: &BTreeMap<String, bool>) -> Vec<String> {
    t.added
        .iter()
        .filter(|a| health.get(*a) != Some(&true))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::{json, Value};

    fn la(ports: &[u32]) -> Value {
        let eps: Vec<Value> = ports
            .iter()
            .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
            .collect();
        json!({"cluster_name": "web", "endpoints": [{"lb_endpoints": eps}]})
    }

    fn config(ports: &[u32]) -> Xds {
        Xds {
            base: Value::Null,
            bootstrap_key: String::new(),
            dir: "/x".into(),
            listeners: BTreeMap::new(),
            routes: BTreeMap::new(),
            clusters: [("web".to_owned(), json!({"name": "web"}))].into(),
            endpoints: [(
                "web".to_owned(),
                EndpointList::from_json(&la(ports).to_string()).unwrap(),
            )]
            .into(),
            secrets: BTreeMap::new(),
            tickets: false,
            runtime: BTreeMap::new(),
        }
    }

    fn plan_of(
        live: &[u32],
        cur: &BTreeMap<String, Transition>,
        new: &[u32],
        serving: bool,
    ) -> Plan {
        let t = Duration::from_secs(5);
        plan(
            &config(live),
            cur,
            &config(new),
            &"0".repeat(64).parse().unwrap(),
            |_| serving,
            t,
            Instant::now(),
        )
    }

    fn hosts_in(f: &xds::File) -> BTreeSet<String> {
        let file = xds::endpoints::DiscoveryResponse::decode(f.data.as_slice()).unwrap();
        hosts(&ClusterLoadAssignment::decode(file.resources[0].value.as_slice()).unwrap())
    }

    fn set(ports: &[u32]) -> BTreeSet<String> {
        ports.iter().map(|p| host_key("127.0.0.1", *p)).collect()
    }

    #[test]
    fn a_serving_pool_that_moves_keeps_its_old_hosts_beside_the_new_ones() {
        let p = plan_of(&[1, 2], &BTreeMap::new(), &[2, 3], true);
        assert_eq!(hosts_in(&p.files["web"]), set(&[1, 2, 3]));
        let t = &p.transitions["web"];
        assert_eq!(t.added, set(&[3]));
        assert_eq!(t.removing, 1);
        assert_eq!(hosts_in(&t.target), set(&[2, 3]));
        assert_eq!(p.superseded, 0);
    }

    #[test]
    fn a_pool_that_serves_nothing_or_only_gains_or_only_loses_takes_its_list_at_once() {
        let p = plan_of(&[1, 2], &BTreeMap::new(), &[2, 3], false);
        assert_eq!(hosts_in(&p.files["web"]), set(&[2, 3]));
        assert!(p.transitions["web"].settled.is_none(), "nothing held");
        let p = plan_of(&[1], &BTreeMap::new(), &[1, 2], true);
        assert_eq!(hosts_in(&p.files["web"]), set(&[1, 2]));
        assert_eq!(p.transitions["web"].removing, 0);
        let p = plan_of(&[1, 2], &BTreeMap::new(), &[1], true);
        assert_eq!(hosts_in(&p.files["web"]), set(&[1]));
        assert!(p.transitions.is_empty());
        // A re-weighting is no move.
        let p = plan_of(&[1, 2], &BTreeMap::new(), &[1, 2], true);
        assert!(p.transitions.is_empty());
    }

    #[test]
    fn an_unchanged_pool_keeps_its_transition_and_a_changed_one_builds_on_what_served() {
        let first = plan_of(&[1, 2], &BTreeMap::new(), &[3, 4], true);
        // Another part of the config changed: the same transition, the same file.
        let again = plan_of(&[3, 4], &first.transitions, &[3, 4], true);
        assert_eq!(again.transitions["web"].id, first.transitions["web"].id);
        assert_eq!(again.files["web"], first.files["web"]);
        assert_eq!(again.superseded, 0);
        // The pool moves again before 3 and 4 passed: 1 and 2 (which served) stay, 3 and 4
        // (never checked) are not held, and 4, still in the list, may still be unchecked.
        let next = plan_of(&[3, 4], &first.transitions, &[4, 5], true);
        assert_eq!(hosts_in(&next.files["web"]), set(&[1, 2, 4, 5]));
        let t = &next.transitions["web"];
        assert_eq!(t.added, set(&[4, 5]));
        assert_eq!(t.removing, 2);
        assert_ne!(t.id, first.transitions["web"].id);
        assert_eq!(next.superseded, 1);
        // Back to what served: nothing to wait for.
        let back = plan_of(&[3, 4], &first.transitions, &[1, 2], true);
        assert!(back.transitions.is_empty());
        assert_eq!(hosts_in(&back.files["web"]), set(&[1, 2]));
        assert_eq!(back.superseded, 1);
    }

    fn stats(healthy: u64, total: u64, version: Option<&str>) -> XdsStats {
        let mut s = XdsStats::default();
        for (k, v) in [("membership_healthy", healthy), ("membership_total", total)] {
            s.numbers.insert(format!("cluster.web.{k}"), v);
        }
        if let Some(v) = version {
            s.versions
                .insert("cluster.web.version_text".into(), v.to_owned());
        }
        s
    }

    #[test]
    fn a_transition_finishes_once_every_new_host_passed_and_envoy_took_the_list() {
        let mut t = plan_of(&[1, 2], &BTreeMap::new(), &[2, 3], true).transitions["web"].clone();
        assert_eq!(judge(&t, &stats(3, 3, None), None), Verdict::Finish);
        // A host is not healthy: the counts cannot tell which; the hosts can.
        assert_eq!(judge(&t, &stats(2, 3, None), None), Verdict::ReadHosts);
        // Fewer healthy than new hosts: a new one has not passed, whichever it is.
        assert_eq!(judge(&t, &stats(0, 3, None), None), Verdict::Wait);
        let mut h: BTreeMap<String, bool> = [(host_key("127.0.0.1", 1), false)].into();
        h.insert(host_key("127.0.0.1", 2), true);
        h.insert(host_key("127.0.0.1", 3), true);
        assert_eq!(judge(&t, &stats(2, 3, None), Some(&h)), Verdict::Finish);
        h.insert(host_key("127.0.0.1", 3), false);
        assert_eq!(judge(&t, &stats(2, 3, None), Some(&h)), Verdict::Wait);
        assert_eq!(not_passed(&t, &h), vec![host_key("127.0.0.1", 3)]);
        t.finishing = Some(t.target.version.clone());
        assert_eq!(judge(&t, &stats(2, 2, Some("old")), None), Verdict::Wait);
        let v = t.target.version.clone();
        assert_eq!(judge(&t, &stats(2, 2, Some(&v)), None), Verdict::Done);
        // Only gaining: over once every new host passed; nothing to write.
        let g = plan_of(&[1], &BTreeMap::new(), &[1, 2], true).transitions["web"].clone();
        assert_eq!(judge(&g, &stats(1, 2, None), None), Verdict::ReadHosts);
        assert_eq!(judge(&g, &stats(2, 2, None), None), Verdict::Done);
    }

    #[test]
    fn a_pool_gaining_many_hosts_moves_as_a_warmed_cluster_and_a_held_one_keeps_holding() {
        let old: Vec<u32> = (1..=2).collect();
        let many: Vec<u32> = (100..100 + WARM_FROM as u32).collect();
        let few: Vec<u32> = (100..99 + WARM_FROM as u32).collect();
        let p = plan_of(&old, &BTreeMap::new(), &many, true);
        assert!(p.warm.contains_key("web") && p.transitions["web"].warming);
        assert_eq!(p.warm["web"], WARM_FROM + 2, "the union's hosts");
        let mut both = set(&many);
        both.extend(set(&old));
        assert_eq!(hosts_in(&p.files["web"]), both, "the union, warmed whole");
        let p = plan_of(&old, &BTreeMap::new(), &few, true);
        assert!(p.warm.is_empty() && !p.transitions["web"].warming);
        // Serving nothing, or only gaining: warmed too (each pass would rebuild the lists).
        let p = plan_of(&old, &BTreeMap::new(), &many, false);
        assert!(p.warm.contains_key("web"));
        assert_eq!(hosts_in(&p.files["web"]), set(&many));
        let mut grown = old.clone();
        grown.extend(&many);
        let p = plan_of(&old, &BTreeMap::new(), &grown, true);
        assert!(p.warm.contains_key("web") && p.transitions["web"].settled.is_none());
        // A pool holding its old hosts while a new object warms (its counts then are the
        // warming object's: none healthy) still served: a change meanwhile keeps holding them.
        let first = plan_of(&old, &BTreeMap::new(), &many, true);
        let next: Vec<u32> = (500..500 + WARM_FROM as u32).collect();
        let again = plan_of(&many, &first.transitions, &next, false);
        let mut held = set(&next);
        held.extend(set(&old));
        assert_eq!(hosts_in(&again.files["web"]), held);
        assert!(again.warm.contains_key("web"));
        // A change that brings no host Envoy lacks (one of the new ones dropped) is no new
        // object, but the one still warming keeps the transition waiting for it.
        let fewer = &many[1..];
        let p = plan_of(&many, &first.transitions, fewer, true);
        assert!(p.warm.is_empty());
        assert!(p.transitions["web"].warming);
        // Once no longer warming, such a change does not wait for anything more.
        let mut swapped = first.transitions.clone();
        swapped.get_mut("web").unwrap().warming = false;
        assert!(!plan_of(&many, &swapped, fewer, true).transitions["web"].warming);
    }

    #[test]
    fn a_redefined_pool_gets_a_file_of_its_own_and_a_new_one_does_not() {
        let mut new = config(&[3, 4]);
        new.clusters
            .insert("web".into(), json!({"name": "web", "x": 1}));
        let t = Duration::from_secs(5);
        let hash = "0".repeat(64).parse().unwrap();
        let p = plan(
            &config(&[1, 2]),
            &BTreeMap::new(),
            &new,
            &hash,
            |_| true,
            t,
            Instant::now(),
        );
        assert_eq!(p.redefined.get("web"), Some(&2));
        assert!(p.warm.is_empty() && p.transitions.is_empty());
        let mut none = config(&[1]);
        none.clusters.clear();
        none.endpoints.clear();
        let p = plan(
            &none,
            &BTreeMap::new(),
            &new,
            &hash,
            |_| true,
            t,
            Instant::now(),
        );
        assert!(
            p.redefined.is_empty(),
            "a new pool has no old object to keep serving"
        );
    }

    #[test]
    fn hosts_are_named_as_envoy_names_them() {
        assert_eq!(host_key("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(host_key("2001:2::1", 443), "[2001:2::1]:443");
    }
}
