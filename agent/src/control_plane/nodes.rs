//! Nodes in the cluster: each registers its `v1/Node` through the leader, which leases it
//! a pod CIDR; an operator deletes a node gone for good; the leader keeps `Ready` in step
//! with gossip.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keelson_api::cluster::{DeleteNodeResponse, NodesRequest, NodesResponse, RegisterRequest};
use keelson_cluster::membership::{MemberState, MemberView};
use keelson_control::podcidr::{Leases, PodNetwork};
use keelson_store::{Key, KindRef, Op};
use serde_json::{json, Value};
use tonic::Status;
use tracing::{debug, info, warn};

use super::{write, ControlPlane, LocalRaft};

/// The kind of node objects.
pub(super) fn node_kind() -> KindRef {
    KindRef::new("v1", "Node")
}

/// The kind of pod CIDR leases.
pub(super) fn lease_kind() -> KindRef {
    KindRef::new("keelson.dev/v1alpha1", "PodCIDRLease")
}

/// Where a node keeps its pod CIDR lease for the kubelet's next start.
pub fn leased_pod_cidr_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster/pod-cidr")
}

/// Now, as Kubernetes writes times.
pub(super) fn now_text() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    keelson_kubelet::status::time(seconds).0.to_string()
}

/// Registration: the node's `v1/Node` through the leader, at start and every minute (its
/// heartbeat), sooner while it fails. The lease that comes back is kept on STATE and told to
/// gossip.
pub(super) async fn register_self(control: Arc<ControlPlane>, state_dir: PathBuf) {
    const EVERY: Duration = Duration::from_secs(60);
    const RETRY: Duration = Duration::from_secs(3);
    let mut registered: Option<String> = None;
    let mut last_problem = String::new();
    loop {
        let address = keelson_net::node::node_ip_in_force()
            .await
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let facts = crate::node_object::NodeFacts::gather(
            &control.me,
            address,
            control.cluster.role.name(),
            now_text(),
        );
        let object = crate::node_object::node_object(&facts);
        match control.register(&object.to_string()).await {
            Ok(stored) => {
                last_problem.clear();
                let cidr = serde_json::from_str::<Value>(&stored)
                    .ok()
                    .and_then(|node| node["spec"]["podCIDR"].as_str().map(str::to_owned));
                if cidr.is_some() && cidr != registered {
                    let cidr = cidr.unwrap_or_default();
                    info!(
                        "cluster: registered as v1/Node {} with pod CIDR {cidr}",
                        control.me
                    );
                    keep_lease(&control, &state_dir, &cidr).await;
                    registered = Some(cidr);
                }
                tokio::time::sleep(EVERY).await;
            }
            Err(status) => {
                if status.message() != last_problem {
                    debug!("cluster: not registered yet: {}", status.message());
                    last_problem = status.message().to_owned();
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Keeps the lease on STATE and tells gossip.
pub(super) async fn keep_lease(control: &ControlPlane, state_dir: &Path, cidr: &str) {
    control.lease.send_replace(Some(cidr.to_owned()));
    let path = leased_pod_cidr_path(state_dir);
    let kept = std::fs::create_dir_all(state_dir.join("cluster"))
        .map_err(|error| error.to_string())
        .and_then(|()| {
            keelson_linux::durable::write(&path, format!("{cidr}\n").as_bytes())
                .map_err(|error| error.to_string())
        });
    if let Err(error) = kept {
        warn!(
            "cluster: cannot keep the pod CIDR lease in {}: {error}",
            path.display()
        );
    }
    let mine = control
        .gossip
        .members()
        .into_iter()
        .find(|member| member.id.name == control.me)
        .and_then(|member| member.info);
    if let Some(mut info) = mine {
        if info.pod_cidr.as_deref() != Some(cidr) {
            info.pod_cidr = Some(cidr.to_owned());
            info.revision += 1;
            control.gossip.set_info(info).await;
        }
    }
}

impl ControlPlane {
    /// `Cluster.Register`: on the leader, lease the node a pod CIDR (the one it holds, else
    /// the lowest free) and write its object; elsewhere, ask the leader.
    pub async fn register(&self, node: &str) -> Result<String, Status> {
        if let Some(local) = self.leading() {
            return self.register_here(local, node).await;
        }
        let mut client = self.leader_client().await?;
        let request = RegisterRequest {
            node: node.to_owned(),
        };
        Ok(client.register(request).await?.into_inner().node)
    }

    async fn register_here(&self, local: &LocalRaft, node: &str) -> Result<String, Status> {
        let node: Value = serde_json::from_str(node)
            .map_err(|error| Status::invalid_argument(format!("not a node object: {error}")))?;
        let name = node["metadata"]["name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| Status::invalid_argument("the node object has no metadata.name"))?
            .to_owned();
        let _one_at_a_time = self.serial.lock().await;
        let network = PodNetwork::of_cluster(&self.cluster).map_err(Status::failed_precondition)?;
        let mut leases = Leases::new(network);
        // The store must hold every committed lease before a free block is picked.
        let held: Vec<(String, u32)> = local
            .read_current(|store| {
                store
                    .list(&lease_kind(), None)
                    .filter_map(|lease| {
                        let holder = lease["metadata"]["name"].as_str()?.to_owned();
                        let block = u32::try_from(lease["spec"]["block"].as_u64()?).ok()?;
                        Some((holder, block))
                    })
                    .collect()
            })
            .await?;
        for (holder, block) in held {
            if !leases.hold(&holder, block) {
                warn!("cluster: the lease of {holder} (block {block}) is outside cluster.podCIDR or taken; ignored");
            }
        }
        let had_lease = leases.index_of(&name).is_some();
        let block = leases
            .lease(&name)
            .map_err(|error| Status::resource_exhausted(error.to_string()))?;
        if !had_lease {
            let lease = json!({
                "apiVersion": "keelson.dev/v1alpha1",
                "kind": "PodCIDRLease",
                "metadata": {"name": name},
                "spec": {"podCIDR": block.to_string(), "block": leases.index_of(&name)},
            });
            write(local, Op::Create(lease)).await?;
            info!("cluster: leased pod CIDR {block} to {name}");
        }
        let node = crate::node_object::with_pod_cidr(&node, &block.to_string());
        Ok(write(local, Op::Apply(node)).await?.to_string())
    }

    /// `Cluster.DeleteNode`: the node object, then its lease.
    pub async fn delete_node(&self, name: &str) -> Result<DeleteNodeResponse, Status> {
        let delete = |kind: KindRef| Op::Delete {
            key: Key::new(kind, None, name),
            resource_version: None,
        };
        let node = match self.write_through_leader(delete(node_kind())).await {
            Ok(node) => node,
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(Status::not_found(format!(
                    "no node {name} in the cluster (keelctl get nodes lists them)"
                )))
            }
            Err(status) => return Err(status),
        };
        let freed = match self.write_through_leader(delete(lease_kind())).await {
            Ok(lease) => lease["spec"]["podCIDR"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            Err(status) if status.code() == tonic::Code::NotFound => String::new(),
            Err(status) => return Err(status),
        };
        info!("cluster: node {name} deleted; pod CIDR {freed} is free");
        Ok(DeleteNodeResponse {
            node: node.to_string(),
            freed_pod_cidr: freed,
        })
    }

    /// `Cluster.Nodes`: the node objects from the leader's store.
    pub async fn nodes(&self) -> Result<NodesResponse, Status> {
        let Some(local) = self.leading() else {
            let mut client = self.leader_client().await?;
            return Ok(client.nodes(NodesRequest {}).await?.into_inner());
        };
        let nodes = local
            .read_current(|store| {
                store
                    .list(&node_kind(), None)
                    .map(Value::to_string)
                    .collect()
            })
            .await?;
        Ok(NodesResponse {
            nodes,
            answered_by: self.me.clone(),
        })
    }
}

/// The leader's upkeep of node objects: `Ready` follows gossip (`Unknown` once a node is
/// declared down or forgotten, `True` again when it is back).
pub(super) async fn keep_node_conditions(local: &LocalRaft, view: &[MemberView]) {
    use crate::node_object::{is_ready, ready_condition, with_ready};
    let nodes: Vec<Value> = local
        .machine
        .read(|store| store.list(&node_kind(), None).cloned().collect())
        .await;
    for node in nodes {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let alive = view
            .iter()
            .any(|member| member.id.name == name && member.state != MemberState::Down);
        if is_ready(&node) == alive {
            continue;
        }
        let condition = if alive {
            ready_condition(
                true,
                &now_text(),
                "KubeletReady",
                "gossip sees the node alive",
            )
        } else {
            ready_condition(
                false,
                &now_text(),
                "NodeStatusUnknown",
                "gossip declared the node down",
            )
        };
        // Optimistic: a registration in between wins, and the next tick looks again.
        match write(local, Op::Update(with_ready(&node, condition))).await {
            Ok(_) => info!(
                "cluster: node {name} is {}",
                if alive { "Ready" } else { "not Ready (down)" }
            ),
            Err(status) => debug!(
                "cluster: {name}'s Ready condition not updated: {}",
                status.message()
            ),
        }
    }
}
