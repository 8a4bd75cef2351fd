//! A pod's `status`, as the kubelet reports it, from its container's lifecycle. Pure: the
//! times are seconds since the epoch that the caller passes in.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_runtime::lifecycle::{Container, State, Terminated, TerminationReason};

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
    /// When the pod's first run started (the pod's `startTime`).
    pub pod_started_at: Option<u64>,
}

/// `seconds` since the epoch as a Kubernetes time.
pub fn time(seconds: u64) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(seconds.min(i64::MAX as u64) as i64)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The pod's phase.
pub fn phase(container: &Container, facts: &ContainerFacts) -> &'static str {
    match container.state {
        State::Running { .. } | State::Stopping { .. } => "Running",
        State::Creating | State::BackOff { .. } if !facts.ever_started => "Pending",
        State::Creating | State::BackOff { .. } => "Running",
        State::Terminated(run) if run.exit_code == 0 => "Succeeded",
        State::Terminated(_) => "Failed",
    }
}

/// The pod's status. `host_ip` is the node's address (also the pod's with `hostNetwork`).
pub fn pod_status(
    pod: &Pod,
    container: &Container,
    facts: &ContainerFacts,
    host_ip: Option<&str>,
) -> PodStatus {
    let spec_container = crate::pod::container(pod);
    let name = spec_container
        .map(|container| container.name.clone())
        .unwrap_or_default();
    let running = matches!(container.state, State::Running { .. });
    let state = container_state(pod, &name, container, facts);
    let status = ContainerStatus {
        name,
        image: facts.image.clone(),
        image_id: facts.image_id.clone().unwrap_or_default(),
        container_id: facts.container_id.clone(),
        ready: running,
        started: Some(running),
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
    };
    let created = pod.metadata.creation_timestamp.clone();
    let condition = |kind: &str, true_: bool| PodCondition {
        type_: kind.to_owned(),
        status: if true_ { "True" } else { "False" }.to_owned(),
        last_transition_time: created.clone(),
        ..PodCondition::default()
    };
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false);
    let pod_ip = host_ip.filter(|_| host_network).map(str::to_owned);
    PodStatus {
        phase: Some(phase(container, facts).to_owned()),
        conditions: Some(vec![
            condition("PodScheduled", true),
            condition("Initialized", true),
            condition("ContainersReady", running),
            condition("Ready", running),
        ]),
        host_ip: host_ip.map(str::to_owned),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: facts.pod_started_at.map(time),
        container_statuses: Some(vec![status]),
        qos_class: Some(qos_class(pod).to_owned()),
        ..PodStatus::default()
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

/// Guaranteed (limits = requests for CPU and memory), Burstable (some), BestEffort (none).
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(container) = crate::pod::container(pod) else {
        return "BestEffort";
    };
    let resources = container.resources.clone().unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let requests = resources.requests.unwrap_or_default();
    if limits.is_empty() && requests.is_empty() {
        return "BestEffort";
    }
    let guaranteed = ["cpu", "memory"].iter().all(|key| {
        limits.contains_key(*key)
            && requests
                .get(*key)
                .is_none_or(|request| Some(request) == limits.get(*key))
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
    use keelson_runtime::lifecycle::{Event, RestartPolicy};

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": "Always", "containers": [{"name": "web", "image": "busybox",
                     "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_crashing_container_shows_its_last_exit_and_crash_loop_backoff() {
        let mut container = Container::new(RestartPolicy::Always);
        container.step(Event::Started { pid: 7, at: 100 }).unwrap();
        let facts = ContainerFacts {
            ever_started: true,
            ..ContainerFacts::default()
        };
        let running = pod_status(&pod(), &container, &facts, None);
        assert_eq!(running.phase.as_deref(), Some("Running"));
        assert!(running.container_statuses.as_ref().unwrap()[0].ready);

        container
            .step(Event::Exited {
                exit_code: 3,
                oom_killed: false,
                at: 105,
            })
            .unwrap();
        let status = pod_status(&pod(), &container, &facts, None);
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
        let mut container = Container::new(RestartPolicy::Never);
        let facts = ContainerFacts::default();
        assert_eq!(phase(&container, &facts), "Pending");
        container.step(Event::Started { pid: 7, at: 1 }).unwrap();
        container
            .step(Event::Exited {
                exit_code: 137,
                oom_killed: true,
                at: 2,
            })
            .unwrap();
        assert_eq!(phase(&container, &facts), "Failed");
        let status = pod_status(&pod(), &container, &facts, None);
        let state = status.container_statuses.unwrap()[0].state.clone().unwrap();
        assert_eq!(
            state.terminated.unwrap().reason.as_deref(),
            Some("OOMKilled")
        );
    }
}
