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
//! The decisions are pure and tested on the host: the kernel command line ([`cmdline`]),
//! module ordering ([`modules`]), the agent supervisor with its restart backoff
//! ([`supervisor`]). The rest are thin shells over syscalls.
//!
//! PID 1 never panics (clippy denies `unwrap`, `expect`, `panic!` and unchecked indexing
//! here). A stage-1 failure prints one line naming the cause and reboots after a short delay,
//! so that the boot loader's counter can move to the other slot.
//!
//! Known limits: only GPT disks with 512-byte sectors; modules are loaded by explicit list
//! (what the image ships), not by modalias.

pub mod block;
pub mod cmdline;
pub mod devmapper;
pub mod grow;
pub mod log;
pub mod modules;
pub mod mounts;
pub mod power;
pub mod stage1;
pub mod stage2;
pub mod supervisor;

/// Where the agent's binary lives in the root image.
pub const AGENT_PATH: &str = "/usr/bin/keelsond";
/// The datagram socket on which PID 1 receives sd_notify messages.
pub const NOTIFY_SOCKET_PATH: &str = "/run/keelson/notify";
