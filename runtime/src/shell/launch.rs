//! The agent's side of container creation: start container-init for a bundle, hand it the
//! container's standard output and error, and read its report. Blocking; the agent calls
//! it from a blocking task.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::init::Report;

/// The argument that puts the agent's binary into container-init mode.
pub const CONTAINER_INIT: &str = "container-init";

/// The argument that puts the agent's binary into container-exec mode.
pub const CONTAINER_EXEC: &str = "container-exec";

/// A container whose program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launched {
    /// Its first process, in the node's PID namespace.
    pub pid: i32,
    /// That process's start time (names its exit record).
    pub start_time: u64,
}

/// Starts containers by running a binary in container-init mode.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
}

impl Launcher {
    /// Container-init is `program container-init …` (the agent passes its own binary).
    pub fn new(program: impl Into<PathBuf>) -> Launcher {
        Launcher {
            program: program.into(),
        }
    }

    /// The binary it runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Creates the container described in `bundle`; its output goes to `stdout` and
    /// `stderr`, its input is `/dev/null`.
    pub fn launch(
        &self,
        bundle: &Path,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<Launched, String> {
        let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|errno| format!("cannot create a pipe: {}", errno.desc()))?;
        let mut report_read = std::fs::File::from(report_read);
        let report_fd = report_write.as_raw_fd();
        let mut command = Command::new(&self.program);
        command
            .arg(CONTAINER_INIT)
            .arg(bundle)
            .arg("--report-fd")
            .arg(report_fd.to_string())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .current_dir("/");
        // SAFETY: fcntl is async-signal-safe; it lets the report pipe survive the exec.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(report_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|error| {
            format!(
                "cannot start {} {CONTAINER_INIT}: {error}",
                self.program.display()
            )
        })?;
        drop(report_write);
        let mut text = String::new();
        let read = report_read.read_to_string(&mut text);
        let status = child.wait();
        read.map_err(|error| format!("cannot read container-init's report: {error}"))?;
        match serde_json::from_str::<Report>(text.trim()) {
            Ok(Report::Created { pid, start_time }) => Ok(Launched { pid, start_time }),
            Ok(Report::Failed(error)) => Err(error),
            Err(_) => Err(format!(
                "container-init ended ({}) without a report",
                status
                    .map(|status| status.to_string())
                    .unwrap_or_else(|error| error.to_string())
            )),
        }
    }
}
