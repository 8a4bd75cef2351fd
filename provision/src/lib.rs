//! `keelson-provision`: the machine config's shell, around the pure `keelson-config`.
//!
//! * [`machine_config`]: find the config among its sources (the copy saved on STATE, QEMU
//!   fw_cfg, a NoCloud seed, a `keelson.config=` URL), translate and validate it whole, and
//!   apply it (hostname, network, files) or enter maintenance mode; `ApplyConfig` later;
//! * [`seed`]: finding and reading NoCloud `cidata` seeds by filesystem label;
//! * [`bounded`]: reading a source with a size bound and a deadline;
//! * [`fetch`]: getting remote documents over HTTP(S);
//! * [`files`]: writing the config's files, directories and links all-or-nothing.
//!
//! The decisions (which source, what a change needs, what is valid) are `keelson-config`'s;
//! this crate performs them.

pub mod bounded;
pub mod fetch;
pub mod files;
pub mod machine_config;
pub mod seed;
