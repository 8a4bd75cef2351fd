//! Logging to the kernel log, which the kernel also prints on the console.
//!
//! Every line carries the stable prefix `keelson-init:` so that the QEMU harness and a
//! person reading the serial console can pick PID 1's lines out. `/dev/kmsg` is opened for
//! each line: PID 1 logs rarely, and this keeps working across the mount moves of stage 1.

use std::io::Write;

/// Syslog severity of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Boot or shutdown cannot go on as planned.
    Error = 3,
    /// Something is off but PID 1 carries on.
    Warning = 4,
    /// A milestone: printed on the console at the default log level.
    Notice = 5,
}

use keelson_contract::pid1::LOG_PREFIX as PREFIX;

/// Writes one line to `/dev/kmsg`, or to stderr if the kernel log cannot be opened.
pub fn write(level: Level, message: &str) {
    let line = format!("<{}>{PREFIX} {message}\n", level as u8);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut kmsg| kmsg.write_all(line.as_bytes()));
    if written.is_err() {
        let _ = std::io::stderr().write_all(format!("{PREFIX} {message}\n").as_bytes());
    }
}

/// Logs a milestone.
#[macro_export]
macro_rules! notice {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Notice, &format!($($arg)*)) };
}

/// Logs a warning.
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warning, &format!($($arg)*)) };
}

/// Logs an error.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &format!($($arg)*)) };
}
