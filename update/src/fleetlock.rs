//! The FleetLock client's decisions, as a pure machine: when to ask for a reboot slot,
//! when to retry, when to reboot, and when to give the slot back.
//!
//! The protocol (as Zincati speaks it to Airlock): before rebooting into an update the node
//! POSTs `/v1/pre-reboot` and reboots only once the server grants a slot; once the new
//! slot is blessed it POSTs `/v1/steady-state` to give the slot back. Both requests are
//! idempotent, so every failure is retried with backoff until it goes through.
//!
//! The shell (`keelson_updater::reboot`) sends the requests and sleeps; this machine takes
//! what happened as a [`LockEvent`] and answers with [`LockAction`]s. It reads no clock.

use std::time::Duration;

use keelson_supervise::backoff::Backoff;

/// Retry delays while asking for a slot: 5 s doubling to 30 s.
pub const ACQUIRE_BACKOFF: Backoff = Backoff::new(
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::MAX,
);
/// Retry delays while giving a slot back: 2 s doubling to 60 s.
pub const RELEASE_BACKOFF: Backoff = Backoff::new(
    Duration::from_secs(2),
    Duration::from_secs(60),
    Duration::MAX,
);

/// Where the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// Holding nothing and wanting nothing.
    Idle,
    /// Asking for a reboot slot; `failures` refusals so far.
    Acquiring {
        /// Refusals and failed requests in a row.
        failures: u32,
        /// Why the last request did not get a slot.
        last_error: Option<String>,
    },
    /// The server granted a slot and the node is rebooting.
    Held,
    /// Giving the slot back; `failures` failed requests so far.
    Releasing {
        /// Failed requests in a row.
        failures: u32,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEvent {
    /// An update is installed and waits for a reboot slot.
    RebootWanted,
    /// The update was cancelled or rolled back before the slot was granted.
    RebootNoLongerWanted,
    /// The node runs a blessed slot: any slot taken before (by this boot or an earlier
    /// one) goes back.
    SteadyState,
    /// The server granted the slot.
    Granted,
    /// The server refused, or the request failed.
    Refused(String),
    /// The server took the slot back.
    Released,
    /// Giving the slot back failed.
    ReleaseFailed(String),
    /// A retry delay passed.
    RetryDue,
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAction {
    /// POST `/v1/pre-reboot`, then report `Granted` or `Refused`.
    RequestSlot,
    /// POST `/v1/steady-state`, then report `Released` or `ReleaseFailed`.
    ReleaseSlot,
    /// Sleep, then report `RetryDue`.
    RetryAfter(Duration),
    /// Reboot now: the slot is held.
    Reboot,
}

/// The FleetLock client machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLock {
    state: LockState,
}

impl Default for FleetLock {
    fn default() -> FleetLock {
        FleetLock::new()
    }
}

impl FleetLock {
    /// A client holding nothing.
    pub fn new() -> FleetLock {
        FleetLock {
            state: LockState::Idle,
        }
    }

    /// Where the client is.
    pub fn state(&self) -> &LockState {
        &self.state
    }

    /// Takes one event and returns what to do. Events that do not fit the state (a late
    /// answer after a cancel, a second `RebootWanted`) change nothing and ask for nothing.
    pub fn step(&mut self, event: LockEvent) -> Vec<LockAction> {
        let (next, actions) = match (&self.state, event) {
            (LockState::Idle, LockEvent::RebootWanted) => (
                LockState::Acquiring {
                    failures: 0,
                    last_error: None,
                },
                vec![LockAction::RequestSlot],
            ),
            (LockState::Idle, LockEvent::SteadyState) => (
                LockState::Releasing { failures: 0 },
                vec![LockAction::ReleaseSlot],
            ),
            (LockState::Acquiring { .. }, LockEvent::Granted) => {
                (LockState::Held, vec![LockAction::Reboot])
            }
            (LockState::Acquiring { failures, .. }, LockEvent::Refused(error)) => {
                let delay = ACQUIRE_BACKOFF.delay_for_attempt(*failures);
                (
                    LockState::Acquiring {
                        failures: failures.saturating_add(1),
                        last_error: Some(error),
                    },
                    vec![LockAction::RetryAfter(delay)],
                )
            }
            (
                LockState::Acquiring {
                    failures,
                    last_error,
                },
                LockEvent::RetryDue,
            ) => (
                LockState::Acquiring {
                    failures: *failures,
                    last_error: last_error.clone(),
                },
                vec![LockAction::RequestSlot],
            ),
            // A cancel while asking: the server may have granted the slot in a request
            // whose answer was lost, so give it back (steady-state is idempotent).
            (LockState::Acquiring { .. }, LockEvent::RebootNoLongerWanted) => (
                LockState::Releasing { failures: 0 },
                vec![LockAction::ReleaseSlot],
            ),
            (LockState::Held, LockEvent::RebootNoLongerWanted) => (
                LockState::Releasing { failures: 0 },
                vec![LockAction::ReleaseSlot],
            ),
            (LockState::Releasing { .. }, LockEvent::Released) => (LockState::Idle, Vec::new()),
            (LockState::Releasing { failures }, LockEvent::ReleaseFailed(_)) => {
                let delay = RELEASE_BACKOFF.delay_for_attempt(*failures);
                (
                    LockState::Releasing {
                        failures: failures.saturating_add(1),
                    },
                    vec![LockAction::RetryAfter(delay)],
                )
            }
            (LockState::Releasing { failures }, LockEvent::RetryDue) => (
                LockState::Releasing {
                    failures: *failures,
                },
                vec![LockAction::ReleaseSlot],
            ),
            (state, _) => (state.clone(), Vec::new()),
        };
        debug_assert!(
            !actions.contains(&LockAction::Reboot) || next == LockState::Held,
            "a reboot is only ever asked for while the slot is held"
        );
        debug_assert!(actions.len() <= 1, "one request at a time");
        self.state = next;
        actions
    }

    /// Why a reboot waits, for `update status`: the last refusal while asking.
    pub fn last_error(&self) -> Option<&str> {
        match &self.state {
            LockState::Acquiring { last_error, .. } => last_error.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    #[test]
    fn a_granted_slot_reboots_and_a_refusal_retries_with_backoff() {
        let mut lock = FleetLock::new();
        assert_eq!(
            lock.step(LockEvent::RebootWanted),
            [LockAction::RequestSlot]
        );
        let mut delays = Vec::new();
        for _ in 0..4 {
            match lock
                .step(LockEvent::Refused("held by node-2".into()))
                .as_slice()
            {
                [LockAction::RetryAfter(delay)] => delays.push(delay.as_secs()),
                other => panic!("expected a retry, got {other:?}"),
            }
            assert_eq!(lock.last_error(), Some("held by node-2"));
            assert_eq!(lock.step(LockEvent::RetryDue), [LockAction::RequestSlot]);
        }
        assert_eq!(delays, [5, 10, 20, 30]);
        assert_eq!(lock.step(LockEvent::Granted), [LockAction::Reboot]);
        assert_eq!(lock.state(), &LockState::Held);
    }

    #[test]
    fn steady_state_gives_the_slot_back_until_the_server_takes_it() {
        let mut lock = FleetLock::new();
        assert_eq!(lock.step(LockEvent::SteadyState), [LockAction::ReleaseSlot]);
        assert_eq!(
            lock.step(LockEvent::ReleaseFailed("connection refused".into())),
            [LockAction::RetryAfter(secs(2))]
        );
        assert_eq!(lock.step(LockEvent::RetryDue), [LockAction::ReleaseSlot]);
        assert_eq!(lock.step(LockEvent::Released), []);
        assert_eq!(lock.state(), &LockState::Idle);
    }

    #[test]
    fn a_cancel_while_asking_gives_back_a_slot_that_may_have_been_granted() {
        let mut lock = FleetLock::new();
        lock.step(LockEvent::RebootWanted);
        assert_eq!(
            lock.step(LockEvent::RebootNoLongerWanted),
            [LockAction::ReleaseSlot]
        );
        // The late grant of the request in flight no longer reboots the node.
        assert_eq!(lock.step(LockEvent::Granted), []);
        assert_eq!(lock.step(LockEvent::Released), []);
        assert_eq!(lock.state(), &LockState::Idle);
    }
}
