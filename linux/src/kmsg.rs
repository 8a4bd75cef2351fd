//! Reading the kernel log from `/dev/kmsg`, for `Machine.Dmesg` and the `init` service's
//! log (PID 1 writes its lines there with the `keelson-init:` prefix).
//!
//! Each `read(2)` on /dev/kmsg returns one record, `PRI,SEQ,USEC,FLAGS;MESSAGE\n`, and
//! fails with EAGAIN (non-blocking) once the reader is at the end, or EPIPE when records
//! it had not read yet were overwritten. Following waits for readability with tokio.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The kernel's sequence number.
    pub sequence: u64,
    /// Microseconds since boot.
    pub uptime_micros: u64,
    /// Syslog facility (0 is the kernel; PID 1's lines are user, 1).
    pub facility: u32,
    /// Syslog level, 0 (emerg) … 7 (debug).
    pub level: u8,
    /// The text.
    pub message: String,
}

/// The syslog name of a level.
pub fn level_name(level: u8) -> &'static str {
    match level {
        0 => "emerg",
        1 => "alert",
        2 => "crit",
        3 => "err",
        4 => "warning",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

/// Parses one record as /dev/kmsg returns it; `None` for text that is not one.
pub fn parse(record: &str) -> Option<Record> {
    let (header, message) = record.split_once(';')?;
    let mut fields = header.split(',');
    let priority: u32 = fields.next()?.parse().ok()?;
    let sequence = fields.next()?.parse().ok()?;
    let uptime_micros = fields.next()?.parse().ok()?;
    // Continuation lines (" KEY=VALUE", device metadata) follow the first newline.
    let message = message.split('\n').next().unwrap_or_default();
    Some(Record {
        sequence,
        uptime_micros,
        facility: priority >> 3,
        level: (priority & 7) as u8,
        message: unescape(message),
    })
}

/// The kernel escapes unprintable bytes as `\xNN`.
fn unescape(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'\\' && bytes.get(index + 1) == Some(&b'x') {
            if let Some(value) = text
                .get(index + 2..index + 4)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(value);
                index += 4;
                continue;
            }
        }
        out.push(byte);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An open reader positioned at the oldest record the kernel still holds.
pub struct KernelLog {
    file: AsyncFd<std::fs::File>,
    buffer: Vec<u8>,
}

impl KernelLog {
    /// Opens `/dev/kmsg` (or another path in tests) for reading.
    pub fn open(path: &Path) -> std::io::Result<KernelLog> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        // SAFETY: the descriptor is the File's own; the AsyncFd owns the File, so it stays
        // open and the same for the AsyncFd's whole life.
        let file = unsafe { AsyncFd::register_with_interest(file, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(KernelLog {
            file,
            // A record is at most 8 KiB (PRINTK_MESSAGE_MAX plus the header).
            buffer: vec![0; 16 * 1024],
        })
    }

    /// The next record already in the log, or `None` at its end.
    pub fn next_now(&mut self) -> std::io::Result<Option<Record>> {
        loop {
            match self.file.get_ref().read(&mut self.buffer) {
                Ok(0) => return Ok(None),
                Ok(length) => {
                    let read = self.buffer.get(..length).unwrap_or_default();
                    let text = String::from_utf8_lossy(read);
                    if let Some(record) = parse(&text) {
                        return Ok(Some(record));
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                // Records were overwritten before we read them: carry on from the oldest.
                Err(error) if error.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Waits for the next record.
    pub async fn next(&mut self) -> std::io::Result<Record> {
        loop {
            if let Some(record) = self.next_now()? {
                return Ok(record);
            }
            let mut ready = self.file.readable().await?;
            ready.clear_ready();
        }
    }

    /// Every record already in the log, keeping the last `tail` (all when 0) of those
    /// `keep` accepts.
    pub fn drain(
        &mut self,
        tail: usize,
        keep: impl Fn(&Record) -> bool,
    ) -> std::io::Result<Vec<Record>> {
        let mut records = std::collections::VecDeque::new();
        while let Some(record) = self.next_now()? {
            if !keep(&record) {
                continue;
            }
            if tail != 0 && records.len() == tail {
                records.pop_front();
            }
            records.push_back(record);
        }
        Ok(records.into())
    }
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "KernelLog(fd {})",
            self.file.get_ref().as_raw_fd()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn records_are_parsed_with_their_level_facility_and_text() {
        let record = parse("13,742,2083461,-;keelson-init: starting keelsond\n").unwrap();
        assert_eq!(record.sequence, 742);
        assert_eq!(record.uptime_micros, 2_083_461);
        assert_eq!(record.facility, 1);
        assert_eq!(level_name(record.level), "notice");
        assert_eq!(record.message, "keelson-init: starting keelsond");
        let with_metadata = parse(
            "6,339,5140900,-,caller=T1;virtio_net virtio0 eth0: renamed\\x09x\n SUBSYSTEM=net\n",
        )
        .unwrap();
        assert_eq!(with_metadata.message, "virtio_net virtio0 eth0: renamed\tx");
        assert_eq!(with_metadata.facility, 0);
        assert_eq!(parse("not a record"), None);
    }
}
