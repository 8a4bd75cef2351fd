//! The control plane on this node: Raft over the node API, formation, and the leader's upkeep.
//!
//! The decisions are `keelson-control`'s and the Raft storage is `keelson-raft`'s; this
//! shell feeds them from gossip and carries their messages. Start-up ([`start`]) is:
//! 1. the peers' client: mutual TLS with this node's own certificate, which carries the
//!    node role;
//! 2. a node that may vote (`control-plane` or `auto`) opens its Raft log and store on
//!    STATE and starts Raft; a `worker` runs none and asks the voters;
//! 3. formation ([`form`]): until this node is in a cluster, the formation machine runs on
//!    the gossip view, its record kept on STATE before anything that depends on it is sent;
//! 4. upkeep ([`keep_voters`]): while this node leads, the voter plan is applied one
//!    change at a time, and each node object's `Ready` condition follows gossip;
//! 5. registration ([`register_self`]): every node, worker or voter, registers its
//!    `v1/Node` through the leader, which leases it a pod CIDR; the lease is kept on STATE
//!    for the kubelet's next start.
//!
//! Node identity inside the cluster rests on the shared node certificate (every node of a
//! cluster holds the same one, as every node holds the same gossip secret), so a message's
//! sender is the name it gives.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use keelson_api::client::ClientTls;
use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::{
    DeleteNodeResponse, FormationRequest, LockGroup, LockReply, LockRequest, LockStatusRequest,
    LockStatusResponse, NodesRequest, NodesResponse, RaftRequest, RegisterRequest, StatusRequest,
    StatusResponse, WriteRequest,
};
use keelson_cluster::membership::{MemberState, MemberView};
use keelson_cluster::shell::Gossip;
use keelson_config::model::{Cluster, MachineConfig, Role};
use keelson_control::formation::{Formation, Input, Message, Output, Record};
use keelson_control::podcidr::{Leases, PodNetwork};
use keelson_control::rebootlock::{ClusterFacts, Granted, RebootLock};
use keelson_control::Peer;
use keelson_raft::log::DiskLog;
use keelson_raft::machine::Machine;
use keelson_raft::network::{Call, Network, Transport, TransportError};
use keelson_raft::reconcile::{self, Upkeep};
use keelson_raft::types::{self, node_id, Applied};
use keelson_raft::NodeAddr;
use keelson_store::{Command, Key, KindRef, Op, Outcome, Refusal};
use openraft::{Raft, ServerState};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Status;
use tracing::{debug, info, warn};

/// The control plane of this node once started, or why it is not running.
pub type SharedControlPlane = OnceLock<Result<Arc<ControlPlane>, String>>;

/// How long a node waits to see as many eligible nodes as it wants voters before it forms
/// a smaller cluster (which grows as the others appear). Discovery on one segment takes a
/// few seconds; the wait must outlast it (see `keelson_control::formation`).
pub const FORMATION_WAIT: Duration = Duration::from_secs(30);
/// How often formation resends what may have been lost, and the upkeep looks again.
const TICK: Duration = Duration::from_secs(2);
/// A Raft call (votes, heartbeats, appends) that takes longer than this failed.
const RAFT_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A snapshot may be large.
const SNAPSHOT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Connecting to a peer: its address is on the local segment, so this is generous.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A write not committed within this was not acknowledged: the leader has no majority
/// in reach (a partitioned minority never acknowledges a write).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata on a status call a node forwards, so that the receiver answers itself.
const FORWARDED: &str = "keelson-forwarded";

/// This node's part in the control plane.
pub struct ControlPlane {
    me: String,
    cluster: Cluster,
    gossip: Gossip,
    peers: Peers,
    /// Raft, on a node that may vote.
    local: Option<LocalRaft>,
    /// Formation messages received, for the formation loop.
    formation_inbox: mpsc::Sender<(String, Message)>,
    /// What formation is doing, for `cluster status`.
    formation_state: Arc<Mutex<String>>,
    /// The leader's read-modify-write decisions (leases, the reboot lock) run one at a time,
    /// so that two nodes never get one block or one slot.
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ControlPlane")
            .field("me", &self.me)
            .field("votes", &self.local.is_some())
            .finish_non_exhaustive()
    }
}

/// Raft on this node, with the store it applies to and its log.
#[derive(Clone)]
struct LocalRaft {
    raft: Raft<types::ControlPlane>,
    log: DiskLog,
    /// The replicated store, for reads (node objects, leases, the lock).
    machine: Machine,
}

/// Phase: start this node's part in the control plane (after gossip runs).
pub async fn start(
    config: &MachineConfig,
    gossip: Gossip,
    state_dir: &Path,
) -> Result<Arc<ControlPlane>, String> {
    let cluster = config
        .cluster
        .clone()
        .ok_or("the config has no cluster section")?;
    let me = gossip.name().to_owned();
    let peers = peers_client(config, &cluster)?;
    let local = if keelson_control::peer::eligible(cluster.role) {
        Some(start_raft(&me, &cluster, &peers, &state_dir.join("cluster/raft")).await?)
    } else {
        None
    };
    let (formation_inbox, inbox) = mpsc::channel(64);
    let control = Arc::new(ControlPlane {
        me,
        cluster,
        gossip,
        peers,
        local,
        formation_inbox,
        formation_state: Arc::default(),
        serial: tokio::sync::Mutex::new(()),
    });
    if control.local.is_some() {
        let record_path = state_dir.join("cluster/formation.json");
        tokio::spawn(form(control.clone(), inbox, record_path));
        tokio::spawn(keep_voters(control.clone()));
    } else {
        *control.formation_state.lock().unwrap() =
            "this node's role is worker: it follows the control plane and never votes".into();
    }
    tokio::spawn(register_self(control.clone(), state_dir.to_owned()));
    tokio::spawn(crate::fleet_lock::serve(control.clone()));
    Ok(control)
}

/// The kind of node objects.
fn node_kind() -> KindRef {
    KindRef::new("v1", "Node")
}

/// The kind of pod CIDR leases.
fn lease_kind() -> KindRef {
    KindRef::new("keelson.dev/v1alpha1", "PodCIDRLease")
}

/// The kind of the reboot lock's groups.
fn reboot_lock_kind() -> KindRef {
    KindRef::new("keelson.dev/v1alpha1", "RebootLock")
}

/// Where a node keeps its pod CIDR lease for the kubelet's next start.
pub fn leased_pod_cidr_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster/pod-cidr")
}

/// Now, as Kubernetes writes times.
fn now_text() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    keelson_kubelet::status::time(seconds).0.to_string()
}

/// Registration: the node's `v1/Node` through the leader, at start and every minute (its
/// heartbeat), sooner while it fails. The lease that comes back is kept on STATE and told to
/// gossip.
async fn register_self(control: Arc<ControlPlane>, state_dir: PathBuf) {
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
async fn keep_lease(control: &ControlPlane, state_dir: &Path, cidr: &str) {
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

/// The client for the other nodes: this node's certificate and key, verifying peers under
/// the cluster's node name.
fn peers_client(config: &MachineConfig, cluster: &Cluster) -> Result<Peers, String> {
    let api = config.api.as_ref().ok_or(
        "the config has no api section, so the node has no certificate to talk to the others with",
    )?;
    let tls = keelson_api::tls::client_config(&api.ca, &api.cert, &api.key)
        .map_err(|error| format!("the node certificate cannot be used as a client: {error}"))?;
    let tls = ClientTls::new(tls, &keelson_api::pki::node_server_name(&cluster.name))?;
    Ok(Peers {
        tls,
        channels: Arc::default(),
    })
}

/// Opens the log and the store on STATE and starts Raft.
async fn start_raft(
    me: &str,
    cluster: &Cluster,
    peers: &Peers,
    dir: &Path,
) -> Result<LocalRaft, String> {
    let (log, opened) = DiskLog::open(&dir.join("log"))
        .map_err(|error| format!("cannot open the Raft log in {}: {error}", dir.display()))?;
    if opened.torn_bytes > 0 {
        warn!(
            "cluster: the Raft log ended in an unfinished record ({} bytes, a power cut); it was cut off",
            opened.torn_bytes
        );
    }
    let machine = Machine::open(&dir.join("machine"))
        .map_err(|error| format!("cannot open the store in {}: {error}", dir.display()))?;
    let config = types::config(&cluster.name)
        .validate()
        .map_err(|error| format!("Raft's settings are invalid: {error}"))?;
    let raft = Raft::new(
        node_id(me),
        Arc::new(config),
        Network::new(peers.clone()),
        log.clone(),
        machine.clone(),
    )
    .await
    .map_err(|error| format!("Raft did not start: {error}"))?;
    info!(
        "cluster: Raft started with {} log entries from STATE",
        opened.entries
    );
    Ok(LocalRaft { raft, log, machine })
}

impl ControlPlane {
    /// Takes a formation message from another node.
    pub fn formation_message(&self, from: String, message: &[u8]) -> Result<(), String> {
        let message: Message = serde_json::from_slice(message)
            .map_err(|error| format!("not a formation message: {error}"))?;
        self.formation_inbox
            .try_send((from, message))
            .map_err(|_| "formation is busy; the sender will try again".to_string())
    }

    /// Answers one Raft call from another node.
    pub async fn raft_call(&self, call: &str, body: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        let Some(local) = &self.local else {
            return Err(tonic::Status::failed_precondition(
                "this node's role is worker: it runs no Raft",
            ));
        };
        let call = Call::from_name(call)
            .ok_or_else(|| tonic::Status::invalid_argument(format!("no Raft call {call:?}")))?;
        keelson_raft::network::serve(&local.raft, call, body)
            .await
            .map_err(tonic::Status::invalid_argument)
    }

    /// `Cluster.Status`: the leader's answer when this node can reach it (`forwarded` calls
    /// are answered here), else this node's own.
    pub async fn status(&self, forwarded: bool) -> StatusResponse {
        let local = self.local_status().await;
        if forwarded {
            return local;
        }
        let ask = match (&self.local, local.leader.as_str()) {
            (Some(_), "") => Vec::new(),
            (Some(_), leader) if leader == self.me => return local,
            (Some(_), leader) => vec![leader.to_owned()],
            // A worker asks the voters it knows of, best first.
            (None, _) => self.alive_eligible(),
        };
        let mut problems = Vec::new();
        for name in ask {
            match self.ask_status(&name).await {
                Ok(answer) => return answer,
                Err(problem) => problems.push(format!("{name}: {problem}")),
            }
        }
        let mut local = local;
        if !problems.is_empty() {
            local.problem = format!(
                "{}cannot reach the control plane ({})",
                if local.problem.is_empty() {
                    String::new()
                } else {
                    format!("{}; ", local.problem)
                },
                problems.join("; ")
            );
        }
        local
    }

    async fn ask_status(&self, name: &str) -> Result<StatusResponse, String> {
        let endpoint = self
            .endpoint_of(name)
            .ok_or_else(|| format!("gossip has no API address for {name}"))?;
        let mut client = self
            .peers
            .client(&endpoint)
            .await
            .map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(StatusRequest {});
        request
            .metadata_mut()
            .insert(FORWARDED, "1".parse().unwrap());
        request.set_timeout(RAFT_CALL_TIMEOUT);
        match client.status(request).await {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) => {
                self.peers.forget(&endpoint);
                Err(status.message().to_owned())
            }
        }
    }

    /// Raft, when this node leads.
    fn leading(&self) -> Option<&LocalRaft> {
        self.local
            .as_ref()
            .filter(|local| local.raft.metrics().borrow().state == ServerState::Leader)
    }

    /// A client for the leader's API, for what only the leader answers.
    async fn leader_client(&self) -> Result<ClusterClient<Channel>, Status> {
        let leader = match &self.local {
            Some(_) => self.local_status().await.leader,
            None => {
                let mut leader = String::new();
                for name in self.alive_eligible() {
                    if let Ok(status) = self.ask_status(&name).await {
                        leader = status.leader;
                        break;
                    }
                }
                leader
            }
        };
        if leader.is_empty() {
            return Err(Status::unavailable(
                "the cluster has no leader (an election, or no majority of voters in reach); try again",
            ));
        }
        let endpoint = self.endpoint_of(&leader).ok_or_else(|| {
            Status::unavailable(format!("gossip has no API address for the leader {leader}"))
        })?;
        self.peers
            .client(&endpoint)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))
    }

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
        // The store must hold every committed lease before a free block is picked.
        local
            .raft
            .ensure_linearizable()
            .await
            .map_err(|error| Status::unavailable(format!("not the leader any more: {error}")))?;
        let network = PodNetwork::of_cluster(&self.cluster).map_err(Status::failed_precondition)?;
        let mut leases = Leases::new(network);
        let held: Vec<(String, u32)> = local
            .machine
            .read(|store| {
                store
                    .list(&lease_kind(), None)
                    .filter_map(|lease| {
                        let holder = lease["metadata"]["name"].as_str()?.to_owned();
                        let block = u32::try_from(lease["spec"]["block"].as_u64()?).ok()?;
                        Some((holder, block))
                    })
                    .collect()
            })
            .await;
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

    /// Commits one store command: here when this node leads, else through the leader.
    pub async fn write_through_leader(&self, op: Op) -> Result<Value, Status> {
        if let Some(local) = self.leading() {
            return write(local, op).await;
        }
        let op = serde_json::to_string(&op).map_err(|error| Status::internal(error.to_string()))?;
        let mut client = self.leader_client().await?;
        let reply = client.write(WriteRequest { op }).await?.into_inner();
        serde_json::from_str(&reply.object)
            .map_err(|error| Status::internal(format!("the leader's answer: {error}")))
    }

    /// `Cluster.Write` from another node: only the leader commits.
    pub async fn write_here(&self, op: &str) -> Result<String, Status> {
        let op: Op = serde_json::from_str(op)
            .map_err(|error| Status::invalid_argument(format!("not a store command: {error}")))?;
        let Some(local) = self.leading() else {
            return Err(Status::unavailable(
                "this node is not the leader any more; ask again",
            ));
        };
        Ok(write(local, op).await?.to_string())
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

    /// `Cluster.Lock`: on the leader, the reboot lock's decision, written before it is
    /// answered; elsewhere, the leader's answer.
    pub async fn lock(&self, request: LockRequest) -> Result<LockReply, Status> {
        let Some(local) = self.leading() else {
            let mut client = self.leader_client().await?;
            return Ok(client.lock(request).await?.into_inner());
        };
        let _one_at_a_time = self.serial.lock().await;
        let mut lock = read_reboot_lock(local).await?;
        let (group, id) = (request.group.as_str(), request.id.as_str());
        let reply = |granted: bool, kind: &str, message: String| LockReply {
            granted,
            kind: kind.to_owned(),
            message,
        };
        match request.action.as_str() {
            "pre-reboot" => {
                let voters: Vec<String> = reconcile::seen(&local.raft)
                    .membership
                    .voters
                    .into_iter()
                    .collect();
                let members = peers_of(&self.gossip.members(), &HashMap::new(), Instant::now());
                let facts = ClusterFacts {
                    voters: &voters,
                    members: &members,
                };
                let slots = self.cluster.reboot_slots(group);
                match lock.pre_reboot(group, id, slots, facts) {
                    Ok(Granted::Now) => {
                        save_reboot_group(local, &lock, group).await?;
                        info!("cluster: reboot slot of group {group} to {id}");
                        Ok(reply(
                            true,
                            "",
                            format!("{id} holds a reboot slot of {group}"),
                        ))
                    }
                    Ok(Granted::Already) => Ok(reply(
                        true,
                        "",
                        format!("{id} already holds a reboot slot of {group}"),
                    )),
                    Err(refused) => Ok(reply(false, refused.kind(), refused.to_string())),
                }
            }
            "steady-state" => {
                if lock.steady_state(group, id) {
                    save_reboot_group(local, &lock, group).await?;
                    info!("cluster: {id} gave back its reboot slot of group {group}");
                }
                Ok(reply(
                    true,
                    "",
                    format!("{id} holds no reboot slot of {group}"),
                ))
            }
            other => Err(Status::invalid_argument(format!(
                "{other:?} is not a FleetLock action (pre-reboot or steady-state)"
            ))),
        }
    }

    /// `Cluster.LockStatus`: every group in use or configured, with its slots and holders.
    pub async fn lock_status(&self) -> Result<LockStatusResponse, Status> {
        let Some(local) = self.leading() else {
            let mut client = self.leader_client().await?;
            return Ok(client.lock_status(LockStatusRequest {}).await?.into_inner());
        };
        let lock = read_reboot_lock(local).await?;
        let mut groups: std::collections::BTreeSet<String> =
            lock.groups().map(|(group, _)| group.to_owned()).collect();
        groups.insert("default".into());
        if let Some(configured) = &self.cluster.reboot_lock {
            groups.extend(configured.groups.keys().cloned());
        }
        Ok(LockStatusResponse {
            groups: groups
                .into_iter()
                .map(|group| LockGroup {
                    slots: self.cluster.reboot_slots(&group),
                    holders: lock.holders(&group).map(str::to_owned).collect(),
                    group,
                })
                .collect(),
            answered_by: self.me.clone(),
        })
    }

    /// The leader's upkeep of the lock: slots of nodes down past the replacement time go
    /// back (a reboot is shorter; a node gone that long is not coming back soon).
    async fn release_dead_holders(&self, local: &LocalRaft, members: &[Peer]) {
        let _one_at_a_time = self.serial.lock().await;
        let Ok(mut lock) = read_reboot_lock(local).await else {
            return;
        };
        let released = lock.release_dead(members, self.cluster.replace_dead_voter_after());
        for (group, node) in released {
            match save_reboot_group(local, &lock, &group).await {
                Ok(()) => warn!(
                    "cluster: {node} is down for longer than replaceDeadVoterSeconds; its reboot slot of {group} is free"
                ),
                Err(status) => debug!("cluster: slot of {node} not released: {}", status.message()),
            }
        }
    }

    /// `Cluster.Nodes`: the node objects from the leader's store.
    pub async fn nodes(&self) -> Result<NodesResponse, Status> {
        let Some(local) = self.leading() else {
            let mut client = self.leader_client().await?;
            return Ok(client.nodes(NodesRequest {}).await?.into_inner());
        };
        local
            .raft
            .ensure_linearizable()
            .await
            .map_err(|error| Status::unavailable(format!("not the leader any more: {error}")))?;
        let nodes = local
            .machine
            .read(|store| {
                store
                    .list(&node_kind(), None)
                    .map(Value::to_string)
                    .collect()
            })
            .await;
        Ok(NodesResponse {
            nodes,
            answered_by: self.me.clone(),
        })
    }

    /// This node's own view of the control plane.
    async fn local_status(&self) -> StatusResponse {
        let mut answer = StatusResponse {
            enabled: true,
            cluster: self.cluster.name.clone(),
            answered_by: self.me.clone(),
            ..StatusResponse::default()
        };
        let Some(local) = &self.local else {
            answer.problem = self.formation_state.lock().unwrap().clone();
            return answer;
        };
        let metrics = local.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let name_of = |id: u64| membership.get_node(&id).map(|node| node.name.clone());
        answer.term = metrics.current_term;
        answer.leader = metrics.current_leader.and_then(name_of).unwrap_or_default();
        answer.voters = membership.voter_ids().filter_map(name_of).collect();
        answer.learners = membership.learner_ids().filter_map(name_of).collect();
        answer.voters.sort();
        answer.learners.sort();
        answer.applied_index = metrics.last_applied.map_or(0, |applied| applied.index);
        answer.commit_index = local.log.committed_index().await.max(answer.applied_index);
        if answer.voters.is_empty() {
            answer.problem = self.formation_state.lock().unwrap().clone();
        } else if answer.leader.is_empty() {
            answer.problem =
                "no leader: an election is under way, or a majority of the voters is out of reach"
                    .into();
        }
        answer
    }

    /// The API endpoint gossip gives for `name`.
    fn endpoint_of(&self, name: &str) -> Option<String> {
        self.gossip
            .members()
            .into_iter()
            .find(|member| member.id.name == name)
            .and_then(|member| member.info)
            .map(|info| info.api_endpoint)
    }

    /// Eligible members gossip sees alive (this node aside), best-ranked first.
    fn alive_eligible(&self) -> Vec<String> {
        let view = peers_of(&self.gossip.members(), &HashMap::new(), Instant::now());
        keelson_control::peer::ranked_alive(&view)
            .into_iter()
            .map(|peer| peer.name.clone())
            .filter(|name| *name != self.me)
            .collect()
    }

    /// Whether this node's Raft knows a cluster (voters exist): formation is over.
    fn in_cluster(&self) -> bool {
        self.local.as_ref().is_some_and(|local| {
            local
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
        })
    }
}

/// Writes one command through Raft (this node leads) and returns the object written.
async fn write(local: &LocalRaft, op: Op) -> Result<Value, Status> {
    let at_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    let committing = local.raft.client_write(Command { at_millis, op });
    let response = tokio::time::timeout(COMMIT_TIMEOUT, committing)
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "the write was not acknowledged within {} s: this node cannot reach a majority \
                 of the voters; it takes effect only if they are reached before another leader \
                 is elected",
                COMMIT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|error| Status::unavailable(format!("the write was not committed: {error}")))?;
    match response.data {
        Applied::Store(Outcome::Written(object) | Outcome::Deleted(object)) => Ok(object),
        Applied::Store(Outcome::Refused(refusal @ Refusal::NotFound(_))) => {
            Err(Status::not_found(refusal.to_string()))
        }
        Applied::Store(Outcome::Refused(refusal)) => {
            Err(Status::failed_precondition(refusal.to_string()))
        }
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The reboot lock as the leader's store holds it, every committed change applied.
async fn read_reboot_lock(local: &LocalRaft) -> Result<RebootLock, Status> {
    local
        .raft
        .ensure_linearizable()
        .await
        .map_err(|error| Status::unavailable(format!("not the leader any more: {error}")))?;
    let groups: Vec<(String, Vec<String>)> = local
        .machine
        .read(|store| {
            store
                .list(&reboot_lock_kind(), None)
                .filter_map(|group| {
                    let name = group["metadata"]["name"].as_str()?.to_owned();
                    let holders = group["spec"]["holders"]
                        .as_array()?
                        .iter()
                        .filter_map(|holder| holder.as_str().map(str::to_owned))
                        .collect();
                    Some((name, holders))
                })
                .collect()
        })
        .await;
    Ok(RebootLock::restore(groups))
}

/// Writes one group of the lock.
async fn save_reboot_group(
    local: &LocalRaft,
    lock: &RebootLock,
    group: &str,
) -> Result<(), Status> {
    let holders: Vec<&str> = lock.holders(group).collect();
    let object = json!({
        "apiVersion": "keelson.dev/v1alpha1",
        "kind": "RebootLock",
        "metadata": {"name": group},
        "spec": {"holders": holders},
    });
    write(local, Op::Apply(object)).await.map(drop)
}

/// The leader's upkeep of node objects: `Ready` follows gossip (`Unknown` once a node is
/// declared down or forgotten, `True` again when it is back).
async fn keep_node_conditions(local: &LocalRaft, view: &[MemberView]) {
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

/// Gossip's members as the control plane's peers: those whose information (and so role)
/// has arrived; a down member is down since `down_since` says (or since `now`).
fn peers_of(view: &[MemberView], down_since: &HashMap<String, Instant>, now: Instant) -> Vec<Peer> {
    view.iter()
        .filter_map(|member| {
            let info = member.info.as_ref()?;
            let down_for = (member.state == MemberState::Down).then(|| {
                now.saturating_duration_since(
                    down_since.get(&member.id.name).copied().unwrap_or(now),
                )
            });
            Some(Peer {
                name: member.id.name.clone(),
                role: info.role,
                down_for,
            })
        })
        .collect()
}

/// The formation loop: the machine on the gossip view and the messages of the others,
/// until this node is in a cluster; after that it only answers, so that a late candidate
/// learns that a cluster exists.
async fn form(
    control: Arc<ControlPlane>,
    mut inbox: mpsc::Receiver<(String, Message)>,
    record_path: PathBuf,
) {
    let record = match load_record(&record_path) {
        Ok(record) => record,
        Err(problem) => {
            warn!("cluster: formation cannot run: {problem}");
            *control.formation_state.lock().unwrap() = problem;
            return;
        }
    };
    let wanted = control.cluster.control_planes() as usize;
    let mut machine = Formation::new(control.me.clone(), control.cluster.role, wanted, record);
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        let inputs = tokio::select! {
            _ = tick.tick() => {
                if control.in_cluster() {
                    vec![Input::ClusterExists]
                } else {
                    let view = peers_of(&control.gossip.members(), &HashMap::new(), Instant::now());
                    let mut inputs = vec![Input::View(view)];
                    if started.elapsed() >= FORMATION_WAIT {
                        inputs.push(Input::WaitOver);
                    }
                    inputs.push(Input::Retry);
                    inputs
                }
            }
            received = inbox.recv() => match received {
                Some((from, message)) => vec![Input::Received { from, message }],
                None => return,
            },
        };
        for input in inputs {
            let outputs = machine.handle(input);
            if let Err(problem) = perform(&control, &record_path, outputs).await {
                warn!("cluster: formation stopped: {problem}");
                *control.formation_state.lock().unwrap() = problem;
                return;
            }
        }
        *control.formation_state.lock().unwrap() = describe(&machine, wanted, started);
    }
}

/// What formation is doing, in a line for `cluster status`.
fn describe(machine: &Formation, wanted: usize, started: Instant) -> String {
    if machine.is_over() {
        return String::new();
    }
    if let Some(voters) = machine.candidacy() {
        return format!(
            "forming the cluster: this node stands with voters {}",
            voters.join(", ")
        );
    }
    if let Some(promise) = &machine.record().promise {
        return format!("forming the cluster: supporting {}", promise.candidate);
    }
    let waited = started.elapsed();
    if waited < FORMATION_WAIT {
        format!(
            "forming the cluster: waiting to see {wanted} eligible nodes, for {} s more",
            (FORMATION_WAIT - waited).as_secs()
        )
    } else {
        "forming the cluster: waiting for the best-ranked eligible node to stand".into()
    }
}

/// Carries out the machine's outputs in order: a record is on STATE before anything
/// after it is sent.
async fn perform(
    control: &Arc<ControlPlane>,
    record_path: &Path,
    outputs: Vec<Output>,
) -> Result<(), String> {
    for output in outputs {
        match output {
            Output::Save(record) => save_record(record_path, &record)?,
            Output::Send { to, message } => {
                let control = control.clone();
                tokio::spawn(async move { send_formation(&control, &to, &message).await });
            }
            Output::Initialise { voters } => initialise(control, &voters).await?,
        }
    }
    Ok(())
}

/// Initialises Raft with `voters`: the one moment formation exists for.
async fn initialise(control: &ControlPlane, voters: &[String]) -> Result<(), String> {
    let local = control
        .local
        .as_ref()
        .ok_or("a worker cannot initialise the cluster")?;
    let mut members = BTreeMap::new();
    for name in voters {
        let api = control
            .endpoint_of(name)
            .ok_or_else(|| format!("gossip lost {name}'s API address"))?;
        members.insert(
            node_id(name),
            NodeAddr {
                name: name.clone(),
                api,
            },
        );
    }
    match local.raft.initialize(members).await {
        Ok(()) => {
            info!(
                "cluster: initialised the control plane with voters {}",
                voters.join(", ")
            );
            Ok(())
        }
        // Initialised before a restart that lost nothing but this run: the record says so.
        Err(error) => {
            warn!("cluster: Raft refused to initialise: {error}");
            Ok(())
        }
    }
}

/// Sends one formation message; a loss is made good by the machine's retries.
async fn send_formation(control: &ControlPlane, to: &str, message: &Message) {
    let Some(endpoint) = control.endpoint_of(to) else {
        debug!("cluster: no API address for {to} yet; formation retries");
        return;
    };
    let request = FormationRequest {
        from: control.me.clone(),
        message: serde_json::to_vec(message).unwrap_or_default(),
    };
    let sent = match control.peers.client(&endpoint).await {
        Ok(mut client) => client
            .formation(request)
            .await
            .map(drop)
            .map_err(|status| status.message().to_owned()),
        Err(error) => Err(error.to_string()),
    };
    if let Err(problem) = sent {
        control.peers.forget(&endpoint);
        debug!("cluster: formation message to {to} failed: {problem}");
    }
}

/// The record on STATE, or a fresh one on first boot.
fn load_record(path: &Path) -> Result<Record, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            format!(
                "{} is damaged ({error}); with the node out of any cluster, remove it to form anew",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Writes the record durably (synced) before the messages that depend on it go out.
fn save_record(path: &Path, record: &Record) -> Result<(), String> {
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    }
    let bytes = serde_json::to_vec(record).map_err(|error| error.to_string())?;
    keelson_linux::durable::write(path, &bytes).map_err(|error| {
        format!(
            "cannot keep the formation record in {}: {error}",
            path.display()
        )
    })
}

/// The leader's upkeep: every tick, while this node leads, one step of the voter plan.
/// Gossip forgets down members after a while, so how long a voter has been missing is
/// kept here.
async fn keep_voters(control: Arc<ControlPlane>) {
    let Some(local) = control.local.clone() else {
        return;
    };
    let replace_after = control.cluster.replace_dead_voter_after();
    let wanted = control.cluster.control_planes() as usize;
    let mut down_since: HashMap<String, Instant> = HashMap::new();
    let mut last_problem = String::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let view = control.gossip.members();
        for member in &view {
            if member.state == MemberState::Down {
                down_since.entry(member.id.name.clone()).or_insert(now);
            } else {
                down_since.remove(&member.id.name);
            }
        }
        let seen = reconcile::seen(&local.raft);
        if !seen.leading {
            continue;
        }
        let mut members = peers_of(&view, &down_since, now);
        // Voters and learners gossip has forgotten are down since it last showed them.
        for name in seen
            .membership
            .voters
            .iter()
            .chain(&seen.membership.learners)
        {
            if !members.iter().any(|peer| &peer.name == name) {
                let since = *down_since.entry(name.clone()).or_insert(now);
                members.push(Peer {
                    name: name.clone(),
                    role: Role::Auto,
                    down_for: Some(now.saturating_duration_since(since)),
                });
            }
        }
        let addresses: BTreeMap<String, NodeAddr> = view
            .iter()
            .filter_map(|member| {
                let info = member.info.as_ref()?;
                Some((
                    member.id.name.clone(),
                    NodeAddr {
                        name: member.id.name.clone(),
                        api: info.api_endpoint.clone(),
                    },
                ))
            })
            .collect();
        let upkeep = Upkeep {
            members: &members,
            addresses: &addresses,
            wanted,
            replace_after,
        };
        match reconcile::step(&local.raft, upkeep).await {
            Ok(Some(change)) => {
                info!("cluster: membership change {change:?}");
                last_problem.clear();
            }
            Ok(None) => last_problem.clear(),
            Err(problem) if problem != last_problem => {
                warn!("cluster: membership change not made: {problem}");
                last_problem = problem;
            }
            Err(_) => {}
        }
        keep_node_conditions(&local, &view).await;
        control.release_dead_holders(&local, &members).await;
    }
}

/// Connections to the other nodes' APIs, kept between calls.
#[derive(Clone)]
pub struct Peers {
    tls: ClientTls,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    /// A client for the node at `endpoint` (host:port), connecting if need be.
    async fn client(&self, endpoint: &str) -> Result<ClusterClient<Channel>, TransportError> {
        if let Some(channel) = self.channels.lock().unwrap().get(endpoint) {
            return Ok(ClusterClient::new(channel.clone()));
        }
        let connecting = keelson_api::client::connect(endpoint, &self.tls);
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                return Err(TransportError::Unreachable(format!(
                    "cannot connect to {endpoint}: {error}"
                )))
            }
            Err(_) => {
                return Err(TransportError::Unreachable(format!(
                    "no connection to {endpoint} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        self.channels
            .lock()
            .unwrap()
            .insert(endpoint.to_owned(), channel.clone());
        Ok(ClusterClient::new(channel))
    }

    /// Drops a connection that failed, so that the next call connects again.
    fn forget(&self, endpoint: &str) {
        self.channels.lock().unwrap().remove(endpoint);
    }
}

impl Transport for Peers {
    async fn call(
        &self,
        target: &NodeAddr,
        call: Call,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let mut client = self.client(&target.api).await?;
        let mut request = tonic::Request::new(RaftRequest {
            call: call.name().to_owned(),
            body,
        });
        request.set_timeout(match call {
            Call::InstallSnapshot => SNAPSHOT_CALL_TIMEOUT,
            Call::AppendEntries | Call::Vote => RAFT_CALL_TIMEOUT,
        });
        match client.raft(request).await {
            Ok(reply) => Ok(reply.into_inner().body),
            Err(status) => {
                self.forget(&target.api);
                let why = format!("{}: {}", target.name, status.message());
                Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                        TransportError::Unreachable(why)
                    }
                    _ => TransportError::Failed(why),
                })
            }
        }
    }
}

/// The formation record is part of the machine's contract: a test keeps its file format.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formation_record_survives_a_restart_and_a_damaged_one_is_named() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cluster/formation.json");
        assert_eq!(load_record(&path).unwrap(), Record::default());
        let record = Record {
            promise: Some(keelson_control::formation::Promise {
                candidate: "node-1".into(),
                attempt: 2,
            }),
            attempts: 0,
            initialised: None,
        };
        save_record(&path, &record).unwrap();
        assert_eq!(load_record(&path).unwrap(), record);
        std::fs::write(&path, "{").unwrap();
        let problem = load_record(&path).unwrap_err();
        assert!(problem.contains("is damaged"), "{problem}");
        assert!(problem.contains("remove it"), "{problem}");
    }

    #[test]
    fn down_members_count_from_when_they_were_first_seen_down() {
        use keelson_cluster::{NodeId, NodeInfo};
        let now = Instant::now();
        let member = |name: &str, state: MemberState, role: Option<Role>| MemberView {
            id: NodeId::new(name, "10.0.0.1:7946".parse().unwrap(), 1),
            state,
            info: role.map(|role| NodeInfo {
                name: name.into(),
                generation: 1,
                revision: 0,
                addresses: Vec::new(),
                role,
                os_version: String::new(),
                slot: String::new(),
                pod_cidr: None,
                api_endpoint: String::new(),
            }),
        };
        let view = [
            member("a", MemberState::Alive, Some(Role::Auto)),
            member("b", MemberState::Down, Some(Role::ControlPlane)),
            member("c", MemberState::Suspect, Some(Role::Worker)),
            member("d", MemberState::Alive, None),
        ];
        let since = HashMap::from([("b".to_string(), now - Duration::from_secs(40))]);
        let peers = peers_of(&view, &since, now);
        let names: Vec<&str> = peers.iter().map(|peer| peer.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"], "d's role has not arrived yet");
        assert_eq!(peers[0].down_for, None);
        assert_eq!(peers[1].down_for, Some(Duration::from_secs(40)));
        assert_eq!(peers[2].down_for, None, "suspect is not dead yet");
    }
}
