//! A writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! Entries are written as given, with owner root and mtime 0, so the archive is the same
//! for the same inputs and device nodes can be added without root.

use std::io::{self, Write};

/// What an entry is.
#[derive(Debug, Clone)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file with these contents.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// Writes a cpio archive entry by entry.
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter {
            out,
            next_inode: 1,
            written: 0,
        }
    }

    /// Adds `path` (relative, no leading slash) with permission bits `mode`.
    pub fn add(&mut self, path: &str, mode: u32, kind: &EntryKind) -> io::Result<()> {
        let (type_bits, data, rdev): (u32, &[u8], (u32, u32)) = match kind {
            EntryKind::Directory => (0o040000, &[], (0, 0)),
            EntryKind::File(contents) => (0o100000, contents, (0, 0)),
            EntryKind::Symlink(target) => (0o120000, target.as_bytes(), (0, 0)),
            EntryKind::CharDevice { major, minor } => (0o020000, &[], (*major, *minor)),
        };
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if matches!(kind, EntryKind::Directory) {
            2
        } else {
            1
        };
        self.header(
            inode,
            type_bits | (mode & 0o7777),
            nlink,
            data.len() as u32,
            rdev,
            path,
        )?;
        self.write_padded(data)
    }

    fn header(
        &mut self,
        inode: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
        name: &str,
    ) -> io::Result<()> {
        let fields = [
            inode,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        let mut bytes = header.into_bytes();
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        self.write_padded(&bytes)
    }

    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..padding])?;
        self.written += padding as u64;
        Ok(())
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_trailer_ends_the_archive() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.add("dev", 0o755, &EntryKind::Directory).unwrap();
        writer
            .add(
                "dev/console",
                0o600,
                &EntryKind::CharDevice { major: 5, minor: 1 },
            )
            .unwrap();
        writer
            .add("init", 0o755, &EntryKind::File(b"abcde".to_vec()))
            .unwrap();
        let archive = writer.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("dev/console\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's data follows its NUL-terminated name, padded to a multiple of 4.
        let name_at = text.find("init\0").unwrap();
        let data_at = (name_at + "init\0".len()).next_multiple_of(4);
        assert_eq!(&archive[data_at..data_at + 5], b"abcde");
    }

    /// The host's own cpio tool must list what we wrote (where installed).
    #[test]
    fn host_cpio_reads_it() {
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            keelson_testkit::skip(
                "host_cpio_reads_it",
                "cpio is not installed (apt-get install cpio)",
            );
            return;
        }
        let mut writer = CpioWriter::new(Vec::new());
        writer.add("lib", 0o755, &EntryKind::Directory).unwrap();
        writer
            .add("lib/x", 0o644, &EntryKind::File(vec![1; 1001]))
            .unwrap();
        writer
            .add("sbin", 0o777, &EntryKind::Symlink("lib".into()))
            .unwrap();
        let archive = writer.finish().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let output = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            listing.contains("1001") && listing.contains("lib/x"),
            "{listing}"
        );
        assert!(listing.contains("sbin -> lib"), "{listing}");
    }
}
