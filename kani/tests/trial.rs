//! PID 1's trial outcome (`keelson_supervise::trial`): a trial the agent has ended never
//! fails, a slot still on trial fails exactly when its deadline passes or the agent has
//! been started too often, and a record for another slot arms nothing.

use std::time::Duration;

use keelson_contract::trial::TrialRecord;
use keelson_disk::layout::Slot;
use keelson_supervise::trial::{Trial, TrialFailure, TrialVerdict, TRIAL_AGENT_STARTS};

fn slot(bit: bool) -> Slot {
    if bit {
        Slot::B
    } else {
        Slot::A
    }
}

#[test]
#[cfg_attr(kani, kani::proof)]
fn the_trial_fails_exactly_when_it_should() {
    bolero::check!()
        .with_type::<(bool, bool, u16, u16, u16, bool, u8)>()
        .for_each(
            |&(record_slot, running, timeout, armed_at, now, on_trial, starts)| {
                let record = TrialRecord {
                    slot: slot(record_slot),
                    timeout_secs: u64::from(timeout),
                };
                let armed_at = Duration::from_secs(u64::from(armed_at));
                let Some(trial) = Trial::arm(Some(record), Some(slot(running)), armed_at) else {
                    assert_ne!(
                        record_slot, running,
                        "a record for the running slot arms a trial"
                    );
                    return;
                };
                assert_eq!(record_slot, running);
                let now = Duration::from_secs(u64::from(now));
                let starts = u32::from(starts);
                let past = now >= armed_at + Duration::from_secs(u64::from(timeout));
                match trial.judge(now, on_trial, starts) {
                    TrialVerdict::Over => assert!(!on_trial),
                    TrialVerdict::Pending => {
                        assert!(on_trial && !past && starts < TRIAL_AGENT_STARTS);
                    }
                    TrialVerdict::Failed(TrialFailure::NotBlessedInTime { slot: failed }) => {
                        assert!(on_trial && past);
                        assert_eq!(failed, trial.slot);
                    }
                    TrialVerdict::Failed(TrialFailure::AgentCrashLoop {
                        slot: failed,
                        crashes,
                    }) => {
                        assert!(on_trial && !past && starts >= TRIAL_AGENT_STARTS);
                        assert_eq!((failed, crashes), (trial.slot, starts - 1));
                    }
                }
            },
        );
}
