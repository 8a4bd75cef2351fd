//! The built-in FleetLock server's decisions: a counting semaphore per group.
//!
//! Nodes whose reboot policy is `fleet-lock` ask before rebooting into an update
//! (`POST /v1/pre-reboot`) and give the slot back once the new slot is blessed
//! (`POST /v1/steady-state`), as Zincati does with Airlock. Here:
//! - each group has the slots the config gives it (`cluster.rebootLock`, 1 by default);
//! - asking again for a slot already held, or giving back one not held, succeeds (both
//!   requests are retried by clients until they go through);
//! - a holder that gossip has seen down for longer than a reboot can take (the cluster's
//!   `replaceDeadVoterSeconds`) is released, so a node that died mid-update does not hold
//!   the fleet up for good; a node that is merely rebooting keeps its slot;
//! - a voter may not take a slot while its reboot, added to the voters already down or
//!   rebooting, would leave fewer than a majority of voters up.
//!
//! The holders live in the replicated store; this is the decision over them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::peer::{quorum, Peer};

/// The holders of every group's slots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RebootLock {
    holders: BTreeMap<String, BTreeSet<String>>,
}

/// What the lock needs to know of the cluster at the moment of a request.
#[derive(Debug, Clone, Copy)]
pub struct ClusterFacts<'a> {
    /// The control plane's voters.
    pub voters: &'a [String],
    /// The gossip view (a node missing from it counts as down).
    pub members: &'a [Peer],
}

impl ClusterFacts<'_> {
    fn is_up(&self, node: &str) -> bool {
        self.members
            .iter()
            .any(|peer| peer.name == node && peer.is_alive())
    }
}

/// The answer to `pre-reboot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Granted {
    /// A slot was taken now.
    Now,
    /// The node held one already.
    Already,
}

/// Why a node may not reboot yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Every slot of the group is held.
    NoSlot {
        /// The group.
        group: String,
        /// Its slots.
        slots: u32,
        /// Who holds them.
        holders: Vec<String>,
    },
    /// The node is a voter, and with it down the voters would lose their majority.
    QuorumAtRisk {
        /// Voters up and not holding a slot, the asker among them.
        up: usize,
        /// All voters.
        voters: usize,
    },
}

impl Refused {
    /// The FleetLock error kind, as the protocol's JSON `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::NoSlot { .. } => "failed_lock_semaphore_full",
            Refused::QuorumAtRisk { .. } => "failed_lock_quorum_at_risk",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NoSlot {
                group,
                slots,
                holders,
            } => write!(
                f,
                "all {slots} reboot slot(s) of group {group:?} are held by {}",
                holders.join(", ")
            ),
            Refused::QuorumAtRisk { up, voters } => write!(
                f,
                "only {up} of {voters} voters are up and not rebooting: this voter's reboot \
                 would leave fewer than {} (the majority)",
                quorum(*voters)
            ),
        }
    }
}

impl RebootLock {
    /// No holders.
    pub fn new() -> RebootLock {
        RebootLock::default()
    }

    /// The lock as the store keeps it: each group's holders.
    pub fn restore(groups: impl IntoIterator<Item = (String, Vec<String>)>) -> RebootLock {
        let mut lock = RebootLock::new();
        for (group, holders) in groups {
            if !holders.is_empty() {
                lock.holders.entry(group).or_default().extend(holders);
            }
        }
        lock
    }

    /// Who holds `group`'s slots.
    pub fn holders(&self, group: &str) -> impl Iterator<Item = &str> + '_ {
        self.holders
            .get(group)
            .into_iter()
            .flat_map(|holders| holders.iter().map(String::as_str))
    }

    /// Every group with holders.
    pub fn groups(&self) -> impl Iterator<Item = (&str, Vec<&str>)> + '_ {
        self.holders
            .iter()
            .map(|(group, holders)| (group.as_str(), holders.iter().map(String::as_str).collect()))
    }

    /// Whether `node` holds a slot of any group.
    pub fn holds(&self, node: &str) -> bool {
        self.holders.values().any(|holders| holders.contains(node))
    }

    /// `POST /v1/pre-reboot` from `node` in `group`, which has `slots` slots.
    pub fn pre_reboot(
        &mut self,
        group: &str,
        node: &str,
        slots: u32,
        facts: ClusterFacts<'_>,
    ) -> Result<Granted, Refused> {
        if self.holders(group).any(|holder| holder == node) {
            return Ok(Granted::Already);
        }
        let held = self.holders(group).count();
        if held >= slots as usize {
            return Err(Refused::NoSlot {
                group: group.to_owned(),
                slots,
                holders: self.holders(group).map(str::to_owned).collect(),
            });
        }
        if facts.voters.iter().any(|voter| voter == node) {
            let others_up = facts
                .voters
                .iter()
                .filter(|voter| *voter != node && facts.is_up(voter) && !self.holds(voter))
                .count();
            if others_up < quorum(facts.voters.len()) {
                return Err(Refused::QuorumAtRisk {
                    up: others_up + 1,
                    voters: facts.voters.len(),
                });
            }
        }
        self.holders
            .entry(group.to_owned())
            .or_default()
            .insert(node.to_owned());
        Ok(Granted::Now)
    }

    /// `POST /v1/steady-state` from `node` in `group`: gives its slot back. True when it
    /// held one (false is also a success: the request is idempotent).
    pub fn steady_state(&mut self, group: &str, node: &str) -> bool {
        let Some(holders) = self.holders.get_mut(group) else {
            return false;
        };
        let held = holders.remove(node);
        if holders.is_empty() {
            self.holders.remove(group);
        }
        held
    }

    /// Releases every slot held by a node gossip has seen down for longer than
    /// `release_after`; returns (group, node) of each slot released.
    pub fn release_dead(
        &mut self,
        members: &[Peer],
        release_after: Duration,
    ) -> Vec<(String, String)> {
        let dead = |node: &str| {
            members
                .iter()
                .find(|peer| peer.name == node)
                .is_some_and(|peer| peer.down_for.is_some_and(|down| down > release_after))
        };
        let mut released = Vec::new();
        for (group, holders) in &mut self.holders {
            holders.retain(|holder| {
                let keep = !dead(holder);
                if !keep {
                    released.push((group.clone(), holder.clone()));
                }
                keep
            });
        }
        self.holders.retain(|_, holders| !holders.is_empty());
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_config::model::Role;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn alive(list: &[&str]) -> Vec<Peer> {
        list.iter()
            .map(|name| Peer::alive(*name, Role::Auto))
            .collect()
    }

    #[test]
    fn slots_are_counted_per_group_and_requests_are_idempotent() {
        let mut lock = RebootLock::new();
        let members = alive(&["w1", "w2", "w3"]);
        let facts = ClusterFacts {
            voters: &[],
            members: &members,
        };
        assert_eq!(lock.pre_reboot("default", "w1", 1, facts), Ok(Granted::Now));
        assert_eq!(
            lock.pre_reboot("default", "w1", 1, facts),
            Ok(Granted::Already)
        );
        let refused = lock.pre_reboot("default", "w2", 1, facts).unwrap_err();
        assert_eq!(refused.kind(), "failed_lock_semaphore_full");
        assert!(refused.to_string().contains("held by w1"), "{refused}");
        assert_eq!(lock.pre_reboot("edge", "w3", 1, facts), Ok(Granted::Now));
        assert!(lock.steady_state("default", "w1"));
        assert!(!lock.steady_state("default", "w1"));
        assert_eq!(lock.pre_reboot("default", "w2", 1, facts), Ok(Granted::Now));
    }

    #[test]
    fn a_voter_may_not_reboot_when_that_would_cost_the_majority() {
        let mut lock = RebootLock::new();
        let voters = names(&["cp1", "cp2", "cp3"]);
        let mut members = alive(&["cp1", "cp2", "cp3"]);
        let facts = ClusterFacts {
            voters: &voters,
            members: &members,
        };
        assert_eq!(
            lock.pre_reboot("default", "cp1", 3, facts),
            Ok(Granted::Now)
        );
        let refused = lock.pre_reboot("default", "cp2", 3, facts).unwrap_err();
        assert_eq!(refused, Refused::QuorumAtRisk { up: 2, voters: 3 });
        assert!(refused.to_string().contains("fewer than 2"), "{refused}");
        // cp1 is back and blessed; cp3 crashes: cp2 still may not go.
        lock.steady_state("default", "cp1");
        members[2].down_for = Some(Duration::from_secs(5));
        let facts = ClusterFacts {
            voters: &voters,
            members: &members,
        };
        assert!(lock.pre_reboot("default", "cp2", 3, facts).is_err());
    }

    #[test]
    fn a_holder_dead_past_a_reboot_is_released_and_a_rebooting_one_is_not() {
        let mut lock = RebootLock::new();
        let mut members = alive(&["w1", "w2"]);
        let facts = ClusterFacts {
            voters: &[],
            members: &members,
        };
        lock.pre_reboot("default", "w1", 1, facts).unwrap();
        let after = Duration::from_secs(300);
        members[0].down_for = Some(Duration::from_secs(60));
        assert!(lock.release_dead(&members, after).is_empty());
        members[0].down_for = Some(Duration::from_secs(301));
        assert_eq!(
            lock.release_dead(&members, after),
            [("default".to_owned(), "w1".to_owned())]
        );
        assert_eq!(lock.groups().count(), 0);
    }
}
