//! The leader's upkeep, every tick: the voter plan one change at a time, node conditions,
//! and the reboot slots of nodes gone for good.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use keelson_cluster::membership::MemberState;
use keelson_config::model::Role;
use keelson_control::Peer;
use keelson_raft::reconcile::{self, Upkeep};
use keelson_raft::NodeAddr;
use tracing::{info, warn};

use super::nodes::keep_node_conditions;
use super::{peers_of, ControlPlane, TICK};

/// The leader's upkeep: every tick, while this node leads, one step of the voter plan.
/// Gossip forgets down members after a while, so how long a voter has been missing is
/// kept here.
pub(super) async fn keep_voters(control: Arc<ControlPlane>) {
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
