//! Closed sets of label values, and metric vectors that take only their own set.
//!
//! A label written as a string at each call site can drift from the set the dashboard, the
//! alerts and the docs know (a typo makes a new series nobody watches). Here each set is an enum,
//! a vector is typed by it, and every value's series exists from the start, so a `rate()` over
//! it sees its first increment.

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use std::marker::PhantomData;

/// A closed set of label values.
pub trait Label: Copy + 'static {
    const ALL: &'static [Self];
    fn as_label(self) -> &'static str;
}

macro_rules! labels {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl Label for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];

            fn as_label(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

labels!(
    /// How one poll ended.
    Poll {
        Applied => "applied",
        Unchanged => "unchanged",
        NotModified => "not_modified",
        Rejected => "rejected",
        RolledBack => "rolled_back",
        Failed => "failed",
        Critical => "critical",
        Unreachable => "unreachable",
    }
);

labels!(
    /// How one apply ended (the agent's count and the supervisor's alike).
    Apply {
        Applied => "applied",
        Rejected => "rejected",
        RolledBack => "rolled_back",
        Critical => "critical",
        Error => "error",
    }
);

labels!(
    /// A request to the VPSie API.
    ApiOp {
        Fetch => "fetch",
        Event => "event",
    }
);

labels!(
    /// How a config was rendered: from the templates, or the last config with only its
    /// endpoint lists rewritten.
    Render {
        Full => "full",
        Spliced => "spliced",
    }
);

labels!(
    /// One attempt to obtain a managed certificate.
    Acme {
        Issued => "issued",
        Renewed => "renewed",
        Failed => "failed",
    }
);

labels!(
    /// Why a backend host name's answer could not be used as it came.
    BackendProblem {
        Refused => "refused",
        Unresolved => "unresolved",
    }
);

labels!(
    /// How a new Envoy epoch started: a hot restart beside the old one, or a fresh process.
    Restart {
        Hot => "hot",
        Full => "full",
    }
);

labels!(
    /// How a live apply ended.
    LiveApply {
        Applied => "applied",
        RolledBack => "rolled_back",
    }
);

labels!(
    /// Where a pool's move to new hosts stands.
    Transition {
        Checking => "checking",
        Stuck => "stuck",
    }
);

labels!(
    /// How a pool's move to new hosts ended.
    TransitionEnd {
        Finished => "finished",
        Superseded => "superseded",
        Dropped => "dropped",
    }
);

labels!(
    /// A session-ticket key rotation: confirmed by Envoy, or not (the last keys stay).
    Rotation {
        Ok => "ok",
        Failed => "failed",
    }
);

labels!(
    /// A virtual IP's VRRP state as keepalived reports it.
    Vrrp {
        Master => "master",
        Backup => "backup",
        Fault => "fault",
        Stop => "stop",
        Unknown => "unknown",
    }
);

impl Vrrp {
    /// keepalived's word for a state (any case); anything else is `Unknown`.
    pub fn parse(word: &str) -> Vrrp {
        Vrrp::ALL
            .iter()
            .copied()
            .find(|v| v.as_label().eq_ignore_ascii_case(word))
            .unwrap_or(Vrrp::Unknown)
    }
}

/// Counters labelled by one closed set.
#[derive(Clone)]
pub struct Counters<L> {
    vec: IntCounterVec,
    _label: PhantomData<L>,
}

impl<L: Label> Counters<L> {
    pub(super) fn new(vec: IntCounterVec) -> Counters<L> {
        for l in L::ALL {
            vec.with_label_values(&[l.as_label()]);
        }
        Counters {
            vec,
            _label: PhantomData,
        }
    }

    pub fn inc(&self, l: L) {
        self.inc_by(l, 1);
    }

    pub fn inc_by(&self, l: L, n: u64) {
        self.vec.with_label_values(&[l.as_label()]).inc_by(n);
    }

    pub fn get(&self, l: L) -> u64 {
        self.vec.with_label_values(&[l.as_label()]).get()
    }
}

/// Gauges labelled by one closed set.
#[derive(Clone)]
pub struct Gauges<L> {
    vec: IntGaugeVec,
    _label: PhantomData<L>,
}

impl<L: Label> Gauges<L> {
    pub(super) fn new(vec: IntGaugeVec) -> Gauges<L> {
        for l in L::ALL {
            vec.with_label_values(&[l.as_label()]);
        }
        Gauges {
            vec,
            _label: PhantomData,
        }
    }

    pub fn set(&self, l: L, v: i64) {
        self.vec.with_label_values(&[l.as_label()]).set(v);
    }

    pub fn get(&self, l: L) -> i64 {
        self.vec.with_label_values(&[l.as_label()]).get()
    }
}

/// Histograms labelled by one closed set.
#[derive(Clone)]
pub struct Histograms<L> {
    vec: HistogramVec,
    _label: PhantomData<L>,
}

impl<L: Label> Histograms<L> {
    pub(super) fn new(vec: HistogramVec) -> Histograms<L> {
        for l in L::ALL {
            vec.with_label_values(&[l.as_label()]);
        }
        Histograms {
            vec,
            _label: PhantomData,
        }
    }

    pub fn observe(&self, l: L, seconds: f64) {
        self.vec.with_label_values(&[l.as_label()]).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_of_a_set_is_a_series_from_the_start() {
        let vec = IntCounterVec::new(prometheus::Opts::new("t_total", "t"), &["result"]).unwrap();
        let c: Counters<Poll> = Counters::new(vec.clone());
        assert_eq!(
            prometheus::core::Collector::collect(&vec)[0]
                .get_metric()
                .len(),
            Poll::ALL.len(),
            "one series per value"
        );
        c.inc(Poll::NotModified);
        c.inc_by(Poll::NotModified, 2);
        assert_eq!(c.get(Poll::NotModified), 3);
        assert_eq!(vec.with_label_values(&["not_modified"]).get(), 3);
        assert_eq!(c.get(Poll::Applied), 0);
    }

    #[test]
    fn keepalived_words_are_read_in_any_case() {
        assert_eq!(Vrrp::parse("MASTER"), Vrrp::Master);
        assert_eq!(Vrrp::parse("backup"), Vrrp::Backup);
        assert_eq!(Vrrp::parse("dancing"), Vrrp::Unknown);
    }
}
