//! Keelson's container runtime, a library inside the agent as youki's libcontainer is.
//!
//! This first part holds the runtime's pure cores, the decisions that need no kernel:
//! - [`process`]: what a container runs (arguments, environment, working directory, user),
//!   from its image's config and its pod's container, by Kubernetes' rules;
//! - [`resources`]: Kubernetes quantities (`500m`, `64Mi`) and the cgroup v2 values they
//!   become (`cpu.max`, `cpu.weight`, `memory.max`, `memory.swap.max`, `pids.max`);
//! - [`lifecycle`]: a container's states (created, running, stopping, exited) and the
//!   restart decision of its pod's policy, with the kubelet's backoff;
//! - [`passwd`]: a user given by name, resolved in the image's `/etc/passwd` and
//!   `/etc/group`;
//! - [`security`]: the defaults every container gets: containerd's capability set, the
//!   masked and read-only `/proc` and `/sys` paths, the device nodes of its `/dev`.
//!
//! The shell performs what they decide:
//! - [`cgroup`], a container's cgroup v2 under its pod's, with those values;
//! - [`spec`], the container, decided, as the agent hands it to container-init;
//! - [`shell`], container-init (a fresh single-threaded process of the agent's binary)
//!   creates the namespaces, the overlayfs root, `/proc`, `/dev` and `/sys`, applies the
//!   seccomp filter and credentials, and executes the program; the agent's side starts it
//!   and reads its report.

pub mod cgroup;
pub mod lifecycle;
pub mod passwd;
pub mod process;
pub mod resources;
pub mod security;
pub mod shell;
pub mod spec;
