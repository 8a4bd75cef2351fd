//! Reading the slots and reconciling at boot (`keelson_update::reconcile`): any set of
//! entry file names and any update record give slots whose entries match what the ESP
//! holds, and a boot always ends a pending write.

use keelson_contract::trial::TrialRecord;
use keelson_disk::layout::Slot;
use keelson_update::boot_entry::LoaderView;
use keelson_update::reconcile::{read_slots, reconcile_on_boot, PendingWrite, UpdateRecord};
use keelson_update::slots::{Event, SlotState};

fn entry_name(slot: Slot, generation: u8, counter: Option<(u8, u8)>) -> String {
    match counter {
        None => format!("keelson-{}-{}.conf", generation % 4, slot.letter()),
        Some((left, done)) => format!(
            "keelson-{}-{}+{}-{}.conf",
            generation % 4,
            slot.letter(),
            left % 4,
            done % 4
        ),
    }
}

#[test]
#[cfg_attr(kani, kani::proof)]
fn slots_read_from_any_esp_match_its_entries() {
    bolero::check!()
        .with_type::<(
            Option<(u8, Option<(u8, u8)>)>,
            Option<(u8, Option<(u8, u8)>)>,
            bool,
            Option<(bool, bool)>,
        )>()
        .for_each(|&(a, b, running_b, pending)| {
            let running = if running_b { Slot::B } else { Slot::A };
            let names: Vec<String> = [(Slot::A, a), (Slot::B, b)]
                .into_iter()
                .filter_map(|(slot, entry)| entry.map(|(g, c)| entry_name(slot, g, c)))
                .collect();
            let view = LoaderView::from_file_names(names.iter().map(String::as_str));
            let record = UpdateRecord {
                pending: pending.map(|(slot_b, written)| PendingWrite {
                    slot: if slot_b { 'b' } else { 'a' },
                    version: "0.2.0".into(),
                    written,
                }),
                ..UpdateRecord::default()
            };
            let slots = read_slots(&view, &record, running);
            for slot in Slot::ALL {
                let state = slots.state(slot);
                assert_eq!(
                    state.has_entry(),
                    view.entry(slot).is_some(),
                    "{slot}: {state:?}"
                );
                if let Some(name) = view.entry(slot) {
                    match name.counter {
                        None => assert_eq!(state, SlotState::Good),
                        Some(counter) if counter.tries_left > 0 => assert_eq!(
                            state,
                            SlotState::Trial {
                                tries_left: counter.tries_left
                            }
                        ),
                        Some(_) if slot == running => {
                            assert_eq!(state, SlotState::Trial { tries_left: 0 })
                        }
                        Some(_) => assert_eq!(state, SlotState::Bad),
                    }
                }
            }
            // A boot that the machine accepts ends any pending write.
            if let Ok((booted, _)) = slots.step(Event::Booted) {
                let trial = Some(TrialRecord {
                    slot: running.other(),
                    timeout_secs: 60,
                });
                let outcome = reconcile_on_boot(record.clone(), &booted, trial, "0.1.0");
                assert_eq!(outcome.record.pending, None);
                assert!(
                    outcome.clear_trial,
                    "a trial of the slot not running is over"
                );
                assert_eq!(
                    outcome.health_gate,
                    matches!(booted.state(running), SlotState::Trial { .. })
                );
            }
        });
}
