//! The agent's file descriptor store, as systemd keeps one for a service (`FDSTORE=1`).
//!
//! The agent sends PID 1 the read end of every container's log pipe. While PID 1 holds a
//! read end the pipe stays open, so a container writing to it never meets a closed reader
//! (no SIGPIPE, no lost line) while the agent is down: its output waits in the pipe. When
//! PID 1 starts the agent again it passes every kept descriptor back (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`), and the agent goes on reading where it stopped.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use keelson_contract::pid1::{NotifyMessage, FD_STORE_LIMIT};

/// Where PID 1 parks the copies it passes to a starting agent, above any descriptor the
/// agent's numbering (3, 4, …) could reach.
const HAND_OVER_BASE: RawFd = 1 << 15;

/// Descriptors kept for the agent, by name.
#[derive(Default)]
pub struct FdStore {
    kept: BTreeMap<String, OwnedFd>,
}

impl FdStore {
    /// Acts on one sd_notify message and the descriptors that came with it.
    pub fn apply(&mut self, message: &NotifyMessage, fds: Vec<OwnedFd>) {
        let name = message
            .fd_name
            .clone()
            .unwrap_or_else(|| "stored".to_owned());
        if message.fd_store_remove {
            self.kept.remove(&name);
        }
        if !message.fd_store {
            return; // descriptors sent without FDSTORE=1 are closed, as systemd does
        }
        let count = fds.len();
        for (index, fd) in fds.into_iter().enumerate() {
            let key = if count == 1 {
                name.clone()
            } else {
                format!("{name}.{index}")
            };
            if self.kept.len() >= FD_STORE_LIMIT && !self.kept.contains_key(&key) {
                crate::warning!(
                    "the agent's descriptor store is full ({FD_STORE_LIMIT}); not keeping {key}"
                );
                continue;
            }
            self.kept.insert(key, fd);
        }
    }

    /// Copies of the kept descriptors parked at high numbers (close-on-exec), with their
    /// names, for [`FdStore::install`] in a starting agent.
    pub fn hand_over(&self) -> Vec<(String, OwnedFd)> {
        let mut copies = Vec::new();
        for (name, fd) in &self.kept {
            match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HAND_OVER_BASE)) {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                Ok(raw) => copies.push((name.clone(), unsafe {
                    <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw)
                })),
                Err(errno) => crate::warning!("cannot pass {name} to the agent: {}", errno.desc()),
            }
        }
        copies
    }

    /// The raw numbers of parked copies, in order, for the child's `pre_exec`.
    pub fn raw_numbers(copies: &[(String, OwnedFd)]) -> Vec<RawFd> {
        copies.iter().map(|(_, fd)| fd.as_raw_fd()).collect()
    }

    /// In the child between fork and exec: moves the parked copies to 3, 4, … (clearing
    /// close-on-exec). Only async-signal-safe calls.
    pub fn install(parked: &[RawFd]) -> std::io::Result<()> {
        for (index, raw) in parked.iter().enumerate() {
            // SAFETY: dup2 on descriptors this process owns; the targets are free or ours.
            if unsafe { libc::dup2(*raw, 3 + index as RawFd) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Raises PID 1's open-file limit so that the store (and everything PID 1 starts) has
/// room: the kernel's default for init is 1024.
pub fn raise_open_file_limit() {
    let limit = libc::rlimit {
        rlim_cur: 65_536,
        rlim_max: 65_536,
    };
    // SAFETY: setrlimit reads a plain struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        crate::warning!(
            "cannot raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
}
