//! Keelson's A/B update machinery.
//!
//! - [`boot_entry`]: the Boot Loader Specification entries that select a slot and carry
//!   systemd-boot's boot-assessment counter. The image builder writes them; the agent
//!   renames them to bless, fail or prefer a slot.
//! - [`slots`]: the pure two-slot state machine that decides every write, activation,
//!   blessing and rollback, and the invariants that keep a machine bootable.
//! - [`bundle`] and [`keys`]: the signed update bundle, streamed and verified as it is read,
//!   and the Ed25519 keys that sign it and that an image trusts.
//! - [`channel`]: the signed, expiring list of releases that a directory served over HTTP
//!   publishes, and how a node picks the release to move to.
//! - [`window`]: weekly maintenance windows (UTC) that bound when a node may reboot.
//! - [`fleetlock`]: the FleetLock client's decisions (ask, retry, reboot, give back).
//! - [`reconcile`]: reading the slots off the ESP and the update record, and what to do
//!   about the record at boot.
//!
//! Nothing here mounts, opens a device or reboots: the agent does that. So the builder, the
//! agent and the proofs in `kani/` share one definition of what a slot and a bundle are.

pub mod boot_entry;
pub mod bundle;
pub mod channel;
pub mod fleetlock;
pub mod keys;
pub mod reconcile;
pub mod slots;
pub mod window;
