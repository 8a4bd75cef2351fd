//! Keelson's A/B update machinery.
//!
//! Today this crate holds the Boot Loader Specification entries that select a slot and carry
//! systemd-boot's boot-assessment counter ([`boot_entry`]). The signed bundle format, the
//! pure slot state machine and the slot writer land here with the update issue; the image
//! builder and the agent already share these entry names so that what the builder writes is
//! what the agent will later bless or roll back.

pub mod boot_entry;
