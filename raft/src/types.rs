//! openraft's type configuration for Keelson.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node as Raft's membership records it: its name and where its API listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The node's name (its hostname).
    pub name: String,
    /// `host:port` of its mutual-TLS API.
    pub api: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.api)
    }
}

openraft::declare_raft_types!(
    /// The control plane's Raft: the log carries store commands, and applying one answers
    /// with what it did.
    pub ControlPlane:
        D = keelson_store::Command,
        R = Applied,
        NodeId = u64,
        Node = NodeAddr,
        SnapshotData = Cursor<Vec<u8>>,
);

/// What applying one log entry did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// A store command, and its outcome.
    Store(keelson_store::Outcome),
    /// A membership change or a leader's blank entry: nothing in the store.
    Nothing,
}

/// The Raft id of a node: a stable 64-bit hash of its name (FNV-1a), so every node derives
/// the same id for a name without asking anyone. Names are unique in a cluster; two names
/// colliding in 64 bits is not a practical concern at cluster sizes.
pub fn node_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Heartbeats every 150 ms; a follower that hears none for 0.6 to 1.2 s stands for
/// election. On a LAN that finds a dead leader within about a second and a new one within
/// the 3 s, without elections on a busy but healthy network.
pub fn config(cluster: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        // Snapshot (and purge the log behind it) every 5000 entries.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..openraft::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_differ_by_name() {
        assert_eq!(node_id("lab-1"), node_id("lab-1"));
        assert_ne!(node_id("lab-1"), node_id("lab-2"));
        // FNV-1a's published value for the empty string.
        assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
    }
}
