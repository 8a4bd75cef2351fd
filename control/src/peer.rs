//! A node as the control plane's decisions see it, and the order in which eligible nodes
//! are ranked for the control plane.

use std::cmp::Ordering;
use std::time::Duration;

use keelson_config::model::Role;

/// One member of the gossip view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The node's name (its hostname), unique in the cluster.
    pub name: String,
    /// What the node's config lets it become.
    pub role: Role,
    /// How long gossip has declared it down; `None` while it is alive (or only suspect).
    pub down_for: Option<Duration>,
}

impl Peer {
    /// A peer that gossip sees alive.
    pub fn alive(name: impl Into<String>, role: Role) -> Peer {
        Peer {
            name: name.into(),
            role,
            down_for: None,
        }
    }

    /// Whether gossip sees the node alive (or suspects it, which is not yet dead).
    pub fn is_alive(&self) -> bool {
        self.down_for.is_none()
    }

    /// Whether the node may vote in the control plane: `control-plane` and `auto` may,
    /// `worker` never does.
    pub fn is_eligible(&self) -> bool {
        eligible(self.role)
    }
}

/// Whether a node of this role may vote.
pub fn eligible(role: Role) -> bool {
    role != Role::Worker
}

/// The order in which eligible nodes are chosen: nodes that asked to be control planes
/// first, then `auto` ones, each by name. Every node computes the same order from the same
/// view, which is what makes the choices deterministic.
pub fn rank_order(a: (Role, &str), b: (Role, &str)) -> Ordering {
    let preference = |role: Role| u8::from(role != Role::ControlPlane);
    (preference(a.0), a.1).cmp(&(preference(b.0), b.1))
}

/// The alive eligible peers, best first.
pub fn ranked_alive(peers: &[Peer]) -> Vec<&Peer> {
    let mut ranked: Vec<&Peer> = peers
        .iter()
        .filter(|peer| peer.is_alive() && peer.is_eligible())
        .collect();
    ranked.sort_by(|a, b| rank_order((a.role, &a.name), (b.role, &b.name)));
    ranked.dedup_by(|a, b| a.name == b.name);
    ranked
}

/// The voter count for `eligible` eligible nodes when `wanted` (1, 3 or 5) are wanted: as
/// many as possible up to `wanted`, and always odd, because an even count needs a larger
/// majority without surviving more failures.
pub fn voter_count(wanted: usize, eligible: usize) -> usize {
    let count = wanted.min(eligible);
    if count == 0 {
        0
    } else if count.is_multiple_of(2) {
        count - 1
    } else {
        count
    }
}

/// The majority of `voters` voters.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_planes_rank_before_auto_nodes_and_workers_never_rank() {
        let peers = vec![
            Peer::alive("a", Role::Auto),
            Peer::alive("b", Role::Worker),
            Peer::alive("c", Role::ControlPlane),
            Peer {
                down_for: Some(Duration::from_secs(1)),
                ..Peer::alive("0", Role::ControlPlane)
            },
            Peer::alive("d", Role::Auto),
        ];
        let names: Vec<&str> = ranked_alive(&peers)
            .iter()
            .map(|peer| peer.name.as_str())
            .collect();
        assert_eq!(names, ["c", "a", "d"]);
    }

    #[test]
    fn voter_counts_are_odd_and_bounded_by_what_is_wanted() {
        let counts: Vec<usize> = (0..8).map(|eligible| voter_count(3, eligible)).collect();
        assert_eq!(counts, [0, 1, 1, 3, 3, 3, 3, 3]);
        let counts: Vec<usize> = (0..8).map(|eligible| voter_count(5, eligible)).collect();
        assert_eq!(counts, [0, 1, 1, 3, 3, 5, 5, 5]);
        assert_eq!(voter_count(1, 7), 1);
        assert_eq!((quorum(1), quorum(3), quorum(4), quorum(5)), (1, 2, 3, 3));
    }
}
