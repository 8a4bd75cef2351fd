//! The hand-off of log pipes between the agent and PID 1 (see PID 1's fd store).
//!
//! When a container starts, the agent sends PID 1 the read ends of its stdout and stderr
//! pipes (`FDSTORE=1`, `FDNAME=<run>.stdout`). When the run is over and its pipes drained,
//! it asks PID 1 to drop them (`FDSTOREREMOVE=1`). A restarted agent receives every kept
//! pipe from PID 1 (`LISTEN_FDS`, `LISTEN_FDNAMES`) and reads on.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use keelson_contract::pid1::{LISTEN_FDNAMES_ENV, LISTEN_FDS_ENV};

/// The name a run's pipe is kept under.
pub fn pipe_name(run_id: &str, stream: &str) -> String {
    format!("{run_id}.{stream}")
}

/// Pipes a restarted agent received from PID 1, by name, until a run claims them.
#[derive(Debug, Default)]
pub struct InheritedPipes {
    pipes: Mutex<HashMap<String, OwnedFd>>,
}

impl InheritedPipes {
    /// Takes the descriptors PID 1 passed and removes the variables that named them, so
    /// that no child inherits them.
    ///
    /// # Safety
    ///
    /// Changes the environment: call it before any other thread exists.
    pub unsafe fn take_from_environment() -> InheritedPipes {
        let count: usize = std::env::var(LISTEN_FDS_ENV)
            .ok()
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        let names = std::env::var(LISTEN_FDNAMES_ENV).unwrap_or_default();
        // SAFETY: the caller promises a single thread.
        unsafe {
            std::env::remove_var(LISTEN_FDS_ENV);
            std::env::remove_var(LISTEN_FDNAMES_ENV);
        }
        let mut pipes = HashMap::new();
        for (index, name) in names.split(':').take(count).enumerate() {
            let raw = 3 + index as i32;
            // SAFETY: PID 1 passed `count` descriptors from 3 on, ours alone.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let _ = nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            pipes.insert(name.to_owned(), fd);
        }
        InheritedPipes {
            pipes: Mutex::new(pipes),
        }
    }

    /// The pipe kept under `name`, once.
    pub fn claim(&self, name: &str) -> Option<OwnedFd> {
        self.pipes.lock().ok()?.remove(name)
    }

    /// Names no run claimed (their runs are gone); the caller drops them from PID 1's store.
    pub fn unclaimed(&self) -> Vec<String> {
        self.pipes
            .lock()
            .map(|mut pipes| pipes.drain().map(|(name, _)| name).collect())
            .unwrap_or_default()
    }

    /// How many pipes came from PID 1.
    pub fn len(&self) -> usize {
        self.pipes.lock().map(|pipes| pipes.len()).unwrap_or(0)
    }

    /// True when none did.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Gives PID 1 a copy of `pipe` to keep under `name`. Without PID 1 (a development host)
/// there is no store, and pipes live only as long as the agent.
pub fn keep(name: &str, pipe: &OwnedFd) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let states = [
        sd_notify::NotifyState::FdStore,
        sd_notify::NotifyState::FdName(name),
    ];
    if let Err(error) = sd_notify::notify_with_fds(&states, &[pipe.as_fd()]) {
        tracing::warn!("cannot hand log pipe {name} to PID 1: {error}; its output may be lost if the agent restarts");
    }
}

/// Asks PID 1 to drop the pipe kept under `name`.
pub fn release(name: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let states = [
        sd_notify::NotifyState::FdStoreRemove,
        sd_notify::NotifyState::FdName(name),
    ];
    if let Err(error) = sd_notify::notify(&states) {
        tracing::warn!("cannot ask PID 1 to drop log pipe {name}: {error}");
    }
}
