//! `keelson-kubelet`: the node's pod supervisor, embedded in the agent.
//!
//! Pods are Kubernetes `v1/Pod` objects (k8s-openapi). The pure parts decide:
//! - [`pod`] admits them (defaults, validation, what the runtime needs from one);
//! - [`lifecycle`] orders a pod's init containers, sidecars and app containers over each
//!   container's `keelson_runtime::lifecycle` machine, through stops and reboots;
//! - [`probes`] and [`hooks`] say what a container's probes and lifecycle hooks ask and
//!   what their results mean;
//! - [`status`] reports pods as the kubelet does, and [`events`] folds what happens to
//!   them into `v1/Event`s;
//! - [`volumes`], [`downward`], [`dns`], [`network`] and [`userns`] work out a pod's
//!   mounts, downward API, resolver files, ports and user namespace ids;
//! - [`static_pods`] names and marks the pods of the machine config and the static pod
//!   path;
//! - [`eviction`] picks the pod to evict when the node runs short of memory or disk.
//!
//! The shells act: [`store`] keeps pods on STATE; [`logs`] writes and reads the CRI log
//! files; [`handoff`] passes log pipes to PID 1 and back; [`engine`] turns a container
//! into a running process through `keelson-runtime`; [`prober`] runs the probes and
//! hooks; [`pods`] runs one task per pod and answers the API.

pub mod dns;
pub mod downward;
pub mod engine;
pub mod events;
pub mod eviction;
pub mod handoff;
pub mod hooks;
pub mod lifecycle;
pub mod logs;
pub mod network;
pub mod pod;
pub mod pods;
pub mod prober;
pub mod probes;
pub mod static_pods;
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
