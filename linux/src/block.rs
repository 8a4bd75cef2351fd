//! Finding block devices by GPT partition label through sysfs.
//!
//! The kernel exports each partition's GPT name as `PARTNAME=` in
//! `/sys/class/block/<dev>/uevent`, so no udev and no blkid are needed.

use std::path::{Path, PathBuf};

/// A partition found by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDevice {
    /// Kernel name, e.g. `vda2`.
    pub name: String,
    /// Device number.
    pub major: u32,
    /// Device number.
    pub minor: u32,
    /// Partition number on its disk.
    pub number: u32,
    /// Kernel name of the whole disk, e.g. `vda`.
    pub disk: String,
}

impl PartitionDevice {
    /// `/dev/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// `/dev/<disk>`.
    pub fn disk_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.disk)
    }

    /// `MAJOR:MINOR`, as device-mapper tables name devices.
    pub fn dev_t_text(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// Parses a `uevent` file into the fields stage 1 needs; `None` unless it is a partition.
pub fn parse_uevent(text: &str) -> Option<(String, u32, u32, String)> {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
    };
    if field("DEVTYPE")? != "partition" {
        return None;
    }
    Some((
        field("DEVNAME")?.to_owned(),
        field("MAJOR")?.parse().ok()?,
        field("MINOR")?.parse().ok()?,
        field("PARTNAME").unwrap_or("").to_owned(),
    ))
}

/// Looks once for a partition named `label`.
pub fn find_partition(label: &str) -> Option<PartitionDevice> {
    let entries = std::fs::read_dir("/sys/class/block").ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(path.join("uevent")) else {
            continue;
        };
        let Some((name, major, minor, partname)) = parse_uevent(&text) else {
            continue;
        };
        if partname != label {
            continue;
        }
        let number = std::fs::read_to_string(path.join("partition"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // /sys/class/block/vda2 links to .../block/vda/vda2: the parent directory is the disk.
        let resolved = std::fs::canonicalize(&path).ok()?;
        let disk = resolved.parent()?.file_name()?.to_str()?.to_owned();
        return Some(PartitionDevice {
            name,
            major,
            minor,
            number,
            disk,
        });
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_recognised_by_their_uevent() {
        let text = "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=2\nPARTNAME=KEELSON-ROOT-A\n";
        assert_eq!(
            parse_uevent(text).unwrap(),
            ("vda2".into(), 254, 2, "KEELSON-ROOT-A".into())
        );
        assert_eq!(
            parse_uevent("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n"),
            None
        );
    }
}
