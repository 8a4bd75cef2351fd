//! The control plane's decisions, as pure code.
//!
//! A Keelson cluster has no bootstrap step: nodes that share a cluster name and secret find
//! each other by gossip (`keelson-cluster`), and from what gossip shows they decide, each on
//! its own, everything that forming and running a control plane needs. This crate holds
//! those decisions; the Raft shell and the replicated store build on them.
//!
//! - [`peer`]: a node as the decisions see it (name, role, how long it has been down), and
//!   the one order in which control-plane-eligible nodes are ranked.
//! - [`formation`]: which single node initialises the cluster, and with which voters. Nodes
//!   grant their support to one candidate at a time, durably, so two candidates whose voter
//!   sets share a node can never both initialise.
//! - [`voters`]: once the cluster exists, how its voter set follows the gossip view: 1, 3 or 5
//!   voters, learners promoted, dead voters replaced, never a change that costs the quorum.
//! - [`podcidr`]: the pod CIDR lease of every node, carved from the cluster's pod network,
//!   stable for a node's name.
//! - [`rebootlock`]: the built-in FleetLock server's counting semaphore per group.
//!
//! Nothing here reads a clock, draws a random number or does I/O: time comes in as
//! durations, messages and durable records go out as values for the shell to send and
//! write. `tests/models.rs` checks formation and the reboot lock with stateright, and
//! `keelson-proofs` holds the bolero harnesses.

pub mod formation;
pub mod peer;
pub mod podcidr;
pub mod rebootlock;
pub mod voters;

pub use peer::Peer;
