//! Mounting with errors that say what was mounted where.

use std::path::Path;

use nix::mount::{mount, MsFlags};

/// A mount that failed: what was being mounted where, and the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountError {
    /// What was being done, e.g. `mounting /dev/dm-0 (squashfs) on /sysroot`.
    pub doing: String,
    /// Why it failed.
    pub reason: String,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.doing, self.reason)
    }
}

impl std::error::Error for MountError {}

/// Mounts `source` of type `fstype` on `target` (created if missing).
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    if let Err(error) = std::fs::create_dir_all(target) {
        // A read-only root already has its mount points; only complain if it is missing.
        if !Path::new(target).is_dir() {
            return Err(MountError {
                doing: format!("creating the mount point {target}"),
                reason: error.to_string(),
            });
        }
    }
    mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| MountError {
        doing: format!("mounting {source} ({fstype}) on {target}"),
        reason: errno.desc().to_owned(),
    })
}

/// Mounts the kernel's own filesystems that stage 1 needs before anything else.
pub fn mount_kernel_filesystems() -> Result<(), MountError> {
    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs("proc", "/proc", "proc", nosuid_noexec_nodev, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid_noexec_nodev, None)?;
    Ok(())
}

/// Moves an existing mount.
pub fn move_mount(from: &str, to: &str) -> Result<(), MountError> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|errno| {
        MountError {
            doing: format!("moving mount {from} to {to}"),
            reason: errno.desc().to_owned(),
        }
    })
}

/// True when `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(this), Ok(up)) => this.dev() != up.dev() || this.ino() == up.ino(),
        _ => false,
    }
}
