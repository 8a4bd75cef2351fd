//! The container lifecycle (`keelson_runtime::lifecycle::Container`): whatever happens, a
//! stopped container never starts again, `Never` never restarts, SIGKILL only follows
//! SIGTERM, restarts are counted, and every refusal is true of the state it was given.

use keelson_runtime::lifecycle::{Action, Container, Event, RestartPolicy, State};

fn policy(index: u8) -> RestartPolicy {
    [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ][usize::from(index % 3)]
}

/// An event from five bytes, at `now`.
fn event(kind: u8, pid: u8, code: u8, flag: bool, now: u64) -> Event {
    match kind % 5 {
        0 => Event::Started {
            pid: i32::from(pid),
            at: now,
        },
        1 => Event::Exited {
            exit_code: i32::from(code),
            oom_killed: flag,
            at: now,
        },
        2 if flag => Event::RestartRequested {
            at: now,
            grace_seconds: u64::from(code % 40),
        },
        2 => Event::StopRequested {
            at: now,
            grace_seconds: u64::from(code % 40),
        },
        3 => Event::CreateFailed { at: now },
        _ => Event::Tick { at: now },
    }
}

fn check(policy_index: u8, events: &[(u8, u8, u8, bool, u8)]) {
    let mut container = Container::new(policy(policy_index));
    let mut now = 0u64;
    let mut stop_asked = false;
    let mut ended_under_never = false;
    let mut starts = 0u32;
    let mut terminated: Vec<i32> = Vec::new();
    for &(kind, pid, code, flag, elapsed) in events {
        now += u64::from(elapsed);
        let before = container.state;
        let event = event(kind, pid, code, flag, now);
        match container.step(event) {
            Ok(actions) => {
                for action in &actions {
                    match action {
                        Action::Start => {
                            assert!(!stop_asked, "started after a stop: {event:?}");
                            assert!(!ended_under_never, "Never restarted");
                            starts += 1;
                        }
                        Action::Terminate(pid) => terminated.push(*pid),
                        Action::Kill(pid) => {
                            assert!(terminated.contains(pid), "SIGKILL before SIGTERM")
                        }
                        Action::WakeAt(at) => assert!(*at >= now, "a wake-up in the past"),
                    }
                }
                if matches!(event, Event::StopRequested { .. }) {
                    stop_asked = true;
                }
                let ended = matches!(event, Event::Exited { .. } | Event::CreateFailed { .. });
                if ended && policy(policy_index) == RestartPolicy::Never {
                    ended_under_never = true;
                }
            }
            Err(refused) => {
                assert_eq!(refused.state, before);
                assert_eq!(container.state, before, "a refusal changes nothing");
                let fits = match event {
                    Event::Started { pid, .. } => {
                        before == State::Creating && pid > 0 && !container.is_stopping()
                    }
                    Event::Exited { .. } => {
                        matches!(before, State::Running { .. } | State::Stopping { .. })
                    }
                    Event::CreateFailed { .. } => before == State::Creating,
                    Event::StopRequested { .. }
                    | Event::RestartRequested { .. }
                    | Event::Tick { .. } => true,
                };
                assert!(!fits, "{event:?} was refused in {before:?}, where it fits");
            }
        }
        assert_eq!(container.restart_count, starts, "every restart is a Start");
    }
}

/// The rules hold for sampled (bolero) or all (Kani) event sequences.
#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(9))]
fn a_containers_lifecycle_keeps_its_promises() {
    bolero::check!()
        .with_type::<(u8, Vec<(u8, u8, u8, bool, u8)>)>()
        .for_each(|(policy_index, events)| check(*policy_index, &events[..events.len().min(24)]));
}
