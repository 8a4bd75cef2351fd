//! The durable write: replace a file so that a power cut leaves the old contents or the
//! new ones, never a mix and never nothing.
//!
//! Write a staging file beside the target, `fsync` it, `rename` it over the target, then
//! `fsync` the directory: without that last step ext4 may forget the rename while keeping
//! the data. The staging file is `.<name>.new` in the same directory, so that it is on the
//! same filesystem (rename is atomic only there) and hidden from directory scans that skip
//! dot files (the boot loader, the image store).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A durable write that failed: which step, on which path.
#[derive(Debug)]
pub struct DurableWriteError {
    /// What was being done: "creating", "writing", "syncing", "renaming to".
    pub step: &'static str,
    /// The file or directory involved.
    pub path: PathBuf,
    /// The error.
    pub source: std::io::Error,
}

impl std::fmt::Display for DurableWriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.step, self.path.display(), self.source)
    }
}

impl std::error::Error for DurableWriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The staging path the durable write uses for `path`.
pub fn staging_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.new"))
}

/// Replaces `path` with `bytes` durably, creating its directory if needed.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), DurableWriteError> {
    let fail = |step: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DurableWriteError { step, path, source }
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(fail("creating", parent))?;
    let staging = staging_path(path);
    let mut file = File::create(&staging).map_err(fail("creating", &staging))?;
    file.write_all(bytes).map_err(fail("writing", &staging))?;
    file.sync_all().map_err(fail("syncing", &staging))?;
    drop(file);
    std::fs::rename(&staging, path).map_err(fail("renaming to", path))?;
    sync_directory(parent)
}

/// Syncs a directory, so that the renames and creations in it survive a power cut.
pub fn sync_directory(directory: &Path) -> Result<(), DurableWriteError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| DurableWriteError {
            step: "syncing",
            path: directory.to_path_buf(),
            source,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_staging_file() {
        let directory =
            std::env::temp_dir().join(format!("keelson-durable-{}", std::process::id()));
        let path = directory.join("sub/record.json");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!staging_path(&path).exists());
        assert_eq!(staging_path(&path), directory.join("sub/.record.json.new"));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_failure_names_the_step_and_the_path() {
        let error = write(Path::new("/proc/version/x"), b"x").unwrap_err();
        assert_eq!(error.step, "creating");
        assert!(
            error.to_string().starts_with("creating /proc/version"),
            "{error}"
        );
    }
}
