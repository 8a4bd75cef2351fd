//! Pod CIDR leases: each node's own block of the cluster's pod network.
//!
//! The cluster's network (`cluster.podCIDR`, default 10.244.0.0/16) is cut into blocks of
//! `cluster.nodeCIDRMaskSize` (default /24). A node's lease is keyed by its name, so a node
//! that reboots, or is down for a while, finds its block where it left it; only deleting
//! the node frees the block. New leases take the lowest free block, so the same history of
//! requests gives the same leases on every replica of the store.
//!
//! The leases themselves live in the replicated store; this is the decision over them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// The cluster's pod network and the size of each node's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodNetwork {
    network: u32,
    prefix: u8,
    block_prefix: u8,
}

impl PodNetwork {
    /// The network `network/prefix` cut into blocks of `/block_prefix`; `None` unless
    /// `prefix <= block_prefix <= 32` and the network has no host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8, block_prefix: u8) -> Option<PodNetwork> {
        if prefix > block_prefix || block_prefix > 32 {
            return None;
        }
        let bits = u32::from(network);
        if bits & !mask(prefix) != 0 {
            return None;
        }
        Some(PodNetwork {
            network: bits,
            prefix,
            block_prefix,
        })
    }

    /// The network a cluster's config gives (`cluster.podCIDR`, `cluster.nodeCIDRMaskSize`),
    /// or why it cannot be cut (the config's checker refuses the same).
    pub fn of_cluster(cluster: &keelson_config::model::Cluster) -> Result<PodNetwork, String> {
        let (network, prefix) = keelson_config::cidr::parse_cluster_cidr(cluster.pod_cidr())
            .map_err(|reason| format!("cluster.podCIDR: {reason}"))?;
        let block_prefix = cluster.node_cidr_mask_size();
        PodNetwork::new(network, prefix, block_prefix).ok_or_else(|| {
            format!(
                "cluster.nodeCIDRMaskSize: /{block_prefix} is wider than the cluster's {}",
                cluster.pod_cidr()
            )
        })
    }

    /// How many blocks the network holds.
    pub fn blocks(&self) -> u64 {
        1u64 << (self.block_prefix - self.prefix)
    }

    /// Block number `index`.
    pub fn block(&self, index: u32) -> Option<Block> {
        if u64::from(index) >= self.blocks() {
            return None;
        }
        let size = 1u64 << (32 - self.block_prefix);
        let start = u64::from(self.network) + u64::from(index) * size;
        Some(Block {
            network: Ipv4Addr::from(start as u32),
            prefix: self.block_prefix,
        })
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// One node's block, as the kubelet takes it (`a.b.c.d/n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    /// Its first address.
    pub network: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl Block {
    /// Whether two blocks share any address.
    pub fn overlaps(&self, other: &Block) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let m = mask(shorter);
        u32::from(self.network) & m == u32::from(other.network) & m
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why no lease was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Every block is leased.
    Exhausted {
        /// How many blocks the network has.
        blocks: u64,
    },
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Exhausted { blocks } => write!(
                f,
                "all {blocks} pod CIDR blocks are leased: delete nodes that are gone \
                 (keelctl delete node NAME) or give cluster.podCIDR a shorter prefix"
            ),
        }
    }
}

impl std::error::Error for LeaseError {}

/// The leases of a cluster: block number by node name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Leases {
    network: PodNetwork,
    by_node: BTreeMap<String, u32>,
}

impl Leases {
    /// No leases yet.
    pub fn new(network: PodNetwork) -> Leases {
        Leases {
            network,
            by_node: BTreeMap::new(),
        }
    }

    /// The block `node` holds, if any.
    pub fn of(&self, node: &str) -> Option<Block> {
        self.by_node
            .get(node)
            .and_then(|index| self.network.block(*index))
    }

    /// The block of `node`: the one it holds, else the lowest free one, now leased to it.
    pub fn lease(&mut self, node: &str) -> Result<Block, LeaseError> {
        if let Some(block) = self.of(node) {
            return Ok(block);
        }
        let taken: std::collections::BTreeSet<u32> = self.by_node.values().copied().collect();
        let free = (0..self.network.blocks())
            .map(|index| index as u32)
            .find(|index| !taken.contains(index))
            .ok_or(LeaseError::Exhausted {
                blocks: self.network.blocks(),
            })?;
        self.by_node.insert(node.to_owned(), free);
        Ok(self.network.block(free).expect("a free index is in range"))
    }

    /// Takes back a lease read from the store (block number `index` held by `node`);
    /// refuses (false) a block outside the network or held by another node, which a
    /// changed `cluster.podCIDR` can leave behind.
    pub fn hold(&mut self, node: &str, index: u32) -> bool {
        let taken = self
            .by_node
            .iter()
            .any(|(holder, held)| *held == index && holder != node);
        if taken || self.network.block(index).is_none() {
            return false;
        }
        self.by_node.insert(node.to_owned(), index);
        true
    }

    /// The block number of `node`'s lease.
    pub fn index_of(&self, node: &str) -> Option<u32> {
        self.by_node.get(node).copied()
    }

    /// Frees the block of a deleted node; returns it.
    pub fn release(&mut self, node: &str) -> Option<Block> {
        let block = self.of(node);
        self.by_node.remove(node);
        block
    }

    /// Every lease, by node name.
    pub fn all(&self) -> impl Iterator<Item = (&str, Block)> + '_ {
        self.by_node.iter().filter_map(|(node, index)| {
            self.network
                .block(*index)
                .map(|block| (node.as_str(), block))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_read_back_are_held_and_a_clash_is_refused() {
        let network = PodNetwork::new(Ipv4Addr::new(10, 244, 0, 0), 16, 24).unwrap();
        let mut leases = Leases::new(network);
        assert!(leases.hold("b", 1));
        assert!(!leases.hold("c", 1), "block 1 is b's");
        assert!(!leases.hold("c", 256), "outside a /16 of /24s");
        assert_eq!(leases.lease("a").unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(leases.lease("c").unwrap().to_string(), "10.244.2.0/24");
        assert_eq!(leases.index_of("b"), Some(1));
    }

    fn default_network() -> PodNetwork {
        PodNetwork::new(Ipv4Addr::new(10, 244, 0, 0), 16, 24).unwrap()
    }

    #[test]
    fn nodes_lease_the_lowest_free_block_and_keep_it() {
        let mut leases = Leases::new(default_network());
        assert_eq!(leases.lease("a").unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(leases.lease("b").unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(leases.lease("a").unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(leases.release("a").unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(leases.lease("c").unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(leases.of("b").unwrap().to_string(), "10.244.1.0/24");
    }

    #[test]
    fn a_full_network_says_how_to_make_room() {
        let network = PodNetwork::new(Ipv4Addr::new(10, 0, 0, 0), 23, 24).unwrap();
        let mut leases = Leases::new(network);
        leases.lease("a").unwrap();
        assert_eq!(leases.lease("b").unwrap().to_string(), "10.0.1.0/24");
        let error = leases.lease("c").unwrap_err();
        assert_eq!(error, LeaseError::Exhausted { blocks: 2 });
        assert!(error.to_string().contains("keelctl delete node"));
    }

    #[test]
    fn the_default_cluster_gives_256_blocks_of_24() {
        let cluster = keelson_config::model::Cluster::new("lab", "s".repeat(32));
        let network = PodNetwork::of_cluster(&cluster).unwrap();
        assert_eq!(network, default_network());
        assert_eq!(network.blocks(), 256);
    }

    #[test]
    fn networks_that_cannot_be_cut_are_refused() {
        assert!(PodNetwork::new(Ipv4Addr::new(10, 244, 0, 0), 24, 16).is_none());
        assert!(PodNetwork::new(Ipv4Addr::new(10, 244, 1, 0), 16, 24).is_none());
        assert!(PodNetwork::new(Ipv4Addr::new(10, 244, 0, 0), 16, 33).is_none());
        let whole = PodNetwork::new(Ipv4Addr::new(0, 0, 0, 0), 0, 32).unwrap();
        assert_eq!(whole.blocks(), 1 << 32);
        assert_eq!(
            whole.block(u32::MAX).unwrap().to_string(),
            "255.255.255.255/32"
        );
    }
}
