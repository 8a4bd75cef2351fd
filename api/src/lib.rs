//! Keelson's gRPC API, shared by the agent (server) and `keelctl` and the tests (clients).
//!
//! The definitions live in `proto/`, versioned by package (`keelson.machine.v1`). The agent
//! serves them on TCP 50000. Mutual TLS, roles and more services (update, pods, cluster)
//! come with later issues; this crate only carries the generated types.

#![allow(missing_docs)] // generated code; the .proto files carry the documentation

/// `keelson.machine.v1`: the machine itself (status, power).
pub mod machine {
    tonic::include_proto!("keelson.machine.v1");
}

/// The TCP port the agent serves the API on.
pub const API_PORT: u16 = 50000;
