//! Pod addresses from the node's pod CIDR. Pure: no I/O, no clock.
//!
//! The node's pod CIDR (from the config, or leased by the cluster) is carved as the
//! kubelet's bridge plugin and `host-local` IPAM carve it: the network address and the
//! broadcast address are never given, the first host address is the bridge's (the pods'
//! gateway), and every other address goes to at most one pod.
//!
//! Addresses are given round-robin from the last one given, as `host-local` does, so that a
//! freed address is not handed to the next pod at once (a peer's ARP cache or conntrack
//! entry for the old pod would otherwise reach the new one).
//!
//! The allocator keeps no file of its own: each pod's address is kept with the pod on
//! STATE, and the shell rebuilds the allocator from the kept pods with [`Ipam::restore`]
//! after an agent restart or a reboot. A restored set that claims an address twice, or one
//! outside the CIDR, is refused pod by pod rather than trusted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 pod CIDR such as `10.244.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    network: u32,
    prefix: u8,
}

impl Default for PodCidr {
    /// The config's default (`keelson_config::model::DEFAULT_POD_CIDR`), 10.244.0.0/24.
    fn default() -> PodCidr {
        PodCidr {
            network: u32::from(Ipv4Addr::new(10, 244, 0, 0)),
            prefix: 24,
        }
    }
}

impl PodCidr {
    /// Reads `a.b.c.d/n`, refusing host bits and prefixes outside /16../30.
    pub fn parse(text: &str) -> Result<PodCidr, IpamError> {
        let (address, prefix) =
            keelson_config::cidr::parse_pod_cidr(text).map_err(|reason| IpamError::BadCidr {
                text: text.to_owned(),
                reason,
            })?;
        Ok(PodCidr {
            network: u32::from(address),
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's address, the pods' gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network | !mask(self.prefix))
    }

    /// How many pods can hold an address at once.
    pub fn capacity(&self) -> u32 {
        self.size() - 3
    }

    /// True when `address` is one a pod may hold: inside, and neither the network, the
    /// gateway nor the broadcast address.
    pub fn is_pod_address(&self, address: Ipv4Addr) -> bool {
        self.offset_of(address).is_some()
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The pod address at `offset` (0..capacity).
    fn address_at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 2 + offset)
    }

    fn offset_of(&self, address: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(address).checked_sub(self.network + 2)?;
        (offset < self.capacity()).then_some(offset)
    }
}

impl fmt::Display for PodCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Why an address cannot be given or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamError {
    /// The CIDR's text is not a pod CIDR.
    BadCidr {
        /// As written.
        text: String,
        /// Why not.
        reason: String,
    },
    /// Every pod address is held.
    Exhausted {
        /// The CIDR.
        cidr: PodCidr,
    },
    /// A kept address is not a pod address of the CIDR (the CIDR changed, say).
    Outside {
        /// The address.
        address: Ipv4Addr,
        /// The CIDR.
        cidr: PodCidr,
    },
    /// A kept address is another pod's already.
    Taken {
        /// The address.
        address: Ipv4Addr,
        /// Its holder, as the caller names owners.
        holder: String,
    },
}

impl fmt::Display for IpamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpamError::BadCidr { text, reason } => {
                write!(f, "the pod CIDR {text:?} cannot be used: {reason}")
            }
            IpamError::Exhausted { cidr } => write!(
                f,
                "the pod CIDR {cidr} has no free address: its {} pod addresses are all held; \
                 delete a pod, or give the node a wider pod CIDR",
                cidr.capacity()
            ),
            IpamError::Outside { address, cidr } => write!(
                f,
                "{address} is not a pod address of the pod CIDR {cidr} (the CIDR changed?); \
                 the pod gets a new address"
            ),
            IpamError::Taken { address, holder } => write!(
                f,
                "{address} is held by {holder} already; the pod gets a new address"
            ),
        }
    }
}

impl std::error::Error for IpamError {}

/// The pod addresses of one node: who holds which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipam<Owner: Ord + Clone> {
    cidr: PodCidr,
    by_owner: BTreeMap<Owner, Ipv4Addr>,
    by_address: BTreeMap<Ipv4Addr, Owner>,
    /// Offset of the address given last; the next search starts after it.
    last_given: Option<u32>,
}

impl<Owner: Ord + Clone + fmt::Display> Ipam<Owner> {
    /// An allocator with nothing given.
    pub fn new(cidr: PodCidr) -> Ipam<Owner> {
        Ipam {
            cidr,
            by_owner: BTreeMap::new(),
            by_address: BTreeMap::new(),
            last_given: None,
        }
    }

    /// Rebuilds the allocator from the addresses kept with the pods. Each refused claim
    /// (outside the CIDR, or an address already claimed, or a second address for one
    /// owner) is returned with its owner, who should be given a new address.
    pub fn restore(
        cidr: PodCidr,
        kept: impl IntoIterator<Item = (Owner, Ipv4Addr)>,
    ) -> (Ipam<Owner>, Vec<(Owner, IpamError)>) {
        let mut ipam = Ipam::new(cidr);
        let mut refused = Vec::new();
        for (owner, address) in kept {
            match ipam.claim(owner.clone(), address) {
                Ok(()) => {}
                Err(error) => refused.push((owner, error)),
            }
        }
        // Go on after the highest address held, as if it had been given last.
        ipam.last_given = ipam
            .by_address
            .keys()
            .next_back()
            .and_then(|address| cidr.offset_of(*address));
        (ipam, refused)
    }

    fn claim(&mut self, owner: Owner, address: Ipv4Addr) -> Result<(), IpamError> {
        if !self.cidr.is_pod_address(address) {
            return Err(IpamError::Outside {
                address,
                cidr: self.cidr,
            });
        }
        if let Some(holder) = self.by_address.get(&address) {
            return Err(IpamError::Taken {
                address,
                holder: holder.to_string(),
            });
        }
        if let Some(held) = self.by_owner.get(&owner) {
            return Err(IpamError::Taken {
                address: *held,
                holder: format!("{owner} (which holds {held}, one address per pod)"),
            });
        }
        self.by_owner.insert(owner.clone(), address);
        self.by_address.insert(address, owner);
        Ok(())
    }

    /// The CIDR.
    pub fn cidr(&self) -> PodCidr {
        self.cidr
    }

    /// Gives `owner` an address: the one it holds already, else the next free one after
    /// the address given last.
    pub fn allocate(&mut self, owner: &Owner) -> Result<Ipv4Addr, IpamError> {
        if let Some(address) = self.by_owner.get(owner) {
            return Ok(*address);
        }
        let capacity = self.cidr.capacity();
        let start = self.last_given.map_or(0, |last| (last + 1) % capacity);
        let free = (0..capacity)
            .map(|step| (start + step) % capacity)
            .find(|offset| !self.by_address.contains_key(&self.cidr.address_at(*offset)))
            .ok_or(IpamError::Exhausted { cidr: self.cidr })?;
        let address = self.cidr.address_at(free);
        self.by_owner.insert(owner.clone(), address);
        self.by_address.insert(address, owner.clone());
        self.last_given = Some(free);
        Ok(address)
    }

    /// Frees what `owner` holds; returns the address.
    pub fn release(&mut self, owner: &Owner) -> Option<Ipv4Addr> {
        let address = self.by_owner.remove(owner)?;
        self.by_address.remove(&address);
        Some(address)
    }

    /// The address `owner` holds.
    pub fn address_of(&self, owner: &Owner) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).copied()
    }

    /// Who holds which address, by owner.
    pub fn assignments(&self) -> impl Iterator<Item = (&Owner, Ipv4Addr)> {
        self.by_owner
            .iter()
            .map(|(owner, address)| (owner, *address))
    }

    /// How many addresses are held.
    pub fn held(&self) -> usize {
        self.by_owner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> PodCidr {
        PodCidr::parse(text).unwrap()
    }

    #[test]
    fn a_cidr_is_carved_as_the_bridge_plugin_carves_it() {
        let node = cidr("10.244.3.0/24");
        assert_eq!(node.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(node.broadcast(), Ipv4Addr::new(10, 244, 3, 255));
        assert_eq!(node.capacity(), 253);
        assert!(!node.is_pod_address(node.network()));
        assert!(!node.is_pod_address(node.gateway()));
        assert!(!node.is_pod_address(node.broadcast()));
        assert!(node.is_pod_address(Ipv4Addr::new(10, 244, 3, 2)));
        assert!(node.is_pod_address(Ipv4Addr::new(10, 244, 3, 254)));
        assert!(!node.is_pod_address(Ipv4Addr::new(10, 244, 4, 2)));
        assert_eq!(node.to_string(), "10.244.3.0/24");
    }

    #[test]
    fn the_default_is_the_configs_default() {
        assert_eq!(
            PodCidr::default(),
            cidr(keelson_config::model::DEFAULT_POD_CIDR)
        );
    }

    #[test]
    fn bad_cidrs_say_what_is_wrong() {
        let message = |text: &str| PodCidr::parse(text).unwrap_err().to_string();
        assert!(message("10.244.3.7/24").contains("did you mean 10.244.3.0/24?"));
        assert!(message("10.244.0.0").contains("no /prefix"));
        assert!(message("10.0.0.0/8").contains("/16 to /30"));
        assert!(message("10.0.0.0/31").contains("/16 to /30"));
        assert!(message("fd00::/64").contains("not an IPv4 address"));
    }

    #[test]
    fn addresses_go_round_robin_and_a_pod_keeps_its_own() {
        let mut ipam = Ipam::new(cidr("10.244.0.0/29"));
        let a = ipam.allocate(&"a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(
            ipam.allocate(&"a").unwrap(),
            a,
            "asking again changes nothing"
        );
        let b = ipam.allocate(&"b").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 0, 3));
        assert_eq!(ipam.release(&"a"), Some(a));
        // The freed .2 waits its turn: .4 comes next.
        assert_eq!(ipam.allocate(&"c").unwrap(), Ipv4Addr::new(10, 244, 0, 4));
        for owner in ["d", "e"] {
            ipam.allocate(&owner).unwrap();
        }
        // .5 and .6 went to d and e; the search wraps to the freed .2.
        assert_eq!(ipam.address_of(&"e"), Some(Ipv4Addr::new(10, 244, 0, 6)));
        assert_eq!(ipam.allocate(&"f").unwrap(), a);
        let full = ipam.allocate(&"g").unwrap_err();
        assert_eq!(full.to_string(), "the pod CIDR 10.244.0.0/29 has no free address: its 5 pod addresses are all held; delete a pod, or give the node a wider pod CIDR");
    }

    #[test]
    fn a_restore_keeps_what_pods_held_and_refuses_what_cannot_be_true() {
        let node = cidr("10.244.0.0/24");
        let kept = [
            ("web", Ipv4Addr::new(10, 244, 0, 7)),
            ("db", Ipv4Addr::new(10, 244, 0, 7)),
            ("old", Ipv4Addr::new(10, 245, 0, 9)),
            ("gw", node.gateway()),
            ("api", Ipv4Addr::new(10, 244, 0, 3)),
        ];
        let (mut ipam, refused) = Ipam::restore(node, kept);
        assert_eq!(ipam.address_of(&"web"), Some(Ipv4Addr::new(10, 244, 0, 7)));
        assert_eq!(ipam.address_of(&"api"), Some(Ipv4Addr::new(10, 244, 0, 3)));
        let refused: Vec<(&str, String)> = refused
            .into_iter()
            .map(|(owner, error)| (owner, error.to_string()))
            .collect();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert_eq!(refused[0].0, "db");
        assert!(refused[0].1.contains("10.244.0.7 is held by web"));
        assert!(refused[1]
            .1
            .contains("not a pod address of the pod CIDR 10.244.0.0/24"));
        assert_eq!(refused[2].0, "gw");
        // The next address follows the highest one held.
        assert_eq!(ipam.allocate(&"db").unwrap(), Ipv4Addr::new(10, 244, 0, 8));
    }
}
