//! The node's NAT for pods, as a pure plan: masquerade for pod traffic that leaves the
//! pod CIDR, and a DNAT per `hostPort` (traffic to one of the node's own addresses on that
//! port goes to the pod). [`NatPlan::rules`] turns it into nf_tables expressions, which
//! [`crate::nft`] sends to the kernel in one transaction.
//!
//! The table it owns, `ip keelson`:
//!
//! ```text
//! table ip keelson {
//!     chain prerouting  { type nat hook prerouting priority dstnat; ... hostPort DNATs }
//!     chain output      { type nat hook output priority dstnat; ... the same, for the node's own traffic }
//!     chain postrouting { type nat hook postrouting priority srcnat;
//!                         ip saddr POD-CIDR ip daddr != POD-CIDR masquerade }
//! }
//! ```

use std::net::Ipv4Addr;

use crate::ipam::PodCidr;

/// The table's name.
pub const TABLE: &str = "keelson";

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// Kubernetes' name for it (`TCP`, `UDP`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// The protocol Kubernetes names so.
    pub fn parse(name: &str) -> Option<Protocol> {
        match name {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// A `hostPort`: the node's port that leads to a pod's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortMapping {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The node's port.
    pub host_port: u16,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The pod's port (`containerPort`).
    pub pod_port: u16,
}

/// Everything the table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPlan {
    /// The pods' addresses.
    pub pod_cidr: PodCidr,
    /// The hostPorts, in any order.
    pub ports: Vec<PortMapping>,
}

/// A chain of the table, with its hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Incoming packets, before routing (`dstnat`, -100).
    Prerouting,
    /// Packets the node itself sends (`dstnat`, -100).
    Output,
    /// Packets leaving, after routing (`srcnat`, 100).
    Postrouting,
}

impl Chain {
    /// Every chain, in the order they are made.
    pub const ALL: [Chain; 3] = [Chain::Prerouting, Chain::Output, Chain::Postrouting];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
            Chain::Postrouting => "postrouting",
        }
    }

    /// Its netfilter hook (`NF_INET_*`).
    pub fn hook(self) -> u32 {
        match self {
            Chain::Prerouting => 0,
            Chain::Output => 3,
            Chain::Postrouting => 4,
        }
    }

    /// Its priority.
    pub fn priority(self) -> i32 {
        match self {
            Chain::Prerouting | Chain::Output => -100,
            Chain::Postrouting => 100,
        }
    }
}

/// Where a payload is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The IP header.
    Network,
    /// The TCP or UDP header.
    Transport,
}

/// One nf_tables expression, on the registers `nft` itself uses (1 and 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `len` bytes at `offset` of `base` into register 1.
    Payload {
        /// Header.
        base: Base,
        /// Offset in it.
        offset: u32,
        /// Bytes.
        len: u32,
    },
    /// Register 1 &= `mask`.
    Mask(Vec<u8>),
    /// Register 1 == (or, with `equal: false`, !=) `data`, else the rule stops.
    Compare {
        /// Equal or not.
        equal: bool,
        /// The bytes compared.
        data: Vec<u8>,
    },
    /// Load the layer-4 protocol number into register 1.
    L4Protocol,
    /// Load the kind of the destination address (`RTN_*`, as the routing table says) into
    /// register 1.
    DestinationAddressType,
    /// Put `data` into register `register`.
    Immediate {
        /// 1 or 2.
        register: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Masquerade: the source becomes the outgoing link's address.
    Masquerade,
    /// DNAT to the address in register 1 and the port in register 2.
    Dnat,
}

/// `RTN_LOCAL`: an address of the node itself.
pub const RTN_LOCAL: u32 = 2;

impl NatPlan {
    /// Every rule, by chain, in order.
    pub fn rules(&self) -> Vec<(Chain, Vec<Expr>)> {
        let mut rules = Vec::new();
        let mut ports = self.ports.clone();
        ports.sort();
        ports.dedup_by_key(|port| (port.protocol, port.host_port));
        for port in &ports {
            for chain in [Chain::Prerouting, Chain::Output] {
                rules.push((chain, dnat(port)));
            }
        }
        let network = self.pod_cidr.network().octets().to_vec();
        let mask = prefix_mask(self.pod_cidr.prefix()).to_vec();
        let address_in_cidr = |offset: u32, equal: bool| {
            [
                Expr::Payload {
                    base: Base::Network,
                    offset,
                    len: 4,
                },
                Expr::Mask(mask.clone()),
                Expr::Compare {
                    equal,
                    data: network.clone(),
                },
            ]
        };
        let mut masquerade = Vec::new();
        // The IPv4 header: source at 12, destination at 16.
        masquerade.extend(address_in_cidr(12, true));
        masquerade.extend(address_in_cidr(16, false));
        masquerade.push(Expr::Masquerade);
        rules.push((Chain::Postrouting, masquerade));
        rules
    }
}

/// `fib daddr type local <proto> dport HOST dnat to POD:PORT`.
fn dnat(port: &PortMapping) -> Vec<Expr> {
    vec![
        Expr::DestinationAddressType,
        Expr::Compare {
            equal: true,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
        Expr::L4Protocol,
        Expr::Compare {
            equal: true,
            data: vec![port.protocol.number()],
        },
        // The destination port: bytes 2-3 of both TCP's and UDP's header.
        Expr::Payload {
            base: Base::Transport,
            offset: 2,
            len: 2,
        },
        Expr::Compare {
            equal: true,
            data: port.host_port.to_be_bytes().to_vec(),
        },
        Expr::Immediate {
            register: 1,
            data: port.pod_ip.octets().to_vec(),
        },
        Expr::Immediate {
            register: 2,
            data: port.pod_port.to_be_bytes().to_vec(),
        },
        Expr::Dnat,
    ]
}

fn prefix_mask(prefix: u8) -> [u8; 4] {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    bits.to_be_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_traffic_leaving_the_cidr_is_masqueraded_and_host_ports_lead_to_pods() {
        let plan = NatPlan {
            pod_cidr: PodCidr::parse("10.244.0.0/24").unwrap(),
            ports: vec![
                PortMapping {
                    protocol: Protocol::Udp,
                    host_port: 53,
                    pod_ip: Ipv4Addr::new(10, 244, 0, 9),
                    pod_port: 5353,
                },
                PortMapping {
                    protocol: Protocol::Tcp,
                    host_port: 8080,
                    pod_ip: Ipv4Addr::new(10, 244, 0, 2),
                    pod_port: 80,
                },
            ],
        };
        let rules = plan.rules();
        let chains: Vec<Chain> = rules.iter().map(|(chain, _)| *chain).collect();
        assert_eq!(
            chains,
            [
                Chain::Prerouting,
                Chain::Output,
                Chain::Prerouting,
                Chain::Output,
                Chain::Postrouting
            ]
        );
        // TCP sorts first.
        assert!(rules[0].1.contains(&Expr::Compare {
            equal: true,
            data: vec![0x1f, 0x90]
        }));
        assert!(rules[0].1.contains(&Expr::Immediate {
            register: 1,
            data: vec![10, 244, 0, 2]
        }));
        let masquerade = &rules[4].1;
        assert_eq!(masquerade[1], Expr::Mask(vec![255, 255, 255, 0]));
        assert_eq!(
            masquerade[5],
            Expr::Compare {
                equal: false,
                data: vec![10, 244, 0, 0]
            }
        );
        assert_eq!(masquerade.last(), Some(&Expr::Masquerade));
    }
}
