//! Exponential restart delay, as the kubelet and systemd use it: the first delay, doubling
//! up to a ceiling, and back to the first once the service has stayed up long enough.
//!
//! One type serves PID 1's agent supervisor, the DHCP client's retries, the update
//! engine's reboot-lock retries and, next, the kubelet's container restarts. It reads no
//! clock: the caller says how long the service ran.

use std::time::Duration;

/// Exponential restart delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    /// Exits since the last reset: the next delay is `initial · 2^failures`, capped.
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, doubling to `max`, reset after `reset_after` of
    /// uptime (`Duration::MAX` for never).
    pub const fn new(initial: Duration, max: Duration, reset_after: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            reset_after,
            failures: 0,
        }
    }

    /// The delay before attempt `attempt + 1` after `attempt` failures in a row, without
    /// changing the backoff: for callers that count attempts themselves (DHCP
    /// retransmissions).
    pub fn delay_for_attempt(&self, attempt: u32) -> Duration {
        // 2^attempt overflows a u32 past 31; past the cap the answer is max anyway.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let delay = self.initial.saturating_mul(factor).min(self.max);
        debug_assert!(delay <= self.max);
        debug_assert!(delay >= self.initial.min(self.max));
        delay
    }

    /// The delay before restarting a service that ran for `ran_for` and then exited.
    pub fn delay_after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.failures = 0;
        }
        let delay = self.delay_for_attempt(self.failures);
        self.failures = self.failures.saturating_add(1);
        debug_assert!(delay >= self.initial.min(self.max) && delay <= self.max);
        delay
    }

    /// Forgets past failures (a service that proved healthy by other means).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// How many failures in a row the backoff has counted since its last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let mut backoff = Backoff::new(secs(1), secs(60), secs(120));
        for _ in 0..10 {
            backoff.delay_after_exit(secs(0));
        }
        assert_eq!(backoff.delay_after_exit(secs(0)), secs(60));
        assert_eq!(backoff.delay_after_exit(secs(500)), secs(1));
    }

    #[test]
    fn the_kubelets_schedule_doubles_from_10_s_to_5_minutes() {
        let mut backoff = Backoff::new(secs(10), secs(300), secs(600));
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.delay_after_exit(secs(1)).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff.delay_after_exit(secs(600)).as_secs(), 10);
    }

    #[test]
    fn attempts_far_past_the_cap_stay_at_the_cap() {
        let backoff = Backoff::new(secs(4), secs(64), Duration::MAX);
        let delays: Vec<u64> = [0, 1, 2, 3, 4, 5, 40, u32::MAX]
            .iter()
            .map(|&attempt| backoff.delay_for_attempt(attempt).as_secs())
            .collect();
        assert_eq!(delays, [4, 8, 16, 32, 64, 64, 64, 64]);
    }
}
