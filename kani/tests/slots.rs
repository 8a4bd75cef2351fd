//! The two-slot state machine (`keelson_update::slots`): every reachable state keeps the
//! machine bootable, and the actions it returns make the ESP match the state.
//!
//! Two checks share one model of the ESP:
//! - an exhaustive breadth-first walk over every state reachable from a fresh disk under
//!   every event sequence, which prints how many states it visited;
//! - a bolero harness over event sequences (Kani proves it where installed).

use std::collections::{HashMap, VecDeque};

use keelson_disk::layout::Slot;
use keelson_update::slots::{Action, Event, Refusal, SlotState, Slots, TRIES};

/// Every event the machine takes, for both slots where the event names one.
const EVENTS: [Event; 14] = [
    Event::BeginWrite(Slot::A),
    Event::BeginWrite(Slot::B),
    Event::WriteOk(Slot::A),
    Event::WriteOk(Slot::B),
    Event::WriteFailed(Slot::A),
    Event::WriteFailed(Slot::B),
    Event::Activate(Slot::A),
    Event::Activate(Slot::B),
    Event::Cancel,
    Event::BootAttempted,
    Event::Booted,
    Event::Healthy,
    Event::HealthFailed,
    Event::RollbackRequested,
];

/// What the ESP holds for one slot: nothing, a counted entry, or a blessed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Entry {
    Counted(u32),
    Blessed,
}

/// The ESP as the actions leave it, plus a ghost count of boot attempts per activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct World {
    slots: Slots,
    entries: [Option<Entry>; 2],
    default: Slot,
    attempts: [u32; 2],
}

fn index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// The ESP that matches a state.
fn expected_entry(state: SlotState) -> Option<Entry> {
    match state {
        SlotState::Empty | SlotState::Writing | SlotState::Written => None,
        SlotState::Trial { tries_left } => Some(Entry::Counted(tries_left)),
        SlotState::Good => Some(Entry::Blessed),
        SlotState::Bad => Some(Entry::Counted(0)),
    }
}

impl World {
    fn fresh(a: SlotState) -> World {
        let slots = Slots::fresh(a);
        World {
            slots,
            entries: [expected_entry(a), None],
            default: Slot::A,
            attempts: [0, 0],
        }
    }

    /// Applies one event: the machine's step, the actions on the ESP, and for
    /// `BootAttempted` the firmware's own rename. Panics on any broken property.
    fn apply(&self, event: Event) -> Option<World> {
        let (slots, actions) = match self.slots.step(event) {
            Ok(step) => step,
            Err(refusal) => {
                assert_refusal_is_true(&self.slots, event, &refusal);
                return None;
            }
        };
        let mut next = *self;
        next.slots = slots;
        for action in actions.iter() {
            match action {
                Action::RemoveEntry(slot) => {
                    assert_ne!(
                        slot, self.slots.running,
                        "{event:?} removed the running entry"
                    );
                    next.entries[index(slot)] = None;
                }
                Action::InstallEntry { slot, tries } => {
                    assert_eq!(tries, TRIES);
                    assert_eq!(
                        self.slots.state(slot),
                        SlotState::Written,
                        "{event:?} installed an entry for a slot that was not verified"
                    );
                    next.entries[index(slot)] = Some(Entry::Counted(tries));
                    next.attempts[index(slot)] = 0;
                }
                Action::SetDefault(slot) => {
                    assert!(
                        next.entries[index(slot)].is_some(),
                        "{event:?} made a slot without an entry the default"
                    );
                    next.default = slot;
                }
                Action::Bless(slot) => {
                    assert_eq!(
                        slot, self.slots.running,
                        "{event:?} blessed a slot not running"
                    );
                    assert_eq!(event, Event::Healthy);
                    next.entries[index(slot)] = Some(Entry::Blessed);
                }
                Action::MarkBad(slot) => {
                    next.entries[index(slot)] = Some(Entry::Counted(0));
                }
                Action::Reboot => {}
            }
        }
        match event {
            Event::BeginWrite(slot) => assert_ne!(slot, self.slots.running),
            Event::RollbackRequested => {
                assert_eq!(next.slots.state(next.slots.default), SlotState::Good)
            }
            Event::BootAttempted => {
                let chosen = next.slots.running;
                if let Some(Entry::Counted(left)) = next.entries[index(chosen)] {
                    next.entries[index(chosen)] = Some(Entry::Counted(left.saturating_sub(1)));
                    // Saturate the ghost counter so that the state space stays finite.
                    next.attempts[index(chosen)] =
                        (next.attempts[index(chosen)] + 1).min(TRIES + 1);
                }
            }
            _ => {}
        }
        // The state machine and the ESP agree.
        for slot in Slot::ALL {
            assert_eq!(
                next.entries[index(slot)],
                expected_entry(next.slots.state(slot)),
                "after {event:?} from {:?}, slot {slot}'s entry does not match its state",
                self.slots
            );
        }
        assert_eq!(next.default, next.slots.default, "after {event:?}");
        // A trial gets at most TRIES attempts while there is another slot to fall back to.
        for slot in Slot::ALL {
            if next.slots.state(slot.other()).has_entry() {
                if let SlotState::Trial { .. } = next.slots.state(slot) {
                    assert!(next.attempts[index(slot)] <= TRIES);
                }
            }
        }
        if let Err(broken) = next.slots.check() {
            panic!("after {event:?} from {:?}: {broken}", self.slots);
        }
        Some(next)
    }
}

/// A refusal must say something true of the state it refused in: the slot it names is in
/// the state it claims, and it is a slot the event concerns.
fn assert_refusal_is_true(slots: &Slots, event: Event, refusal: &Refusal) {
    let named = match event {
        Event::BeginWrite(slot)
        | Event::WriteOk(slot)
        | Event::WriteFailed(slot)
        | Event::Activate(slot) => Some(slot),
        _ => None,
    };
    let context = format!("{event:?} from {slots:?} refused as {refusal:?}");
    match *refusal {
        Refusal::SlotIsRunning(slot) => {
            assert_eq!(named, Some(slot), "{context}");
            assert_eq!(slot, slots.running, "{context}");
        }
        Refusal::RunningOnTrial(slot) => {
            assert_eq!(slot, slots.running, "{context}");
            assert!(
                matches!(slots.state(slot), SlotState::Trial { .. }),
                "{context}"
            );
        }
        Refusal::RollbackPending(slot) => {
            assert_eq!(slot, slots.running, "{context}");
            assert_eq!(slots.state(slot), SlotState::Bad, "{context}");
        }
        Refusal::WriteInProgress(slot) => {
            assert_eq!(slots.state(slot), SlotState::Writing, "{context}");
        }
        Refusal::WrongState {
            slot,
            actual,
            expected,
        } => {
            assert_eq!(named.unwrap_or(slots.running), slot, "{context}");
            assert_eq!(slots.state(slot).name(), actual, "{context}");
            assert_ne!(actual, expected, "{context}");
        }
        Refusal::NothingToCancel => {
            assert_eq!(event, Event::Cancel, "{context}");
            let activated_not_booted = slots.default != slots.running
                && slots.state(slots.default) == (SlotState::Trial { tries_left: TRIES });
            assert!(!activated_not_booted, "{context}");
        }
        Refusal::NoGoodSlot(slot) => {
            assert!(
                matches!(event, Event::RollbackRequested | Event::HealthFailed),
                "{context}"
            );
            assert_ne!(slots.state(slot), SlotState::Good, "{context}");
        }
        Refusal::AlreadyBlessed(slot) => {
            assert_eq!(event, Event::HealthFailed, "{context}");
            assert_eq!(slots.state(slot), SlotState::Good, "{context}");
        }
        Refusal::Unbootable => {
            assert!(
                Slot::ALL.iter().all(|&slot| !slots.state(slot).has_entry()),
                "{context}"
            );
        }
    }
}

fn starts() -> [World; 2] {
    [
        World::fresh(SlotState::Good),
        World::fresh(SlotState::Trial { tries_left: TRIES }),
    ]
}

/// Walks every state reachable from a fresh disk (slot A blessed, or on trial as the
/// builder writes it) under every event, checking the invariants in each.
#[test]
fn every_reachable_state_keeps_the_machine_bootable() {
    let mut depth_of: HashMap<World, usize> = HashMap::new();
    let mut queue = VecDeque::new();
    for start in starts() {
        start.slots.check().unwrap();
        depth_of.insert(start, 0);
        queue.push_back(start);
    }
    let mut transitions = 0usize;
    while let Some(world) = queue.pop_front() {
        let depth = depth_of[&world];
        for event in EVENTS {
            if let Some(next) = world.apply(event) {
                transitions += 1;
                if let std::collections::hash_map::Entry::Vacant(slot) = depth_of.entry(next) {
                    slot.insert(depth + 1);
                    queue.push_back(next);
                }
            }
        }
    }
    let deepest = depth_of.values().max().copied().unwrap_or(0);
    let distinct_states: std::collections::HashSet<Slots> =
        depth_of.keys().map(|world| world.slots).collect();
    println!(
        "slot state machine: {} machine states ({} with ESP and attempt ghosts), {transitions} \
         transitions, every state within {deepest} events of a fresh disk",
        distinct_states.len(),
        depth_of.len()
    );
    // Each slot state appears somewhere, so the walk did explore the machine.
    for state in [
        SlotState::Empty,
        SlotState::Writing,
        SlotState::Written,
        SlotState::Trial { tries_left: 0 },
        SlotState::Good,
        SlotState::Bad,
    ] {
        assert!(
            distinct_states.iter().any(|slots| slots.b == state),
            "slot B never reached {state:?}"
        );
    }
    // From every reachable state, the machine can get back to a blessed running slot.
    for world in depth_of.keys() {
        let mut probe = *world;
        for event in [Event::BootAttempted, Event::Booted, Event::Healthy] {
            probe = probe.apply(event).unwrap_or(probe);
        }
        assert_eq!(probe.slots.state(probe.slots.running), SlotState::Good);
    }
}

/// Any sequence of events from a fresh disk keeps every invariant, and the ESP always
/// matches the state.
#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(10))]
fn any_event_sequence_keeps_the_invariants() {
    bolero::check!()
        .with_type::<(bool, [u8; 8])>()
        .for_each(|&(trial_start, choices)| {
            let [blessed, trial] = starts();
            let mut world = if trial_start { trial } else { blessed };
            for choice in choices {
                let event = EVENTS[usize::from(choice) % EVENTS.len()];
                if let Some(next) = world.apply(event) {
                    world = next;
                }
            }
        });
}
