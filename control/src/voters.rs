//! The voter set after formation: how the Raft membership follows the gossip view.
//!
//! The leader runs [`plan`] whenever the view or the membership changes and applies the
//! one change it returns, then asks again. The rule:
//! - a voter is *gone* once gossip has seen it down for longer than `replace_after`, or its
//!   role has become `worker`; a voter that is merely down (a reboot) stays;
//! - the desired voters are the voters that are not gone, then the best-ranked alive
//!   eligible nodes, up to `voter_count(wanted, …)` (1, 3 or 5, always odd); when there
//!   are more than that, the worst-ranked go, down ones first;
//! - a newcomer joins as a learner first and is promoted only once it has caught up with
//!   the log, so a promotion never stalls commits;
//! - the voters change in one joint change (Raft's joint consensus), and only when both
//!   the old and the new voter sets have a majority alive: the plan never proposes a
//!   change that costs the quorum, and never proposes one that cannot commit;
//! - learners that are no longer wanted are removed.
//!
//! The shell passes a `Peer` for every voter and learner, including those gossip has
//! already forgotten (with the time they have been missing), so that "down for how long"
//! is always known here.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::peer::{self, quorum, Peer};

/// The Raft membership as it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Nodes that vote.
    pub voters: BTreeSet<String>,
    /// Nodes that replicate the log without voting.
    pub learners: BTreeSet<String>,
}

/// What the leader knows besides the membership.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// The gossip view, with an entry for every voter and learner.
    pub members: &'a [Peer],
    /// Voters wanted: 1, 3 or 5 (`cluster.controlPlanes`).
    pub wanted: usize,
    /// How long a voter may be down before it is replaced.
    pub replace_after: Duration,
    /// Learners whose log has caught up with the leader's.
    pub caught_up: &'a BTreeSet<String>,
}

impl Situation<'_> {
    fn peer(&self, name: &str) -> Option<&Peer> {
        self.members.iter().find(|peer| peer.name == name)
    }

    fn is_alive(&self, name: &str) -> bool {
        self.peer(name).is_some_and(Peer::is_alive)
    }

    /// Down past the replacement time, or no longer eligible, or unknown altogether.
    fn is_gone(&self, name: &str) -> bool {
        match self.peer(name) {
            None => true,
            Some(peer) => {
                !peer.is_eligible() || peer.down_for.is_some_and(|down| down > self.replace_after)
            }
        }
    }

    fn alive_count(&self, names: &BTreeSet<String>) -> usize {
        names.iter().filter(|name| self.is_alive(name)).count()
    }
}

/// One change to the membership.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// Add a node as a learner.
    AddLearner(String),
    /// Make these the voters (nodes added must be caught-up learners).
    SetVoters(BTreeSet<String>),
    /// Remove a learner that is no longer wanted.
    RemoveLearner(String),
}

/// The voters the cluster should have.
pub fn desired(current: &Membership, situation: Situation<'_>) -> BTreeSet<String> {
    let rank_of = |name: &str| {
        let peer = situation.peer(name);
        let role = peer.map_or(keelson_config::model::Role::Auto, |p| p.role);
        (role, name.to_owned())
    };
    let mut keep: Vec<&String> = current
        .voters
        .iter()
        .filter(|name| !situation.is_gone(name))
        .collect();
    let fillers: Vec<&Peer> = peer::ranked_alive(situation.members)
        .into_iter()
        .filter(|peer| !current.voters.contains(&peer.name))
        .collect();
    let target = peer::voter_count(situation.wanted, keep.len() + fillers.len());
    // Too many: the worst go, down ones before alive ones.
    keep.sort_by(|a, b| {
        let (ra, rb) = (rank_of(a), rank_of(b));
        situation
            .is_alive(b)
            .cmp(&situation.is_alive(a))
            .then(peer::rank_order((ra.0, &ra.1), (rb.0, &rb.1)))
    });
    keep.truncate(target);
    let mut desired: BTreeSet<String> = keep.into_iter().cloned().collect();
    for filler in fillers {
        if desired.len() >= target {
            break;
        }
        desired.insert(filler.name.clone());
    }
    desired
}

/// The next change toward the desired voters, or `None` when there is nothing to do now
/// (done, waiting for a learner to catch up, or no change could keep a majority).
pub fn plan(current: &Membership, situation: Situation<'_>) -> Option<Change> {
    let desired = desired(current, situation);
    if desired != current.voters && !desired.is_empty() {
        let newcomers: Vec<&String> = desired.difference(&current.voters).collect();
        if let Some(name) = newcomers.iter().find(|n| !current.learners.contains(**n)) {
            return Some(Change::AddLearner((*name).clone()));
        }
        let all_caught_up = newcomers.iter().all(|n| situation.caught_up.contains(*n));
        let old_has_majority =
            situation.alive_count(&current.voters) >= quorum(current.voters.len());
        let new_has_majority = situation.alive_count(&desired) >= quorum(desired.len());
        if all_caught_up && old_has_majority && new_has_majority {
            return Some(Change::SetVoters(desired));
        }
        if !all_caught_up {
            return None;
        }
    }
    current
        .learners
        .iter()
        .find(|name| !desired.contains(*name) && !current.voters.contains(*name))
        .map(|name| Change::RemoveLearner(name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_config::model::Role;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn alive(names: &[&str]) -> Vec<Peer> {
        names
            .iter()
            .map(|name| Peer::alive(*name, Role::Auto))
            .collect()
    }

    fn situation<'a>(members: &'a [Peer], caught_up: &'a BTreeSet<String>) -> Situation<'a> {
        Situation {
            members,
            wanted: 3,
            replace_after: Duration::from_secs(300),
            caught_up,
        }
    }

    #[test]
    fn a_lone_voter_grows_to_three_through_learners() {
        let members = alive(&["a", "b", "c", "d"]);
        let none = BTreeSet::new();
        let mut membership = Membership {
            voters: set(&["a"]),
            learners: BTreeSet::new(),
        };
        assert_eq!(
            plan(&membership, situation(&members, &none)),
            Some(Change::AddLearner("b".into()))
        );
        membership.learners = set(&["b", "c"]);
        assert_eq!(plan(&membership, situation(&members, &none)), None);
        let caught_up = set(&["b", "c"]);
        assert_eq!(
            plan(&membership, situation(&members, &caught_up)),
            Some(Change::SetVoters(set(&["a", "b", "c"])))
        );
        membership.voters = set(&["a", "b", "c"]);
        membership.learners.clear();
        assert_eq!(plan(&membership, situation(&members, &caught_up)), None);
    }

    #[test]
    fn a_voter_down_past_the_replacement_time_is_replaced_and_a_rebooting_one_is_not() {
        let mut members = alive(&["a", "b", "c", "d"]);
        members[1].down_for = Some(Duration::from_secs(60));
        let caught_up = set(&["d"]);
        let membership = Membership {
            voters: set(&["a", "b", "c"]),
            learners: set(&["d"]),
        };
        assert_eq!(
            plan(&membership, situation(&members, &caught_up)),
            Some(Change::RemoveLearner("d".into()))
        );
        members[1].down_for = Some(Duration::from_secs(301));
        assert_eq!(
            plan(&membership, situation(&members, &caught_up)),
            Some(Change::SetVoters(set(&["a", "c", "d"])))
        );
    }

    #[test]
    fn workers_never_vote_and_control_planes_are_preferred() {
        let members = vec![
            Peer::alive("a", Role::Worker),
            Peer::alive("b", Role::Auto),
            Peer::alive("z", Role::ControlPlane),
        ];
        let none = BTreeSet::new();
        let membership = Membership::default();
        let wanted_one = Situation {
            wanted: 1,
            ..situation(&members, &none)
        };
        assert_eq!(desired(&membership, wanted_one), set(&["z"]));
        assert_eq!(
            desired(&membership, situation(&members, &none)),
            set(&["z"])
        );
    }

    #[test]
    fn no_change_is_proposed_while_the_voters_have_no_majority() {
        let mut members = alive(&["a", "b", "c", "d", "e"]);
        members[2].down_for = Some(Duration::from_secs(400));
        let caught_up = set(&["d", "e"]);
        let membership = Membership {
            voters: set(&["a", "b", "c"]),
            learners: set(&["d"]),
        };
        // c is gone: d replaces it.
        assert_eq!(
            plan(&membership, situation(&members, &caught_up)),
            Some(Change::SetVoters(set(&["a", "b", "d"])))
        );
        // With a down too (a reboot), only b of the old voters is alive: nothing can commit.
        members[0].down_for = Some(Duration::from_secs(10));
        assert_eq!(plan(&membership, situation(&members, &caught_up)), None);
    }
}
