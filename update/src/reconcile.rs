//! Reading the slots, and reconciling the update record at boot. Pure.
//!
//! Two facts describe the machine: the boot entries on the ESP (a [`LoaderView`]) and the
//! agent's update record on STATE ([`UpdateRecord`]: a slot being written, the version on
//! trial, the last failure). [`read_slots`] turns them into the [`Slots`] the state machine
//! works on, and [`reconcile_on_boot`] decides what the record becomes after a boot: a
//! write that a restart cut short is reported, a trial the loader gave up on is named, and
//! a trial record that a power cut kept after blessing is removed.

use keelson_contract::trial::TrialRecord;
use keelson_disk::layout::Slot;
use serde::{Deserialize, Serialize};

use crate::boot_entry::LoaderView;
use crate::slots::{SlotState, Slots, TRIES};

/// What `state.json` on STATE keeps: what the ESP cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// A slot being written or written, with the version it receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingWrite>,
    /// The version booted on trial (so that a fallback can be named after the fact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_version: Option<String>,
    /// What went wrong last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The version that last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<String>,
}

/// A slot being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWrite {
    /// The slot's letter (`a` or `b`).
    pub slot: char,
    /// The version it receives.
    pub version: String,
    /// True once everything landed and was read back verified.
    pub written: bool,
}

impl PendingWrite {
    /// The slot, when the letter names one.
    pub fn slot(&self) -> Option<Slot> {
        Slot::from_letter(&self.slot.to_string())
    }
}

/// The state of one slot from its boot entry, or from the record when it has none.
///
/// An entry without a counter is blessed; one with tries left is on trial. An entry with no
/// tries left is spent, except on the running slot: the loader counts an attempt before
/// booting it, so the running slot's last attempt is the one running now.
pub fn slot_state(
    view: &LoaderView,
    pending: Option<&PendingWrite>,
    slot: Slot,
    running: Slot,
) -> SlotState {
    match view.entry(slot) {
        Some(name) => match name.counter {
            None => SlotState::Good,
            Some(counter) if counter.tries_left > 0 => SlotState::Trial {
                tries_left: counter.tries_left,
            },
            Some(_) if slot == running => SlotState::Trial { tries_left: 0 },
            Some(_) => SlotState::Bad,
        },
        None => match pending {
            Some(write) if write.slot() == Some(slot) && write.written => SlotState::Written,
            Some(write) if write.slot() == Some(slot) => SlotState::Writing,
            _ => SlotState::Empty,
        },
    }
}

/// Both slots as the ESP and the record describe them. The default is the loader's
/// (the highest generation), or the running slot when there is no entry at all.
pub fn read_slots(view: &LoaderView, record: &UpdateRecord, running: Slot) -> Slots {
    let pending = record.pending.as_ref();
    Slots {
        a: slot_state(view, pending, Slot::A, running),
        b: slot_state(view, pending, Slot::B, running),
        default: view.default_slot().unwrap_or(running),
        running,
    }
}

/// What to do after a boot, once the machine has taken `Booted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReconciliation {
    /// The record to save.
    pub record: UpdateRecord,
    /// Remove the trial record (PID 1 must not fail a trial that is over).
    pub clear_trial: bool,
    /// A line for the console, when the boot ended a trial by falling back.
    pub console: Option<String>,
    /// The running slot is on trial: run the health gate.
    pub health_gate: bool,
}

/// Reconciles the record after a boot. `slots` are the slots after the `Booted` step;
/// `trial` is the trial record PID 1 saw, if any.
pub fn reconcile_on_boot(
    mut record: UpdateRecord,
    slots: &Slots,
    trial: Option<TrialRecord>,
    running_version: &str,
) -> BootReconciliation {
    let running = slots.running;
    let mut clear_trial = false;
    let mut console = None;
    if let Some(pending) = record.pending.take() {
        if !pending.written || slots.state(running.other()) == SlotState::Empty {
            record.last_error = Some(format!(
                "the update to {} was interrupted: the machine restarted while slot {} was \
                 being written; run the update again",
                pending.version, pending.slot
            ));
            record.failed_version = Some(pending.version);
        }
    }
    match trial {
        Some(trial) if trial.slot != running => {
            let version = record.trial_version.take().unwrap_or_default();
            let message = format!(
                "{version} on slot {} did not prove healthy within {TRIES} boot attempts; the \
                 loader fell back to slot {running} ({running_version})",
                trial.slot,
            );
            console = Some(message.clone());
            record.last_error = Some(message);
            record.failed_version = Some(version);
            clear_trial = true;
        }
        // Blessed, but a power cut took the record's removal back: without this, PID 1
        // would reboot a good slot at the deadline, on every boot.
        Some(_) if slots.state(running) == SlotState::Good => clear_trial = true,
        _ => {}
    }
    let health_gate = matches!(slots.state(running), SlotState::Trial { .. });
    debug_assert!(
        record.pending.is_none(),
        "a boot always ends a pending write"
    );
    debug_assert!(!(health_gate && clear_trial && trial.is_some_and(|t| t.slot == running)));
    BootReconciliation {
        record,
        clear_trial,
        console,
        health_gate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_entry::LoaderView;

    fn view(names: &[&str]) -> LoaderView {
        LoaderView::from_file_names(names.iter().copied())
    }

    #[test]
    fn the_last_attempt_is_the_one_running() {
        let spent = view(&["keelson-1-a.conf", "keelson-2-b+0-3.conf"]);
        let record = UpdateRecord::default();
        assert_eq!(
            read_slots(&spent, &record, Slot::B).b,
            SlotState::Trial { tries_left: 0 }
        );
        assert_eq!(read_slots(&spent, &record, Slot::A).b, SlotState::Bad);
        assert_eq!(read_slots(&spent, &record, Slot::A).a, SlotState::Good);
    }

    #[test]
    fn slots_without_entries_take_their_state_from_the_record() {
        let fresh = view(&["keelson-1-a.conf"]);
        let mut record = UpdateRecord {
            pending: Some(PendingWrite {
                slot: 'b',
                version: "0.2.0".into(),
                written: false,
            }),
            ..UpdateRecord::default()
        };
        assert_eq!(read_slots(&fresh, &record, Slot::A).b, SlotState::Writing);
        if let Some(write) = record.pending.as_mut() {
            write.written = true;
        }
        assert_eq!(read_slots(&fresh, &record, Slot::A).b, SlotState::Written);
        record.pending = None;
        assert_eq!(read_slots(&fresh, &record, Slot::A).b, SlotState::Empty);
    }

    #[test]
    fn a_write_cut_by_a_restart_is_reported_and_cleared() {
        let slots = read_slots(
            &view(&["keelson-1-a.conf"]),
            &UpdateRecord::default(),
            Slot::A,
        );
        let record = UpdateRecord {
            pending: Some(PendingWrite {
                slot: 'b',
                version: "0.2.0".into(),
                written: false,
            }),
            ..UpdateRecord::default()
        };
        let outcome = reconcile_on_boot(record, &slots, None, "0.1.0");
        assert_eq!(outcome.record.pending, None);
        assert_eq!(outcome.record.failed_version.as_deref(), Some("0.2.0"));
        assert!(outcome
            .record
            .last_error
            .unwrap()
            .contains("was interrupted"));
        assert!(!outcome.health_gate);
    }

    #[test]
    fn a_fallback_names_the_version_that_failed() {
        let slots = read_slots(
            &view(&["keelson-1-a.conf", "keelson-2-b+0-3.conf"]),
            &UpdateRecord::default(),
            Slot::A,
        );
        let record = UpdateRecord {
            trial_version: Some("0.2.0".into()),
            ..UpdateRecord::default()
        };
        let trial = TrialRecord {
            slot: Slot::B,
            timeout_secs: 300,
        };
        let outcome = reconcile_on_boot(record, &slots, Some(trial), "0.1.0");
        assert!(outcome.clear_trial);
        assert_eq!(outcome.record.trial_version, None);
        assert_eq!(outcome.record.failed_version.as_deref(), Some("0.2.0"));
        assert_eq!(
            outcome.console.as_deref(),
            Some(
                "0.2.0 on slot b did not prove healthy within 3 boot attempts; the loader \
                 fell back to slot a (0.1.0)"
            )
        );
    }

    #[test]
    fn a_blessed_slot_loses_a_trial_record_that_a_power_cut_kept() {
        let slots = read_slots(
            &view(&["keelson-2-b.conf", "keelson-1-a.conf"]),
            &UpdateRecord::default(),
            Slot::B,
        );
        let trial = TrialRecord {
            slot: Slot::B,
            timeout_secs: 300,
        };
        let outcome = reconcile_on_boot(UpdateRecord::default(), &slots, Some(trial), "0.2.0");
        assert!(outcome.clear_trial);
        assert!(!outcome.health_gate);
        assert_eq!(outcome.console, None);
    }

    #[test]
    fn a_slot_on_trial_goes_through_the_health_gate() {
        let slots = read_slots(
            &view(&["keelson-1-a.conf", "keelson-2-b+2-1.conf"]),
            &UpdateRecord::default(),
            Slot::B,
        );
        let trial = TrialRecord {
            slot: Slot::B,
            timeout_secs: 300,
        };
        let outcome = reconcile_on_boot(UpdateRecord::default(), &slots, Some(trial), "0.2.0");
        assert!(outcome.health_gate);
        assert!(!outcome.clear_trial);
    }
}
