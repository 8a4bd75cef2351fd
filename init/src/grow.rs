//! Growing STATE to the end of its disk on first boot, while it is mounted.
//!
//! Three steps, each idempotent so that an interrupted grow simply completes on the next
//! boot: rewrite the GPT for the disk's real size with STATE extended (backup table first),
//! tell the kernel the partition's new size with `BLKPG_RESIZE_PARTITION`, and grow the
//! mounted ext4 with `EXT4_IOC_RESIZE_FS`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use keelson_disk::gpt;

use keelson_linux::block::PartitionDevice;

use crate::error::{io, InitError};

/// What growing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrowOutcome {
    /// The partition and filesystem already filled the disk.
    AlreadyFull {
        /// Partition size in bytes.
        bytes: u64,
    },
    /// The filesystem was grown (and the partition with it, if needed).
    Grown {
        /// Filesystem size before, in bytes.
        from: u64,
        /// Filesystem size now, in bytes.
        to: u64,
    },
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// Grows `state` (mounted at `mount_point`) to the end of its disk.
pub fn grow_state(state: &PartitionDevice, mount_point: &str) -> Result<GrowOutcome, InitError> {
    let disk_path = state.disk_path();
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(io("opening", disk_path.display()))?;
    let disk_bytes = block_size_bytes(&disk).map_err(io("sizing", disk_path.display()))?;
    let layout = |what: &str| {
        let disk = disk_path.display().to_string();
        let what = what.to_owned();
        move |error: gpt::GptError| InitError::Layout(format!("{what} of {disk}: {error}"))
    };
    let mut table =
        gpt::read_table(&mut disk, disk_bytes).map_err(layout("reading the partition table"))?;
    table
        .set_disk_sectors(disk_bytes / gpt::SECTOR_SIZE)
        .map_err(layout("sizing the partition table"))?;
    if table
        .grow_to_end(state.number)
        .map_err(layout("growing STATE in the partition table"))?
        .is_some()
    {
        gpt::write_table(&mut disk, &table).map_err(layout("writing the partition table"))?;
        disk.sync_all()
            .map_err(io("syncing", disk_path.display()))?;
    }
    let partition = table
        .partitions
        .iter()
        .find(|partition| partition.number == state.number)
        .ok_or_else(|| {
            InitError::Layout(format!(
                "partition {} vanished from the table",
                state.number
            ))
        })?;
    let partition_bytes = partition.size_bytes();
    let kernel_bytes = std::fs::read_to_string(format!("/sys/class/block/{}/size", state.name))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .unwrap_or(0);
    if kernel_bytes != partition_bytes {
        resize_kernel_partition(
            &disk,
            state.number,
            partition.offset_bytes(),
            partition_bytes,
        )?;
    }

    let (block_size, blocks) = ext4_geometry(&state.path().to_string_lossy())?;
    let wanted_blocks = partition_bytes / block_size;
    if wanted_blocks <= blocks {
        return Ok(GrowOutcome::AlreadyFull {
            bytes: partition_bytes,
        });
    }
    let mount = File::open(mount_point).map_err(io("opening", mount_point))?;
    let count: u64 = wanted_blocks;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer.
    let result = unsafe {
        libc::ioctl(
            mount.as_raw_fd(),
            EXT4_IOC_RESIZE_FS as _,
            &count as *const u64,
        )
    };
    if result < 0 {
        return Err(io("resizing ext4 online at", mount_point)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(GrowOutcome::Grown {
        from: blocks * block_size,
        to: wanted_blocks * block_size,
    })
}

fn block_size_bytes(file: &File) -> std::io::Result<u64> {
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    let result =
        unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut bytes as *mut u64) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(bytes)
}

fn resize_kernel_partition(
    disk: &File,
    number: u32,
    start: u64,
    length: u64,
) -> Result<(), InitError> {
    let mut partition = BlkpgPartition {
        start: start as libc::c_longlong,
        length: length as libc::c_longlong,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut partition as *mut BlkpgPartition).cast(),
    };
    // SAFETY: arg and the partition it points to live across the call, laid out as <linux/blkpg.h>.
    let result =
        unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut arg as *mut BlkpgIoctlArg) };
    if result < 0 {
        return Err(io(
            "telling the kernel the new size of",
            format!("partition {number} ({length} bytes)"),
        )(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads block size and block count from the ext4 superblock at byte 1024 of `device`.
pub fn ext4_geometry(device: &str) -> Result<(u64, u64), InitError> {
    let mut file = File::open(device).map_err(io("opening", device))?;
    let mut superblock = [0u8; 1024];
    file.seek(SeekFrom::Start(1024))
        .and_then(|_| file.read_exact(&mut superblock))
        .map_err(io("reading the ext4 superblock of", device))?;
    parse_ext4_geometry(&superblock)
        .ok_or_else(|| InitError::Layout(format!("{device} does not hold an ext4 filesystem")))
}

/// (block size, block count) from a 1024-byte ext4 superblock.
pub fn parse_ext4_geometry(superblock: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            superblock.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let magic = u16::from_le_bytes(superblock.get(0x38..0x3a)?.try_into().ok()?);
    if magic != 0xEF53 {
        return None;
    }
    let block_size = 1024u64 << u32_at(0x18)?.min(16);
    let incompat = u32_at(0x60)?;
    let high = if incompat & 0x80 != 0 {
        u64::from(u32_at(0x150)?)
    } else {
        0
    };
    Some((block_size, (high << 32) | u64::from(u32_at(0x04)?)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn superblock_geometry() {
        let mut superblock = [0u8; 1024];
        superblock[0x38] = 0x53;
        superblock[0x39] = 0xEF;
        superblock[0x18] = 2; // 4096-byte blocks
        superblock[0x04..0x08].copy_from_slice(&16384u32.to_le_bytes());
        assert_eq!(parse_ext4_geometry(&superblock), Some((4096, 16384)));
        superblock[0x38] = 0;
        assert_eq!(parse_ext4_geometry(&superblock), None);
    }
}
