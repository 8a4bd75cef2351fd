//! Who a member is: the identity that SWIM tracks, and the node information that travels
//! beside it.
//!
//! The identity is small on purpose, because it rides in every packet's header: the node's
//! name, its gossip address and a generation. The generation grows each time the agent
//! starts (the shell keeps it on STATE), so a rebooted node's new identity wins over the one
//! the cluster remembers as down, and it rejoins without waiting for the old one to be
//! forgotten. A seed from the config is known only by its address; its identity has
//! generation 0 and loses to the real one as soon as that is heard.
//!
//! Everything else a node tells the cluster about itself (addresses, role, OS version, slot,
//! pod CIDR, API endpoint) is a [`NodeInfo`], versioned by (generation, revision) so that the
//! newest one always wins, however it arrived.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use keelson_config::model::Role;
use serde::{Deserialize, Serialize};

/// A member as SWIM knows it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// The node's name (its hostname); empty for a seed known only by its address.
    pub name: String,
    /// Where it gossips.
    pub addr: SocketAddr,
    /// Grows with every start of the node's agent; 0 for a seed.
    pub generation: u64,
}

impl NodeId {
    /// A node's identity; a generation of 0 (the seeds') is taken as 1.
    pub fn new(name: &str, addr: SocketAddr, generation: u64) -> NodeId {
        NodeId {
            name: name.to_string(),
            addr,
            generation: generation.max(1),
        }
    }

    /// A seed from the config: an address to announce to, whose name is not known yet.
    pub fn seed(addr: SocketAddr) -> NodeId {
        NodeId {
            name: String::new(),
            addr,
            generation: 0,
        }
    }

    /// Whether this is a seed's placeholder rather than a node's own identity.
    pub fn is_seed(&self) -> bool {
        self.generation == 0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_seed() {
            write!(formatter, "seed {}", self.addr)
        } else {
            write!(formatter, "{}@{}#{}", self.name, self.addr, self.generation)
        }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    /// Declared down while alive (a partition that healed, a pause): come back at once under
    /// the next generation, which wins over the one the cluster holds as down.
    fn renew(&self) -> Option<NodeId> {
        Some(NodeId {
            generation: self.generation.saturating_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &NodeId) -> bool {
        self.generation > adversary.generation
    }
}

/// What a node tells the cluster about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name, as in its identity.
    pub name: String,
    /// The generation of the identity that published this.
    pub generation: u64,
    /// Counts this node's changes to its information within one generation.
    pub revision: u64,
    /// The node's own addresses.
    pub addresses: Vec<IpAddr>,
    /// What the node may become in the control plane.
    pub role: Role,
    /// The Keelson release the node runs.
    pub os_version: String,
    /// The slot the node booted: `a` or `b`.
    pub slot: String,
    /// The pod CIDR the node's bridge holds, once it has one.
    pub pod_cidr: Option<String>,
    /// Where the node's API listens (`host:port`).
    pub api_endpoint: String,
}

impl NodeInfo {
    /// Which of two infos of one node is newer: higher is newer.
    pub fn version(&self) -> (u64, u64) {
        (self.generation, self.revision)
    }

    /// The bytes that carry this information in a packet.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("node information always serializes")
    }

    /// Information from the bytes that [`NodeInfo::encode`] made.
    pub fn decode(bytes: &[u8]) -> Result<NodeInfo, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 7946))
    }

    #[test]
    fn a_restarted_node_wins_over_its_old_identity_and_over_its_seed() {
        let before = NodeId::new("n1", addr(1), 7);
        let after = NodeId::new("n1", addr(1), 8);
        assert!(after.win_addr_conflict(&before));
        assert!(!before.win_addr_conflict(&after));
        let seed = NodeId::seed(addr(1));
        assert!(before.win_addr_conflict(&seed));
        assert_eq!(before.renew().unwrap(), after);
        assert_eq!(before.addr(), seed.addr());
        assert_eq!(
            NodeId::new("n1", addr(1), 0).generation,
            1,
            "0 is the seeds'"
        );
    }

    #[test]
    fn node_information_survives_its_encoding() {
        let info = NodeInfo {
            name: "n1".into(),
            generation: 3,
            revision: 2,
            addresses: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            role: Role::ControlPlane,
            os_version: "0.1.0".into(),
            slot: "b".into(),
            pod_cidr: Some("10.244.3.0/24".into()),
            api_endpoint: "10.0.0.1:50000".into(),
        };
        assert_eq!(NodeInfo::decode(&info.encode()).unwrap(), info);
        assert!(NodeInfo::decode(&info.encode()[..5]).is_err());
    }
}
