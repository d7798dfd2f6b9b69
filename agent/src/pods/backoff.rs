//! Restart back-off: kubelet's CrashLoopBackOff timing (10 s doubling to
//! 5 min, reset once a container has run cleanly for twice the cap).

use std::time::Duration;

/// Back-off parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay before restarting after the `crashes`-th exit in a row (1-based).
    pub fn delay(&self, crashes: u32) -> Duration {
        let doublings = crashes.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// How long a container must have run for its crash count to reset.
    pub fn reset_after(&self) -> Duration {
        self.max * 2
    }

    /// The consecutive crash count after an exit, given the count so far and
    /// how long the container ran.
    pub fn next_crashes(&self, crashes: u32, ran: Duration) -> u32 {
        if ran >= self.reset_after() {
            1
        } else {
            crashes.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.delay(0).as_secs(), 10);
        assert_eq!(b.delay(u32::MAX), b.max);
    }

    #[test]
    fn long_runs_reset_the_count() {
        let b = Backoff::default();
        assert_eq!(b.next_crashes(5, Duration::from_secs(1)), 6);
        assert_eq!(b.next_crashes(5, Duration::from_secs(600)), 1);
        assert_eq!(b.delay(b.next_crashes(5, Duration::from_secs(700))), b.base);
    }
}
