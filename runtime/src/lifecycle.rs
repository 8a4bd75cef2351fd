//! A container's lifecycle as a pure machine: its states as the kubelet reports them
//! (waiting, running, terminated, with `lastState` and `restartCount`), the stop sequence
//! (SIGTERM, then SIGKILL when the grace period ends), and the restart decision of the
//! pod's `restartPolicy` with the kubelet's backoff (10 s doubling to 5 min, reset after
//! 10 min of running).
//!
//! [`Container::step`] takes an event (the process started or exited, a stop was asked
//! for, time passed) and returns the actions for the shell (start the process, signal it,
//! wake me at). It reads no clock: times are seconds the caller passes in.

use std::time::Duration;

use keelson_supervise::backoff::Backoff;

/// The pod's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart whatever the exit.
    Always,
    /// Restart after a failure (non-zero exit or OOM kill).
    OnFailure,
    /// Never restart.
    Never,
}

/// Why a container terminated, as the kubelet words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationReason {
    /// Exit code 0.
    Completed,
    /// A non-zero exit or a signal.
    Error,
    /// Killed by the kernel for passing its memory limit.
    OomKilled,
    /// The process never started: the runtime could not create the container (exit code
    /// 128, as the kubelet reports a failed `runc create`).
    StartError,
}

impl TerminationReason {
    /// `Completed`, `Error`, `OOMKilled` or `StartError`.
    pub fn name(self) -> &'static str {
        match self {
            TerminationReason::Completed => "Completed",
            TerminationReason::Error => "Error",
            TerminationReason::OomKilled => "OOMKilled",
            TerminationReason::StartError => "StartError",
        }
    }
}

/// A finished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminated {
    /// The exit code (128 + signal for a signal).
    pub exit_code: i32,
    /// Why.
    pub reason: TerminationReason,
    /// When it started and finished (seconds).
    pub started_at: u64,
    /// When it finished.
    pub finished_at: u64,
}

/// Where a container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being created (its process not yet running).
    Creating,
    /// Waiting out its restart backoff until the given time.
    BackOff {
        /// When it may start again.
        until: u64,
    },
    /// Its process runs.
    Running {
        /// The process (in the agent's PID namespace).
        pid: i32,
        /// Since when.
        started_at: u64,
    },
    /// Asked to stop: SIGTERM sent, SIGKILL due at `kill_at`.
    Stopping {
        /// The process.
        pid: i32,
        /// Since when it ran.
        started_at: u64,
        /// When the grace period ends.
        kill_at: u64,
    },
    /// Finished, and not to be restarted (yet, or ever).
    Terminated(Terminated),
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The process started.
    Started {
        /// Its pid.
        pid: i32,
        /// When.
        at: u64,
    },
    /// The process could not be created (the shell's error is reported beside this).
    CreateFailed {
        /// When.
        at: u64,
    },
    /// The process exited.
    Exited {
        /// Its exit code (128 + signal).
        exit_code: i32,
        /// `memory.events` counted an OOM kill.
        oom_killed: bool,
        /// When.
        at: u64,
    },
    /// Kill the running process and let the restart policy decide, as for any exit (its
    /// liveness probe failed).
    RestartRequested {
        /// When.
        at: u64,
        /// Seconds between SIGTERM and SIGKILL.
        grace_seconds: u64,
    },
    /// Stop it (the pod is deleted or the node shuts down).
    StopRequested {
        /// When.
        at: u64,
        /// Seconds between SIGTERM and SIGKILL.
        grace_seconds: u64,
    },
    /// Time passed.
    Tick {
        /// Now.
        at: u64,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create and start the process.
    Start,
    /// Send SIGTERM.
    Terminate(i32),
    /// Send SIGKILL.
    Kill(i32),
    /// Step the machine again with a `Tick` at this time.
    WakeAt(u64),
}

/// An event that cannot happen in the container's state: a bug in the shell, reported
/// rather than ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("container event {event:?} cannot happen in state {state:?}")]
pub struct Refused {
    /// The event.
    pub event: Event,
    /// The state it met.
    pub state: State,
}

/// The kubelet's container restart backoff.
pub fn kubelet_backoff() -> Backoff {
    Backoff::new(
        Duration::from_secs(10),
        Duration::from_secs(300),
        Duration::from_secs(600),
    )
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Where it is.
    pub state: State,
    /// Its previous run, as `lastState.terminated`.
    pub last: Option<Terminated>,
    /// Restarts so far.
    pub restart_count: u32,
    policy: RestartPolicy,
    backoff: Backoff,
    stopping: bool,
}

impl Container {
    /// A container about to be created.
    pub fn new(policy: RestartPolicy) -> Container {
        Container {
            state: State::Creating,
            last: None,
            restart_count: 0,
            policy,
            backoff: kubelet_backoff(),
            stopping: false,
        }
    }

    /// A container met again after the agent restarted: its state, last run and restart
    /// count as they were kept. The backoff starts afresh (its history is not kept).
    pub fn resume(
        policy: RestartPolicy,
        state: State,
        last: Option<Terminated>,
        restart_count: u32,
    ) -> Container {
        Container {
            state,
            last,
            restart_count,
            policy,
            backoff: kubelet_backoff(),
            stopping: false,
        }
    }

    /// Runs a finished container again from the start (an init container whose pod's
    /// sandbox was recreated, as after a reboot): its finished run becomes `lastState`
    /// and counts as a restart. Returns false, changing nothing, unless it is
    /// terminated and no stop was asked for.
    pub fn rerun(&mut self) -> bool {
        let State::Terminated(run) = self.state else {
            return false;
        };
        if self.stopping {
            return false;
        }
        self.last = Some(run);
        self.restart_count = self.restart_count.saturating_add(1);
        self.state = State::Creating;
        true
    }

    /// Judges a run that ended with the node (a shutdown stopped it, or the machine went
    /// down) by the restart policy once the node is back, as if it had ended by itself:
    /// when the policy restarts it, it is made to start again at once (a new boot owes no
    /// backoff) and counts as a restart. Returns false, changing nothing, otherwise. A stop
    /// asked for before the reboot is over: whether the pod still stands is the caller's
    /// to judge.
    pub fn restart_after_reboot(&mut self) -> bool {
        let State::Terminated(run) = self.state else {
            return false;
        };
        self.stopping = false;
        if !self.restarts_after(run) {
            return false;
        }
        self.last = Some(run);
        self.restart_count = self.restart_count.saturating_add(1);
        self.state = State::Creating;
        true
    }

    /// True when the policy restarts a container whose run ended so, and no stop was
    /// asked for.
    fn restarts_after(&self, run: Terminated) -> bool {
        !self.stopping
            && match self.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => run.reason != TerminationReason::Completed,
                RestartPolicy::Never => false,
            }
    }

    /// True once a stop was asked for: it will not start again.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Applies `event`; returns what to do.
    pub fn step(&mut self, event: Event) -> Result<Vec<Action>, Refused> {
        let before = self.restart_count;
        let actions = self.transition(event)?;
        debug_assert!(self.restart_count >= before);
        debug_assert!(
            !(self.stopping && actions.contains(&Action::Start)),
            "a stopping container is never started"
        );
        debug_assert!(!matches!(self.state, State::Running { pid, .. } if pid <= 0));
        Ok(actions)
    }

    fn transition(&mut self, event: Event) -> Result<Vec<Action>, Refused> {
        let refused = Refused {
            event,
            state: self.state,
        };
        match (self.state, event) {
            (State::Creating, Event::Started { pid, at }) if pid > 0 && !self.stopping => {
                self.state = State::Running {
                    pid,
                    started_at: at,
                };
                Ok(Vec::new())
            }
            (State::Creating, Event::CreateFailed { at }) => Ok(self.finished(
                Terminated {
                    exit_code: 128,
                    reason: TerminationReason::StartError,
                    started_at: at,
                    finished_at: at,
                },
                0,
            )),
            (
                State::Running { started_at, .. },
                Event::Exited {
                    exit_code,
                    oom_killed,
                    at,
                },
            ) => {
                let reason = match (oom_killed, exit_code) {
                    (true, _) => TerminationReason::OomKilled,
                    (false, 0) => TerminationReason::Completed,
                    (false, _) => TerminationReason::Error,
                };
                let run = Terminated {
                    exit_code,
                    reason,
                    started_at,
                    finished_at: at.max(started_at),
                };
                Ok(self.finished(run, at.saturating_sub(started_at)))
            }
            (
                State::Stopping { started_at, .. },
                Event::Exited {
                    exit_code,
                    oom_killed,
                    at,
                },
            ) => {
                let run = Terminated {
                    exit_code,
                    reason: if oom_killed {
                        TerminationReason::OomKilled
                    } else if exit_code == 0 {
                        TerminationReason::Completed
                    } else {
                        TerminationReason::Error
                    },
                    started_at,
                    finished_at: at.max(started_at),
                };
                if self.stopping {
                    self.state = State::Terminated(run);
                    return Ok(Vec::new());
                }
                // Killed for a restart: the policy decides, as for any exit.
                Ok(self.finished(run, at.saturating_sub(started_at)))
            }
            (State::Running { pid, started_at }, Event::RestartRequested { at, grace_seconds }) => {
                let kill_at = at.saturating_add(grace_seconds);
                self.state = State::Stopping {
                    pid,
                    started_at,
                    kill_at,
                };
                Ok(vec![Action::Terminate(pid), Action::WakeAt(kill_at)])
            }
            (_, Event::RestartRequested { .. }) => Ok(Vec::new()),
            (State::Running { pid, started_at }, Event::StopRequested { at, grace_seconds }) => {
                self.stopping = true;
                let kill_at = at.saturating_add(grace_seconds);
                self.state = State::Stopping {
                    pid,
                    started_at,
                    kill_at,
                };
                Ok(vec![Action::Terminate(pid), Action::WakeAt(kill_at)])
            }
            (State::Stopping { .. }, Event::StopRequested { .. }) => {
                // Already being killed (for a restart, perhaps): it now stays down.
                self.stopping = true;
                Ok(Vec::new())
            }
            (
                State::Creating | State::BackOff { .. } | State::Terminated(_),
                Event::StopRequested { at, .. },
            ) => {
                self.stopping = true;
                if !matches!(self.state, State::Terminated(_)) {
                    self.state = State::Terminated(Terminated {
                        exit_code: 0,
                        reason: TerminationReason::Completed,
                        started_at: at,
                        finished_at: at,
                    });
                }
                Ok(Vec::new())
            }
            (State::Stopping { pid, kill_at, .. }, Event::Tick { at }) => Ok(if at >= kill_at {
                vec![Action::Kill(pid)]
            } else {
                vec![Action::WakeAt(kill_at)]
            }),
            (State::BackOff { until }, Event::Tick { at }) => {
                if at < until {
                    return Ok(vec![Action::WakeAt(until)]);
                }
                self.restart_count = self.restart_count.saturating_add(1);
                self.state = State::Creating;
                Ok(vec![Action::Start])
            }
            (_, Event::Tick { .. }) => Ok(Vec::new()),
            _ => Err(refused),
        }
    }

    /// A run ended (it ran for `ran_for` seconds): keep it as the last state and restart
    /// after the backoff when the policy says so.
    fn finished(&mut self, run: Terminated, ran_for: u64) -> Vec<Action> {
        if !self.restarts_after(run) {
            self.state = State::Terminated(run);
            return Vec::new();
        }
        self.last = Some(run);
        let delay = self.backoff.delay_after_exit(Duration::from_secs(ran_for));
        let until = run.finished_at.saturating_add(delay.as_secs());
        self.state = State::BackOff { until };
        vec![Action::WakeAt(until)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_once(
        container: &mut Container,
        pid: i32,
        start: u64,
        exit_code: i32,
        end: u64,
    ) -> Vec<Action> {
        container.step(Event::Started { pid, at: start }).unwrap();
        container
            .step(Event::Exited {
                exit_code,
                oom_killed: false,
                at: end,
            })
            .unwrap()
    }

    #[test]
    fn always_restarts_with_the_kubelets_backoff() {
        let mut container = Container::new(RestartPolicy::Always);
        assert_eq!(run_once(&mut container, 10, 0, 1, 5), [Action::WakeAt(15)]);
        assert_eq!(
            container.step(Event::Tick { at: 14 }).unwrap(),
            [Action::WakeAt(15)]
        );
        assert_eq!(
            container.step(Event::Tick { at: 15 }).unwrap(),
            [Action::Start]
        );
        assert_eq!(container.restart_count, 1);
        assert_eq!(container.last.unwrap().reason, TerminationReason::Error);
        // The second crash waits 20 s, the third 40 s.
        assert_eq!(
            run_once(&mut container, 11, 16, 1, 17),
            [Action::WakeAt(37)]
        );
        container.step(Event::Tick { at: 37 }).unwrap();
        assert_eq!(
            run_once(&mut container, 12, 38, 0, 39),
            [Action::WakeAt(79)]
        );
        assert_eq!(container.last.unwrap().reason, TerminationReason::Completed);
    }

    #[test]
    fn on_failure_and_never_keep_what_they_should() {
        let mut container = Container::new(RestartPolicy::OnFailure);
        assert_eq!(run_once(&mut container, 10, 0, 0, 5), []);
        assert!(
            matches!(container.state, State::Terminated(t) if t.reason == TerminationReason::Completed)
        );
        let mut container = Container::new(RestartPolicy::OnFailure);
        container.step(Event::Started { pid: 3, at: 0 }).unwrap();
        let actions = container
            .step(Event::Exited {
                exit_code: 137,
                oom_killed: true,
                at: 2,
            })
            .unwrap();
        assert_eq!(actions, [Action::WakeAt(12)]);
        assert_eq!(container.last.unwrap().reason.name(), "OOMKilled");
        let mut container = Container::new(RestartPolicy::Never);
        assert_eq!(run_once(&mut container, 10, 0, 1, 5), []);
        assert_eq!(container.step(Event::Tick { at: 1000 }).unwrap(), []);
    }

    #[test]
    fn a_stop_sends_sigterm_then_sigkill_after_the_grace_period() {
        let mut container = Container::new(RestartPolicy::Always);
        container.step(Event::Started { pid: 42, at: 100 }).unwrap();
        let actions = container
            .step(Event::StopRequested {
                at: 200,
                grace_seconds: 30,
            })
            .unwrap();
        assert_eq!(actions, [Action::Terminate(42), Action::WakeAt(230)]);
        assert_eq!(
            container.step(Event::Tick { at: 229 }).unwrap(),
            [Action::WakeAt(230)]
        );
        assert_eq!(
            container.step(Event::Tick { at: 230 }).unwrap(),
            [Action::Kill(42)]
        );
        let actions = container
            .step(Event::Exited {
                exit_code: 137,
                oom_killed: false,
                at: 231,
            })
            .unwrap();
        assert_eq!(
            actions,
            [],
            "a stopped container is not restarted, whatever its policy"
        );
        assert!(matches!(container.state, State::Terminated(t) if t.exit_code == 137));
    }

    #[test]
    fn a_restart_request_kills_and_the_policy_restarts() {
        let mut container = Container::new(RestartPolicy::Always);
        container.step(Event::Started { pid: 42, at: 100 }).unwrap();
        let actions = container
            .step(Event::RestartRequested {
                at: 200,
                grace_seconds: 30,
            })
            .unwrap();
        assert_eq!(actions, [Action::Terminate(42), Action::WakeAt(230)]);
        let actions = container
            .step(Event::Exited {
                exit_code: 143,
                oom_killed: false,
                at: 201,
            })
            .unwrap();
        assert_eq!(
            actions,
            [Action::WakeAt(211)],
            "restarted after its backoff"
        );
        assert_eq!(container.last.unwrap().exit_code, 143);
        assert!(!container.is_stopping());
        // Under Never, a killed container stays down.
        let mut container = Container::new(RestartPolicy::Never);
        container.step(Event::Started { pid: 7, at: 0 }).unwrap();
        container
            .step(Event::RestartRequested {
                at: 5,
                grace_seconds: 1,
            })
            .unwrap();
        let actions = container
            .step(Event::Exited {
                exit_code: 137,
                oom_killed: false,
                at: 6,
            })
            .unwrap();
        assert_eq!(actions, []);
        assert!(matches!(container.state, State::Terminated(run) if run.exit_code == 137));
    }

    #[test]
    fn impossible_events_are_refused_by_name() {
        let mut container = Container::new(RestartPolicy::Always);
        let refused = container
            .step(Event::Exited {
                exit_code: 0,
                oom_killed: false,
                at: 1,
            })
            .unwrap_err();
        assert_eq!(refused.state, State::Creating);
        container.step(Event::Started { pid: 5, at: 0 }).unwrap();
        assert!(container
            .step(Event::Started { pid: 6, at: 1 })
            .is_err_and(|r| r.state
                == State::Running {
                    pid: 5,
                    started_at: 0
                }));
    }
}
