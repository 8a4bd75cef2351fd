//! `keelson-init`: Keelson's PID 1.
//!
//! One static binary plays two parts, chosen by the name it was started under:
//!
//! * **Stage 1** (`/init` in the initramfs): mount the kernel filesystems, load the storage
//!   and filesystem modules, wait for the chosen slot's root partition by PARTLABEL, set up
//!   dm-verity with device-mapper ioctls, mount the verified root read-only and STATE
//!   read-write at `/var`, and switch into the root. See [`stage1`].
//! * **Stage 2** (`/sbin/init` in the root): mount `/run`, `/tmp`, `/dev/pts` and cgroup2,
//!   grow STATE to the end of the disk, start `keelsond` and keep it running, reap zombies,
//!   and turn signals, the ACPI power button and agent requests into an orderly poweroff or
//!   reboot. See [`stage2`].
//!
//! This binary is a shell. Its decisions live in pure crates tested on the host: the kernel
//! command line and the PID 1 protocol in `keelson-contract`, the agent supervisor, restart
//! backoff and trial outcome in `keelson-supervise`; its syscalls go through
//! `keelson-linux` where the agent needs the same ones. No crate depends on this one.
//!
//! PID 1 never panics (clippy denies `unwrap`, `expect`, `panic!` and unchecked indexing
//! here). A stage-1 failure prints one line naming the cause and reboots after a short delay,
//! so that the boot loader's counter can move to the other slot.
//!
//! Known limits: only GPT disks with 512-byte sectors; modules are loaded by explicit list
//! (what the image ships), not by modalias.

mod error;
mod fdstore;
mod grow;
mod log;
mod modules;
mod power;
mod reaper;
mod stage1;
mod stage2;

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = argv0.rsplit('/').next().unwrap_or_default().to_owned();

    if name == "keelson-baseline" {
        // The boot benchmark's baseline: the cheapest possible userspace, which powers off.
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        return;
    }
    if std::process::id() != 1 {
        eprintln!("keelson-init: this is Keelson's PID 1; it only runs as process 1 (started as {argv0:?})");
        std::process::exit(2);
    }

    // PID 1 must never die: a panic would be a kernel panic. Clippy forbids the usual
    // sources; this is the last line of defence.
    let stage_one = argv0 == "/init";
    let outcome = std::panic::catch_unwind(move || {
        if stage_one {
            match stage1::run() {
                Ok(never) => match never {},
                Err(cause) => stage1::fail(&cause.to_string()),
            }
        } else {
            stage2::run()
        }
    });
    if outcome.is_err() {
        crate::error!("internal error in PID 1 (a bug; please report it)");
        stage1::fail("PID 1 hit an internal error");
    }
}
