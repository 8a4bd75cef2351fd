//! The FleetLock client (`keelson_update::fleetlock`): over any sequence of events the node
//! reboots only while it holds a slot, asks for one request at a time, waits within the
//! backoff's bounds, and once it has asked to give a slot back it keeps asking until the
//! server takes it.

use std::time::Duration;

use keelson_update::fleetlock::{FleetLock, LockAction, LockEvent, LockState};

fn event(choice: u8) -> LockEvent {
    match choice % 8 {
        0 => LockEvent::RebootWanted,
        1 => LockEvent::RebootNoLongerWanted,
        2 => LockEvent::SteadyState,
        3 => LockEvent::Granted,
        4 => LockEvent::Refused("held".into()),
        5 => LockEvent::Released,
        6 => LockEvent::ReleaseFailed("refused".into()),
        _ => LockEvent::RetryDue,
    }
}

#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(13))]
fn the_lock_is_used_as_the_protocol_says() {
    bolero::check!()
        .with_type::<[u8; 12]>()
        .for_each(|choices| {
            let mut lock = FleetLock::new();
            for &choice in choices {
                let before = lock.state().clone();
                let actions = lock.step(event(choice));
                assert!(actions.len() <= 1, "one request at a time: {actions:?}");
                for action in &actions {
                    match action {
                        LockAction::Reboot => {
                            assert_eq!(lock.state(), &LockState::Held);
                            assert!(matches!(before, LockState::Acquiring { .. }));
                        }
                        LockAction::RetryAfter(delay) => {
                            assert!(*delay >= Duration::from_secs(2));
                            assert!(*delay <= Duration::from_secs(60));
                        }
                        LockAction::RequestSlot => {
                            assert!(matches!(lock.state(), LockState::Acquiring { .. }));
                        }
                        LockAction::ReleaseSlot => {
                            assert!(matches!(lock.state(), LockState::Releasing { .. }));
                        }
                    }
                }
                // Giving back is never abandoned: only the server's answer ends it.
                if matches!(before, LockState::Releasing { .. }) {
                    let released = matches!(event(choice), LockEvent::Released);
                    assert_eq!(
                        matches!(lock.state(), LockState::Releasing { .. }),
                        !released,
                        "from {before:?} after {:?}",
                        event(choice)
                    );
                }
            }
        });
}
