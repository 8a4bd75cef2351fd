//! PID 1's agent supervisor (`keelson_supervise::agent`).

use std::time::Duration;

use keelson_contract::pid1::NotifyMessage;
use keelson_supervise::agent::{
    Action, AgentState, Event, Supervisor, INITIAL_BACKOFF, MAX_BACKOFF,
};
use keelson_supervise::backoff::Backoff;

/// Every restart delay lies between the initial and the maximum backoff, and a run of at
/// least the reset period always brings the delay back to the initial one.
#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(9))]
fn backoff_is_bounded_and_resets_after_a_long_run() {
    bolero::check!()
        .with_type::<[u16; 8]>()
        .for_each(|run_seconds| {
            let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF, Duration::from_secs(120));
            for &seconds in run_seconds {
                let ran_for = Duration::from_secs(u64::from(seconds));
                let delay = backoff.delay_after_exit(ran_for);
                assert!(delay >= INITIAL_BACKOFF && delay <= MAX_BACKOFF);
                if ran_for >= Duration::from_secs(120) {
                    assert_eq!(delay, INITIAL_BACKOFF);
                }
            }
        });
}

/// Decodes one byte pair into an event, so that harnesses explore event sequences.
fn event(kind: u8, value: u8) -> Event {
    let pid = i32::from(value % 4) + 100;
    match kind % 6 {
        0 => Event::Tick,
        1 => Event::Spawned { pid },
        2 => Event::Exited {
            pid,
            how: "exited".into(),
        },
        3 => Event::Notify {
            pid,
            message: NotifyMessage {
                ready: value.is_multiple_of(2),
                watchdog: true,
                status: None,
                ..NotifyMessage::default()
            },
        },
        4 => Event::SpawnFailed {
            error: "no such file".into(),
        },
        _ => Event::Stop,
    }
}

/// Whatever happens: a kill is only ever aimed at the agent the supervisor believes is
/// running; after Stop nothing is spawned again; and the start count only grows by spawns.
#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(7))]
fn supervisor_kills_only_its_agent_and_never_restarts_after_stop() {
    bolero::check!()
        .with_type::<[(u8, u8, u8); 6]>()
        .for_each(|steps| {
            let mut supervisor = Supervisor::new(Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut stopped = false;
            for &(kind, value, advance) in steps {
                now += Duration::from_secs(u64::from(advance));
                let running_pid = match supervisor.state() {
                    AgentState::Running { pid, .. } => Some(*pid),
                    _ => None,
                };
                let event = event(kind, value);
                let is_stop = matches!(event, Event::Stop);
                let starts_before = supervisor.starts();
                let is_spawned = matches!(event, Event::Spawned { .. });
                for action in supervisor.handle(now, event) {
                    match action {
                        Action::Kill { pid, .. } => assert_eq!(Some(pid), running_pid),
                        Action::Spawn { .. } => assert!(!stopped, "spawned after Stop"),
                        Action::Log(_) => {}
                    }
                }
                assert!(supervisor.starts() <= starts_before + u32::from(is_spawned));
                if is_stop {
                    stopped = true;
                }
                if stopped {
                    assert_eq!(supervisor.state(), &AgentState::Stopped);
                }
            }
        });
}
