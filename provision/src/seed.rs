//! NoCloud seeds: finding a filesystem labelled `cidata` among the block devices, and
//! reading its `meta-data`, `user-data` and `network-config`.
//!
//! The label is read straight from the superblock ([`probe_label`], pure), so nothing is
//! mounted until the seed is found; then it is mounted read-only just long enough to copy
//! the three files.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

/// The volume label cloud-init looks for (compared without case).
pub const SEED_LABEL: &str = "cidata";
/// Where a seed is mounted while it is read.
pub const SEED_MOUNT: &str = "/run/keelson/seed";

/// A filesystem type a seed may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFs {
    /// FAT12/16/32.
    Vfat,
    /// ISO 9660 (as made by cloud-localds or genisoimage).
    Iso9660,
}

impl SeedFs {
    fn kernel_name(self) -> &'static str {
        match self {
            SeedFs::Vfat => "vfat",
            SeedFs::Iso9660 => "iso9660",
        }
    }
}

/// How many bytes of a device [`probe_label`] needs.
pub const PROBE_BYTES: usize = 0x8000 + 0x28 + 32;

/// Reads the volume label of a FAT or ISO 9660 filesystem from its first bytes.
pub fn probe_label(bytes: &[u8]) -> Option<(SeedFs, String)> {
    // ISO 9660: the primary volume descriptor is at 32 KiB: type 1, "CD001", and the
    // volume identifier at offset 40 (32 bytes, space-padded).
    if let Some(descriptor) = bytes.get(0x8000..0x8000 + 0x28 + 32) {
        if descriptor.first() == Some(&1) && descriptor.get(1..6) == Some(b"CD001") {
            let label = descriptor.get(0x28..0x48)?;
            return Some((SeedFs::Iso9660, trim_label(label)));
        }
    }
    // FAT: boot signature 0x55AA; the extended BIOS parameter block (signature 0x29) is at
    // 0x26 on FAT12/16 and 0x42 on FAT32 (sectors per FAT at 0x16 is zero), and the
    // 11-byte label follows 5 bytes later.
    if bytes.get(510..512) != Some(&[0x55, 0xAA]) {
        return None;
    }
    let fat32 = bytes.get(0x16..0x18) == Some(&[0, 0]);
    let signature_at = if fat32 { 0x42 } else { 0x26 };
    if bytes.get(signature_at) != Some(&0x29) {
        return None;
    }
    let label = bytes.get(signature_at + 5..signature_at + 16)?;
    Some((SeedFs::Vfat, trim_label(label)))
}

fn trim_label(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

/// The files of a seed, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedFiles {
    /// The device it was found on, e.g. `/dev/vdb`.
    pub device: PathBuf,
    /// `meta-data`.
    pub meta_data: Option<Vec<u8>>,
    /// `user-data`.
    pub user_data: Option<Vec<u8>>,
    /// `network-config`.
    pub network_config: Option<Vec<u8>>,
}

/// Looks at every block device (whole disks and partitions) for a `cidata` label.
pub fn find_seed() -> Option<(PathBuf, SeedFs)> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            !name.starts_with("loop") && !name.starts_with("ram") && !name.starts_with("dm-")
        })
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let device = Path::new("/dev").join(&name);
        let bytes = read_head(&device).ok()?;
        match probe_label(&bytes) {
            Some((fs, label)) if label.eq_ignore_ascii_case(SEED_LABEL) => Some((device, fs)),
            _ => None,
        }
    })
}

fn read_head(device: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(device)?;
    let mut bytes = vec![0u8; PROBE_BYTES];
    file.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < bytes.len() {
        let Some(rest) = bytes.get_mut(filled..) else {
            break;
        };
        match file.read(rest)? {
            0 => break,
            read => filled += read,
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Mounts the seed read-only, copies its files, and unmounts it.
pub fn read_seed(device: &Path, fs: SeedFs) -> Result<SeedFiles, String> {
    std::fs::create_dir_all(SEED_MOUNT)
        .map_err(|error| format!("cannot create {SEED_MOUNT}: {error}"))?;
    nix::mount::mount(
        Some(device),
        SEED_MOUNT,
        Some(fs.kernel_name()),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|errno| {
        format!(
            "cannot mount the NoCloud seed {} ({}): {}",
            device.display(),
            fs.kernel_name(),
            errno.desc()
        )
    })?;
    // Each file is bounded like any first-boot source; one over the bound is left out and
    // named, so that the node enters maintenance mode saying why.
    let mut too_large = Vec::new();
    let mut read = |name: &str| {
        let path = Path::new(SEED_MOUNT).join(name);
        match crate::bounded::read(
            &path,
            None,
            crate::bounded::MAX_SOURCE_BYTES,
            crate::bounded::READ_DEADLINE,
        ) {
            Ok(bytes) => bytes,
            Err(error) => {
                too_large.push(format!("{name}: {error}"));
                None
            }
        }
    };
    let files = SeedFiles {
        device: device.to_path_buf(),
        meta_data: read("meta-data"),
        user_data: read("user-data"),
        network_config: read("network-config"),
    };
    if let Err(errno) = nix::mount::umount(SEED_MOUNT) {
        tracing::warn!("cannot unmount the NoCloud seed: {}", errno.desc());
    }
    if !too_large.is_empty() {
        return Err(format!(
            "the NoCloud seed {} cannot be used: {}",
            device.display(),
            too_large.join("; ")
        ));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fat32_with_label(label: &[u8; 11]) -> Vec<u8> {
        let mut bytes = vec![0u8; 1024];
        bytes[0x42] = 0x29;
        bytes[0x47..0x52].copy_from_slice(label);
        bytes[510] = 0x55;
        bytes[511] = 0xAA;
        bytes
    }

    #[test]
    fn fat_labels_are_read() {
        assert_eq!(
            probe_label(&fat32_with_label(b"CIDATA     ")),
            Some((SeedFs::Vfat, "CIDATA".into()))
        );
        let mut fat16 = vec![0u8; 1024];
        fat16[0x16] = 8;
        fat16[0x26] = 0x29;
        fat16[0x2B..0x36].copy_from_slice(b"cidata     ");
        fat16[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(probe_label(&fat16), Some((SeedFs::Vfat, "cidata".into())));
    }

    #[test]
    fn iso9660_labels_are_read() {
        let mut bytes = vec![0u8; PROBE_BYTES];
        bytes[0x8000] = 1;
        bytes[0x8001..0x8006].copy_from_slice(b"CD001");
        let mut label = [b' '; 32];
        label[..6].copy_from_slice(b"cidata");
        bytes[0x8028..0x8048].copy_from_slice(&label);
        assert_eq!(
            probe_label(&bytes),
            Some((SeedFs::Iso9660, "cidata".into()))
        );
    }

    #[test]
    fn other_data_has_no_label() {
        assert_eq!(probe_label(&[0u8; 600]), None);
        assert_eq!(probe_label(&[]), None);
    }

    #[test]
    fn a_real_mkfs_vfat_label_is_read() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let image = dir.path().join("seed.img");
        let made = std::process::Command::new("mkfs.vfat")
            .args(["-n", "CIDATA", "-C"])
            .arg(&image)
            .arg("2048")
            .output();
        match made {
            Ok(output) if output.status.success() => {}
            _ => {
                keelson_testkit::skip(
                    "a_real_mkfs_vfat_label_is_read",
                    "mkfs.vfat is not installed (dosfstools)",
                );
                return;
            }
        }
        let bytes = read_head(&image).unwrap();
        assert_eq!(probe_label(&bytes), Some((SeedFs::Vfat, "CIDATA".into())));
    }
}
