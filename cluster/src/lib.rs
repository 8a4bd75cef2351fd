//! Cluster membership (SWIM gossip), and in time the control plane (Raft election and store).
//!
//! Nodes that share a cluster name and secret find each other by gossip. The pieces, from the
//! wire up:
//!
//! - [`seal`]: every datagram is sealed with ChaCha20-Poly1305 under a key derived from the
//!   cluster secret, with a keyring for rotation; strangers, forgeries and replays are
//!   counted and dropped.
//! - [`member`]: the identity SWIM tracks (name, address, generation) and the node
//!   information that travels beside it.
//! - [`suspicion`]: Lifeguard's suspicion times, shortened by independent confirmations.
//! - [`membership`]: the sans-I/O core, foca behind the seal with those confirmations on
//!   top, which the agent's UDP shell drives.
//! - [`sim`]: a deterministic network of those cores, for tests and the gossip benchmark.
//! - [`shell`]: the thin tokio shell that runs one core on a UDP socket for the agent.
//!
//! Everything but the shell is pure: no sockets, no clock, no random source of its own.

pub mod member;
pub mod membership;
pub mod seal;
pub mod shell;
pub mod sim;
pub mod suspicion;

pub use member::{NodeId, NodeInfo};
pub use membership::{Event, GossipConfig, MemberState, MemberView, Membership, Output};
pub use seal::{ClusterKey, Keyring};
