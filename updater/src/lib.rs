//! `keelson-updater`: the update engine, the I/O shell around `keelson_update::slots`.
//!
//! Every decision (may this slot be written, which entry to rename, when to reboot) is the
//! pure machine's; this crate reads the machine's state off the disk, feeds it events and
//! carries out the actions it returns:
//! - [`UpdateEngine::apply`] streams a bundle: the signature and policy are checked from
//!   the header before any slot is touched, then the kernel and initrd go to the ESP and the
//!   root image to the inactive slot's partition, each hashed on the way and read back
//!   after; only then is the slot activated with a counted entry.
//! - [`UpdateEngine::on_boot`] reconciles what happened while the agent was not running (a
//!   write cut by power loss, a trial the loader gave up on) and, when the running slot is
//!   on trial, starts the health gate that blesses it or rolls it back.
//! - [`UpdateEngine::rollback`] and [`UpdateEngine::cancel`] are the operator's levers.
//!
//! `state.json` beside the agent's other state keeps what the ESP cannot: a slot being
//! written, the last error and the version that failed.

//!
//! Modules: [`engine`] (apply, boot reconciliation, health gate, rollback, cancel),
//! [`esp`] (the boot entries and kernels on the ESP), [`reboot`] (when to reboot: at once,
//! in a window, or under a FleetLock), [`channel`] (fetching a signed channel) and
//! [`auto`] (following a channel hands-off).

pub mod auto;
pub mod channel;
pub mod engine;
pub mod esp;
pub mod reboot;

pub use engine::*;
