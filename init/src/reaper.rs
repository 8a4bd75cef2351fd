//! Reaping, and the exit records that hand a container's status to the agent.
//!
//! Containers are orphans by design (no shim stays behind as their parent), so PID 1 reaps
//! them. For each exited child PID 1 first peeks (`WNOWAIT`) to read its start time while
//! its `/proc` entry still exists, then reaps it, then writes the record the agent looks
//! for (`keelson_contract::exits`). Records for processes that were never containers are
//! never claimed; the oldest go once there are too many.

use std::path::Path;

use keelson_contract::exits::{self, ExitStatus, EXITS_DIR, MAX_EXIT_RECORDS};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Reaps every child that has exited; returns their pids and how they ended.
pub fn reap_children() -> Vec<(i32, String)> {
    let mut reaped = Vec::new();
    loop {
        let peeked = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peeked {
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => continue,
        };
        let start_time = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| exits::start_time_in_stat(&stat));
        let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::Exited(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => ExitStatus::Signaled(signal as i32),
            _ => continue,
        };
        if let Some(start_time) = start_time {
            record_exit(pid, start_time, status);
        }
        let how = match status {
            ExitStatus::Exited(code) => format!("exited with status {code}"),
            ExitStatus::Signaled(number) => match nix::sys::signal::Signal::try_from(number) {
                Ok(signal) => format!("was killed by {signal}"),
                Err(_) => format!("was killed by signal {number}"),
            },
        };
        reaped.push((pid.as_raw(), how));
    }
}

/// Writes the exit record of `pid` (complete or not at all: written aside, then renamed).
fn record_exit(pid: Pid, start_time: u64, status: ExitStatus) {
    let directory = Path::new(EXITS_DIR);
    if std::fs::create_dir_all(directory).is_err() {
        return;
    }
    prune(directory);
    let name = exits::record_name(pid.as_raw(), start_time);
    let partial = directory.join(format!(".{name}"));
    let written = std::fs::write(&partial, status.to_string())
        .and_then(|()| std::fs::rename(&partial, directory.join(&name)));
    if let Err(error) = written {
        crate::warning!("cannot record the exit of process {pid} in {EXITS_DIR}: {error}");
    }
}

/// Keeps the directory below its bound by removing the oldest records.
fn prune(directory: &Path) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let mut records: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    if records.len() < MAX_EXIT_RECORDS {
        return;
    }
    records.sort();
    for (_, path) in records.iter().take(records.len() + 1 - MAX_EXIT_RECORDS) {
        let _ = std::fs::remove_file(path);
    }
}
