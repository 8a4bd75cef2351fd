//! Keelson's on-disk formats, shared by the image builder, PID 1 and the updater.
//!
//! * [`gpt`]: reading, writing and growing a GUID partition table. The builder writes the
//!   table into an image file; `keelson-init` grows the STATE partition to the end of the
//!   disk on first boot. Both go through the same encoder so that what the builder writes is
//!   exactly what init expects to read.
//! * [`verity`]: the dm-verity (format 1) hash tree that sits after each root image, and the
//!   parameters the kernel needs to check it.
//! * [`layout`]: the partition labels, type GUIDs and default sizes of a Keelson disk.
//!
//! Everything here is pure computation over byte buffers or `Read`/`Write`/`Seek` values:
//! no ioctls, no mounts, no root. Known limits: 512-byte logical sectors only (the GPT
//! code refuses others), and SHA-256 with 4 KiB blocks only for verity.

pub mod gpt;
pub mod layout;
pub mod verity;
