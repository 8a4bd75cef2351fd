//! A pod's lifecycle as a pure machine over its containers' machines
//! (`keelson_runtime::lifecycle::Container`, one per container): which container may
//! start when, and in which order they stop.
//!
//! - Init containers run one at a time, in order, each to success; the next starts only
//!   when the one before has completed. A sidecar (an init container with
//!   `restartPolicy: Always`) lets the next one go once it has started (and, when it has a
//!   startup probe, once that probe has passed), and keeps running.
//! - App containers start together once every init container has completed and every
//!   sidecar has started.
//! - An init container that fails under `restartPolicy: Never` fails the pod: nothing
//!   after it starts. Under the other policies it is retried with the kubelet's backoff.
//! - Once the pod is done (its app containers all finished for good, or it failed), its
//!   sidecars are stopped.
//! - A stop (the pod is deleted, or the node shuts down) stops the app and init
//!   containers first and the sidecars after them, within the one grace period.
//! - When the pod's sandbox is made again (the node rebooted), completed init containers
//!   run again before the app containers restart, as the kubelet does.
//!
//! A container's own machine decides its restarts; this one holds back a start that it
//! asks for ([`Member::held`]) until the container's turn. It reads no clock.

use keelson_runtime::lifecycle::{
    Action, Container, Event, Refused, RestartPolicy, State, TerminationReason,
};

/// The least grace a sidecar gets when the pod's grace period is used up by the
/// containers stopped before it.
pub const SIDECAR_MIN_GRACE_SECONDS: u64 = 2;

/// What a container is to its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An init container: runs once, to success, before the next.
    Init,
    /// An init container with `restartPolicy: Always`: starts in its turn and keeps running.
    Sidecar,
    /// One of `spec.containers`.
    App,
}

impl Role {
    /// The restart policy of a container of this role in a pod of `pod_policy`.
    pub fn container_policy(self, pod_policy: RestartPolicy) -> RestartPolicy {
        match (self, pod_policy) {
            (Role::Sidecar, _) => RestartPolicy::Always,
            (Role::Init, RestartPolicy::Never) => RestartPolicy::Never,
            (Role::Init, _) => RestartPolicy::OnFailure,
            (Role::App, policy) => policy,
        }
    }

    /// True for init containers, sidecars included.
    pub fn is_init(self) -> bool {
        self != Role::App
    }
}

/// One container of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name in the pod.
    pub name: String,
    /// What it is to the pod.
    pub role: Role,
    /// Its own lifecycle.
    pub container: Container,
    /// Its machine asked to start it, and the pod holds it back until its turn.
    pub held: bool,
    /// It has started at least once since the pod's sandbox was made (a sidecar with a
    /// startup probe: and that probe has passed).
    pub started_once: bool,
    /// It has a startup probe: as a sidecar, it lets the next container go only once
    /// [`PodEvent::StartupProbePassed`] says so.
    pub startup_probe: bool,
}

impl Member {
    /// A member met again: a container still being created waits for its turn again.
    pub fn resume(
        name: String,
        role: Role,
        container: Container,
        started_once: bool,
        startup_probe: bool,
    ) -> Member {
        Member {
            held: container.state == State::Creating,
            name,
            role,
            container,
            started_once,
            startup_probe,
        }
    }

    /// A sidecar with a startup probe counts as started only when the probe passes.
    fn waits_for_its_startup_probe(&self) -> bool {
        self.role == Role::Sidecar && self.startup_probe
    }

    /// True when the containers after it may go: an init container that completed, a
    /// sidecar that started.
    fn lets_next_go(&self) -> bool {
        match self.role {
            Role::Init => matches!(
                self.container.state,
                State::Terminated(run) if run.reason == TerminationReason::Completed
            ),
            Role::Sidecar => self.started_once,
            Role::App => true,
        }
    }

    fn is_terminated(&self) -> bool {
        matches!(self.container.state, State::Terminated(_))
    }
}

/// What happened to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodEvent {
    /// Something happened to container `index` (an index into [`PodLifecycle::members`]).
    Container {
        /// Which.
        index: usize,
        /// What.
        event: Event,
    },
    /// Container `index`'s startup probe passed on its current run.
    StartupProbePassed {
        /// Which.
        index: usize,
        /// When.
        at: u64,
    },
    /// Stop the pod.
    StopRequested {
        /// When.
        at: u64,
        /// Seconds between SIGTERM and SIGKILL, for the whole pod.
        grace_seconds: u64,
    },
    /// The pod's sandbox was made again (the node rebooted): the init containers run
    /// again, and the containers whose runs ended with the node start again as their
    /// restart policies say.
    SandboxRecreated {
        /// When.
        at: u64,
    },
    /// Time passed.
    Tick {
        /// Now.
        at: u64,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodAction {
    /// Create and start container `index`, then report `Started` or `CreateFailed`.
    Start(usize),
    /// Send SIGTERM to container `index`'s process.
    Terminate(usize, i32),
    /// Send SIGKILL to it.
    Kill(usize, i32),
    /// Step the pod again with a `Tick` at this time.
    WakeAt(u64),
}

/// An event the pod cannot take: a bug in the shell, reported rather than ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodRefused {
    /// The index names no container.
    #[error("the pod has no container number {0}")]
    NoSuchContainer(usize),
    /// The container's machine refused it.
    #[error("container {name}: {refused}")]
    Container {
        /// The container.
        name: String,
        /// Why.
        refused: Refused,
    },
}

/// A pod's containers and where the pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLifecycle {
    members: Vec<Member>,
    grace_seconds: u64,
    /// When the grace period of a stop ends, once one was asked for.
    stop_deadline: Option<u64>,
}

impl PodLifecycle {
    /// A new pod: init containers (sidecars among them) in order, then app containers.
    /// Returns the starts to perform.
    pub fn new(
        containers: Vec<(String, Role)>,
        pod_policy: RestartPolicy,
        grace_seconds: u64,
        at: u64,
    ) -> (PodLifecycle, Vec<PodAction>) {
        let members = containers
            .into_iter()
            .map(|(name, role)| Member {
                name,
                role,
                container: Container::new(role.container_policy(pod_policy)),
                held: true,
                started_once: false,
                startup_probe: false,
            })
            .collect();
        PodLifecycle::resume(members, grace_seconds, at)
    }

    /// A pod met again after the agent restarted, from its members as they were kept.
    /// Returns the starts to perform.
    pub fn resume(
        members: Vec<Member>,
        grace_seconds: u64,
        at: u64,
    ) -> (PodLifecycle, Vec<PodAction>) {
        let mut pod = PodLifecycle::kept(members, grace_seconds);
        let actions = pod.settle(at);
        (pod, actions)
    }

    /// A pod met again after the agent restarted that must not run again (it was evicted):
    /// every container is stopped at once. Returns the kills to perform.
    pub fn resume_stopped(
        members: Vec<Member>,
        grace_seconds: u64,
        at: u64,
    ) -> (PodLifecycle, Vec<PodAction>) {
        let mut pod = PodLifecycle::kept(members, grace_seconds);
        let stop = PodEvent::StopRequested {
            at,
            grace_seconds: 0,
        };
        // A stop is taken in every state.
        let actions = pod.step(stop).unwrap_or_default();
        (pod, actions)
    }

    fn kept(members: Vec<Member>, grace_seconds: u64) -> PodLifecycle {
        PodLifecycle {
            members,
            grace_seconds,
            stop_deadline: None,
        }
    }

    /// The containers, init containers first.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every init container has completed and every sidecar has started.
    pub fn initialized(&self) -> bool {
        self.members
            .iter()
            .filter(|member| member.role.is_init())
            .all(Member::lets_next_go)
    }

    /// An init container failed for good (`restartPolicy: Never`): the pod has failed.
    pub fn init_failed(&self) -> bool {
        self.members.iter().any(|member| {
            member.role == Role::Init
                && matches!(member.container.state,
                    State::Terminated(run) if run.reason != TerminationReason::Completed)
                && self.stop_deadline.is_none()
        })
    }

    /// True once a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Nothing of the pod runs or will start: every container has terminated.
    pub fn all_terminated(&self) -> bool {
        self.members.iter().all(Member::is_terminated)
    }

    /// The pod is done: it failed, or its app containers all finished for good.
    fn done(&self) -> bool {
        self.init_failed()
            || self
                .members
                .iter()
                .filter(|member| member.role == Role::App)
                .all(Member::is_terminated)
    }

    /// Applies `event`; returns what to do.
    pub fn step(&mut self, event: PodEvent) -> Result<Vec<PodAction>, PodRefused> {
        let restarts_before: Vec<u32> = self
            .members
            .iter()
            .map(|member| member.container.restart_count)
            .collect();
        let mut actions = Vec::new();
        let at = match event {
            PodEvent::Container { index, event } => {
                self.step_member(index, event, &mut actions)?;
                event_time(event)
            }
            PodEvent::StartupProbePassed { index, at } => {
                let member = self
                    .members
                    .get_mut(index)
                    .ok_or(PodRefused::NoSuchContainer(index))?;
                // A report that outlived its run changes nothing.
                if matches!(member.container.state, State::Running { .. }) {
                    member.started_once = true;
                }
                at
            }
            PodEvent::StopRequested { at, grace_seconds } => {
                if self.stop_deadline.is_none() {
                    self.stop_deadline = Some(at.saturating_add(grace_seconds));
                }
                let stopping: Vec<usize> = (0..self.members.len())
                    .filter(|index| self.members[*index].role != Role::Sidecar)
                    .collect();
                for index in stopping {
                    self.members[index].held = false;
                    let stop = Event::StopRequested { at, grace_seconds };
                    self.step_member(index, stop, &mut actions)?;
                }
                at
            }
            PodEvent::SandboxRecreated { at } => {
                // The app containers that the node's shutdown stopped start again as
                // their policy says; if any app container goes on, the init containers
                // run again and the sidecars start again, before it.
                if !self.is_stopping() {
                    for member in &mut self.members {
                        if member.role == Role::App && member.container.restart_after_reboot() {
                            member.held = true;
                        }
                    }
                }
                // A pod whose init container failed for good stays failed.
                let app_goes_on = !self.init_failed()
                    && self
                        .members
                        .iter()
                        .any(|member| member.role == Role::App && !member.is_terminated());
                if app_goes_on && !self.is_stopping() {
                    for member in &mut self.members {
                        if member.role.is_init() {
                            member.started_once = false;
                        }
                        let again = match member.role {
                            Role::Init => member.container.rerun(),
                            Role::Sidecar => member.container.restart_after_reboot(),
                            Role::App => false,
                        };
                        if again {
                            member.held = true;
                        }
                    }
                }
                at
            }
            PodEvent::Tick { at } => {
                for index in 0..self.members.len() {
                    self.step_member(index, Event::Tick { at }, &mut actions)?;
                }
                at
            }
        };
        actions.extend(self.settle(at));
        debug_assert!(self
            .members
            .iter()
            .zip(restarts_before)
            .all(|(member, before)| member.container.restart_count >= before));
        Ok(actions)
    }

    fn step_member(
        &mut self,
        index: usize,
        event: Event,
        actions: &mut Vec<PodAction>,
    ) -> Result<(), PodRefused> {
        let member = self
            .members
            .get_mut(index)
            .ok_or(PodRefused::NoSuchContainer(index))?;
        let steps = member
            .container
            .step(event)
            .map_err(|refused| PodRefused::Container {
                name: member.name.clone(),
                refused,
            })?;
        if matches!(event, Event::Started { .. }) && !member.waits_for_its_startup_probe() {
            member.started_once = true;
        }
        for action in steps {
            match action {
                // Held until its turn; `settle` lets it go.
                Action::Start => member.held = true,
                Action::Terminate(pid) => actions.push(PodAction::Terminate(index, pid)),
                Action::Kill(pid) => actions.push(PodAction::Kill(index, pid)),
                Action::WakeAt(at) => actions.push(PodAction::WakeAt(at)),
            }
        }
        Ok(())
    }

    /// After every event: stops the sidecars when their time has come, and lets go the
    /// held starts whose turn it is.
    fn settle(&mut self, at: u64) -> Vec<PodAction> {
        let mut actions = Vec::new();
        let sidecars_stop = match self.stop_deadline {
            Some(deadline) => self
                .members
                .iter()
                .filter(|member| member.role != Role::Sidecar)
                .all(Member::is_terminated)
                .then(|| deadline.saturating_sub(at).max(SIDECAR_MIN_GRACE_SECONDS)),
            None => self.done().then_some(self.grace_seconds),
        };
        if let Some(grace_seconds) = sidecars_stop {
            let stopping = self.is_stopping();
            for index in 0..self.members.len() {
                let member = &self.members[index];
                // A sidecar still waiting for its turn is left waiting when the pod is
                // merely done (it never ran); a stop ends it too.
                let waits = member.held && !stopping;
                if member.role == Role::Sidecar && !member.container.is_stopping() && !waits {
                    self.members[index].held = false;
                    let stop = Event::StopRequested { at, grace_seconds };
                    // A sidecar takes a stop in any state.
                    let _ = self.step_member(index, stop, &mut actions);
                }
            }
        }
        if self.is_stopping() || self.done() {
            return actions;
        }
        for index in 0..self.members.len() {
            if self.members[index].held && self.may_start(index) {
                self.members[index].held = false;
                actions.push(PodAction::Start(index));
            }
        }
        actions
    }

    /// Init containers go in order, each when those before it let it; app containers go
    /// once the pod is initialized.
    fn may_start(&self, index: usize) -> bool {
        let before = match self.members[index].role {
            Role::Init | Role::Sidecar => &self.members[..index],
            Role::App => &self.members[..],
        };
        before
            .iter()
            .filter(|member| member.role.is_init())
            .all(Member::lets_next_go)
    }
}

fn event_time(event: Event) -> u64 {
    match event {
        Event::Started { at, .. }
        | Event::CreateFailed { at }
        | Event::Exited { at, .. }
        | Event::StopRequested { at, .. }
        | Event::RestartRequested { at, .. }
        | Event::Tick { at } => at,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(policy: RestartPolicy) -> (PodLifecycle, Vec<PodAction>) {
        PodLifecycle::new(
            vec![
                ("setup".into(), Role::Init),
                ("proxy".into(), Role::Sidecar),
                ("migrate".into(), Role::Init),
                ("web".into(), Role::App),
                ("worker".into(), Role::App),
            ],
            policy,
            30,
            0,
        )
    }

    /// The pod with its init containers completed and the rest running (sidecar pid 11,
    /// app containers 13 and 14).
    fn running(policy: RestartPolicy) -> PodLifecycle {
        let (mut pod, _) = pod(policy);
        pod.step(started(0, 10, 1)).unwrap();
        pod.step(exited(0, 0, 2)).unwrap();
        pod.step(started(1, 11, 2)).unwrap();
        pod.step(started(2, 12, 3)).unwrap();
        pod.step(exited(2, 0, 4)).unwrap();
        pod.step(started(3, 13, 5)).unwrap();
        pod.step(started(4, 14, 5)).unwrap();
        pod
    }

    fn started(index: usize, pid: i32, at: u64) -> PodEvent {
        PodEvent::Container {
            index,
            event: Event::Started { pid, at },
        }
    }

    fn exited(index: usize, exit_code: i32, at: u64) -> PodEvent {
        PodEvent::Container {
            index,
            event: Event::Exited {
                exit_code,
                oom_killed: false,
                at,
            },
        }
    }

    #[test]
    fn a_sidecar_with_a_startup_probe_holds_the_next_until_the_probe_passes() {
        let members = [
            ("proxy", Role::Sidecar, true),
            ("setup", Role::Init, false),
            ("web", Role::App, false),
        ]
        .into_iter()
        .map(|(name, role, startup_probe)| {
            Member::resume(
                name.into(),
                role,
                Container::new(role.container_policy(RestartPolicy::Always)),
                false,
                startup_probe,
            )
        })
        .collect();
        let (mut pod, actions) = PodLifecycle::resume(members, 30, 0);
        assert_eq!(actions, [PodAction::Start(0)]);
        // Running is not enough.
        assert_eq!(pod.step(started(0, 10, 1)).unwrap(), []);
        assert!(!pod.initialized());
        // The probe passes: the init container goes, then the app.
        assert_eq!(
            pod.step(PodEvent::StartupProbePassed { index: 0, at: 5 })
                .unwrap(),
            [PodAction::Start(1)]
        );
        assert_eq!(pod.step(started(1, 11, 6)).unwrap(), []);
        assert_eq!(pod.step(exited(1, 0, 7)).unwrap(), [PodAction::Start(2)]);
        assert!(pod.initialized());
        // A pass reported for a run that has ended changes nothing.
        assert_eq!(pod.step(exited(0, 1, 8)).unwrap(), [PodAction::WakeAt(18)]);
        assert_eq!(
            pod.step(PodEvent::StartupProbePassed { index: 0, at: 9 })
                .unwrap(),
            []
        );
    }

    #[test]
    fn init_containers_go_in_order_and_app_containers_after_them() {
        let (mut pod, actions) = pod(RestartPolicy::Always);
        assert_eq!(
            actions,
            [PodAction::Start(0)],
            "only the first init container"
        );
        assert_eq!(pod.step(started(0, 10, 1)).unwrap(), []);
        // It completes: the sidecar goes.
        assert_eq!(pod.step(exited(0, 0, 2)).unwrap(), [PodAction::Start(1)]);
        // The sidecar started: the next init container goes, while the sidecar runs on.
        assert_eq!(pod.step(started(1, 11, 3)).unwrap(), [PodAction::Start(2)]);
        assert!(!pod.initialized());
        assert_eq!(pod.step(started(2, 12, 4)).unwrap(), []);
        assert_eq!(
            pod.step(exited(2, 0, 5)).unwrap(),
            [PodAction::Start(3), PodAction::Start(4)]
        );
        assert!(pod.initialized());
        // A crashing sidecar restarts after its backoff without holding anything back.
        assert_eq!(pod.step(exited(1, 1, 6)).unwrap(), [PodAction::WakeAt(16)]);
        assert_eq!(
            pod.step(PodEvent::Tick { at: 16 }).unwrap(),
            [PodAction::Start(1)]
        );
        assert_eq!(pod.members()[1].container.restart_count, 1);
        assert!(
            pod.initialized(),
            "a sidecar that started once lets the pod be"
        );
    }

    #[test]
    fn a_failing_init_container_is_retried_or_fails_the_pod() {
        let (mut pod, _) = pod(RestartPolicy::OnFailure);
        pod.step(started(0, 10, 1)).unwrap();
        assert_eq!(pod.step(exited(0, 1, 2)).unwrap(), [PodAction::WakeAt(12)]);
        assert_eq!(
            pod.step(PodEvent::Tick { at: 12 }).unwrap(),
            [PodAction::Start(0)]
        );
        assert!(!pod.init_failed());

        let (mut pod, _) = self::pod(RestartPolicy::Never);
        pod.step(started(0, 10, 1)).unwrap();
        assert_eq!(pod.step(exited(0, 1, 2)).unwrap(), []);
        assert!(pod.init_failed());
        assert!(pod.members()[3..].iter().all(|member| member.held));
        assert_eq!(pod.step(PodEvent::Tick { at: 100 }).unwrap(), []);
    }

    #[test]
    fn sidecars_stop_after_the_app_containers_and_when_the_pod_is_done() {
        let mut pod = running(RestartPolicy::OnFailure);
        let actions = pod
            .step(PodEvent::StopRequested {
                at: 10,
                grace_seconds: 30,
            })
            .unwrap();
        assert_eq!(
            actions,
            [
                PodAction::Terminate(3, 13),
                PodAction::WakeAt(40),
                PodAction::Terminate(4, 14),
                PodAction::WakeAt(40)
            ],
            "the app containers first; the sidecar keeps running"
        );
        assert_eq!(pod.step(exited(3, 0, 11)).unwrap(), []);
        // The last app container is gone: the sidecar gets what is left of the grace.
        assert_eq!(
            pod.step(exited(4, 0, 20)).unwrap(),
            [PodAction::Terminate(1, 11), PodAction::WakeAt(40)]
        );
        assert_eq!(pod.step(exited(1, 143, 21)).unwrap(), []);
        assert!(pod.all_terminated());

        // Done on its own: both app containers completed under OnFailure.
        let mut pod = running(RestartPolicy::OnFailure);
        assert_eq!(pod.step(exited(3, 0, 6)).unwrap(), []);
        assert_eq!(
            pod.step(exited(4, 0, 7)).unwrap(),
            [PodAction::Terminate(1, 11), PodAction::WakeAt(37)]
        );
    }

    #[test]
    fn a_recreated_sandbox_runs_the_init_containers_again_before_the_app() {
        let mut pod = running(RestartPolicy::Always);
        // The node rebooted: the running ones were lost.
        for index in [1, 3, 4] {
            pod.step(exited(index, 137, 100)).unwrap();
        }
        assert_eq!(
            pod.step(PodEvent::SandboxRecreated { at: 100 }).unwrap(),
            [PodAction::Start(0)]
        );
        assert_eq!(pod.members()[0].container.restart_count, 1);
        // The app containers' backoff ends, but they wait for the init containers.
        assert_eq!(pod.step(PodEvent::Tick { at: 110 }).unwrap(), []);
        assert!(pod.members()[3].held && pod.members()[1].held);
        pod.step(started(0, 20, 111)).unwrap();
        assert_eq!(pod.step(exited(0, 0, 112)).unwrap(), [PodAction::Start(1)]);
    }

    #[test]
    fn what_a_node_shutdown_stopped_starts_again_as_its_policy_says() {
        for (policy, comes_back) in [
            (RestartPolicy::Always, true),
            (RestartPolicy::OnFailure, true),
            (RestartPolicy::Never, false),
        ] {
            let mut pod = running(policy);
            pod.step(PodEvent::StopRequested {
                at: 50,
                grace_seconds: 10,
            })
            .unwrap();
            pod.step(exited(3, 143, 51)).unwrap();
            pod.step(exited(4, 137, 60)).unwrap();
            pod.step(exited(1, 143, 60)).unwrap();
            assert!(pod.all_terminated(), "{policy:?}");
            // The next boot reads the pod back as it was kept.
            let members = pod
                .members()
                .iter()
                .map(|member| {
                    let container = Container::resume(
                        member.role.container_policy(policy),
                        member.container.state,
                        member.container.last,
                        member.container.restart_count,
                    );
                    Member::resume(
                        member.name.clone(),
                        member.role,
                        container,
                        true,
                        member.startup_probe,
                    )
                })
                .collect();
            let (mut pod, actions) = PodLifecycle::resume(members, 30, 200);
            assert_eq!(actions, [], "{policy:?}");
            let actions = pod.step(PodEvent::SandboxRecreated { at: 200 }).unwrap();
            if !comes_back {
                assert_eq!(actions, [], "{policy:?}");
                assert!(pod.all_terminated(), "{policy:?}");
                continue;
            }
            // The init containers first, then the sidecar, then both app containers,
            // each counting one restart and keeping the stopped run as its last.
            assert_eq!(actions, [PodAction::Start(0)], "{policy:?}");
            pod.step(started(0, 20, 201)).unwrap();
            assert_eq!(pod.step(exited(0, 0, 202)).unwrap(), [PodAction::Start(1)]);
            pod.step(started(1, 21, 203)).unwrap();
            let web = &pod.members()[3];
            assert_eq!(web.container.restart_count, 1, "{policy:?}");
            assert_eq!(web.container.last.map(|run| run.exit_code), Some(143));
            assert!(web.held, "{policy:?}");
        }
    }
}
