//! Container-exec: a new process in a running container (`keelctl exec`).
//!
//! As with container-init, the agent runs its own binary again
//! (`keelsond container-exec SPEC`), a fresh single-threaded process that
//! 1. checks the container's first process is still the one that started then;
//! 2. joins the container's cgroup, then its IPC, UTS, network, cgroup, PID and mount
//!    namespaces (the mount namespace last: it takes this process into the container's
//!    root);
//! 3. with a terminal asked for, opens one from the container's own `/dev/ptmx`, hands
//!    its slave to the command's user, and sends the master back on its standard input,
//!    a Unix socket (as runc's console socket), so the command's `tty` is a
//!    `/dev/pts/N` the container itself has;
//! 4. forks (a PID namespace applies to children), and the child takes the container's
//!    limits, joins its user namespace if it has one (as its first process does, after
//!    the limits), and takes its working directory, seccomp filter and credentials and
//!    executes the command;
//! 5. waits for it and exits with its status (128 + the signal when a signal ended it),
//!    which the agent reports. An error before `execve` is printed on the standard error
//!    and ends with 126, or 127 when the command is not found, as shells do.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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

/// Opens a terminal from the container's `/dev/ptmx` (this process is in its mount
/// namespace), gives its slave to `owner` (a node id), sends the master on standard input
/// (a Unix socket) and returns the slave.
fn open_terminal(owner: u32) -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|errno| format!("cannot open the container's /dev/ptmx: {}", errno.desc()))?;
    nix::pty::grantpt(&master)
        .and_then(|()| nix::pty::unlockpt(&master))
        .map_err(|errno| format!("cannot unlock a terminal: {}", errno.desc()))?;
    let name = nix::pty::ptsname_r(&master)
        .map_err(|errno| format!("cannot name the terminal: {}", errno.desc()))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| format!("cannot open {name}: {}", errno.desc()))?;
    nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(owner)), None)
        .map_err(|errno| format!("cannot give {name} to its user: {}", errno.desc()))?;
    let master_fd = [master.as_raw_fd()];
    let message = [std::io::IoSlice::new(b"t")];
    nix::sys::socket::sendmsg::<()>(
        0,
        &message,
        &[nix::sys::socket::ControlMessage::ScmRights(&master_fd)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|errno| format!("cannot hand the terminal to the agent: {}", errno.desc()))?;
    Ok(slave)
}

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
    // Opened now: once in the container's mount namespace, /proc is the container's.
    let user_namespace = super::userns::of_process(spec.pid)?;
    let uid_map = std::fs::read_to_string(format!("/proc/{}/uid_map", spec.pid))
        .map_err(|error| format!("cannot read the container's uid_map: {error}"))?;
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
    let terminal = if spec.terminal {
        let owner = super::userns::host_id(&uid_map, spec.process.uid)
            .ok_or_else(|| format!("user {} has no id on the node", spec.process.uid))?;
        Some(open_terminal(owner)?)
    } else {
        None
    };
    let seccomp = seccomp_program(&spec.process)?;
    // SAFETY: this process has a single thread.
    match unsafe { nix::unistd::fork() } {
        Err(errno) => Err(format!("cannot fork: {}", errno.desc())),
        Ok(ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            if let Some(slave) = &terminal {
                let _ = nix::unistd::dup2_stdin(slave);
                let _ = nix::unistd::dup2_stdout(slave);
                let _ = nix::unistd::dup2_stderr(slave);
                // SAFETY: an ioctl on standard input with an integer argument.
                unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
            }
            let error = match become_process(&spec.process, seccomp.as_ref(), user_namespace) {
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
        Ok(ForkResult::Parent { child }) => {
            // Only the command holds the terminal: it ends when the command's side closes.
            drop(terminal);
            loop {
                match nix::sys::wait::waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(errno) => {
                        return Err(format!("cannot wait for the command: {}", errno.desc()))
                    }
                }
            }
        }
    }
}
