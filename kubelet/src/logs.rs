//! Container logs in the CRI format, as the kubelet keeps them under `/var/log/pods`:
//! `<RFC 3339 time> <stdout|stderr> <F|P> <text>`, one file per run
//! (`<namespace>_<pod>_<uid>/<container>/<run>.log`). A line longer than 16 KiB is split
//! into partial (`P`) pieces ended by a full (`F`) one, as containerd splits them.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;

/// The longest piece written as one log line.
pub const MAX_LINE: usize = 16 * 1024;

/// Where a pod's logs live.
pub fn pod_log_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

/// The log file of one run.
pub fn run_log(pod_dir: &Path, container: &str, run: u32) -> PathBuf {
    pod_dir.join(container).join(format!("{run}.log"))
}

/// One run's log file, shared by its stdout and stderr copiers.
#[derive(Debug, Clone)]
pub struct LogWriter {
    file: Arc<Mutex<std::fs::File>>,
}

impl LogWriter {
    /// Opens (appending) or creates `path`.
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogWriter {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Writes one CRI line: `full` ends the line, a partial piece does not.
    pub fn write(&self, stream: &str, text: &[u8], full: bool) {
        let mut line = format!("{} {stream} {} ", now(), if full { 'F' } else { 'P' }).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        if let Ok(mut file) = self.file.lock() {
            if let Err(error) = file.write_all(&line) {
                tracing::warn!("cannot write a container log line: {error}");
            }
        }
    }
}

/// The current time as CRI writes it (RFC 3339, nanoseconds, UTC).
fn now() -> k8s_openapi::jiff::Timestamp {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    k8s_openapi::jiff::Timestamp::new(elapsed.as_secs() as i64, elapsed.subsec_nanos() as i32)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// Copies a container's output pipe into `log` until every writer has closed it (the
/// container has exited). If the agent stops first, what is unread stays in the pipe,
/// which PID 1 keeps open, for the next agent.
pub async fn copy(pipe: OwnedFd, stream: &'static str, log: LogWriter) -> std::io::Result<()> {
    set_nonblocking(&pipe)?;
    // SAFETY: the descriptor is owned by the AsyncFd, which deregisters it before closing.
    let pipe = unsafe { AsyncFd::register(pipe) }.map_err(std::io::Error::from)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let mut guard = pipe.readable().await?;
        let read = guard.try_io(|fd| {
            nix::unistd::read(fd.get_ref(), &mut buffer).map_err(std::io::Error::from)
        });
        let count = match read {
            Err(_would_block) => continue,
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(error)) => return Err(error),
            Ok(Ok(count)) => count,
        };
        if count == 0 {
            if !pending.is_empty() {
                log.write(stream, &pending, true);
            }
            return Ok(());
        }
        pending.extend_from_slice(buffer.get(..count).unwrap_or_default());
        let mut start = 0;
        while let Some(offset) = pending
            .get(start..)
            .and_then(|rest| rest.iter().position(|byte| *byte == b'\n'))
        {
            let end = start + offset;
            write_line(&log, stream, pending.get(start..end).unwrap_or_default());
            start = end + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            let piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
            log.write(stream, &piece, false);
        }
    }
}

/// One complete line: pieces of [`MAX_LINE`], all partial but the last.
fn write_line(log: &LogWriter, stream: &str, line: &[u8]) {
    if line.is_empty() {
        log.write(stream, b"", true);
        return;
    }
    let pieces = line.len().div_ceil(MAX_LINE);
    for (index, piece) in line.chunks(MAX_LINE).enumerate() {
        log.write(stream, piece, index + 1 == pieces);
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// One parsed CRI line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The RFC 3339 time.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// The line is complete (`F`), not a partial piece (`P`).
    pub full: bool,
    /// The text.
    pub text: &'a [u8],
}

/// Parses one CRI line (without its newline).
pub fn parse_line(line: &[u8]) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, |byte| *byte == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(LogLine {
        time,
        stream,
        full: tag == b"F",
        text,
    })
}

/// What `kubectl logs` prints for a log file's contents: the texts, pieces joined,
/// the last `tail` lines only when asked, each prefixed by its time with `timestamps`.
pub fn render(contents: &[u8], tail: Option<usize>, timestamps: bool) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for raw in contents
        .split(|byte| *byte == b'\n')
        .filter(|raw| !raw.is_empty())
    {
        let Some(line) = parse_line(raw) else {
            continue;
        };
        let text = current.get_or_insert_with(|| {
            if timestamps {
                format!("{} ", line.time).into_bytes()
            } else {
                Vec::new()
            }
        });
        text.extend_from_slice(line.text);
        if line.full {
            let mut finished = current.take().unwrap_or_default();
            finished.push(b'\n');
            lines.push(finished);
        }
    }
    if let Some(partial) = current {
        lines.push(partial);
    }
    let skip = tail
        .map(|tail| lines.len().saturating_sub(tail))
        .unwrap_or(0);
    lines.into_iter().skip(skip).flatten().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_becomes_cri_lines_and_reads_back_as_kubectl_prints_it() {
        let directory = tempfile::tempdir().unwrap();
        let path = run_log(directory.path(), "app", 0);
        let log = LogWriter::open(&path).unwrap();
        let (read, write) = nix::unistd::pipe().unwrap();
        let copier = tokio::spawn(copy(read, "stdout", log));
        let long = "x".repeat(MAX_LINE + 10);
        let mut writer = std::fs::File::from(write);
        writer
            .write_all(format!("one\n\ntwo {long}\nthree, unfinished").as_bytes())
            .unwrap();
        drop(writer);
        copier.await.unwrap().unwrap();

        let contents = std::fs::read(&path).unwrap();
        let lines: Vec<LogLine> = contents
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| parse_line(line).unwrap())
            .collect();
        let tags: Vec<bool> = lines.iter().map(|line| line.full).collect();
        assert_eq!(tags, [true, true, false, true, true]);
        assert!(lines
            .iter()
            .all(|line| line.stream == "stdout" && line.time.ends_with('Z')));
        let rendered = String::from_utf8(render(&contents, None, false)).unwrap();
        assert_eq!(rendered, format!("one\n\ntwo {long}\nthree, unfinished\n"));
        let tail = String::from_utf8(render(&contents, Some(1), false)).unwrap();
        assert_eq!(tail, "three, unfinished\n");
        let stamped = String::from_utf8(render(&contents, Some(1), true)).unwrap();
        assert!(
            stamped.ends_with("Z three, unfinished\n") && stamped.starts_with("20"),
            "{stamped}"
        );
    }
}
