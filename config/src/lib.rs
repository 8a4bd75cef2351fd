//! Keelson's machine configuration: what a node is told on first boot, in whichever format
//! its platform speaks, checked whole before any of it is applied.
//!
//! - [`model`]: the native `keelson.dev/v1alpha1` `MachineConfig` (serde types; the JSON
//!   schema in `config/schema/` is generated from them).
//! - [`ignition`] and [`cloud_init`]: Ignition spec 3 and cloud-init NoCloud documents
//!   (`#cloud-config`, `meta-data`, `network-config` v2) translated into the native form.
//!   Keys Keelson cannot honour become warnings; malformed input becomes errors.
//! - [`plan`]: validation of every value, producing the typed [`plan::Plan`] the agent
//!   applies.
//! - [`load`]: format detection and the whole pipeline, bytes in, `Loaded` or `Rejected`
//!   out. Every [`Diagnostic`] names its source document, field path and reason.
//! - [`manifest`]: pod manifests (JSON, or YAML of several documents), as `keelctl
//!   apply` and the static pod path read them.
//! - [`acquire`]: the pure choice of which source a boot uses.
//! - [`change`]: what replacing the config in force would change: a diff with private keys
//!   redacted, and which sections need a reboot.
//!
//! The crate is pure: no I/O, no clock. The agent reads the sources, hands the bytes here,
//! and applies the plan; `keelctl` uses the same code to write and check configs.

pub mod acquire;
pub mod change;
pub mod cidr;
pub mod cloud_init;
pub mod diagnostic;
pub mod ignition;
pub mod load;
pub mod manifest;
pub mod model;
pub mod native;
pub mod plan;

pub use diagnostic::{Diagnostic, Severity};
pub use load::{detect, load, load_nocloud, Format, Loaded, NoCloudSeed, Rejected};
pub use model::MachineConfig;

/// The JSON schema of [`MachineConfig`], as committed in `config/schema/`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(MachineConfig);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
