//! `keelson-contract`: the contracts between Keelson's parts, as names and pure functions.
//!
//! The image builder writes what PID 1 reads, and PID 1 and the agent speak to each other;
//! each of those agreements lives here once, so that writer and reader cannot drift:
//!
//! * [`cmdline`]: the kernel command line of a slot's boot entry (written by the builder and
//!   the updater, read by stage 1 and the agent), with the kernel's rule for repeated keys;
//! * [`pid1`]: the agent's path, the sd_notify socket and messages, the power signals and
//!   the log prefix;
//! * [`devices`]: the device-mapper names stage 1 gives the verified root;
//! * [`kmod`]: module names and the `modules.dep` load order;
//! * [`trial`]: the trial record the updater leaves for PID 1 when it activates a slot;
//! * [`exits`]: the exit records PID 1 keeps for the containers it reaps, and the log-pipe
//!   names of its fd store ([`pid1`]).
//!
//! Nothing here does I/O; every crate may import it.

pub mod cmdline;
pub mod devices;
pub mod exits;
pub mod kmod;
pub mod pid1;
pub mod trial;
