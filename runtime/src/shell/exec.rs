//! Container-exec: a new process in a running container (`keelctl exec`).
//!
//! As with container-init, the agent runs its own binary again
//! (`keelsond container-exec SPEC`), a fresh single-threaded process that
//! 1. checks the container's first process is still the one that started then;
//! 2. joins the container's cgroup, then its IPC, UTS, network, cgroup, PID and mount
//!    namespaces (the mount namespace last: it takes this process into the container's
//!    root);
//! 3. forks (a PID namespace applies to children), and the child takes the container's
//!    limits, working directory, seccomp filter and credentials and executes the command;
//! 4. waits for it and exits with its status (128 + the signal when a signal ended it),
//!    which the agent reports. An error before `execve` is printed on the standard error
//!    and ends with 126, or 127 when the command is not found, as shells do.

use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::WaitStatus;
use nix::unistd::ForkResult;

use super::init::{become_process, execute, seccomp_program};
use crate::spec::ExecSpec;

/// The namespaces an exec'd process joins, in order (see the module's steps).
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Runs container-exec for the spec in `path` (removed once read). Returns the exit code.
pub fn run(path: &Path) -> i32 {
    let spec = std::fs::read(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))
        .and_then(|bytes| {
            serde_json::from_slice::<ExecSpec>(&bytes)
                .map_err(|error| format!("{} is not an exec spec: {error}", path.display()))
        });
    let _ = std::fs::remove_file(path);
    match spec.and_then(|spec| exec(&spec)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            126
        }
    }
}

fn exec(spec: &ExecSpec) -> Result<i32, String> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", spec.pid)).unwrap_or_default();
    if keelson_contract::exits::start_time_in_stat(&stat) != Some(spec.start_time) {
        return Err(format!("container {} is not running", spec.container));
    }
    let namespaces = NAMESPACES
        .iter()
        .map(|(name, flag)| {
            let path = format!("/proc/{}/ns/{name}", spec.pid);
            std::fs::File::open(&path)
                .map(|file| (file, *flag))
                .map_err(|error| format!("cannot open {path}: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::write(spec.cgroup.join("cgroup.procs"), "0").map_err(|error| {
        format!(
            "cannot join the container's cgroup {}: {error}",
            spec.cgroup.display()
        )
    })?;
    for (file, flag) in &namespaces {
        nix::sched::setns(file.as_fd(), *flag).map_err(|errno| {
            format!(
                "cannot join the container's {flag:?} namespace: {}",
                errno.desc()
            )
        })?;
    }
    drop(namespaces);
    let seccomp = seccomp_program(&spec.process)?;
    // SAFETY: this process has a single thread.
    match unsafe { nix::unistd::fork() } {
        Err(errno) => Err(format!("cannot fork: {}", errno.desc())),
        Ok(ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            if spec.terminal {
                // SAFETY: an ioctl on standard input with an integer argument.
                unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
            }
            let error = match become_process(&spec.process, seccomp.as_ref()) {
                Ok(exec) => execute(&spec.process, exec),
                Err(error) => error,
            };
            eprintln!("{error}");
            let code = if error.contains("not found in $PATH") {
                127
            } else {
                126
            };
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => loop {
            match nix::sys::wait::waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(format!("cannot wait for the command: {}", errno.desc())),
            }
        },
    }
}
