//! The clocks Keelson reads: wall time for records and schedules, monotonic time since
//! boot for deadlines. The pure cores take these as arguments; only shells call here.

use std::time::Duration;

/// Seconds since the Unix epoch (0 if the clock is before it, which a machine without an
/// RTC can be until the network sets it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Whole seconds since boot, from `/proc/uptime` (0 if it cannot be read).
pub fn uptime_seconds() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| {
            let seconds = text.split_ascii_whitespace().next()?;
            let whole = seconds.split('.').next()?;
            whole.parse().ok()
        })
        .unwrap_or(0)
}

/// Monotonic time since boot (`CLOCK_MONOTONIC`).
pub fn monotonic() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|spec| {
            Duration::new(
                u64::try_from(spec.tv_sec()).unwrap_or_default(),
                u32::try_from(spec.tv_nsec()).unwrap_or_default(),
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let before = monotonic();
        assert!(unix_now() > 1_600_000_000);
        assert!(monotonic() >= before);
    }
}
