//! The outcome of a trial boot, as PID 1 decides it. Pure.
//!
//! When the agent activates a new slot it leaves a trial record on STATE
//! (`keelson_contract::trial`). On the next boot PID 1 arms a deadline from it, if it names
//! the slot that is running, and fails the trial (by rebooting, so that the boot loader's
//! counter moves on) when either the deadline passes with the record still there, or the
//! agent has crashed so often that it will never bless the slot. The shell reads the clock
//! and the record; this module only decides.

use std::time::Duration;

use keelson_contract::trial::TrialRecord;
use keelson_disk::layout::Slot;

/// Agent starts on a trial boot after which the trial is failed at once: an agent that
/// crashed this often will not bless the slot, and waiting out the deadline on each of the
/// loader's tries only delays the fallback.
pub const TRIAL_AGENT_STARTS: u32 = 4;

/// A trial in progress: the slot and the monotonic time by which it must be blessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    /// The running slot, on trial.
    pub slot: Slot,
    /// When the deadline passes (monotonic time since boot).
    pub deadline: Duration,
}

/// Why a trial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialFailure {
    /// The deadline passed and the slot is still on trial.
    NotBlessedInTime {
        /// The slot on trial.
        slot: Slot,
    },
    /// The agent was started [`TRIAL_AGENT_STARTS`] times: it keeps crashing.
    AgentCrashLoop {
        /// The slot on trial.
        slot: Slot,
        /// How many times the agent crashed.
        crashes: u32,
    },
}

impl std::fmt::Display for TrialFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrialFailure::NotBlessedInTime { slot } => {
                write!(f, "slot {slot} was not blessed in time")
            }
            TrialFailure::AgentCrashLoop { slot, crashes } => {
                write!(
                    f,
                    "the agent of slot {slot} on trial has crashed {crashes} times"
                )
            }
        }
    }
}

/// What PID 1 does about the trial at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialVerdict {
    /// Keep waiting: the slot is on trial and the deadline is ahead.
    Pending,
    /// The trial is over without failure (the agent blessed or rolled back the slot, or
    /// the deadline passed once the record was gone): stop watching.
    Over,
    /// Reboot: the trial failed.
    Failed(TrialFailure),
}

impl Trial {
    /// The trial to watch at boot, if the record names the running slot. `now` is the
    /// monotonic time at which PID 1 read the record.
    pub fn arm(record: Option<TrialRecord>, running: Option<Slot>, now: Duration) -> Option<Trial> {
        let record = record?;
        if Some(record.slot) != running {
            return None;
        }
        Some(Trial {
            slot: record.slot,
            deadline: now.saturating_add(Duration::from_secs(record.timeout_secs)),
        })
    }

    /// Judges the trial at `now`. `still_on_trial` is whether the record still names this
    /// slot (the agent removes it when it blesses or rolls back); `agent_starts` is how many
    /// times PID 1 has started the agent this boot.
    pub fn judge(&self, now: Duration, still_on_trial: bool, agent_starts: u32) -> TrialVerdict {
        let past_deadline = now >= self.deadline;
        let verdict = match (still_on_trial, past_deadline) {
            (true, true) => {
                TrialVerdict::Failed(TrialFailure::NotBlessedInTime { slot: self.slot })
            }
            (true, false) if agent_starts >= TRIAL_AGENT_STARTS => {
                TrialVerdict::Failed(TrialFailure::AgentCrashLoop {
                    slot: self.slot,
                    crashes: agent_starts - 1,
                })
            }
            (true, false) => TrialVerdict::Pending,
            (false, _) => TrialVerdict::Over,
        };
        debug_assert!(
            !matches!(verdict, TrialVerdict::Failed(_)) || still_on_trial,
            "a trial the agent has ended never fails"
        );
        verdict
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    fn record(slot: Slot, timeout_secs: u64) -> Option<TrialRecord> {
        Some(TrialRecord { slot, timeout_secs })
    }

    #[test]
    fn only_a_record_for_the_running_slot_arms_a_trial() {
        assert_eq!(Trial::arm(None, Some(Slot::B), secs(3)), None);
        assert_eq!(
            Trial::arm(record(Slot::B, 300), Some(Slot::A), secs(3)),
            None
        );
        assert_eq!(Trial::arm(record(Slot::B, 300), None, secs(3)), None);
        assert_eq!(
            Trial::arm(record(Slot::B, 300), Some(Slot::B), secs(3)),
            Some(Trial {
                slot: Slot::B,
                deadline: secs(303)
            })
        );
    }

    #[test]
    fn a_slot_still_on_trial_after_its_deadline_fails() {
        let trial = Trial::arm(record(Slot::B, 60), Some(Slot::B), secs(0)).unwrap();
        assert_eq!(trial.judge(secs(59), true, 1), TrialVerdict::Pending);
        assert_eq!(
            trial.judge(secs(60), true, 1),
            TrialVerdict::Failed(TrialFailure::NotBlessedInTime { slot: Slot::B })
        );
    }

    #[test]
    fn a_crash_looping_agent_fails_the_trial_before_the_deadline() {
        let trial = Trial::arm(record(Slot::A, 600), Some(Slot::A), secs(0)).unwrap();
        assert_eq!(
            trial.judge(secs(10), true, TRIAL_AGENT_STARTS - 1),
            TrialVerdict::Pending
        );
        let failed = trial.judge(secs(10), true, TRIAL_AGENT_STARTS);
        assert_eq!(
            failed,
            TrialVerdict::Failed(TrialFailure::AgentCrashLoop {
                slot: Slot::A,
                crashes: TRIAL_AGENT_STARTS - 1
            })
        );
        assert_eq!(
            failed_text(failed),
            "the agent of slot a on trial has crashed 3 times"
        );
    }

    #[test]
    fn a_blessed_slot_ends_the_trial_whatever_the_time_or_crashes() {
        let trial = Trial::arm(record(Slot::B, 60), Some(Slot::B), secs(0)).unwrap();
        for (now, starts) in [(0, 1), (59, 9), (60, 1), (1000, 9)] {
            assert_eq!(trial.judge(secs(now), false, starts), TrialVerdict::Over);
        }
    }

    fn failed_text(verdict: TrialVerdict) -> String {
        match verdict {
            TrialVerdict::Failed(failure) => failure.to_string(),
            other => format!("{other:?}"),
        }
    }
}
