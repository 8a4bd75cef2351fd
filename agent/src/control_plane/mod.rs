//! The control plane on this node: Raft over the node API, formation, and the leader's upkeep.
//!
//! The decisions are `keelson-control`'s and the Raft storage is `keelson-raft`'s; this
//! shell feeds them from gossip and carries their messages. Start-up ([`start`]) is:
//! 1. the peers' client: mutual TLS with this node's own certificate, which carries the
//!    node role;
//! 2. a node that may vote (`control-plane` or `auto`) opens its Raft log and store on
//!    STATE and starts Raft; a `worker` runs none and asks the voters;
//! 3. formation ([`formation`]): until this node is in a cluster, the formation machine
//!    runs on the gossip view, its record kept on STATE before anything that depends on it
//!    is sent;
//! 4. upkeep ([`upkeep`]): while this node leads, the voter plan is applied one change at a
//!    time, each node object's `Ready` condition follows gossip, and the reboot slots of
//!    nodes gone for good are released;
//! 5. registration ([`nodes`]): every node, worker or voter, registers its `v1/Node`
//!    through the leader, which leases it a pod CIDR; the lease is kept on STATE for the
//!    kubelet's next start;
//! 6. the built-in FleetLock server (`crate::fleet_lock`), decided by the leader
//!    ([`lock`]).
//!
//! [`peers`] carries the calls to other nodes (openraft's among them).
//!
//! Node identity inside the cluster rests on the shared node certificate (every node of a
//! cluster holds the same one, as every node holds the same gossip secret), so a message's
//! sender is the name it gives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use keelson_api::client::ClientTls;
use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::{StatusRequest, StatusResponse, WriteRequest};
use keelson_cluster::membership::{MemberState, MemberView};
use keelson_cluster::shell::Gossip;
use keelson_config::model::{Cluster, MachineConfig};
use keelson_control::formation::Message;
use keelson_control::Peer;
use keelson_raft::log::DiskLog;
use keelson_raft::machine::Machine;
use keelson_raft::network::{Call, Network};
use keelson_raft::types::{self, node_id, Applied};
use keelson_store::{Command, Op, Outcome, Refusal};
use openraft::{Raft, ServerState};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Status;
use tracing::{info, warn};

mod formation;
mod lock;
mod nodes;
mod peers;
mod upkeep;

pub use nodes::leased_pod_cidr_path;
use peers::{Peers, RAFT_CALL_TIMEOUT};

/// The control plane of this node once started, or why it is not running.
pub type SharedControlPlane = OnceLock<Result<Arc<ControlPlane>, String>>;

/// How long a node waits to see as many eligible nodes as it wants voters before it forms
/// a smaller cluster (which grows as the others appear). Discovery on one segment takes a
/// few seconds; the wait must outlast it (see `keelson_control::formation`).
pub const FORMATION_WAIT: Duration = Duration::from_secs(30);

/// How often formation resends what may have been lost, and the upkeep looks again.
const TICK: Duration = Duration::from_secs(2);

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
    /// The pod CIDR the cluster leased to this node, once known (for the kubelet).
    lease: tokio::sync::watch::Sender<Option<String>>,
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

impl LocalRaft {
    /// Reads the store once it holds every change committed before the call (the leader
    /// confirms it still leads first): what a decision or an answer that must not be stale
    /// reads.
    async fn read_current<T>(
        &self,
        read: impl FnOnce(&keelson_store::Store) -> T,
    ) -> Result<T, Status> {
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|error| Status::unavailable(format!("not the leader any more: {error}")))?;
        Ok(self.machine.read(read).await)
    }
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
        lease: tokio::sync::watch::Sender::new(None),
    });
    if control.local.is_some() {
        let record_path = state_dir.join("cluster/formation.json");
        tokio::spawn(formation::form(control.clone(), inbox, record_path));
        tokio::spawn(upkeep::keep_voters(control.clone()));
    } else {
        *control.formation_state.lock().unwrap() =
            "this node's role is worker: it follows the control plane and never votes".into();
    }
    tokio::spawn(nodes::register_self(control.clone(), state_dir.to_owned()));
    tokio::spawn(crate::fleet_lock::serve(control.clone()));
    Ok(control)
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
    Ok(Peers::new(tls))
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
    /// The pod CIDR the cluster leased to this node: `None` until it registered.
    pub fn lease(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.lease.subscribe()
    }

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

    /// A client for the API of the member called `name`, at the address gossip gives for
    /// it; with that address.
    async fn client_for(&self, name: &str) -> Result<(String, ClusterClient<Channel>), String> {
        let endpoint = self
            .endpoint_of(name)
            .ok_or_else(|| format!("gossip has no API address for {name}"))?;
        let client = self
            .peers
            .client(&endpoint)
            .await
            .map_err(|error| error.to_string())?;
        Ok((endpoint, client))
    }

    async fn ask_status(&self, name: &str) -> Result<StatusResponse, String> {
        let (endpoint, mut client) = self.client_for(name).await?;
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
        let (_, client) = self
            .client_for(&leader)
            .await
            .map_err(|error| Status::unavailable(format!("the leader {leader}: {error}")))?;
        Ok(client)
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

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_config::model::Role;

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
