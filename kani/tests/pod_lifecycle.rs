//! The pod lifecycle (`keelson_kubelet::lifecycle::PodLifecycle`): no container starts
//! before the init containers before it have completed (and the sidecars before it have
//! started), no app container starts before all of them, nothing starts once the pod is
//! stopping, no container starts twice at once, a sidecar is not signalled while an app or
//! init container still runs during a stop, restart counts never decrease, and a stopped
//! pod ends with nothing running.
//!
//! Pods of up to four containers of any roles, under every restart policy, driven by
//! sequences of exits, ticks, reboots (after a graceful shutdown, or not), startup probes
//! passing and a stop, the way the shell drives them: a start is answered at once by
//! `Started` or `CreateFailed`, and a signal by an exit some steps later. In half the
//! pods the sidecars have startup probes: such a sidecar counts as started only once its
//! probe has passed on a run. Sampled by bolero (proved by Kani), and enumerated exhaustively
//! for short sequences.

use std::collections::BTreeMap;

use keelson_kubelet::lifecycle::{Member, PodAction, PodEvent, PodLifecycle, Role};
use keelson_runtime::lifecycle::{Container, Event, RestartPolicy, State};

/// What the harness itself saw of a container (not the machine's own view).
#[derive(Default, Clone)]
struct Seen {
    /// Its last run ended with exit 0 (and no OOM kill) since the sandbox was made.
    completed: bool,
    /// It was started since the sandbox was made (a sidecar with a startup probe: and the
    /// probe passed).
    started: bool,
    /// Its running process.
    pid: Option<i32>,
}

struct Harness {
    pod: PodLifecycle,
    roles: Vec<Role>,
    policy: RestartPolicy,
    seen: Vec<Seen>,
    stopping: bool,
    now: u64,
    next_pid: i32,
    create_fails: bool,
    /// The sidecars have startup probes.
    gated: bool,
}

impl Harness {
    fn new(roles: Vec<Role>, policy: RestartPolicy, create_fails: bool, gated: bool) -> Harness {
        let members = roles
            .iter()
            .enumerate()
            .map(|(index, role)| {
                let container = Container::new(role.container_policy(policy));
                let startup_probe = gated && *role == Role::Sidecar;
                Member::resume(format!("c{index}"), *role, container, false, startup_probe)
            })
            .collect();
        let (pod, actions) = PodLifecycle::resume(members, 5, 0);
        let mut harness = Harness {
            gated,
            pod,
            seen: vec![Seen::default(); roles.len()],
            roles,
            policy,
            stopping: false,
            now: 0,
            next_pid: 100,
            create_fails,
        };
        harness.perform(actions);
        harness
    }

    /// The order the harness expects: what must have happened before container `index`
    /// may start.
    fn may_start(&self, index: usize) -> bool {
        let before = match self.roles[index] {
            Role::App => self.roles.len(),
            _ => index,
        };
        (0..before).all(|other| match self.roles[other] {
            Role::Init => self.seen[other].completed,
            Role::Sidecar => self.seen[other].started,
            Role::App => true,
        })
    }

    fn step(&mut self, event: PodEvent) {
        let before: Vec<u32> = self.counts();
        let actions = self
            .pod
            .step(event)
            .unwrap_or_else(|refused| panic!("{event:?} refused: {refused}"));
        for (index, (now, then)) in self.counts().into_iter().zip(before).enumerate() {
            assert!(now >= then, "container {index}'s restart count went down");
        }
        self.perform(actions);
    }

    fn counts(&self) -> Vec<u32> {
        self.pod
            .members()
            .iter()
            .map(|member| member.container.restart_count)
            .collect()
    }

    fn perform(&mut self, actions: Vec<PodAction>) {
        for action in actions {
            match action {
                PodAction::Start(index) => {
                    assert!(!self.stopping, "container {index} started during a stop");
                    assert!(
                        self.may_start(index),
                        "container {index} ({:?}) started out of turn",
                        self.roles[index]
                    );
                    assert!(
                        self.seen[index].pid.is_none(),
                        "container {index} runs twice"
                    );
                    assert_eq!(self.pod.members()[index].container.state, State::Creating);
                    let at = self.now;
                    let event = if self.create_fails {
                        self.create_fails = false;
                        Event::CreateFailed { at }
                    } else {
                        self.next_pid += 1;
                        self.seen[index].pid = Some(self.next_pid);
                        if !(self.gated && self.roles[index] == Role::Sidecar) {
                            self.seen[index].started = true;
                        }
                        Event::Started {
                            pid: self.next_pid,
                            at,
                        }
                    };
                    self.step(PodEvent::Container { index, event });
                }
                PodAction::Terminate(index, pid) | PodAction::Kill(index, pid) => {
                    assert_eq!(self.seen[index].pid, Some(pid), "signal to a stranger");
                    if self.stopping && self.roles[index] == Role::Sidecar {
                        let others_run = (0..self.roles.len()).any(|other| {
                            self.roles[other] != Role::Sidecar && self.seen[other].pid.is_some()
                        });
                        assert!(!others_run, "sidecar {index} stopped before the others");
                    }
                }
                PodAction::WakeAt(at) => assert!(at >= self.now || self.stopping),
            }
        }
    }

    /// One of the running containers, chosen by `which`; None when none runs.
    fn running_one(&self, which: u8) -> Option<usize> {
        let running: Vec<usize> = (0..self.roles.len())
            .filter(|index| self.seen[*index].pid.is_some())
            .collect();
        (!running.is_empty()).then(|| running[usize::from(which) % running.len()])
    }

    fn exit(&mut self, which: u8, code: i32, oom_killed: bool) {
        let Some(index) = self.running_one(which) else {
            return;
        };
        self.seen[index].pid = None;
        self.seen[index].completed = code == 0 && !oom_killed;
        self.step(PodEvent::Container {
            index,
            event: Event::Exited {
                exit_code: code,
                oom_killed,
                at: self.now,
            },
        });
    }

    /// The startup probe of one of the running containers passes.
    fn startup_probe_passes(&mut self, which: u8) {
        let Some(index) = self.running_one(which) else {
            return;
        };
        self.seen[index].started = true;
        let at = self.now;
        self.step(PodEvent::StartupProbePassed { index, at });
    }

    /// A reboot: the node's shutdown stops the pod gracefully (or the machine just goes
    /// down and everything that ran is lost), the next boot reads the pod back from what
    /// was kept, and makes its sandbox again.
    fn reboot(&mut self, graceful: bool) {
        if graceful {
            self.stop_and_drain();
            let policy = self.policy;
            let members = self
                .pod
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
                        member.started_once,
                        member.startup_probe,
                    )
                })
                .collect();
            let before = self.counts();
            let (pod, actions) = PodLifecycle::resume(members, 5, self.now);
            self.pod = pod;
            self.stopping = false;
            assert_eq!(self.counts(), before, "the kept restart counts changed");
            self.perform(actions);
        }
        while self.seen.iter().any(|seen| seen.pid.is_some()) {
            self.exit(0, 137, false);
        }
        // In the new sandbox, every init container must complete again and every
        // sidecar start again before what follows it (whatever the machine reruns, and
        // whether it does so at once or later).
        for (index, role) in self.roles.iter().enumerate() {
            if role.is_init() {
                self.seen[index].started = false;
                self.seen[index].completed = false;
            }
        }
        self.step(PodEvent::SandboxRecreated { at: self.now });
    }

    /// Stops the pod and plays it out: every signalled process exits, time passes.
    fn stop_and_drain(&mut self) {
        self.stopping = true;
        self.step(PodEvent::StopRequested {
            at: self.now,
            grace_seconds: 5,
        });
        for _ in 0..4 * self.roles.len() + 4 {
            self.now += 3;
            self.step(PodEvent::Tick { at: self.now });
            self.exit(0, 137, false);
        }
        assert!(
            self.seen.iter().all(|seen| seen.pid.is_none()),
            "a stopped pod still runs"
        );
        assert!(
            self.pod.all_terminated(),
            "a stopped pod still waits to start"
        );
    }
}

fn roles_of(shape: u8, count: u8) -> Vec<Role> {
    let count = usize::from(count % 4) + 1;
    let mut roles: Vec<Role> = (0..count)
        .map(|index| match (shape >> (2 * index)) & 3 {
            0 => Role::Init,
            1 => Role::Sidecar,
            _ => Role::App,
        })
        .collect();
    // Init containers come first, and a pod has at least one app container.
    roles.sort_by_key(|role| *role == Role::App);
    if roles.last() != Some(&Role::App) {
        roles.push(Role::App);
    }
    roles
}

fn policy(index: u8) -> RestartPolicy {
    [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ][usize::from(index % 3)]
}

fn check(shape: u8, count: u8, policy_index: u8, create_fails: bool, gated: bool, steps: &[u8]) {
    let roles = roles_of(shape, count);
    let mut harness = Harness::new(roles, policy(policy_index), create_fails, gated);
    let mut recreated = 0;
    for step in steps {
        match step % 4 {
            3 if step & 0x40 != 0 => harness.startup_probe_passes(step >> 3),
            0 => {
                harness.now += u64::from(step >> 2) * 4;
                let now = harness.now;
                harness.step(PodEvent::Tick { at: now });
            }
            1 => harness.exit(step >> 3, 0, false),
            2 => harness.exit(step >> 3, 1 + i32::from(step >> 6), step & 0x20 != 0),
            _ if recreated < 1 => {
                recreated += 1;
                harness.reboot(step & 4 != 0);
            }
            _ => {}
        }
    }
    harness.stop_and_drain();
}

#[test]
fn sampled_pods_keep_the_lifecycles_promises() {
    bolero::check!()
        .with_type::<(u8, u8, u8, (bool, bool), Vec<u8>)>()
        .for_each(
            |(shape, count, policy_index, (create_fails, gated), steps)| {
                let steps = &steps[..steps.len().min(24)];
                check(*shape, *count, *policy_index, *create_fails, *gated, steps)
            },
        );
}

#[test]
fn every_short_history_of_small_pods_keeps_them() {
    // Every pod of up to three containers, every policy, every sequence of four steps
    // from a set that covers ticks past the backoff, completions, failures, OOM kills
    // and a reboot, graceful or not; in pods whose sidecars have startup probes, a probe
    // passing takes the graceful reboot's place.
    let plain: [u8; 7] = [0b0001_0100, 1, 0b0000_1001, 2, 0b0010_0010, 3, 7];
    let gated: [u8; 7] = [0b0001_0100, 1, 0b0000_1001, 2, 0b0010_0010, 3, 0b0100_0011];
    let mut shapes: BTreeMap<String, (u8, u8)> = BTreeMap::new();
    for shape in 0..=255u8 {
        for count in 0..3u8 {
            shapes
                .entry(format!("{:?}", roles_of(shape, count)))
                .or_insert((shape, count));
        }
    }
    for (shape, count) in shapes.values() {
        let has_sidecar = roles_of(*shape, *count).contains(&Role::Sidecar);
        for policy_index in 0..3 {
            for create_fails in [false, true] {
                for (is_gated, alphabet) in [(false, plain), (true, gated)] {
                    if is_gated && !has_sidecar {
                        continue;
                    }
                    for mut sequence in 0..7usize.pow(4) {
                        let mut steps = Vec::new();
                        for _ in 0..4 {
                            steps.push(alphabet[sequence % 7]);
                            sequence /= 7;
                        }
                        check(*shape, *count, policy_index, create_fails, is_gated, &steps);
                    }
                }
            }
        }
    }
}

#[cfg(kani)]
#[kani::proof]
#[kani::unwind(8)]
fn a_pod_of_three_keeps_its_promises() {
    let shape: u8 = kani::any();
    let policy_index: u8 = kani::any();
    let create_fails: bool = kani::any();
    let gated: bool = kani::any();
    let steps: [u8; 3] = kani::any();
    check(shape, 2, policy_index, create_fails, gated, &steps);
}
