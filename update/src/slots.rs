//! The two-slot state machine that decides every update, boot and rollback.
//!
//! It is pure: it holds what each slot contains and which one the loader prefers, takes an
//! [`Event`], and returns the next state with the [`Action`]s the agent must carry out on
//! the ESP. It never touches a disk, so the same code is run by the agent, enumerated
//! exhaustively by the tests and proved by Kani.
//!
//! The loader is systemd-boot with Automatic Boot Assessment. An entry with a counter
//! (`+LEFT-DONE`) is on trial: every boot attempt renames it one step down before booting
//! it, and an entry with no tries left is sorted after every other entry, so the firmware
//! falls back to the other slot with no Keelson code running. Blessing drops the counter.
//! [`Slots::firmware_choice`] is that rule written down.
//!
//! The invariants ([`Slots::check`]) are what keeps a machine bootable whatever happens:
//! the running slot is never written, some slot is always good (or is the only slot ever
//! written), the default is always a slot that was written and verified, and a trial slot
//! gets at most [`TRIES`] attempts.

use keelson_disk::layout::Slot;

/// Boot attempts a freshly activated slot gets before the loader gives up on it.
pub const TRIES: u32 = crate::boot_entry::DEFAULT_TRIES;

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Nothing usable and no boot entry.
    Empty,
    /// An update is being written into it; no boot entry.
    Writing,
    /// Written and read back verified, but not yet bootable (no entry).
    Written,
    /// Bootable on trial: the entry carries a counter. `tries_left` counts the attempts
    /// the loader will still make; 0 means the current attempt is the last one.
    Trial {
        /// Attempts left before the loader skips the entry.
        tries_left: u32,
    },
    /// Blessed: proved healthy on a boot.
    Good,
    /// Failed its health checks or ran out of tries. Its entry stays, marked `+0`, so
    /// that the loader sorts it last and status can name it.
    Bad,
}

impl SlotState {
    /// True when the slot has a boot entry on the ESP.
    pub fn has_entry(self) -> bool {
        matches!(
            self,
            SlotState::Trial { .. } | SlotState::Good | SlotState::Bad
        )
    }

    /// True when the loader picks this entry on its own (it is not sorted last as bad).
    pub fn is_preferred_by_loader(self) -> bool {
        match self {
            SlotState::Good => true,
            SlotState::Trial { tries_left } => tries_left > 0,
            _ => false,
        }
    }

    /// A short lower-case name for status and logs.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Writing => "writing",
            SlotState::Written => "written",
            SlotState::Trial { .. } => "trial",
            SlotState::Good => "good",
            SlotState::Bad => "bad",
        }
    }
}

/// Both slots, the loader's default and the slot the machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slots {
    /// Slot A's state.
    pub a: SlotState,
    /// Slot B's state.
    pub b: SlotState,
    /// The slot the loader boots first when it may.
    pub default: Slot,
    /// The slot the machine booted from.
    pub running: Slot,
}

/// Something that happened to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The agent starts writing an update into the slot.
    BeginWrite(Slot),
    /// Everything landed and was read back verified.
    WriteOk(Slot),
    /// The write failed or was abandoned.
    WriteFailed(Slot),
    /// Make a written slot the default, on trial.
    Activate(Slot),
    /// Take back an activation before the machine reboots into it.
    Cancel,
    /// The firmware starts a boot (power-on, reboot or power loss): the loader picks an
    /// entry and counts the attempt. The agent never sends this; the exhaustive tests do,
    /// to play the firmware's part.
    BootAttempted,
    /// The agent started on the running slot and reconciles what happened before it.
    Booted,
    /// The running slot passed its health checks.
    Healthy,
    /// The running slot failed its health checks or ran out of time.
    HealthFailed,
    /// An operator asked to go back to the other slot.
    RollbackRequested,
}

/// A change the agent makes on the ESP (or to the machine) to carry out a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Delete the slot's entry (and stop trusting its kernel and initrd).
    RemoveEntry(Slot),
    /// Write the slot's kernel, initrd and a counted entry with `tries` attempts.
    InstallEntry {
        /// The slot to make bootable.
        slot: Slot,
        /// Boot attempts the entry starts with.
        tries: u32,
    },
    /// Make the slot's entry the one the loader tries first.
    SetDefault(Slot),
    /// Drop the slot's counter: it proved healthy.
    Bless(Slot),
    /// Set the slot's counter to `+0` so that the loader sorts it last.
    MarkBad(Slot),
    /// Reboot now.
    Reboot,
}

/// Up to four actions, in the order they must be carried out. A fixed array rather than a
/// `Vec` keeps the machine allocation-free, which Kani proves much faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions {
    items: [Option<Action>; 4],
}

impl Actions {
    fn push(&mut self, action: Action) {
        if let Some(free) = self.items.iter_mut().find(|item| item.is_none()) {
            *free = Some(action);
        }
    }

    /// The actions in order.
    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        self.items.iter().flatten().copied()
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }

    /// True when the actions include `action`.
    pub fn contains(&self, action: Action) -> bool {
        self.iter().any(|item| item == action)
    }
}

/// Why an event was refused. The state is unchanged when an event is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// Writing the slot the machine runs from would destroy it.
    #[error("slot {0} is the running slot and is never written")]
    SlotIsRunning(Slot),
    /// The running slot is still on trial, so the other slot is the only good one.
    #[error("slot {0} is still on trial; an update may start once it is blessed or rolled back")]
    RunningOnTrial(Slot),
    /// The running slot failed and the machine is on its way back to the other slot: that
    /// slot is the only good one, and a reboot comes first.
    #[error("slot {0} failed and the machine is rolling back to the other slot; reboot first, then update")]
    RollbackPending(Slot),
    /// An update is already being written.
    #[error("an update is already being written into slot {0}")]
    WriteInProgress(Slot),
    /// The event needs the slot in another state.
    #[error("slot {slot} is {actual}, not {expected}")]
    WrongState {
        /// The slot concerned.
        slot: Slot,
        /// The state it is in.
        actual: &'static str,
        /// The state the event needs.
        expected: &'static str,
    },
    /// There is no activated update that has not been booted yet.
    #[error("there is no pending update to cancel")]
    NothingToCancel,
    /// Rollback and health-failure fallback need a good slot to go to.
    #[error("slot {0} is not good, so there is nothing to roll back to")]
    NoGoodSlot(Slot),
    /// Only a slot on trial is failed by health checks; a blessed slot stays.
    #[error("slot {0} is already blessed; a health failure does not roll it back")]
    AlreadyBlessed(Slot),
    /// No slot has a boot entry (only reachable from an inconsistent start).
    #[error("no slot has a boot entry")]
    Unbootable,
}

impl Slots {
    /// A freshly flashed disk: slot A as built (on trial until its first healthy boot, or
    /// already good), slot B empty, running A.
    pub fn fresh(a: SlotState) -> Slots {
        Slots {
            a,
            b: SlotState::Empty,
            default: Slot::A,
            running: Slot::A,
        }
    }

    /// The state of `slot`.
    pub fn state(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    fn set(&mut self, slot: Slot, state: SlotState) {
        match slot {
            Slot::A => self.a = state,
            Slot::B => self.b = state,
        }
    }

    /// The slot the loader boots next, as systemd-boot decides: the default if the loader
    /// still prefers it, else the other slot if the loader prefers that, else (every entry
    /// is bad) the first entry that exists, default first.
    pub fn firmware_choice(&self) -> Option<Slot> {
        let order = [self.default, self.default.other()];
        order
            .into_iter()
            .find(|&slot| self.state(slot).is_preferred_by_loader())
            .or_else(|| order.into_iter().find(|&slot| self.state(slot).has_entry()))
    }

    /// Applies `event`. On success returns the next state and the actions that make the
    /// disk match it, in order; on refusal the state is unchanged.
    pub fn step(&self, event: Event) -> Result<(Slots, Actions), Refusal> {
        let mut next = *self;
        let mut actions = Actions::default();
        let running = self.running;
        let other = running.other();
        match event {
            Event::BeginWrite(slot) => {
                if slot == running {
                    return Err(Refusal::SlotIsRunning(slot));
                }
                match self.state(running) {
                    SlotState::Good => {}
                    SlotState::Trial { .. } => return Err(Refusal::RunningOnTrial(running)),
                    _ => return Err(Refusal::RollbackPending(running)),
                }
                if self.state(slot) == SlotState::Writing {
                    return Err(Refusal::WriteInProgress(slot));
                }
                // The running slot is good; make sure the loader goes nowhere else while
                // the other slot is being overwritten.
                if self.default == slot {
                    next.default = running;
                    actions.push(Action::SetDefault(running));
                }
                if self.state(slot).has_entry() {
                    actions.push(Action::RemoveEntry(slot));
                }
                next.set(slot, SlotState::Writing);
            }
            Event::WriteOk(slot) => {
                self.expect(slot, SlotState::Writing, "writing")?;
                next.set(slot, SlotState::Written);
            }
            Event::WriteFailed(slot) => {
                self.expect(slot, SlotState::Writing, "writing")?;
                next.set(slot, SlotState::Empty);
            }
            Event::Activate(slot) => {
                if slot == running {
                    return Err(Refusal::SlotIsRunning(slot));
                }
                self.expect(slot, SlotState::Written, "written")?;
                next.set(slot, SlotState::Trial { tries_left: TRIES });
                next.default = slot;
                actions.push(Action::InstallEntry { slot, tries: TRIES });
                actions.push(Action::SetDefault(slot));
            }
            Event::Cancel => {
                let pending = self.default == other
                    && matches!(self.state(other), SlotState::Trial { tries_left } if tries_left == TRIES);
                if !pending {
                    return Err(Refusal::NothingToCancel);
                }
                next.default = running;
                next.set(other, SlotState::Written);
                actions.push(Action::SetDefault(running));
                actions.push(Action::RemoveEntry(other));
            }
            Event::BootAttempted => {
                let chosen = self.firmware_choice().ok_or(Refusal::Unbootable)?;
                if let SlotState::Trial { tries_left } = self.state(chosen) {
                    next.set(
                        chosen,
                        SlotState::Trial {
                            tries_left: tries_left.saturating_sub(1),
                        },
                    );
                }
                next.running = chosen;
            }
            Event::Booted => {
                // A write cut short by the reboot is worthless: the slot is empty again.
                if self.state(other) == SlotState::Writing {
                    next.set(other, SlotState::Empty);
                }
                // The loader passed over the default: it ran out of tries. Record it as
                // bad and make the slot that booted the default again.
                if self.default != running && !self.state(self.default).is_preferred_by_loader() {
                    if let SlotState::Trial { .. } = self.state(self.default) {
                        next.set(self.default, SlotState::Bad);
                        actions.push(Action::MarkBad(self.default));
                    }
                    next.default = running;
                    actions.push(Action::SetDefault(running));
                }
            }
            Event::Healthy => {
                if let SlotState::Trial { .. } = self.state(running) {
                    next.set(running, SlotState::Good);
                    actions.push(Action::Bless(running));
                }
            }
            Event::HealthFailed => match self.state(running) {
                SlotState::Trial { .. } => {
                    if self.state(other) != SlotState::Good {
                        return Err(Refusal::NoGoodSlot(other));
                    }
                    next.set(running, SlotState::Bad);
                    next.default = other;
                    actions.push(Action::MarkBad(running));
                    actions.push(Action::SetDefault(other));
                    actions.push(Action::Reboot);
                }
                SlotState::Good => return Err(Refusal::AlreadyBlessed(running)),
                SlotState::Bad => return Err(Refusal::RollbackPending(running)),
                actual => {
                    return Err(Refusal::WrongState {
                        slot: running,
                        actual: actual.name(),
                        expected: "trial",
                    })
                }
            },
            Event::RollbackRequested => {
                if self.state(other) != SlotState::Good {
                    return Err(Refusal::NoGoodSlot(other));
                }
                next.default = other;
                actions.push(Action::SetDefault(other));
                actions.push(Action::Reboot);
            }
        }
        // Firecracker's habit: the invariants are checked after every step in debug
        // builds (and so in every test and harness), not only where a test thinks to.
        debug_assert!(
            self.check().is_err() || next.check().is_ok(),
            "{event:?} took {self:?} to {next:?}, which breaks {:?}",
            next.check()
        );
        Ok((next, actions))
    }

    fn expect(&self, slot: Slot, wanted: SlotState, name: &'static str) -> Result<(), Refusal> {
        if self.state(slot) == wanted {
            Ok(())
        } else {
            Err(Refusal::WrongState {
                slot,
                actual: self.state(slot).name(),
                expected: name,
            })
        }
    }

    /// Checks the invariants that hold in every reachable state; returns the first broken
    /// one.
    pub fn check(&self) -> Result<(), &'static str> {
        let running = self.state(self.running);
        let other = self.state(self.running.other());
        // The running slot is never written: it always has its entry, whatever happens to
        // the other one.
        if !running.has_entry() {
            return Err("the running slot is being written or has no boot entry");
        }
        // A good slot to come back to, or the only slot ever written.
        let safe = |slot: Slot| {
            let state = self.state(slot);
            state == SlotState::Good
                || (state.has_entry() && self.state(slot.other()) == SlotState::Empty)
        };
        if !Slot::ALL.into_iter().any(safe) {
            return Err("no good slot and more than one slot written");
        }
        // The default was written and verified.
        if !self.state(self.default).has_entry() {
            return Err("the default slot has no boot entry");
        }
        // A trial never has more tries than it was given.
        for state in [running, other] {
            if let SlotState::Trial { tries_left } = state {
                if tries_left > TRIES {
                    return Err("a trial slot has more tries than it was given");
                }
            }
        }
        // The firmware always finds something to boot.
        if self.firmware_choice().is_none() {
            return Err("the loader has no entry to boot");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut slots: Slots, events: &[Event]) -> Slots {
        for &event in events {
            slots = slots.step(event).unwrap().0;
            slots.check().unwrap();
        }
        slots
    }

    fn blessed() -> Slots {
        Slots::fresh(SlotState::Good)
    }

    #[test]
    fn an_update_lands_and_is_blessed() {
        let written = run(
            blessed(),
            &[Event::BeginWrite(Slot::B), Event::WriteOk(Slot::B)],
        );
        let (activated, actions) = written.step(Event::Activate(Slot::B)).unwrap();
        assert!(actions.contains(Action::InstallEntry {
            slot: Slot::B,
            tries: TRIES
        }));
        assert_eq!(activated.default, Slot::B);
        let booted = run(activated, &[Event::BootAttempted, Event::Booted]);
        assert_eq!(booted.running, Slot::B);
        let (good, actions) = booted.step(Event::Healthy).unwrap();
        assert_eq!(good.b, SlotState::Good);
        assert!(actions.contains(Action::Bless(Slot::B)));
        // A later reboot stays on B.
        assert_eq!(run(good, &[Event::BootAttempted]).running, Slot::B);
    }

    #[test]
    fn a_release_that_never_proves_healthy_falls_back_after_its_tries() {
        let mut slots = run(
            blessed(),
            &[
                Event::BeginWrite(Slot::B),
                Event::WriteOk(Slot::B),
                Event::Activate(Slot::B),
            ],
        );
        for _ in 0..TRIES {
            slots = run(slots, &[Event::BootAttempted]);
            assert_eq!(slots.running, Slot::B);
        }
        let slots = run(slots, &[Event::BootAttempted]);
        assert_eq!(slots.running, Slot::A, "the loader skips the spent entry");
        let (slots, actions) = slots.step(Event::Booted).unwrap();
        assert_eq!(slots.b, SlotState::Bad);
        assert_eq!(slots.default, Slot::A);
        assert!(actions.contains(Action::MarkBad(Slot::B)));
    }

    #[test]
    fn a_failed_health_check_marks_the_trial_bad_and_reboots() {
        let slots = run(
            blessed(),
            &[
                Event::BeginWrite(Slot::B),
                Event::WriteOk(Slot::B),
                Event::Activate(Slot::B),
                Event::BootAttempted,
                Event::Booted,
            ],
        );
        let (slots, actions) = slots.step(Event::HealthFailed).unwrap();
        assert_eq!(slots.b, SlotState::Bad);
        assert!(actions.contains(Action::Reboot));
        assert_eq!(run(slots, &[Event::BootAttempted]).running, Slot::A);
    }

    #[test]
    fn refusals_leave_the_state_alone() {
        let slots = blessed();
        assert_eq!(
            slots.step(Event::BeginWrite(Slot::A)),
            Err(Refusal::SlotIsRunning(Slot::A))
        );
        assert_eq!(
            slots.step(Event::RollbackRequested),
            Err(Refusal::NoGoodSlot(Slot::B))
        );
        assert_eq!(slots.step(Event::Cancel), Err(Refusal::NothingToCancel));
        let fresh = Slots::fresh(SlotState::Trial { tries_left: 2 });
        assert_eq!(
            fresh.step(Event::BeginWrite(Slot::B)),
            Err(Refusal::RunningOnTrial(Slot::A))
        );
    }

    #[test]
    fn cancel_takes_back_an_activation() {
        let slots = run(
            blessed(),
            &[
                Event::BeginWrite(Slot::B),
                Event::WriteOk(Slot::B),
                Event::Activate(Slot::B),
                Event::Cancel,
            ],
        );
        assert_eq!(slots.b, SlotState::Written);
        assert_eq!(slots.default, Slot::A);
    }

    #[test]
    fn a_write_cut_by_power_loss_is_forgotten_and_can_be_retried() {
        let slots = run(
            blessed(),
            &[
                Event::BeginWrite(Slot::B),
                Event::BootAttempted,
                Event::Booted,
            ],
        );
        assert_eq!(slots.b, SlotState::Empty);
        assert_eq!(slots.running, Slot::A);
        run(
            slots,
            &[Event::BeginWrite(Slot::B), Event::WriteOk(Slot::B)],
        );
    }
}
