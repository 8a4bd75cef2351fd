//! The runtime's shell: what touches the kernel. [`launch`] runs in the agent and starts
//! [`init`] (container-init) in a fresh single-threaded process, which builds the
//! container with [`rootfs`], [`seccomp`] and [`credentials`] from a spec the agent wrote;
//! [`exec`] (container-exec) runs another process in a running container the same way;
//! [`userns`] gives a container a user namespace of its own; [`sandbox`] makes the
//! namespaces a pod's containers share.

pub mod credentials;
pub mod exec;
pub mod init;
pub mod launch;
pub mod mounts;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod userns;
