//! Container logs in the CRI format, as the kubelet keeps them under `/var/log/pods`:
//! `<RFC 3339 time> <stdout|stderr> <F|P> <text>`, one file per run
//! (`<namespace>_<pod>_<uid>/<container>/<run>.log`). A line longer than 16 KiB is split
//! into partial (`P`) pieces ended by a full (`F`) one, as containerd splits them.
//!
//! Rotation, as the kubelet's `containerLogMaxSize` and `containerLogMaxFiles`: when a
//! line would take a run's file past the size limit, the file is renamed
//! `<run>.log.<seconds>.<nanoseconds>` and a new one begun; the oldest rotated files go
//! so that a run keeps at most `max_files` files. Only the current and the previous run's
//! logs are kept (`logs` and `logs --previous`), as the kubelet keeps one dead container.
//! [`read_run`] reads a run's files in order and [`Follower`] follows a run's log through
//! its rotations.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
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

/// How large a run's log grows and how many files it keeps (the kubelet's
/// `containerLogMaxSize` and `containerLogMaxFiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes in one file before it is rotated.
    pub max_size: u64,
    /// Files of one run, the one being written included (at least 2).
    pub max_files: usize,
}

impl Default for LogLimits {
    /// 10 MiB × 5 files, the kubelet's defaults.
    fn default() -> LogLimits {
        LogLimits {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// One run's log, shared by its stdout and stderr copiers.
#[derive(Debug, Clone)]
pub struct LogWriter {
    state: Arc<Mutex<WriterState>>,
}

#[derive(Debug)]
struct WriterState {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    /// Opens (appending) or creates `path`.
    pub fn open(path: &Path, limits: LogLimits) -> std::io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = append_to(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            state: Arc::new(Mutex::new(WriterState {
                path: path.to_owned(),
                file,
                size,
                limits,
            })),
        })
    }

    /// Writes one CRI line: `full` ends the line, a partial piece does not.
    pub fn write(&self, stream: &str, text: &[u8], full: bool) {
        let mut line = format!("{} {stream} {} ", now(), if full { 'F' } else { 'P' }).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.size > 0 && state.size + line.len() as u64 > state.limits.max_size {
            if let Err(error) = state.rotate() {
                tracing::warn!("cannot rotate {}: {error}", state.path.display());
            }
        }
        match state.file.write_all(&line) {
            Ok(()) => state.size += line.len() as u64,
            Err(error) => tracing::warn!("cannot write a container log line: {error}"),
        }
    }
}

impl WriterState {
    /// Renames the file aside, begins a new one, and drops the oldest rotated files past
    /// the limit.
    fn rotate(&mut self) -> std::io::Result<()> {
        let elapsed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut aside = self.path.as_os_str().to_owned();
        aside.push(format!(
            ".{:011}.{:09}",
            elapsed.as_secs(),
            elapsed.subsec_nanos()
        ));
        std::fs::rename(&self.path, &aside)?;
        self.file = append_to(&self.path)?;
        self.size = 0;
        let rotated = rotated_files(&self.path);
        let excess = rotated
            .len()
            .saturating_sub(self.limits.max_files.saturating_sub(1));
        for old in rotated.iter().take(excess) {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

fn append_to(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The rotated files of a run's log `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(directory), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default();
    rotated.sort();
    rotated
}

/// A run's whole log: its rotated files, oldest first, then the current one.
pub fn read_run(path: &Path) -> Vec<u8> {
    Follower::start(path).0
}

/// Removes the log files (rotated ones included) of the container's runs before `keep`.
pub fn prune_runs(container_dir: &Path, keep: u32) {
    let Ok(entries) = std::fs::read_dir(container_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let run = name
            .split_once(".log")
            .and_then(|(run, _)| run.parse::<u32>().ok());
        if run.is_some_and(|run| run < keep) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Follows a run's log: each [`Follower::read`] returns the whole CRI lines written since
/// the last, through rotations (the old file is read to its end before the new one).
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<std::fs::File>,
    pending: Vec<u8>,
}

impl Follower {
    /// Starts following the run's log at `path`: returns the whole lines it holds so far
    /// (its rotated files, oldest first, then the current one) and the follower, which
    /// goes on exactly where they end. The current file is opened first, so a rotation
    /// meanwhile neither loses nor repeats a line.
    pub fn start(path: &Path) -> (Vec<u8>, Follower) {
        let file = std::fs::File::open(path).ok();
        let held = file
            .as_ref()
            .and_then(|file| file.metadata().ok())
            .map(|metadata| (metadata.dev(), metadata.ino()));
        let mut contents = Vec::new();
        for rotated in rotated_files(path) {
            let same = std::fs::metadata(&rotated)
                .is_ok_and(|metadata| Some((metadata.dev(), metadata.ino())) == held);
            if same {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&rotated) {
                contents.extend_from_slice(&bytes);
            }
        }
        let mut follower = Follower {
            path: path.to_owned(),
            file,
            pending: contents,
        };
        let whole = follower.read();
        (whole, follower)
    }

    /// The whole lines written since the last call.
    pub fn read(&mut self) -> Vec<u8> {
        loop {
            if let Some(file) = self.file.as_mut() {
                let _ = file.read_to_end(&mut self.pending);
            }
            // At the end of the file we hold: if the path names another file now, the run
            // rotated; that file is read from its start.
            let current = std::fs::metadata(&self.path).ok();
            let held = self.file.as_ref().and_then(|file| file.metadata().ok());
            let rotated = match (&current, &held) {
                (Some(current), Some(held)) => {
                    (current.dev(), current.ino()) != (held.dev(), held.ino())
                }
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !rotated {
                break;
            }
            self.file = std::fs::File::open(&self.path).ok();
            if self.file.is_none() {
                break;
            }
        }
        let complete = self
            .pending
            .iter()
            .rposition(|byte| *byte == b'\n')
            .map_or(0, |last| last + 1);
        self.pending.drain(..complete).collect()
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

/// What `kubectl logs` asks of a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Only the last lines.
    pub tail: Option<usize>,
    /// Each line prefixed by its time.
    pub timestamps: bool,
    /// Only lines written at or after this time.
    pub since: Option<k8s_openapi::jiff::Timestamp>,
}

/// What `kubectl logs` prints for a log's contents: the texts, pieces joined, only those
/// written since `since`, the last `tail` lines only when asked, each prefixed by its time
/// with `timestamps`.
pub fn render(contents: &[u8], options: RenderOptions) -> Vec<u8> {
    // Whole lines, each with the time of its first piece.
    let mut lines: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut current: Option<(&str, Vec<u8>)> = None;
    for raw in contents
        .split(|byte| *byte == b'\n')
        .filter(|raw| !raw.is_empty())
    {
        let Some(line) = parse_line(raw) else {
            continue;
        };
        let (_, text) = current.get_or_insert_with(|| (line.time, Vec::new()));
        text.extend_from_slice(line.text);
        if line.full {
            if let Some((time, mut text)) = current.take() {
                text.push(b'\n');
                lines.push((time, text));
            }
        }
    }
    lines.extend(current);
    lines.retain(|(time, _)| {
        options
            .since
            .is_none_or(|since| !written_before(time, since))
    });
    let skip = options
        .tail
        .map(|tail| lines.len().saturating_sub(tail))
        .unwrap_or(0);
    let mut rendered = Vec::new();
    for (time, text) in lines.into_iter().skip(skip) {
        if options.timestamps {
            rendered.extend_from_slice(time.as_bytes());
            rendered.push(b' ');
        }
        rendered.extend_from_slice(&text);
    }
    rendered
}

/// True when a CRI time is before `since` (a time that does not parse is kept).
fn written_before(time: &str, since: k8s_openapi::jiff::Timestamp) -> bool {
    time.parse::<k8s_openapi::jiff::Timestamp>()
        .is_ok_and(|written| written < since)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_becomes_cri_lines_and_reads_back_as_kubectl_prints_it() {
        let directory = tempfile::tempdir().unwrap();
        let path = run_log(directory.path(), "app", 0);
        let log = LogWriter::open(&path, LogLimits::default()).unwrap();
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
        let rendered = String::from_utf8(render(&contents, RenderOptions::default())).unwrap();
        assert_eq!(rendered, format!("one\n\ntwo {long}\nthree, unfinished\n"));
        let last = RenderOptions {
            tail: Some(1),
            ..RenderOptions::default()
        };
        let tail = String::from_utf8(render(&contents, last)).unwrap();
        assert_eq!(tail, "three, unfinished\n");
        let stamped = RenderOptions {
            timestamps: true,
            ..last
        };
        let stamped = String::from_utf8(render(&contents, stamped)).unwrap();
        assert!(
            stamped.ends_with("Z three, unfinished\n") && stamped.starts_with("20"),
            "{stamped}"
        );
    }

    fn lines_of(contents: &[u8]) -> Vec<String> {
        String::from_utf8(render(contents, RenderOptions::default()))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_run_rotates_at_its_size_keeps_its_newest_files_and_reads_back_in_order() {
        let directory = tempfile::tempdir().unwrap();
        let path = run_log(directory.path(), "app", 0);
        let limits = LogLimits {
            max_size: 400,
            max_files: 3,
        };
        let log = LogWriter::open(&path, limits).unwrap();
        // Each CRI line is about 60 bytes: six lines to a file.
        for number in 0..40 {
            log.write("stdout", format!("line {number:02}").as_bytes(), true);
        }
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        for file in rotated.iter().chain([&path]) {
            let size = std::fs::metadata(file).unwrap().len();
            assert!(
                size <= limits.max_size,
                "{} is {size} bytes",
                file.display()
            );
        }
        // The newest lines, in order, with none missing between the first kept and the last.
        let kept = lines_of(&read_run(&path));
        let first: usize = kept[0].trim_start_matches("line ").parse().unwrap();
        let expected: Vec<String> = (first..40).map(|n| format!("line {n:02}")).collect();
        assert_eq!(kept, expected);
        assert!(first > 0, "older lines went with the oldest files");
    }

    #[test]
    fn following_goes_through_a_rotation_and_loses_no_line() {
        let directory = tempfile::tempdir().unwrap();
        let path = run_log(directory.path(), "app", 0);
        let limits = LogLimits {
            max_size: 300,
            max_files: 5,
        };
        let log = LogWriter::open(&path, limits).unwrap();
        log.write("stdout", b"before following", true);
        let (before, mut follower) = Follower::start(&path);
        assert_eq!(lines_of(&before), ["before following"]);
        let mut seen = Vec::new();
        for number in 0..30 {
            log.write("stdout", format!("line {number:02}").as_bytes(), true);
            if number % 7 == 0 {
                seen.extend(lines_of(&follower.read()));
            }
        }
        seen.extend(lines_of(&follower.read()));
        let expected: Vec<String> = (0..30).map(|n| format!("line {n:02}")).collect();
        assert_eq!(seen, expected);
        assert!(
            rotated_files(&path).len() >= 2,
            "the run rotated while followed"
        );
    }

    #[test]
    fn since_keeps_lines_written_at_or_after_the_time() {
        let contents = b"2026-12-02T10:00:00.5Z stdout F early\n\
2026-12-02T10:05:00Z stdout P late and \n\
2026-12-02T10:05:01Z stdout F split\n\
2026-12-02T10:06:00Z stderr F last\n";
        let since = |time: &str| RenderOptions {
            since: Some(time.parse().unwrap()),
            ..RenderOptions::default()
        };
        let rendered = render(contents, since("2026-12-02T10:05:00Z"));
        assert_eq!(rendered, b"late and split\nlast\n");
        assert_eq!(render(contents, since("2026-12-02T11:00:00Z")), b"");
    }

    #[test]
    fn only_the_current_and_previous_runs_logs_are_kept() {
        let directory = tempfile::tempdir().unwrap();
        for name in [
            "0.log",
            "1.log",
            "1.log.00000000001.000000000",
            "2.log",
            "3.log",
        ] {
            std::fs::write(directory.path().join(name), "x").unwrap();
        }
        prune_runs(directory.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2.log", "3.log"]);
    }
}
