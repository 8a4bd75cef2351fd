//! `keelson-net`: the node's networking.
//!
//! * [`node`]: the rtnetlink shell that puts a `NetworkPlan` in force: links up, MTU,
//!   static addresses and routes, a DHCP client per interface, and the resolver file;
//! * [`dhcp`]: the DHCPv4 client as a pure state machine (RFC 2131 selecting, requesting,
//!   bound, renewing, rebinding, expiry), with message building and reply parsing;
//! * [`dhcp_socket`]: the client's socket and timer loop;
//! * [`ipam`]: pod addresses from the node's pod CIDR, a pure allocator;
//! * [`nat`]: the pods' masquerade and hostPort DNATs, a pure plan, which [`nft`] puts in
//!   force over nf_tables netlink.
//!
//! * [`podnet`]: the pods' bridge and veth pairs.
//!
//! Everything goes through netlink; nothing shells out to `ip` or `nft`. VXLAN between
//! nodes comes with the cluster.
//!
//! Known limits: IPv4 DHCP only (IPv6 addresses and routes may be static).

pub mod dhcp;
pub mod dhcp_socket;
pub mod ipam;
pub mod nat;
pub mod nft;
pub mod node;
pub mod podnet;
