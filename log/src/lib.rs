//! `keelson-log`: the agent's log, kept in memory for `Machine.Logs`, and its console
//! lines.
//!
//! Every tracing event and every line the agent prints on the console (the ready line,
//! maintenance lines) goes into a bounded ring, oldest entries dropping first, and to the
//! subscribers following the log. The ring lives as long as the agent process: after PID
//! 1 restarts the agent, the log starts again (PID 1's own lines stay in the kernel log).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// How many entries the ring keeps.
pub const CAPACITY: usize = 5000;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Microseconds since boot.
    pub uptime_micros: u64,
    /// `error` … `trace`, or `console`.
    pub level: String,
    /// The message and its fields.
    pub message: String,
}

/// The ring and its followers.
#[derive(Debug)]
pub struct LogRing {
    entries: Mutex<VecDeque<Entry>>,
    followers: broadcast::Sender<Entry>,
    capacity: usize,
}

impl LogRing {
    /// An empty ring keeping `capacity` entries.
    pub fn new(capacity: usize) -> LogRing {
        LogRing {
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            followers: broadcast::channel(1024).0,
            capacity,
        }
    }

    /// Appends an entry, dropping the oldest when full.
    pub fn push(&self, entry: Entry) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() == self.capacity {
                entries.pop_front();
            }
            entries.push_back(entry.clone());
        }
        // No followers is the usual case, not an error.
        let _ = self.followers.send(entry);
    }

    /// The last `tail` entries (all when 0), and a receiver for what comes after them.
    /// Taken under one lock so that following neither misses nor repeats an entry.
    pub fn snapshot(&self, tail: usize) -> (Vec<Entry>, broadcast::Receiver<Entry>) {
        let entries = match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        };
        let receiver = self.followers.subscribe();
        let skip = if tail == 0 {
            0
        } else {
            entries.len().saturating_sub(tail)
        };
        (entries.iter().skip(skip).cloned().collect(), receiver)
    }
}

/// The agent's ring.
pub fn ring() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(|| LogRing::new(CAPACITY))
}

/// Microseconds since boot, on the kernel log's clock.
pub fn uptime_micros() -> u64 {
    u64::try_from(keelson_linux::clock::monotonic().as_micros()).unwrap_or(u64::MAX)
}

/// Prints `line` on the console (stdout, which PID 1 connects to it) and logs it.
pub fn console(line: &str) {
    println!("{line}");
    ring().push(Entry {
        uptime_micros: uptime_micros(),
        level: "console".into(),
        message: line.to_owned(),
    });
}

/// Waits until the lines printed so far have left the console (when stdout is a
/// terminal), so that a kernel message printed next cannot land inside them.
pub fn drain_console() {
    use std::io::Write;
    let stdout = std::io::stdout();
    let _ = stdout.lock().flush();
    if nix::unistd::isatty(&stdout).unwrap_or(false) {
        let _ = nix::sys::termios::tcdrain(&stdout);
    }
}

/// Sets up tracing: events go to stderr (the console, through PID 1) and into [`ring`].
/// `RUST_LOG` filters both; the default is `info`.
pub fn install() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let console = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(RingLayer)
        .try_init();
}

/// A tracing layer that copies events into [`ring`].
#[derive(Debug, Default)]
pub struct RingLayer;

struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut visitor = MessageVisitor(String::new());
        event.record(&mut visitor);
        ring().push(Entry {
            uptime_micros: uptime_micros(),
            level: event.metadata().level().as_str().to_ascii_lowercase(),
            message: visitor.0.trim_start().to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(message: &str) -> Entry {
        Entry {
            uptime_micros: 1,
            level: "info".into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_entries_and_tails_them() {
        let ring = LogRing::new(3);
        for message in ["a", "b", "c", "d"] {
            ring.push(entry(message));
        }
        let messages = |entries: Vec<Entry>| -> Vec<String> {
            entries.into_iter().map(|entry| entry.message).collect()
        };
        assert_eq!(messages(ring.snapshot(0).0), ["b", "c", "d"]);
        assert_eq!(messages(ring.snapshot(2).0), ["c", "d"]);
    }

    #[tokio::test]
    async fn followers_get_what_comes_after_their_snapshot() {
        let ring = LogRing::new(10);
        ring.push(entry("before"));
        let (old, mut follower) = ring.snapshot(0);
        ring.push(entry("after"));
        assert_eq!(old.len(), 1);
        assert_eq!(follower.recv().await.unwrap().message, "after");
    }
}
