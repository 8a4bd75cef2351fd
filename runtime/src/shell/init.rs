//! Container-init: the single-threaded process that creates one container.
//!
//! The agent runs a tokio runtime with several threads, and a multi-threaded process must
//! not fork and then do real work (another thread may hold a lock the child needs). So the
//! agent starts its own binary again as `keelsond container-init BUNDLE --report-fd N`,
//! as runc starts `runc init`: a fresh process with one thread, which
//! 1. reads the bundle's spec;
//! 2. joins the container's cgroup (everything it forks is born there);
//! 3. creates the container's user namespace when it has one ([`super::userns`]), and
//!    unshares the PID namespace;
//! 4. forks the container's first process (PID 1 of the new PID namespace), which
//!    joins its pod's namespaces (network, IPC, UTS) and unshares the mount and cgroup
//!    namespaces and whichever of the others the pod does not share, builds
//!    the root ([`super::rootfs`]), sets the hostname and limits, joins the user namespace,
//!    sets the working directory, seccomp filter and credentials, and executes the program;
//! 5. waits until that process has executed its program or failed (a close-on-exec pipe
//!    tells which), reports `{pid, start time}` or the error on the report descriptor,
//!    and exits.
//!
//! Exiting orphans the container on purpose: PID 1 adopts and reaps it and keeps its exit
//! status (`keelson_contract::exits`), so no process of the runtime stays behind as a
//! shim and the container outlives any restart of the agent.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

use crate::spec::{ContainerSpec, NetworkMode, Process, SeccompProfile};

/// What container-init reports to the agent: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// The container runs its program.
    Created {
        /// Its first process, in the node's PID namespace.
        pid: i32,
        /// That process's start time (for its exit record).
        start_time: u64,
    },
    /// It could not be created; nothing of it runs.
    Failed(String),
}

/// Runs container-init for `bundle`, reporting on `report_fd`. Returns the exit code.
pub fn run(bundle: &Path, report_fd: i32) -> i32 {
    // SAFETY: the agent passed this descriptor open for this purpose; it is owned here.
    let report_fd = unsafe { OwnedFd::from_raw_fd(report_fd) };
    // The container's process must not inherit it.
    let _ = nix::fcntl::fcntl(
        &report_fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let report = match create(bundle) {
        Ok((pid, start_time)) => Report::Created { pid, start_time },
        Err(error) => Report::Failed(error),
    };
    let code = i32::from(matches!(report, Report::Failed(_)));
    let mut line = serde_json::to_vec(&report).unwrap_or_default();
    line.push(b'\n');
    let _ = std::fs::File::from(report_fd).write_all(&line);
    code
}

fn create(bundle: &Path) -> Result<(i32, u64), String> {
    let spec = ContainerSpec::read(bundle)?;
    let procs = spec.cgroup.join("cgroup.procs");
    std::fs::write(&procs, "0").map_err(|error| {
        format!(
            "cannot join the container's cgroup {}: {error}",
            spec.cgroup.display()
        )
    })?;
    // Made before the PID namespace, so that its helper process is not the namespace's
    // first process.
    let user_namespace = spec
        .user_namespace
        .as_ref()
        .map(super::userns::create)
        .transpose()?;
    // The PID namespace applies to children, so it is made here; the child makes the rest
    // itself, so that this process keeps the node's /proc to read the child's start time.
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|errno| {
        format!(
            "cannot create the container's PID namespace: {}",
            errno.desc()
        )
    })?;
    // Everything the child needs from the heap is prepared before the fork.
    let seccomp = seccomp_program(&spec.process)?;
    let (errors_read, errors_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| format!("cannot create a pipe: {}", errno.desc()))?;
    // SAFETY: this process has a single thread (container-init never starts another).
    match unsafe { nix::unistd::fork() } {
        Err(errno) => Err(format!(
            "cannot fork the container's process: {}",
            errno.desc()
        )),
        Ok(ForkResult::Child) => {
            drop(errors_read);
            let error = become_container(&spec, seccomp.as_ref(), user_namespace.as_ref());
            let _ = std::fs::File::from(errors_write).write_all(error.as_bytes());
            // SAFETY: leave at once, running no destructors of the parent's state.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(errors_write);
            let mut error = String::new();
            let _ = std::fs::File::from(errors_read).read_to_string(&mut error);
            if !error.is_empty() {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(error);
            }
            // The child is still ours (a zombie at worst), so its /proc entry is there.
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map_err(|error| format!("cannot read the container's start time: {error}"))?;
            let start_time = keelson_contract::exits::start_time_in_stat(&stat)
                .ok_or_else(|| "cannot read the container's start time".to_owned())?;
            Ok((child.as_raw(), start_time))
        }
    }
}

/// In the forked child: everything up to `execve`. Returns only with an error.
fn become_container(
    spec: &ContainerSpec,
    seccomp: Option<&seccompiler::BpfProgram>,
    user_namespace: Option<&OwnedFd>,
) -> String {
    match prepare(spec, seccomp, user_namespace) {
        Ok(exec) => execute(&spec.process, exec),
        Err(error) => error,
    }
}

/// Executes the prepared program; returns only with the error.
pub fn execute(process: &Process, (program, args, env): Exec) -> String {
    let errno = nix::unistd::execve(&program, &args, &env).unwrap_err();
    format!(
        "cannot execute {:?}: {}",
        process.args.first().map(String::as_str).unwrap_or(""),
        errno.desc()
    )
}

/// A program, its arguments and its environment, ready for `execve`.
pub type Exec = (CString, Vec<CString>, Vec<CString>);

fn prepare(
    spec: &ContainerSpec,
    seccomp: Option<&seccompiler::BpfProgram>,
    user_namespace: Option<&OwnedFd>,
) -> Result<Exec, String> {
    let _ = nix::unistd::setsid();
    // The pod's namespaces first, then the container's own.
    let shared = &spec.shared;
    let joined = [
        (&shared.network, CloneFlags::CLONE_NEWNET, "network"),
        (&shared.ipc, CloneFlags::CLONE_NEWIPC, "IPC"),
        (&shared.uts, CloneFlags::CLONE_NEWUTS, "UTS"),
    ];
    let mut namespaces = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP;
    for (path, flag, kind) in joined {
        match path {
            Some(path) => join(path, flag, kind)?,
            None if flag == CloneFlags::CLONE_NEWNET && spec.network == NetworkMode::Host => {}
            None => namespaces |= flag,
        }
    }
    nix::sched::unshare(namespaces)
        .map_err(|errno| format!("cannot create the container's namespaces: {}", errno.desc()))?;
    if namespaces.contains(CloneFlags::CLONE_NEWNET) {
        super::rootfs::loopback_up()?;
        if user_namespace.is_some() {
            super::userns::open_network_to_unprivileged()?;
        }
    }
    super::rootfs::enter(spec, user_namespace)?;
    if namespaces.contains(CloneFlags::CLONE_NEWUTS) {
        nix::unistd::sethostname(&spec.hostname).map_err(|errno| {
            format!(
                "cannot set the hostname {:?}: {}",
                spec.hostname,
                errno.desc()
            )
        })?;
    }
    become_process(&spec.process, seccomp, user_namespace)
}

/// Joins the pod's namespace of `kind` pinned at `path`.
fn join(path: &Path, flag: CloneFlags, kind: &str) -> Result<(), String> {
    let namespace = std::fs::File::open(path).map_err(|error| {
        format!(
            "cannot open the pod's {kind} namespace {}: {error} (its sandbox is gone)",
            path.display()
        )
    })?;
    nix::sched::setns(namespace, flag).map_err(|errno| {
        format!(
            "cannot join the pod's {kind} namespace {}: {}",
            path.display(),
            errno.desc()
        )
    })
}

/// The steps every process in a container takes last, its first or an exec'd one: limits,
/// the user namespace (limits first: raising one needs the node's privilege), working
/// directory, seccomp filter, credentials. Returns what to execute.
pub fn become_process(
    process: &Process,
    seccomp: Option<&seccompiler::BpfProgram>,
    user_namespace: Option<impl AsFd>,
) -> Result<Exec, String> {
    for limit in &process.rlimits {
        let value = libc::rlimit {
            rlim_cur: limit.soft,
            rlim_max: limit.hard,
        };
        // SAFETY: setrlimit reads a plain struct.
        if unsafe { libc::setrlimit(limit.resource as _, &value) } != 0 {
            return Err(format!(
                "cannot set rlimit {}: {}",
                limit.resource,
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(namespace) = user_namespace {
        super::userns::enter(namespace)?;
    }
    std::fs::create_dir_all(&process.cwd)
        .and_then(|()| std::env::set_current_dir(&process.cwd))
        .map_err(|error| {
            format!(
                "cannot enter the working directory {}: {error}",
                process.cwd
            )
        })?;
    let program = process.program(Path::new("/"))?;
    let program = c_string(program.as_os_str().as_bytes())?;
    let args = process
        .args
        .iter()
        .map(|arg| c_string(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let env = process
        .env
        .iter()
        .map(|entry| c_string(entry.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(program) = seccomp {
        super::seccomp::install(program)?;
    }
    super::credentials::apply(process)?;
    Ok((program, args, env))
}

/// The seccomp program a process's profile asks for.
pub fn seccomp_program(process: &Process) -> Result<Option<seccompiler::BpfProgram>, String> {
    match process.seccomp {
        SeccompProfile::RuntimeDefault => super::seccomp::default_program().map(Some),
        SeccompProfile::Unconfined => Ok(None),
    }
}

fn c_string(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes)
        .map_err(|_| format!("{:?} holds a NUL byte", String::from_utf8_lossy(bytes)))
}
