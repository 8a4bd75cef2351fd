//! The cluster's replicated store, as a deterministic state machine.
//!
//! Raft (the control plane's log) orders [`Command`]s; every replica applies them in that
//! order with [`Store::apply`] and ends in the same state. The store holds Kubernetes-style
//! objects (JSON with `apiVersion`, `kind` and `metadata`), so that `keelctl get -o json`
//! shows what kubectl users know:
//!
//! - the store, not the writer, fills `metadata.uid`, `metadata.resourceVersion` and
//!   `metadata.creationTimestamp`; the resourceVersion is the log index of the write
//!   (as etcd's revision is), so it grows with every write and orders them all;
//! - an update or delete that names a resourceVersion succeeds only if the object still
//!   has it (optimistic concurrency, as the Kubernetes API does);
//! - every write is an [`Event`] in a bounded history, from which watches are served:
//!   a watcher resumes from the resourceVersion it last saw, or is told to list again
//!   when that version has left the history (Kubernetes' 410 Gone).
//!
//! Nothing here reads a clock: the leader stamps each command with its time, and that
//! stamp, never the replica's clock, becomes `creationTimestamp`.

pub mod key;
pub mod store;

pub use key::{Key, KindRef};
pub use store::{Command, Event, EventType, Expired, Op, Outcome, Refusal, Store};
