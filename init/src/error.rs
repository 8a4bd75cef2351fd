//! PID 1's error: what failed, on what, and why, as one line on the console.

use keelson_contract::cmdline::CmdlineError;
use keelson_linux::devmapper::DmError;
use keelson_linux::mounts::MountError;

/// Why a step of PID 1 failed.
#[derive(Debug)]
pub enum InitError {
    /// I/O on a file or device.
    Io {
        /// What was being done, e.g. `reading` or `syncing`.
        doing: &'static str,
        /// The file or device.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A system call.
    Syscall {
        /// The call and its argument, e.g. `chroot /sysroot`.
        call: String,
        /// The errno.
        errno: nix::errno::Errno,
    },
    /// A mount.
    Mount(MountError),
    /// The kernel command line does not describe a bootable slot.
    BootParams(CmdlineError),
    /// Setting up dm-verity for a root partition.
    DeviceMapper {
        /// The partition's label.
        label: &'static str,
        /// The device-mapper failure.
        source: DmError,
    },
    /// The verified root failed verification while it was being used.
    CorruptRoot {
        /// The partition's label.
        label: &'static str,
        /// What failed when the corruption surfaced.
        cause: Box<InitError>,
    },
    /// Something did not appear in time.
    Timeout {
        /// What was waited for, and what to check.
        what: String,
        /// How long.
        seconds: u64,
    },
    /// A disk, partition table or filesystem is not as Keelson laid it out.
    Layout(String),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::Io {
                doing,
                path,
                source,
            } => write!(f, "{doing} {path}: {source}"),
            InitError::Syscall { call, errno } => write!(f, "{call} failed: {}", errno.desc()),
            InitError::Mount(error) => error.fmt(f),
            InitError::BootParams(error) => error.fmt(f),
            InitError::DeviceMapper { label, source } => {
                write!(f, "dm-verity setup for {label} failed: {source}")
            }
            InitError::CorruptRoot { label, cause } => write!(
                f,
                "dm-verity: {label} failed verification (a block does not match the root \
                 hash; the slot is corrupted or tampered with): {cause}"
            ),
            InitError::Timeout { what, seconds } => {
                write!(f, "{what} did not appear within {seconds} s")
            }
            InitError::Layout(reason) => f.write_str(reason),
        }
    }
}

impl From<MountError> for InitError {
    fn from(error: MountError) -> InitError {
        InitError::Mount(error)
    }
}

impl From<CmdlineError> for InitError {
    fn from(error: CmdlineError) -> InitError {
        InitError::BootParams(error)
    }
}

/// A failed system call, named.
pub fn syscall(call: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> InitError {
    let call = call.into();
    move |errno| InitError::Syscall { call, errno }
}

/// Failed I/O on a path, named.
pub fn io(
    doing: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> InitError {
    let path = path.to_string();
    move |source| InitError::Io {
        doing,
        path,
        source,
    }
}
