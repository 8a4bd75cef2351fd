//! Reading a config source with a size bound checked before the read and a deadline on
//! the read itself.
//!
//! A first-boot source can be slow to read (QEMU's fw_cfg is read through an I/O port, a
//! few tens of KiB a second under emulation) or stall (a USB seed that stops answering).
//! Without a bound a 12 MiB Ignition config kept a node silent for minutes; with one, the
//! node says which source was too large, by how much, and enters maintenance mode.

use std::path::Path;
use std::time::Duration;

/// The largest config a first-boot source (fw_cfg, a NoCloud file, a URL) may hand over.
/// Cloud user-data limits are far smaller (16–256 KiB); large files belong behind a
/// `source:` URL, which the config fetches with a limit of its own.
pub const MAX_SOURCE_BYTES: u64 = 1 << 20;

/// The largest saved copy on STATE read at boot: it inlines the files the config fetched,
/// so it may be much larger than the document that arrived.
pub const MAX_SAVED_BYTES: u64 = 64 << 20;

/// How long reading one source may take.
pub const READ_DEADLINE: Duration = Duration::from_secs(60);

/// Why a source could not be read within its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedReadError {
    /// The source says it holds more than the limit; nothing was read.
    TooLarge {
        /// Bytes the source holds.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The read did not finish in time.
    Stalled {
        /// The deadline that passed.
        after: Duration,
    },
    /// The read failed.
    Failed(String),
}

impl std::fmt::Display for BoundedReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundedReadError::TooLarge { size, limit } => write!(
                f,
                "it holds {size} bytes ({}), over the limit of {limit} bytes ({}); move large \
                 files behind a files[].source URL and hand over a smaller config",
                human(*size),
                human(*limit)
            ),
            BoundedReadError::Stalled { after } => write!(
                f,
                "reading it did not finish within {} s; check the device or hand the config \
                 over another way",
                after.as_secs()
            ),
            BoundedReadError::Failed(reason) => f.write_str(reason),
        }
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Checks a declared size against a limit. Pure.
pub fn check_size(size: u64, limit: u64) -> Result<(), BoundedReadError> {
    if size > limit {
        Err(BoundedReadError::TooLarge { size, limit })
    } else {
        Ok(())
    }
}

/// Reads `path` when its size (from `declared_size`, or the file's metadata) is within
/// `limit`, giving up after `deadline`. `Ok(None)` when the file does not exist.
pub fn read(
    path: &Path,
    declared_size: Option<u64>,
    limit: u64,
    deadline: Duration,
) -> Result<Option<Vec<u8>>, BoundedReadError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(BoundedReadError::Failed(format!(
                "{}: {error}",
                path.display()
            )))
        }
    };
    // sysfs files (fw_cfg's raw) report a size of 4096 or 0; their size comes separately.
    check_size(declared_size.unwrap_or(metadata.len()), limit)?;
    let (sender, receiver) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        use std::io::Read;
        // One byte past the limit tells a source that grew after its size was read.
        let result = std::fs::File::open(&owned).and_then(|file| {
            let mut bytes = Vec::new();
            file.take(limit + 1).read_to_end(&mut bytes).map(|_| bytes)
        });
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(deadline) {
        Ok(Ok(bytes)) => {
            check_size(bytes.len() as u64, limit)?;
            Ok(Some(bytes))
        }
        Ok(Err(error)) => Err(BoundedReadError::Failed(format!(
            "{}: {error}",
            path.display()
        ))),
        // The reading thread is left behind; it ends when the read does.
        Err(_) => Err(BoundedReadError::Stalled { after: deadline }),
    }
}

/// The size QEMU's fw_cfg declares for an entry (`…/by_name/<name>/size`).
pub fn fw_cfg_size(entry: &Path) -> Option<u64> {
    std::fs::read_to_string(entry.join("size"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_over_the_limit_is_refused_before_it_is_read() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("user-data");
        std::fs::write(&path, vec![b'x'; 2048]).unwrap();
        let error = read(&path, None, 1024, READ_DEADLINE).unwrap_err();
        assert_eq!(
            error,
            BoundedReadError::TooLarge {
                size: 2048,
                limit: 1024
            }
        );
        assert_eq!(
            error.to_string(),
            "it holds 2048 bytes (2.0 KiB), over the limit of 1024 bytes (1.0 KiB); move large \
             files behind a files[].source URL and hand over a smaller config"
        );
        // A declared size (fw_cfg's) is believed before anything is read.
        assert!(matches!(
            read(&path, Some(12 << 20), MAX_SOURCE_BYTES, READ_DEADLINE),
            Err(BoundedReadError::TooLarge { size, .. }) if size == 12 << 20
        ));
        assert_eq!(
            read(&path, None, 4096, READ_DEADLINE)
                .unwrap()
                .unwrap()
                .len(),
            2048
        );
        assert_eq!(
            read(&directory.path().join("none"), None, 4096, READ_DEADLINE),
            Ok(None)
        );
    }

    #[test]
    fn a_read_that_stalls_ends_at_its_deadline() {
        // A FIFO with no writer blocks open(2) forever: the shape of a stalled device.
        let directory = tempfile::tempdir().unwrap();
        let fifo = directory.path().join("stalled");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let error = read(&fifo, Some(10), 1024, Duration::from_millis(200)).unwrap_err();
        assert_eq!(
            error,
            BoundedReadError::Stalled {
                after: Duration::from_millis(200)
            }
        );
        // Unblock the reader thread so that it ends.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
}
