//! `keelson-kubelet`: the node's pod supervisor, embedded in the agent.
//!
//! Pods are Kubernetes `v1/Pod` objects (k8s-openapi). [`pod`] admits them (defaults,
//! validation, what the runtime needs from one); [`status`] reports them as the kubelet
//! does; [`events`] folds what happens to them into `v1/Event`s; all three are pure. [`store`] keeps them on STATE; [`logs`] writes and reads the CRI
//! log files; [`handoff`] passes log pipes to PID 1 and back; [`engine`] turns a pod's
//! container into a running process through `keelson-runtime`; [`pods`] runs one task per
//! pod over the runtime's lifecycle machine; [`userns`] gives pods with `hostUsers: false`
//! node ids of their own.
//!
//! Today a pod has one container; the full kubelet (several containers, init containers,
//! probes, volumes, pod networking) extends these pieces.

pub mod dns;
pub mod downward;
pub mod engine;
pub mod events;
pub mod handoff;
pub mod hooks;
pub mod lifecycle;
pub mod logs;
pub mod network;
pub mod pod;
pub mod pods;
pub mod prober;
pub mod probes;
pub mod status;
pub mod store;
pub mod userns;
pub mod volumes;

use k8s_openapi::api::core::v1::Pod;

/// A pod's namespace and name.
pub fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| pod::DEFAULT_NAMESPACE.to_owned()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}
