//! Proof harnesses over Keelson's pure state machines.
//!
//! Each harness is written once with bolero: `cargo test -p keelson-proofs` runs it as a
//! property test with random inputs, and `cargo kani -p keelson-proofs` (where Kani is
//! installed) proves it for every input, because bolero hands its generator to Kani.
//! Inputs are fixed-size arrays rather than vectors so that Kani's unwinding is bounded.
//!
//! What is covered today:
//! * `supervisor`: PID 1's agent supervisor (restart backoff bounds and reset, no restart
//!   after shutdown, kills only ever aimed at the running agent);
//! * `boot_entry`: boot-assessment entry names round-trip and parse exactly what systemd-boot
//!   writes;
//! * `config_source`: the choice of machine-config source;
//! * `access`: the API lets a call through exactly when the caller's role (mutual TLS) or
//!   the maintenance token (maintenance mode, ApplyConfig only) allows it;
//! * `control_plane`: the control plane's voter plan (never a change without a majority in
//!   the old and new voters, only caught-up learners promoted, independent of the view's
//!   order, settling on the desired voters), pod CIDR leases (never overlapping, stable,
//!   refused only when full) and the reboot lock (never more holders than slots).
//!
//! The A/B slot state machine and the update bundle parser join with the update issue.

#![cfg_attr(not(test), allow(unused))]
