//! The leader's voter upkeep: reads the membership from openraft, asks
//! `keelson_control::voters::plan` for the next change, and applies it.
//!
//! Run on every node each time the gossip view changes and every few seconds; only the
//! leader acts. One change per call: openraft commits membership changes one at a time,
//! and the next call plans from what the last one left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keelson_control::voters::{self, Change, Membership, Situation};
use keelson_control::Peer;
use openraft::{ChangeMembers, Raft, ServerState};

use crate::types::{node_id, ControlPlane, NodeAddr};

/// A learner this many entries behind the leader, or fewer, counts as caught up: promoting
/// it will not stall commits while it fetches the rest.
pub const CAUGHT_UP_LAG: u64 = 16;

/// What the leader knows of the cluster besides Raft: the gossip view (an entry for every
/// voter and learner), each node's API address, and the settings.
#[derive(Debug, Clone, Copy)]
pub struct Upkeep<'a> {
    /// The gossip view.
    pub members: &'a [Peer],
    /// Each node's Raft address (name and API endpoint), from gossip.
    pub addresses: &'a BTreeMap<String, NodeAddr>,
    /// Voters wanted: 1, 3 or 5.
    pub wanted: usize,
    /// How long a voter may be down before it is replaced.
    pub replace_after: Duration,
}

/// The membership as openraft has it, by name, and whether this node leads.
pub struct Seen {
    /// Voters and learners by name.
    pub membership: Membership,
    /// Learners within [`CAUGHT_UP_LAG`] of the leader's log.
    pub caught_up: BTreeSet<String>,
    /// Whether this node is the leader.
    pub leading: bool,
}

/// Reads the membership and replication progress from `raft`'s metrics.
pub fn seen(raft: &Raft<ControlPlane>) -> Seen {
    let metrics = raft.metrics().borrow().clone();
    let config = metrics.membership_config.membership();
    let name_of = |id: u64| config.get_node(&id).map(|node| node.name.clone());
    let voters: BTreeSet<String> = config.voter_ids().filter_map(name_of).collect();
    let learners: BTreeSet<String> = config.learner_ids().filter_map(name_of).collect();
    let last = metrics.last_log_index.unwrap_or(0);
    let caught_up = metrics
        .replication
        .iter()
        .flatten()
        .filter(|(_, matched)| matched.is_some_and(|matched| matched.index + CAUGHT_UP_LAG >= last))
        .filter_map(|(id, _)| name_of(*id))
        .collect();
    Seen {
        membership: Membership { voters, learners },
        caught_up,
        leading: metrics.state == ServerState::Leader,
    }
}

/// Plans and applies the next membership change if this node leads; returns it, or why it
/// could not be applied (openraft refused: a change in flight, leadership lost…).
pub async fn step(raft: &Raft<ControlPlane>, upkeep: Upkeep<'_>) -> Result<Option<Change>, String> {
    let seen = seen(raft);
    if !seen.leading {
        return Ok(None);
    }
    let situation = Situation {
        members: upkeep.members,
        wanted: upkeep.wanted,
        replace_after: upkeep.replace_after,
        caught_up: &seen.caught_up,
    };
    let Some(change) = voters::plan(&seen.membership, situation) else {
        return Ok(None);
    };
    let applied = match &change {
        Change::AddLearner(name) => {
            let Some(address) = upkeep.addresses.get(name) else {
                return Err(format!("{name} has no API address in gossip yet"));
            };
            raft.add_learner(node_id(name), address.clone(), false)
                .await
                .map(drop)
        }
        Change::SetVoters(names) => {
            let ids: BTreeSet<u64> = names.iter().map(|name| node_id(name)).collect();
            raft.change_membership(ChangeMembers::ReplaceAllVoters(ids), false)
                .await
                .map(drop)
        }
        Change::RemoveLearner(name) => {
            let ids = BTreeSet::from([node_id(name)]);
            raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map(drop)
        }
    };
    applied.map_err(|error| format!("{change:?}: {error}"))?;
    Ok(Some(change))
}
