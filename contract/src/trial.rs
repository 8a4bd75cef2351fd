//! The trial record: the one fact about an update that PID 1 must know.
//!
//! When the agent activates a slot it writes `TRIAL_FILE` on STATE: the slot on trial and
//! how long it has to prove healthy. When the machine boots that slot, PID 1 arms a
//! deadline from it; the agent deletes the file once the slot is blessed. If the file is
//! still there when the deadline passes (the new agent crashes, hangs or never gets
//! healthy) PID 1 reboots, and systemd-boot's counter takes the machine back to the old
//! slot after the last try. So a release broken badly enough that its own agent cannot run
//! still rolls back, without any code from that release having to work.

use keelson_disk::layout::Slot;

/// Where the record lives (STATE is mounted on /var).
pub const TRIAL_FILE: &str = "/var/lib/keelson/update/trial";

/// Time a trial slot gets to prove healthy when the config does not say.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 300;

/// A slot on trial and its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialRecord {
    /// The slot booted on trial.
    pub slot: Slot,
    /// Seconds after PID 1 starts by which the slot must be blessed.
    pub timeout_secs: u64,
}

impl TrialRecord {
    /// The file's text: `slot=b timeout=300`.
    pub fn to_text(&self) -> String {
        format!(
            "slot={} timeout={}\n",
            self.slot.letter(),
            self.timeout_secs
        )
    }

    /// Parses the file's text; `None` when it is not a trial record.
    pub fn parse(text: &str) -> Option<TrialRecord> {
        let mut slot = None;
        let mut timeout_secs = None;
        for word in text.split_ascii_whitespace() {
            match word.split_once('=')? {
                ("slot", value) => slot = Slot::from_letter(value),
                ("timeout", value) => timeout_secs = value.parse().ok(),
                _ => {}
            }
        }
        Some(TrialRecord {
            slot: slot?,
            timeout_secs: timeout_secs?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_ignored() {
        let record = TrialRecord {
            slot: Slot::B,
            timeout_secs: 42,
        };
        assert_eq!(TrialRecord::parse(&record.to_text()), Some(record));
        assert_eq!(TrialRecord::parse("slot=c timeout=1"), None);
        assert_eq!(TrialRecord::parse("slot=b"), None);
        assert_eq!(TrialRecord::parse(""), None);
    }
}
