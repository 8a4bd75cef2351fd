//! The control plane's Raft, on openraft 0.9.
//!
//! - [`types`]: the type configuration (node ids, node addresses, what the log carries and
//!   what applying it answers).
//! - [`log`]: the log on STATE: every append is synced before openraft hears it is done,
//!   the vote and the commit index are replaced atomically, a torn tail left by a power cut
//!   is cut off at start, and purged entries are compacted away.
//! - [`machine`]: the state machine, `keelson_store::Store`, with its snapshots kept on
//!   STATE so that a restarted node resumes from the last one and replays the rest.
//!
//! - [`network`]: openraft's calls as JSON over any transport that carries bytes to a
//!   named node, and the answering side.
//! - [`reconcile`]: the leader's voter upkeep, `keelson_control::voters::plan` applied to
//!   openraft's membership one change at a time.
//!
//! openraft's storage conformance suite runs over the log and the machine in
//! `tests/storage.rs`; `tests/cluster.rs` runs three nodes in one process (formation,
//! replication, failover, a partitioned minority, a restart). The mutual-TLS transport and
//! the control loop that forms the cluster sit above, in the agent.

mod durable;
pub mod log;
pub mod machine;
pub mod network;
pub mod reconcile;
pub mod types;

pub use types::{ControlPlane, NodeAddr};
