//! PID 1's agent supervisor: when to start, restart and kill `keelsond`. Pure.
//!
//! The shell in PID 1's stage 2 feeds it events (the agent was spawned, exited, sent an
//! sd_notify message, time passed, shutdown began) with the current monotonic time, and
//! performs the [`Action`]s it returns. It reads no clock and touches no process, so every
//! path (crash loops, watchdog expiry, exits during shutdown) is tested on the host.
//!
//! Restarts back off like kubelet's: 1 s, doubling up to 60 s, back to 1 s once the agent
//! has stayed up for 2 minutes. A missed watchdog (no `WATCHDOG=1` within the interval once
//! the agent has said `READY=1`) kills it, and the exit then restarts it as any crash would.

use std::time::Duration;

use keelson_contract::pid1::NotifyMessage;

use crate::backoff::Backoff;

/// First restart delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Running this long counts as healthy and resets the backoff.
pub const RESET_BACKOFF_AFTER: Duration = Duration::from_secs(120);
/// How long the agent may go without a watchdog ping once ready.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_secs(30);

/// Where the agent is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Waiting for the first start or for a restart at `at`.
    WaitingToStart {
        /// When to spawn.
        at: Duration,
    },
    /// Running as `pid`.
    Running {
        /// Process id.
        pid: i32,
        /// When it was spawned.
        started_at: Duration,
        /// When it last proved it is alive (READY or WATCHDOG), once it has said READY.
        alive_at: Option<Duration>,
    },
    /// Shutdown began; no more restarts.
    Stopped,
}

/// An input to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed (the poll loop woke up).
    Tick,
    /// The shell spawned the agent as `pid`.
    Spawned {
        /// Process id.
        pid: i32,
    },
    /// Spawning failed.
    SpawnFailed {
        /// Why.
        error: String,
    },
    /// A child exited (it may not be the agent: PID 1 reaps orphans too).
    Exited {
        /// Process id.
        pid: i32,
        /// How it ended, for the log.
        how: String,
    },
    /// An sd_notify datagram from `pid`.
    Notify {
        /// Sender, as reported by SO_PASSCRED.
        pid: i32,
        /// The message.
        message: NotifyMessage,
    },
    /// Shutdown began: stop the agent and do not restart it.
    Stop,
}

/// Something for the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the agent (then report `Spawned` or `SpawnFailed`).
    Spawn {
        /// How many times it has been started before (0 on the first start).
        previous_starts: u32,
    },
    /// Send `signal` to `pid`.
    Kill {
        /// Process id.
        pid: i32,
        /// Signal number.
        signal: i32,
    },
    /// Write a line to the log.
    Log(String),
}

/// The agent supervisor.
#[derive(Debug, Clone)]
pub struct Supervisor {
    state: AgentState,
    backoff: Backoff,
    watchdog: Duration,
    starts: u32,
    status: Option<String>,
}

impl Supervisor {
    /// A supervisor that starts the agent at `now`.
    pub fn new(now: Duration) -> Supervisor {
        Supervisor {
            state: AgentState::WaitingToStart { at: now },
            backoff: Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF, RESET_BACKOFF_AFTER),
            watchdog: WATCHDOG_INTERVAL,
            starts: 0,
            status: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// How many times the agent was spawned.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The agent's last `STATUS=`.
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// When the shell must wake up at the latest to deliver a `Tick`.
    pub fn next_deadline(&self) -> Option<Duration> {
        match self.state {
            AgentState::WaitingToStart { at } => Some(at),
            AgentState::Running {
                alive_at: Some(alive_at),
                ..
            } => Some(alive_at + self.watchdog),
            AgentState::Running { alive_at: None, .. } | AgentState::Stopped => None,
        }
    }

    /// Handles one event at time `now` and returns what to do.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        match (&self.state, event) {
            (AgentState::WaitingToStart { at }, Event::Tick) if now >= *at => {
                vec![Action::Spawn {
                    previous_starts: self.starts,
                }]
            }
            (AgentState::WaitingToStart { .. }, Event::Spawned { pid }) => {
                self.starts += 1;
                self.state = AgentState::Running {
                    pid,
                    started_at: now,
                    alive_at: None,
                };
                vec![Action::Log(format!("started keelsond as pid {pid}"))]
            }
            (AgentState::WaitingToStart { .. }, Event::SpawnFailed { error }) => {
                let delay = self.backoff.delay_after_exit(Duration::ZERO);
                self.state = AgentState::WaitingToStart { at: now + delay };
                vec![Action::Log(format!(
                    "cannot start keelsond: {error}; retrying in {} s",
                    delay.as_secs()
                ))]
            }
            (
                &AgentState::Running {
                    pid, started_at, ..
                },
                Event::Exited { pid: exited, how },
            ) if exited == pid => {
                let delay = self
                    .backoff
                    .delay_after_exit(now.saturating_sub(started_at));
                self.state = AgentState::WaitingToStart { at: now + delay };
                vec![Action::Log(format!(
                    "keelsond (pid {pid}) {how}; restarting in {} s",
                    delay.as_secs()
                ))]
            }
            (
                &AgentState::Running {
                    pid,
                    started_at,
                    alive_at,
                },
                Event::Notify {
                    pid: sender,
                    message,
                },
            ) if sender == pid => {
                let mut actions = Vec::new();
                if let Some(status) = message.status {
                    self.status = Some(status);
                }
                if message.ready && alive_at.is_none() {
                    actions.push(Action::Log(format!("keelsond is ready (pid {pid})")));
                }
                if message.ready || (message.watchdog && alive_at.is_some()) {
                    self.state = AgentState::Running {
                        pid,
                        started_at,
                        alive_at: Some(now),
                    };
                }
                actions
            }
            (
                &AgentState::Running {
                    pid,
                    alive_at: Some(alive_at),
                    ..
                },
                Event::Tick,
            ) if now >= alive_at + self.watchdog => {
                // Kill once; the exit that follows restarts it with backoff.
                self.state = AgentState::Running {
                    pid,
                    started_at: now,
                    alive_at: None,
                };
                vec![
                    Action::Log(format!(
                        "keelsond (pid {pid}) missed its watchdog ({} s without WATCHDOG=1); killing it",
                        self.watchdog.as_secs()
                    )),
                    Action::Kill { pid, signal: libc::SIGKILL },
                ]
            }
            (&AgentState::Running { pid, .. }, Event::Stop) => {
                self.state = AgentState::Stopped;
                vec![Action::Kill {
                    pid,
                    signal: libc::SIGTERM,
                }]
            }
            (_, Event::Stop) => {
                self.state = AgentState::Stopped;
                Vec::new()
            }
            // Everything else (orphans exiting, stale notifications, early ticks, a spawn
            // report arriving after Stop) changes nothing.
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    fn running(supervisor: &mut Supervisor, now: Duration, pid: i32) {
        assert_eq!(
            supervisor.handle(now, Event::Tick)[0],
            Action::Spawn {
                previous_starts: supervisor.starts()
            }
        );
        supervisor.handle(now, Event::Spawned { pid });
    }

    #[test]
    fn starts_at_once_and_restarts_a_crash_with_doubling_delays() {
        let mut supervisor = Supervisor::new(secs(0));
        running(&mut supervisor, secs(0), 10);
        let mut now = secs(1);
        for expected in [1, 2, 4, 8] {
            supervisor.handle(
                now,
                Event::Exited {
                    pid: supervisor_pid(&supervisor),
                    how: "exited 1".into(),
                },
            );
            assert_eq!(supervisor.next_deadline(), Some(now + secs(expected)));
            assert!(
                supervisor.handle(now, Event::Tick).is_empty(),
                "must not restart early"
            );
            now += secs(expected);
            running(&mut supervisor, now, 10 + expected as i32);
        }
        assert_eq!(supervisor.starts(), 5);
    }

    fn supervisor_pid(supervisor: &Supervisor) -> i32 {
        match supervisor.state() {
            AgentState::Running { pid, .. } => *pid,
            other => panic!("not running: {other:?}"),
        }
    }

    #[test]
    fn orphans_exiting_do_not_disturb_the_agent() {
        let mut supervisor = Supervisor::new(secs(0));
        running(&mut supervisor, secs(0), 10);
        assert!(supervisor
            .handle(
                secs(3),
                Event::Exited {
                    pid: 99,
                    how: "exited 0".into()
                }
            )
            .is_empty());
        assert_eq!(supervisor_pid(&supervisor), 10);
    }

    #[test]
    fn a_missed_watchdog_kills_the_agent_once() {
        let mut supervisor = Supervisor::new(secs(0));
        running(&mut supervisor, secs(0), 10);
        let ready = NotifyMessage::parse("READY=1\nSTATUS=serving");
        supervisor.handle(
            secs(5),
            Event::Notify {
                pid: 10,
                message: ready,
            },
        );
        assert_eq!(supervisor.status(), Some("serving"));
        let ping = NotifyMessage::parse("WATCHDOG=1");
        supervisor.handle(
            secs(20),
            Event::Notify {
                pid: 10,
                message: ping,
            },
        );
        assert!(supervisor.handle(secs(49), Event::Tick).is_empty());
        let actions = supervisor.handle(secs(50), Event::Tick);
        assert!(actions.contains(&Action::Kill {
            pid: 10,
            signal: libc::SIGKILL
        }));
        assert!(
            supervisor.handle(secs(51), Event::Tick).is_empty(),
            "kill only once"
        );
    }

    #[test]
    fn notifications_from_other_processes_are_ignored() {
        let mut supervisor = Supervisor::new(secs(0));
        running(&mut supervisor, secs(0), 10);
        supervisor.handle(
            secs(1),
            Event::Notify {
                pid: 11,
                message: NotifyMessage::parse("READY=1"),
            },
        );
        assert_eq!(supervisor.next_deadline(), None);
    }

    #[test]
    fn stop_terminates_and_never_restarts() {
        let mut supervisor = Supervisor::new(secs(0));
        running(&mut supervisor, secs(0), 10);
        assert_eq!(
            supervisor.handle(secs(1), Event::Stop),
            vec![Action::Kill {
                pid: 10,
                signal: libc::SIGTERM
            }]
        );
        supervisor.handle(
            secs(2),
            Event::Exited {
                pid: 10,
                how: "exited 0".into(),
            },
        );
        assert!(supervisor.handle(secs(100), Event::Tick).is_empty());
        assert_eq!(supervisor.state(), &AgentState::Stopped);
    }
}
