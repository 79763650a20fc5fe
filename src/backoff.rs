//! Waiting after failures: each wait twice the last, from a first wait up to a ceiling, back to
//! the first after a success. Used wherever something is retried (the supervisor restoring
//! Envoy, the agent delivering events, the certificate manager asking the CA).

use std::time::Duration;

/// A doubling wait, kept in memory by whoever retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first.min(max),
        }
    }

    /// One more failure: the wait before the next try (then the one after doubles).
    pub fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// A success: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }

    /// The wait after the `failures`-th failure in a row (1 is the first), for a count kept
    /// elsewhere (on disk, so that a restart keeps its backoff).
    pub fn after(first: Duration, max: Duration, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        first.saturating_mul(1 << doublings).min(max)
    }
}

/// `base` with ±`fraction` jitter, so that many load balancers polling one API spread out.
pub fn jitter(base: Duration, fraction: f64) -> Duration {
    base.mul_f64(1.0 - fraction + 2.0 * fraction * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling_and_start_over_after_a_success() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(30));
        let waits: Vec<u64> = (0..7).map(|_| b.fail().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.fail(), s(1));
        assert_eq!(Backoff::after(s(60), s(3600), 1), s(60));
        assert_eq!(Backoff::after(s(60), s(3600), 3), s(240));
        assert_eq!(Backoff::after(s(60), s(3600), 200), s(3600));
        assert_eq!(
            Backoff::after(s(60), s(3600), 0),
            s(60),
            "no failure yet: the first wait"
        );
    }

    #[test]
    fn jitter_stays_in_its_band_and_spreads() {
        let js: Vec<Duration> = (0..1000)
            .map(|_| jitter(Duration::from_secs(10), 0.1))
            .collect();
        for j in &js {
            assert!(
                *j >= Duration::from_secs(9) && *j <= Duration::from_secs(11),
                "{j:?}"
            );
        }
        let (lo, hi) = (js.iter().min().unwrap(), js.iter().max().unwrap());
        assert!(
            hi.as_secs_f64() - lo.as_secs_f64() > 1.5,
            "spread: {lo:?}..{hi:?}"
        );
    }
}
