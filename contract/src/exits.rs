//! Exit records: how a container's exit status reaches the agent although the agent is
//! not its parent.
//!
//! A container's first process is orphaned on purpose (its container-init parent exits at
//! once), so PID 1, the subreaper of everything, reaps it. Before reaping a process PID 1
//! reads its start time, and after reaping it writes `EXITS_DIR/<pid>-<start time>` holding
//! the status. The pair names one process for the whole boot even when pids are reused,
//! and the directory lives in `/run`, so it outlives any number of agent restarts and no
//! reboot. The agent, which recorded the pair when it started the container, reads the
//! record when the process is gone and removes it.

use std::fmt;

/// Where PID 1 keeps exit records.
pub const EXITS_DIR: &str = "/run/keelson/exits";

/// PID 1 keeps at most this many records; the oldest go first (records of processes
/// that were never containers are never claimed).
pub const MAX_EXIT_RECORDS: usize = 4096;

/// The record's file name for the process `pid` that started at `start_time` (clock ticks
/// after boot, field 22 of `/proc/<pid>/stat`).
pub fn record_name(pid: i32, start_time: u64) -> String {
    format!("{pid}-{start_time}")
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// The code a shell (and the kubelet) reports: the exit code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
        }
    }

    /// Reads a record's text back.
    pub fn parse(text: &str) -> Option<ExitStatus> {
        let (kind, number) = text.trim().split_once(' ')?;
        let number = number.parse().ok()?;
        match kind {
            "exited" => Some(ExitStatus::Exited(number)),
            "signaled" => Some(ExitStatus::Signaled(number)),
            _ => None,
        }
    }
}

/// The record's text: `exited N` or `signaled N`.
impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited {code}"),
            ExitStatus::Signaled(signal) => write!(f, "signaled {signal}"),
        }
    }
}

/// The start time in a `/proc/<pid>/stat` line: field 22, counted after the command name
/// (which may itself hold spaces and parentheses, so the count starts at the last `)`).
pub fn start_time_in_stat(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name come field 3 (state) onwards; the start time is field 22.
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_what_was_written() {
        for status in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(3),
            ExitStatus::Signaled(9),
        ] {
            assert_eq!(ExitStatus::parse(&status.to_string()), Some(status));
        }
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::parse("exited"), None);
        assert_eq!(ExitStatus::parse("vanished 1"), None);
        assert_eq!(record_name(42, 1234), "42-1234");
    }

    #[test]
    fn start_times_are_found_past_awkward_command_names() {
        let stat = "77 (my (odd) name) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 2273280 200 18446744073709551615";
        assert_eq!(start_time_in_stat(stat), Some(98765));
        assert_eq!(start_time_in_stat("77 (short) S 1"), None);
    }

    #[test]
    fn the_start_time_of_this_process_is_read_from_proc() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(start_time_in_stat(&stat).unwrap() > 0);
    }
}
