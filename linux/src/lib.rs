//! `keelson-linux`: thin Linux I/O with no decisions in it.
//!
//! PID 1, the agent and the tools share these calls; the choices they make live in the pure
//! crates (`keelson-contract`, `keelson-supervise`, `keelson-update`, `keelson-config`):
//!
//! * [`block`]: block devices and partitions by GPT label, through sysfs (no udev);
//! * [`devmapper`]: just enough device-mapper ioctls for a read-only dm-verity device;
//! * [`mounts`]: mounting with errors that say what was mounted where;
//! * [`kmsg`]: reading the kernel log (with the `async` feature: following it with tokio);
//! * [`durable`]: the durable write (staging file, fsync, rename, fsync the directory);
//! * [`clock`]: wall and monotonic time;
//! * [`proc_cmdline`]: the running kernel's command line.
//!
//! Nothing here panics (clippy denies `unwrap`, `expect`, `panic!` and unchecked
//! indexing), because PID 1 links it.

pub mod block;
pub mod clock;
pub mod devmapper;
pub mod durable;
#[cfg(feature = "async")]
pub mod kmsg;
pub mod mounts;

/// The machine's hostname (empty if it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Asks PID 1 for a power action (a `keelson_contract::pid1` signal) a moment from now, so
/// that the API response that caused it reaches the client first.
#[cfg(feature = "async")]
pub fn ask_pid1(signal: i32, what: &'static str) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tracing::info!("asking PID 1 to {what}");
        // nix's Signal has no real-time signals, which systemd's convention uses.
        // SAFETY: kill(2) with a signal number has no memory-safety preconditions.
        unsafe { libc::kill(1, signal) };
    });
}

/// The running kernel's command line (empty when `/proc` is not mounted). Read values from
/// it with `keelson_contract::cmdline::value`.
pub fn proc_cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}
