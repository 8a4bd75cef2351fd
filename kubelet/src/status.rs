//! A pod's `status`, as the kubelet reports it, from its lifecycle and its containers'. Pure: the
//! times are seconds since the epoch that the caller passes in.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_runtime::lifecycle::{Container, State, Terminated, TerminationReason};

use crate::lifecycle::{Member, PodLifecycle, Role};

/// What the shell knows of a pod's container besides its lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    /// The image's reference as the pod names it.
    pub image: String,
    /// `docker.io/library/busybox@sha256:…` once the image is known.
    pub image_id: Option<String>,
    /// The current or last run (`keelson://<run>`).
    pub container_id: Option<String>,
    /// Why it waits, when the shell knows better than "ContainerCreating" or
    /// "CrashLoopBackOff" (`ErrImagePull`, `ImagePullBackOff`, `CreateContainerError`), and
    /// the message.
    pub waiting: Option<(String, String)>,
    /// The process has started at least once.
    pub ever_started: bool,
    /// When its first run started (the earliest of the pod's is its `startTime`).
    pub first_started_at: Option<u64>,
    /// Its startup probe has not passed yet in this run.
    pub unstarted_by_probe: bool,
    /// Its readiness probe does not pass (yet) in this run.
    pub unready_by_probe: bool,
}

/// `seconds` since the epoch as a Kubernetes time.
pub fn time(seconds: u64) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(seconds.min(i64::MAX as u64) as i64)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The pod's phase, by the kubelet's rules: Failed when an init container failed for
/// good; Pending until it is initialized and while an app container has never started;
/// Running while one runs or restarts; then Succeeded or Failed by how they ended.
pub fn phase(pod: &PodLifecycle, facts: &[ContainerFacts]) -> &'static str {
    if pod.init_failed() {
        return "Failed";
    }
    if !pod.initialized() {
        return "Pending";
    }
    let (mut running, mut waiting, mut failed) = (0, 0, 0);
    let apps = pod
        .members()
        .iter()
        .zip(facts)
        .filter(|(member, _)| member.role == Role::App);
    for (member, facts) in apps {
        match member.container.state {
            State::Running { .. } | State::Stopping { .. } => running += 1,
            State::Creating | State::BackOff { .. } if !facts.ever_started => waiting += 1,
            State::Creating | State::BackOff { .. } => running += 1,
            State::Terminated(run) if run.exit_code == 0 => {}
            State::Terminated(_) => failed += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if failed > 0 {
        "Failed"
    } else {
        "Succeeded"
    }
}

/// The pod's status: `facts` are its containers' in the order of `pod`'s members;
/// `host_ip` is the node's address, `pod_ip` the pod's (the node's with `hostNetwork`).
pub fn pod_status(
    spec_pod: &Pod,
    pod: &PodLifecycle,
    facts: &[ContainerFacts],
    host_ip: Option<&str>,
    pod_ip: Option<&str>,
) -> PodStatus {
    let mut init_statuses = Vec::new();
    let mut statuses = Vec::new();
    for (member, facts) in pod.members().iter().zip(facts) {
        let status = container_status(spec_pod, member, facts);
        if member.role.is_init() {
            init_statuses.push(status);
        } else {
            statuses.push(status);
        }
    }
    let ready = statuses
        .iter()
        .chain(&init_statuses)
        .zip(pod.members())
        .all(|(status, member)| status.ready || member.role == Role::Init);
    let created = spec_pod.metadata.creation_timestamp.clone();
    let condition = |kind: &str, true_: bool| PodCondition {
        type_: kind.to_owned(),
        status: if true_ { "True" } else { "False" }.to_owned(),
        last_transition_time: created.clone(),
        ..PodCondition::default()
    };
    let pod_ip = pod_ip.map(str::to_owned);
    PodStatus {
        phase: Some(phase(pod, facts).to_owned()),
        conditions: Some(vec![
            condition("PodScheduled", true),
            condition("Initialized", pod.initialized()),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ]),
        host_ip: host_ip.map(str::to_owned),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: facts
            .iter()
            .filter_map(|facts| facts.first_started_at)
            .min()
            .map(time),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        qos_class: Some(qos_class(spec_pod).to_owned()),
        ..PodStatus::default()
    }
}

fn container_status(pod: &Pod, member: &Member, facts: &ContainerFacts) -> ContainerStatus {
    let container = &member.container;
    let running = matches!(container.state, State::Running { .. });
    let completed = matches!(container.state,
        State::Terminated(run) if run.reason == TerminationReason::Completed);
    let state = if member.held && container.state == State::Creating {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("PodInitializing".to_owned()),
                message: None,
            }),
            ..ContainerState::default()
        }
    } else {
        container_state(pod, &member.name, container, facts)
    };
    ContainerStatus {
        name: member.name.clone(),
        image: facts.image.clone(),
        image_id: facts.image_id.clone().unwrap_or_default(),
        container_id: facts.container_id.clone(),
        // An init container is ready once it completed, as the kubelet reports it; a
        // running one once its startup and readiness probes pass.
        ready: if member.role == Role::Init {
            completed
        } else {
            running && !facts.unstarted_by_probe && !facts.unready_by_probe
        },
        started: Some(running && !facts.unstarted_by_probe),
        restart_count: container.restart_count as i32,
        state: Some(state),
        last_state: Some(
            container
                .last
                .map(|run| ContainerState {
                    terminated: Some(terminated(&run, facts)),
                    ..ContainerState::default()
                })
                .unwrap_or_default(),
        ),
        ..ContainerStatus::default()
    }
}

fn container_state(
    pod: &Pod,
    name: &str,
    container: &Container,
    facts: &ContainerFacts,
) -> ContainerState {
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    };
    match container.state {
        State::Running { started_at, .. } | State::Stopping { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(started_at)),
            }),
            ..ContainerState::default()
        },
        State::Creating => match &facts.waiting {
            Some((reason, message)) => waiting(reason, Some(message.clone())),
            None => waiting("ContainerCreating", None),
        },
        State::BackOff { until } => match &facts.waiting {
            Some((reason, message)) => waiting(reason, Some(message.clone())),
            None => {
                let delay = until
                    .saturating_sub(container.last.map(|run| run.finished_at).unwrap_or(until));
                let message = format!(
                    "back-off {delay}s restarting failed container={name} pod={}_{}({})",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.uid.as_deref().unwrap_or_default(),
                );
                waiting("CrashLoopBackOff", Some(message))
            }
        },
        State::Terminated(run) => ContainerState {
            terminated: Some(terminated(&run, facts)),
            ..ContainerState::default()
        },
    }
}

fn terminated(run: &Terminated, facts: &ContainerFacts) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: run.exit_code,
        reason: Some(run.reason.name().to_owned()),
        // Why it never started: what the runtime said, as the kubelet shows runc's error.
        message: (run.reason == TerminationReason::StartError)
            .then(|| facts.waiting.as_ref().map(|(_, message)| message.clone()))
            .flatten(),
        started_at: Some(time(run.started_at)),
        finished_at: Some(time(run.finished_at)),
        container_id: facts.container_id.clone(),
        ..ContainerStateTerminated::default()
    }
}

/// Guaranteed (every container's CPU and memory limits set, requests equal to them),
/// BestEffort (no container requests or limits anything), Burstable (the rest).
pub fn qos_class(pod: &Pod) -> &'static str {
    let members = crate::pod::members(pod);
    let resources: Vec<_> = members
        .iter()
        .map(|(container, _)| container.resources.clone().unwrap_or_default())
        .collect();
    let asks_nothing = resources.iter().all(|resources| {
        resources
            .limits
            .as_ref()
            .is_none_or(|limits| limits.is_empty())
            && resources
                .requests
                .as_ref()
                .is_none_or(|requests| requests.is_empty())
    });
    if asks_nothing {
        return "BestEffort";
    }
    let guaranteed = resources.iter().all(|resources| {
        let limits = resources.limits.clone().unwrap_or_default();
        let requests = resources.requests.clone().unwrap_or_default();
        ["cpu", "memory"].iter().all(|key| {
            limits.contains_key(*key)
                && requests
                    .get(*key)
                    .is_none_or(|request| Some(request) == limits.get(*key))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lifecycle::PodEvent;
    use keelson_runtime::lifecycle::{Event, RestartPolicy};

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": "Always", "containers": [{"name": "web", "image": "busybox",
                     "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}]}
        }))
        .unwrap()
    }

    fn lone(policy: RestartPolicy) -> PodLifecycle {
        PodLifecycle::new(vec![("web".into(), Role::App)], policy, 30, 0).0
    }

    fn event(index: usize, event: Event) -> PodEvent {
        PodEvent::Container { index, event }
    }

    fn exited(index: usize, exit_code: i32, oom_killed: bool, at: u64) -> PodEvent {
        event(
            index,
            Event::Exited {
                exit_code,
                oom_killed,
                at,
            },
        )
    }

    #[test]
    fn a_crashing_container_shows_its_last_exit_and_crash_loop_backoff() {
        let mut lifecycle = lone(RestartPolicy::Always);
        lifecycle
            .step(event(0, Event::Started { pid: 7, at: 100 }))
            .unwrap();
        let facts = [ContainerFacts {
            ever_started: true,
            first_started_at: Some(100),
            ..ContainerFacts::default()
        }];
        let running = pod_status(&pod(), &lifecycle, &facts, None, None);
        assert_eq!(running.phase.as_deref(), Some("Running"));
        assert!(running.container_statuses.as_ref().unwrap()[0].ready);
        assert_eq!(running.start_time, Some(time(100)));
        assert_eq!(running.init_container_statuses, None);

        lifecycle.step(exited(0, 3, false, 105)).unwrap();
        let status = pod_status(&pod(), &lifecycle, &facts, None, None);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let container_status = &status.container_statuses.unwrap()[0];
        let waiting = container_status
            .state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(waiting
            .message
            .as_ref()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=web pod=web_default(u1)"));
        let last = container_status
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
        assert!(!container_status.ready);
        assert_eq!(status.qos_class.as_deref(), Some("Guaranteed"));
    }

    #[test]
    fn a_pod_that_never_started_is_pending_and_a_finished_one_succeeded_or_failed() {
        let mut lifecycle = lone(RestartPolicy::Never);
        let facts = [ContainerFacts::default()];
        assert_eq!(phase(&lifecycle, &facts), "Pending");
        lifecycle
            .step(event(0, Event::Started { pid: 7, at: 1 }))
            .unwrap();
        lifecycle.step(exited(0, 137, true, 2)).unwrap();
        assert_eq!(phase(&lifecycle, &facts), "Failed");
        let status = pod_status(&pod(), &lifecycle, &facts, None, None);
        let state = status.container_statuses.unwrap()[0].state.clone().unwrap();
        assert_eq!(
            state.terminated.unwrap().reason.as_deref(),
            Some("OOMKilled")
        );
    }

    #[test]
    fn init_containers_report_apart_and_hold_the_pod_pending() {
        let spec: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": "Never",
                     "initContainers": [{"name": "setup", "image": "busybox"},
                                        {"name": "proxy", "image": "busybox", "restartPolicy": "Always",
                                         "resources": {"requests": {"memory": "8Mi"}}}],
                     "containers": [{"name": "web", "image": "busybox"}]}
        }))
        .unwrap();
        let roles = vec![
            ("setup".into(), Role::Init),
            ("proxy".into(), Role::Sidecar),
            ("web".into(), Role::App),
        ];
        let (mut lifecycle, _) = PodLifecycle::new(roles, RestartPolicy::Never, 30, 0);
        let facts = vec![ContainerFacts::default(); 3];
        lifecycle
            .step(event(0, Event::Started { pid: 7, at: 1 }))
            .unwrap();
        let status = pod_status(&spec, &lifecycle, &facts, None, None);
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let init = status.init_container_statuses.as_ref().unwrap();
        assert_eq!(init.len(), 2);
        assert!(init[0].state.as_ref().unwrap().running.is_some());
        let waiting = |status: &ContainerStatus| {
            status
                .state
                .clone()
                .unwrap()
                .waiting
                .unwrap()
                .reason
                .unwrap()
        };
        assert_eq!(waiting(&init[1]), "PodInitializing");
        assert_eq!(
            waiting(&status.container_statuses.as_ref().unwrap()[0]),
            "PodInitializing"
        );
        let conditions = status.conditions.unwrap();
        assert_eq!(conditions[1].type_, "Initialized");
        assert_eq!(conditions[1].status, "False");
        assert_eq!(status.qos_class.as_deref(), Some("Burstable"));
        // It fails under Never: so does the pod, and nothing after it starts.
        lifecycle.step(exited(0, 2, false, 2)).unwrap();
        assert_eq!(phase(&lifecycle, &facts), "Failed");
        let status = pod_status(&spec, &lifecycle, &facts, None, None);
        let setup = &status.init_container_statuses.unwrap()[0];
        assert!(!setup.ready);
        assert_eq!(
            setup.state.clone().unwrap().terminated.unwrap().exit_code,
            2
        );
    }
}
