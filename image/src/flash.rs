//! `keelson-image flash IMG --device /dev/sdX`: write an image to a whole disk, safely.
//!
//! Phases: check the target (a whole-disk block device, not mounted, not holding the
//! running system, large enough), ask for confirmation, write with progress, flush, and
//! read everything back to compare. The checks are a pure decision over what sysfs and
//! `/proc/self/mountinfo` say ([`refusal`]), tested without a disk.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// What sysfs says about a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `sdb` or `loop3`.
    pub name: String,
    /// True for a partition (`/sys/class/block/NAME/partition` exists).
    pub is_partition: bool,
    /// Its size in bytes.
    pub size: u64,
    /// The kernel names of its partitions.
    pub partitions: Vec<String>,
}

/// A block device in use, with the whole disks under it (through partitions and
/// device-mapper slaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// Where it is used: a mount point, or `swap`.
    pub used_as: String,
    /// Kernel names of every device under it, partitions and disks alike.
    pub devices: Vec<String>,
}

/// Why a device must not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a block device at all.
    NotABlockDevice,
    /// A partition: images go on whole disks.
    Partition {
        /// The disk it belongs to, when known.
        disk: Option<String>,
    },
    /// It holds the filesystem the running system is mounted from.
    HoldsTheRunningSystem,
    /// Something on it is mounted or used as swap.
    InUse {
        /// Where.
        used_as: String,
    },
    /// The image does not fit.
    TooSmall {
        /// The device's size.
        device: u64,
        /// The image's size.
        image: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotABlockDevice => f.write_str("it is not a block device"),
            Refusal::Partition { disk } => match disk {
                Some(disk) => write!(f, "it is a partition; write the whole disk, /dev/{disk}"),
                None => f.write_str("it is a partition; write the whole disk"),
            },
            Refusal::HoldsTheRunningSystem => {
                f.write_str("it holds the running system (the root filesystem is on it)")
            }
            Refusal::InUse { used_as } => write!(
                f,
                "it is in use ({used_as}); unmount everything on it first"
            ),
            Refusal::TooSmall { device, image } => {
                write!(f, "it holds {device} bytes and the image needs {image}")
            }
        }
    }
}

/// Decides whether `target` may be written with an image of `image_size` bytes. Pure.
pub fn refusal(target: &BlockDevice, in_use: &[InUse], image_size: u64) -> Option<Refusal> {
    if target.is_partition {
        return Some(Refusal::Partition { disk: None });
    }
    let on_target = |device: &String| *device == target.name || target.partitions.contains(device);
    for use_ in in_use {
        if use_.devices.iter().any(on_target) {
            if use_.used_as == "/" {
                return Some(Refusal::HoldsTheRunningSystem);
            }
            return Some(Refusal::InUse {
                used_as: use_.used_as.clone(),
            });
        }
    }
    if target.size < image_size {
        return Some(Refusal::TooSmall {
            device: target.size,
            image: image_size,
        });
    }
    None
}

fn sysfs(name: &str) -> PathBuf {
    Path::new("/sys/class/block").join(name)
}

/// Reads a block device's facts from sysfs.
pub fn describe(device: &Path) -> anyhow::Result<Result<BlockDevice, Refusal>> {
    let metadata = std::fs::metadata(device)
        .with_context(|| format!("cannot look at {}", device.display()))?;
    if !metadata.file_type().is_block_device() {
        return Ok(Err(Refusal::NotABlockDevice));
    }
    let canonical = std::fs::canonicalize(device)?;
    let name = canonical
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_partition = sysfs(&name).join("partition").exists();
    if is_partition {
        let disk = std::fs::canonicalize(sysfs(&name)).ok().and_then(|path| {
            path.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        });
        return Ok(Err(Refusal::Partition { disk }));
    }
    let sectors: u64 = std::fs::read_to_string(sysfs(&name).join("size"))
        .with_context(|| format!("cannot read the size of {name} from sysfs"))?
        .trim()
        .parse()
        .context("the size in sysfs is not a number")?;
    let partitions = std::fs::read_dir(sysfs(&name))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|child| child.starts_with(&name) && sysfs(child).join("partition").exists())
        .collect();
    Ok(Ok(BlockDevice {
        name,
        is_partition,
        size: sectors * 512,
        partitions,
    }))
}

/// The kernel name of the block device `MAJOR:MINOR`.
fn name_of(dev: &str) -> Option<String> {
    let link = std::fs::read_link(Path::new("/sys/dev/block").join(dev)).ok()?;
    link.file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

/// `name`, the disk it is a partition of, and everything under it through
/// device-mapper slaves (a dm-verity root sits on a partition of the system disk).
fn devices_under(name: &str, out: &mut Vec<String>) {
    if out.iter().any(|seen| seen == name) {
        return;
    }
    out.push(name.to_owned());
    if sysfs(name).join("partition").exists() {
        if let Some(disk) = std::fs::canonicalize(sysfs(name)).ok().and_then(|path| {
            path.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        }) {
            devices_under(&disk, out);
        }
    }
    if let Ok(slaves) = std::fs::read_dir(sysfs(name).join("slaves")) {
        for slave in slaves.flatten() {
            devices_under(&slave.file_name().to_string_lossy(), out);
        }
    }
}

/// Every mounted block device and swap area, from `/proc/self/mountinfo` and `/proc/swaps`.
pub fn devices_in_use() -> Vec<InUse> {
    let mut in_use = Vec::new();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(mount_point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if let Some(name) = name_of(dev) {
            let mut devices = Vec::new();
            devices_under(&name, &mut devices);
            in_use.push(InUse {
                used_as: (*mount_point).to_owned(),
                devices,
            });
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(path) = line.split_whitespace().next() {
            if let Some(name) = Path::new(path).file_name() {
                let mut devices = Vec::new();
                devices_under(&name.to_string_lossy(), &mut devices);
                in_use.push(InUse {
                    used_as: "swap".to_owned(),
                    devices,
                });
            }
        }
    }
    in_use
}

/// Checks `device` for an image of `image_size` bytes; the refusal names the device.
pub fn check_target(device: &Path, image_size: u64) -> anyhow::Result<BlockDevice> {
    let target = match describe(device)? {
        Ok(target) => target,
        Err(refusal) => bail!("refusing to write {}: {refusal}", device.display()),
    };
    if let Some(refusal) = refusal(&target, &devices_in_use(), image_size) {
        bail!("refusing to write {}: {refusal}", device.display());
    }
    Ok(target)
}

/// What `flash` was asked to do.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    /// The image.
    pub image: PathBuf,
    /// The whole-disk device.
    pub device: PathBuf,
    /// Skip the confirmation.
    pub yes: bool,
}

/// Runs the phases: check, confirm, write, flush, verify.
pub fn flash(options: &FlashOptions) -> anyhow::Result<()> {
    let image_size = std::fs::metadata(&options.image)
        .with_context(|| format!("cannot read {}", options.image.display()))?
        .len();
    let target = check_target(&options.device, image_size)?;
    confirm(options, &target)?;
    write_image(options, image_size)?;
    verify(options, image_size)?;
    println!(
        "{} is written and verified ({image_size} bytes); boot the machine from it",
        options.device.display()
    );
    Ok(())
}

fn confirm(options: &FlashOptions, target: &BlockDevice) -> anyhow::Result<()> {
    if options.yes {
        return Ok(());
    }
    eprint!(
        "This erases everything on {} ({:.1} GiB). Type 'yes' to go on: ",
        options.device.display(),
        target.size as f64 / f64::from(1u32 << 30)
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing was written (pass --yes to skip the question)");
    }
    Ok(())
}

const CHUNK: usize = 4 << 20;

fn write_image(options: &FlashOptions, image_size: u64) -> anyhow::Result<()> {
    let mut source = File::open(&options.image)?;
    let mut device = std::fs::OpenOptions::new()
        .write(true)
        .open(&options.device)
        .with_context(|| format!("cannot open {} for writing", options.device.display()))?;
    let bar = progress(image_size, "writing");
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = source.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        device
            .write_all(&buffer[..read])
            .with_context(|| format!("writing {} failed", options.device.display()))?;
        bar.inc(read as u64);
    }
    device
        .sync_all()
        .with_context(|| format!("flushing {} failed", options.device.display()))?;
    bar.finish_and_clear();
    Ok(())
}

fn verify(options: &FlashOptions, image_size: u64) -> anyhow::Result<()> {
    let mut source = File::open(&options.image)?;
    let mut device = File::open(&options.device)?;
    device.seek(SeekFrom::Start(0))?;
    let bar = progress(image_size, "verifying");
    let mut expected = vec![0u8; CHUNK];
    let mut actual = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let read = source.read(&mut expected)?;
        if read == 0 {
            break;
        }
        device.read_exact(&mut actual[..read]).with_context(|| {
            format!(
                "reading {} back failed at byte {offset}",
                options.device.display()
            )
        })?;
        if expected[..read] != actual[..read] {
            let at = expected[..read]
                .iter()
                .zip(&actual[..read])
                .position(|(a, b)| a != b)
                .unwrap_or(0) as u64;
            bail!(
                "{} does not read back as written at byte {}: the disk may be failing",
                options.device.display(),
                offset + at
            );
        }
        offset += read as u64;
        bar.inc(read as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

fn progress(total: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, partitions: &[&str]) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            is_partition: false,
            size: 8 << 30,
            partitions: partitions.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn used(at: &str, devices: &[&str]) -> InUse {
        InUse {
            used_as: at.into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn only_an_idle_whole_disk_large_enough_is_written() {
        let sdb = disk("sdb", &["sdb1", "sdb2"]);
        // The system's root is a dm-verity device over vda2, as on a Keelson node.
        let system = [
            used("/", &["dm-0", "vda2", "vda"]),
            used("/var", &["vda4", "vda"]),
        ];
        assert_eq!(refusal(&sdb, &system, 1 << 30), None);
        assert_eq!(
            refusal(&disk("vda", &["vda1", "vda2"]), &system, 1 << 30),
            Some(Refusal::HoldsTheRunningSystem)
        );
        assert_eq!(
            refusal(&sdb, &[used("/mnt/usb", &["sdb1", "sdb"])], 1 << 30),
            Some(Refusal::InUse {
                used_as: "/mnt/usb".into()
            })
        );
        assert_eq!(
            refusal(&sdb, &[used("swap", &["sdb2", "sdb"])], 1 << 30),
            Some(Refusal::InUse {
                used_as: "swap".into()
            })
        );
        assert_eq!(
            refusal(&sdb, &[], 16 << 30),
            Some(Refusal::TooSmall {
                device: 8 << 30,
                image: 16 << 30
            })
        );
        let mut partition = disk("sdb1", &[]);
        partition.is_partition = true;
        assert_eq!(
            refusal(&partition, &[], 1),
            Some(Refusal::Partition { disk: None })
        );
    }

    #[test]
    fn the_host_root_disk_is_recognised_as_the_running_system() {
        // Reads only: finds the disk under "/" and asks the decision about it.
        let in_use = devices_in_use();
        let test = "the_host_root_disk_is_recognised_as_the_running_system";
        let Some(root) = in_use.iter().find(|use_| use_.used_as == "/") else {
            keelson_testkit::skip(test, "/ is not on a block device here (an overlay?)");
            return;
        };
        let Some(disk) = root
            .devices
            .iter()
            .find(|name| !sysfs(name).join("partition").exists() && !name.starts_with("dm-"))
        else {
            keelson_testkit::skip(test, "no whole disk found under /");
            return;
        };
        let path = Path::new("/dev").join(disk);
        let target = describe(&path).unwrap().unwrap();
        assert_eq!(
            refusal(&target, &in_use, 0),
            Some(Refusal::HoldsTheRunningSystem)
        );
    }
}
