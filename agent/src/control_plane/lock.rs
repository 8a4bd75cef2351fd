//! The reboot lock on the leader: FleetLock's requests decided by
//! `keelson_control::rebootlock`, each group kept as a `RebootLock` object.

use std::collections::HashMap;
use std::time::Instant;

use keelson_api::cluster::{
    LockGroup, LockReply, LockRequest, LockStatusRequest, LockStatusResponse,
};
use keelson_control::rebootlock::{ClusterFacts, Granted, RebootLock};
use keelson_control::Peer;
use keelson_raft::reconcile;
use keelson_store::{KindRef, Op};
use serde_json::json;
use tonic::Status;
use tracing::{debug, info, warn};

use super::{peers_of, write, ControlPlane, LocalRaft};

/// The kind of the reboot lock's groups.
pub(super) fn reboot_lock_kind() -> KindRef {
    KindRef::new("keelson.dev/v1alpha1", "RebootLock")
}

impl ControlPlane {
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
    pub(super) async fn release_dead_holders(&self, local: &LocalRaft, members: &[Peer]) {
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
}

/// The reboot lock as the leader's store holds it, every committed change applied.
pub(super) async fn read_reboot_lock(local: &LocalRaft) -> Result<RebootLock, Status> {
    let groups: Vec<(String, Vec<String>)> = local
        .read_current(|store| {
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
        .await?;
    Ok(RebootLock::restore(groups))
}

/// Writes one group of the lock.
pub(super) async fn save_reboot_group(
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
