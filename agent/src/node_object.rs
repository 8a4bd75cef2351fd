//! This node as a Kubernetes `v1/Node` object: what it registers with the control plane.
//!
//! The facts are gathered by [`NodeFacts::gather`]; [`node_object`] is pure, so that its
//! shape (what `kubectl get nodes` users expect to find) is tested without a machine. The
//! leader fills `spec.podCIDR` from the node's lease and keeps the `Ready` condition in step
//! with gossip ([`ready_condition`]).

use serde_json::{json, Value};

use crate::system::Identity;

/// Pods a node runs at most, Kubernetes' default.
pub const MAX_PODS: u32 = 110;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name (its hostname).
    pub name: String,
    /// Its IP on the cluster's network.
    pub internal_ip: String,
    /// `control-plane`, `worker` or `auto`, from the config.
    pub role: String,
    /// The booted slot.
    pub slot: String,
    /// The Keelson release.
    pub os_version: String,
    /// `uname -r`.
    pub kernel: String,
    /// This boot's id.
    pub boot_id: String,
    /// CPUs.
    pub cpus: usize,
    /// Memory in bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// The leader's stamp for the heartbeat, RFC 3339.
    pub now: String,
}

impl NodeFacts {
    /// The facts of this machine.
    pub fn gather(name: &str, internal_ip: String, role: &str, now: String) -> NodeFacts {
        let identity = Identity::read();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        NodeFacts {
            name: name.to_owned(),
            internal_ip,
            role: role.to_owned(),
            slot: identity.slot,
            os_version: identity.os_version,
            kernel: crate::system::kernel_release(),
            boot_id: identity.boot_id,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes: keelson_kubelet::eviction::memory_of(&meminfo)
                .map_or(0, |memory| memory.capacity),
            now,
        }
    }
}

/// The `v1/Node` for `facts`, Ready (the node registers only while its agent runs).
pub fn node_object(facts: &NodeFacts) -> Value {
    let memory = format!("{}Ki", facts.memory_bytes / 1024);
    let resources = json!({
        "cpu": facts.cpus.to_string(),
        "memory": memory,
        "pods": MAX_PODS.to_string(),
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": facts.name,
            "labels": {
                "kubernetes.io/hostname": facts.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                format!("node-role.kubernetes.io/{}", facts.role): "",
                "keelson.dev/role": facts.role,
                "keelson.dev/slot": facts.slot,
            },
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": facts.internal_ip},
                {"type": "Hostname", "address": facts.name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "osImage": format!("Keelson {}", facts.os_version),
                "kernelVersion": facts.kernel,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "bootID": facts.boot_id,
                "kubeletVersion": format!("keelson-{}", facts.os_version),
                "kubeProxyVersion": "",
                "containerRuntimeVersion": format!("keelson://{}", facts.os_version),
            },
            "conditions": [ready_condition(true, &facts.now, "KubeletReady", "keelsond is running")],
        },
    })
}

/// The `Ready` condition: `True` while the node's agent runs and gossip sees it alive,
/// `Unknown` once gossip declares it down (as Kubernetes does when status stops coming).
pub fn ready_condition(ready: bool, now: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": "Ready",
        "status": if ready { "True" } else { "Unknown" },
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    })
}

/// Whether a node object's `Ready` condition is `True`.
pub fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|condition| condition["type"] == "Ready" && condition["status"] == "True")
}

/// `node` with its `Ready` condition replaced.
pub fn with_ready(node: &Value, condition: Value) -> Value {
    let mut node = node.clone();
    let conditions = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|existing| existing["type"] != "Ready")
        .chain([condition])
        .collect();
    node["status"]["conditions"] = Value::Array(conditions);
    node
}

/// `node` with `spec.podCIDR` (and `podCIDRs`) set.
pub fn with_pod_cidr(node: &Value, cidr: &str) -> Value {
    let mut node = node.clone();
    node["spec"]["podCIDR"] = json!(cidr);
    node["spec"]["podCIDRs"] = json!([cidr]);
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "lab-1".into(),
            internal_ip: "10.77.0.11".into(),
            role: "auto".into(),
            slot: "a".into(),
            os_version: "0.1.0".into(),
            kernel: "6.1.0".into(),
            boot_id: "b00t".into(),
            cpus: 2,
            memory_bytes: 1024 * 1024 * 1024,
            now: "2026-12-04T09:00:00Z".into(),
        }
    }

    #[test]
    fn the_node_object_carries_what_kubectl_users_look_for() {
        let node = node_object(&facts());
        let parsed: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(node.clone()).expect("a valid v1 Node");
        let status = parsed.status.unwrap();
        let info = status.node_info.unwrap();
        assert_eq!(info.kernel_version, "6.1.0");
        assert_eq!(info.os_image, "Keelson 0.1.0");
        assert_eq!(info.boot_id, "b00t");
        let capacity = status.capacity.unwrap();
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["memory"].0, "1048576Ki");
        assert_eq!(capacity["pods"].0, "110");
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "10.77.0.11");
        let labels = parsed.metadata.labels.unwrap();
        assert_eq!(labels["node-role.kubernetes.io/auto"], "");
        assert_eq!(labels["keelson.dev/slot"], "a");
        assert!(is_ready(&node));
    }

    #[test]
    fn ready_is_replaced_not_duplicated_and_the_lease_lands_in_spec() {
        let node = node_object(&facts());
        let down = with_ready(
            &node,
            ready_condition(
                false,
                "later",
                "NodeStatusUnknown",
                "gossip declared it down",
            ),
        );
        assert!(!is_ready(&down));
        assert_eq!(down["status"]["conditions"].as_array().unwrap().len(), 1);
        let leased = with_pod_cidr(&down, "10.244.3.0/24");
        assert_eq!(leased["spec"]["podCIDR"], "10.244.3.0/24");
        assert_eq!(leased["spec"]["podCIDRs"][0], "10.244.3.0/24");
    }
}
