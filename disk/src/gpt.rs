//! GUID partition tables: encode, decode, and grow the last partition to the disk's end.
//!
//! The layout is the usual one: a protective MBR in LBA 0, the primary header in LBA 1, a
//! 128-entry array in LBAs 2–33, and at the end of the disk the backup array followed by the
//! backup header in the last LBA. Only 512-byte sectors are supported.
//!
//! Writing order matters when a disk is grown in place: [`write_table`] writes the backup
//! copy first and the primary last. If power fails in between, the old primary is still
//! intact and still points at the old (untouched) backup, so firmware and kernel see the
//! old, consistent table; the grow simply runs again on the next boot.

use std::io::{Read, Seek, SeekFrom, Write};

use uuid::Uuid;

/// Logical sector size this module reads and writes.
pub const SECTOR_SIZE: u64 = 512;
/// Number of entries in the partition entry array.
pub const ENTRY_COUNT: u32 = 128;
/// Size of one partition entry.
pub const ENTRY_SIZE: u32 = 128;
/// Sectors used by the entry array: 128 × 128 bytes = 32 sectors.
pub const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR_SIZE;
/// Partitions start on 1 MiB boundaries, as partitioning tools have done for years.
pub const ALIGNMENT_SECTORS: u64 = 2048;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
/// Length of a partition name in UTF-16 code units.
const NAME_UNITS: usize = 36;

/// What can go wrong reading or changing a partition table.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// The disk is too small to hold two tables and anything in between.
    #[error("disk of {sectors} sectors is too small for a GPT")]
    DiskTooSmall {
        /// Disk size in sectors.
        sectors: u64,
    },
    /// LBA 1 does not hold a GPT header.
    #[error("no GPT header at LBA 1: {reason}")]
    BadHeader {
        /// What was wrong with it.
        reason: String,
    },
    /// The entry array's checksum does not match the header.
    #[error("GPT partition entry array checksum mismatch (header says {expected:#010x}, array is {actual:#010x})")]
    BadEntries {
        /// CRC32 recorded in the header.
        expected: u32,
        /// CRC32 of the array as read.
        actual: u32,
    },
    /// A partition does not fit where it was asked to go.
    #[error("partition {name:?} of {bytes} bytes does not fit: {reason}")]
    NoSpace {
        /// Partition name.
        name: String,
        /// Requested size.
        bytes: u64,
        /// Why.
        reason: String,
    },
    /// All 128 entries are taken.
    #[error("the partition entry array is full")]
    TableFull,
    /// A partition name is longer than 36 UTF-16 code units.
    #[error("partition name {0:?} is longer than 36 UTF-16 code units")]
    NameTooLong(String),
    /// The partition to grow does not exist.
    #[error("no partition number {0}")]
    NoSuchPartition(u32),
    /// Only the partition that ends last on the disk can be grown.
    #[error("partition {0} is not the last partition on the disk; only the last one can grow")]
    NotLast(u32),
    /// Reading or writing the disk failed.
    #[error("I/O on the partition table failed: {0}")]
    Io(#[from] std::io::Error),
}

/// One used entry of the partition array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (its index in the entry array plus one).
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID (PARTUUID).
    pub unique_guid: Uuid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Partition name (PARTLABEL).
    pub name: String,
}

impl Partition {
    /// Byte offset of the partition on the disk.
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }

    /// Size of the partition in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR_SIZE
    }
}

/// A partition table, independent of where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// Size of the disk in sectors; decides where the backup table goes.
    pub disk_sectors: u64,
    /// Used entries, ordered by number.
    pub partitions: Vec<Partition>,
}

/// The bytes of a table, ready to be written at two places on the disk.
#[derive(Debug, Clone)]
pub struct EncodedGpt {
    /// Protective MBR, primary header and entry array: written at byte 0.
    pub primary: Vec<u8>,
    /// Backup entry array and backup header: written at [`EncodedGpt::backup_offset`].
    pub backup: Vec<u8>,
    /// Byte offset of the backup entry array.
    pub backup_offset: u64,
}

impl Gpt {
    /// An empty table for a disk of `disk_sectors` sectors.
    pub fn new(disk_sectors: u64, disk_guid: Uuid) -> Result<Gpt, GptError> {
        // MBR + header + 2 arrays + backup header, plus at least one aligned MiB.
        if disk_sectors < 2 * (ENTRY_ARRAY_SECTORS + 1) + 1 + ALIGNMENT_SECTORS * 2 {
            return Err(GptError::DiskTooSmall {
                sectors: disk_sectors,
            });
        }
        Ok(Gpt {
            disk_guid,
            disk_sectors,
            partitions: Vec::new(),
        })
    }

    /// First sector a partition may use.
    pub fn first_usable_lba(&self) -> u64 {
        2 + ENTRY_ARRAY_SECTORS
    }

    /// Last sector a partition may use.
    pub fn last_usable_lba(&self) -> u64 {
        self.disk_sectors - 2 - ENTRY_ARRAY_SECTORS
    }

    /// The partition with this name (PARTLABEL), if any.
    pub fn find(&self, name: &str) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|partition| partition.name == name)
    }

    /// Appends a partition of `bytes` bytes (rounded up to whole sectors) after the last
    /// one, aligned to 1 MiB, and returns it.
    pub fn append(
        &mut self,
        name: &str,
        type_guid: Uuid,
        unique_guid: Uuid,
        bytes: u64,
    ) -> Result<&Partition, GptError> {
        if name.encode_utf16().count() > NAME_UNITS {
            return Err(GptError::NameTooLong(name.to_owned()));
        }
        if self.partitions.len() >= ENTRY_COUNT as usize {
            return Err(GptError::TableFull);
        }
        let after = self.partitions.iter().map(|p| p.last_lba + 1).max();
        let start = align_up(after.unwrap_or(self.first_usable_lba()), ALIGNMENT_SECTORS);
        let sectors = bytes.div_ceil(SECTOR_SIZE);
        let no_space = |reason: String| GptError::NoSpace {
            name: name.to_owned(),
            bytes,
            reason,
        };
        if sectors == 0 {
            return Err(no_space("a partition needs at least one sector".into()));
        }
        let last = start + sectors - 1;
        if last > self.last_usable_lba() {
            return Err(no_space(format!(
                "it would end at LBA {last}, past the last usable LBA {}",
                self.last_usable_lba()
            )));
        }
        let number = self.partitions.iter().map(|p| p.number).max().unwrap_or(0) + 1;
        self.partitions.push(Partition {
            number,
            type_guid,
            unique_guid,
            first_lba: start,
            last_lba: last,
            attributes: 0,
            name: name.to_owned(),
        });
        Ok(&self.partitions[self.partitions.len() - 1])
    }

    /// Records that the disk now has `disk_sectors` sectors (it was grown, e.g. a VM disk
    /// resized or an image written to a larger drive). The backup table moves to the new end.
    pub fn set_disk_sectors(&mut self, disk_sectors: u64) -> Result<(), GptError> {
        let highest_used = self
            .partitions
            .iter()
            .map(|p| p.last_lba)
            .max()
            .unwrap_or(0);
        if disk_sectors < highest_used + 2 + ENTRY_ARRAY_SECTORS {
            return Err(GptError::DiskTooSmall {
                sectors: disk_sectors,
            });
        }
        self.disk_sectors = disk_sectors;
        Ok(())
    }

    /// Grows partition `number`, which must end last on the disk, to the last usable sector.
    /// Returns the new size in bytes, or `None` when it already reaches the end (so that
    /// calling it on every boot is harmless).
    pub fn grow_to_end(&mut self, number: u32) -> Result<Option<u64>, GptError> {
        let highest_end = self
            .partitions
            .iter()
            .map(|p| p.last_lba)
            .max()
            .unwrap_or(0);
        let last_usable = self.last_usable_lba();
        let partition = self
            .partitions
            .iter_mut()
            .find(|p| p.number == number)
            .ok_or(GptError::NoSuchPartition(number))?;
        if partition.last_lba != highest_end {
            return Err(GptError::NotLast(number));
        }
        if partition.last_lba >= last_usable {
            return Ok(None);
        }
        partition.last_lba = last_usable;
        Ok(Some(partition.size_bytes()))
    }

    /// Encodes the protective MBR, both headers and both entry arrays.
    pub fn encode(&self) -> EncodedGpt {
        let entries = self.encode_entries();
        let entries_crc = crc32fast::hash(&entries);
        let backup_header_lba = self.disk_sectors - 1;
        let backup_entries_lba = backup_header_lba - ENTRY_ARRAY_SECTORS;

        let mut primary = vec![0u8; ((2 + ENTRY_ARRAY_SECTORS) * SECTOR_SIZE) as usize];
        self.encode_protective_mbr(&mut primary[..SECTOR_SIZE as usize]);
        let header = self.encode_header(1, backup_header_lba, 2, entries_crc);
        primary[SECTOR_SIZE as usize..SECTOR_SIZE as usize + header.len()].copy_from_slice(&header);
        primary[2 * SECTOR_SIZE as usize..].copy_from_slice(&entries);

        let mut backup = entries;
        let header = self.encode_header(backup_header_lba, 1, backup_entries_lba, entries_crc);
        let mut header_sector = vec![0u8; SECTOR_SIZE as usize];
        header_sector[..header.len()].copy_from_slice(&header);
        backup.extend_from_slice(&header_sector);

        EncodedGpt {
            primary,
            backup,
            backup_offset: backup_entries_lba * SECTOR_SIZE,
        }
    }

    /// Decodes the primary table from the first 34 sectors of a disk of `disk_sectors`
    /// sectors. The header's own idea of where the backup lives is ignored: a grown disk
    /// still carries the old one until [`write_table`] rewrites it.
    pub fn decode(first_sectors: &[u8], disk_sectors: u64) -> Result<Gpt, GptError> {
        let needed = ((2 + ENTRY_ARRAY_SECTORS) * SECTOR_SIZE) as usize;
        let bad = |reason: &str| GptError::BadHeader {
            reason: reason.to_owned(),
        };
        let header = first_sectors
            .get(SECTOR_SIZE as usize..SECTOR_SIZE as usize + HEADER_SIZE as usize)
            .ok_or_else(|| bad("the disk is shorter than one header"))?;
        if &header[0..8] != SIGNATURE {
            return Err(bad("signature \"EFI PART\" is missing"));
        }
        let header_size = le_u32(header, 12);
        if header_size != HEADER_SIZE {
            return Err(bad(&format!("unsupported header size {header_size}")));
        }
        let mut zeroed = header.to_vec();
        zeroed[16..20].fill(0);
        if crc32fast::hash(&zeroed) != le_u32(header, 16) {
            return Err(bad("header checksum mismatch"));
        }
        let entries_lba = le_u64(header, 72);
        let entry_count = le_u32(header, 80);
        let entry_size = le_u32(header, 84);
        if entries_lba != 2 || entry_count != ENTRY_COUNT || entry_size != ENTRY_SIZE {
            return Err(bad(&format!(
                "unsupported entry array (LBA {entries_lba}, {entry_count} entries of {entry_size} bytes)"
            )));
        }
        let entries = first_sectors
            .get(2 * SECTOR_SIZE as usize..needed)
            .ok_or_else(|| bad("the disk is shorter than the entry array"))?;
        let expected = le_u32(header, 88);
        let actual = crc32fast::hash(entries);
        if expected != actual {
            return Err(GptError::BadEntries { expected, actual });
        }
        let mut disk_guid_bytes = [0u8; 16];
        disk_guid_bytes.copy_from_slice(&header[56..72]);
        let mut partitions = Vec::new();
        for (index, entry) in entries.chunks_exact(ENTRY_SIZE as usize).enumerate() {
            let type_guid = guid_from_disk(&entry[0..16]);
            if type_guid.is_nil() {
                continue;
            }
            let units: Vec<u16> = entry[56..128]
                .chunks_exact(2)
                .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
                .take_while(|&unit| unit != 0)
                .collect();
            partitions.push(Partition {
                number: index as u32 + 1,
                type_guid,
                unique_guid: guid_from_disk(&entry[16..32]),
                first_lba: le_u64(entry, 32),
                last_lba: le_u64(entry, 40),
                attributes: le_u64(entry, 48),
                name: String::from_utf16_lossy(&units),
            });
        }
        let gpt = Gpt {
            disk_guid: Uuid::from_bytes_le(disk_guid_bytes),
            disk_sectors,
            partitions,
        };
        if gpt
            .partitions
            .iter()
            .any(|p| p.last_lba > gpt.disk_sectors.saturating_sub(1))
        {
            return Err(bad("a partition ends past the end of the disk"));
        }
        Ok(gpt)
    }

    fn encode_entries(&self) -> Vec<u8> {
        let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
        for partition in &self.partitions {
            let start = (partition.number as usize - 1) * ENTRY_SIZE as usize;
            let entry = &mut entries[start..start + ENTRY_SIZE as usize];
            entry[0..16].copy_from_slice(&partition.type_guid.to_bytes_le());
            entry[16..32].copy_from_slice(&partition.unique_guid.to_bytes_le());
            entry[32..40].copy_from_slice(&partition.first_lba.to_le_bytes());
            entry[40..48].copy_from_slice(&partition.last_lba.to_le_bytes());
            entry[48..56].copy_from_slice(&partition.attributes.to_le_bytes());
            for (slot, unit) in entry[56..128]
                .chunks_exact_mut(2)
                .zip(partition.name.encode_utf16())
            {
                slot.copy_from_slice(&unit.to_le_bytes());
            }
        }
        entries
    }

    fn encode_header(
        &self,
        my_lba: u64,
        alternate_lba: u64,
        entries_lba: u64,
        entries_crc: u32,
    ) -> Vec<u8> {
        let mut header = vec![0u8; HEADER_SIZE as usize];
        header[0..8].copy_from_slice(SIGNATURE);
        header[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
        header[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        header[24..32].copy_from_slice(&my_lba.to_le_bytes());
        header[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        header[40..48].copy_from_slice(&self.first_usable_lba().to_le_bytes());
        header[48..56].copy_from_slice(&self.last_usable_lba().to_le_bytes());
        header[56..72].copy_from_slice(&self.disk_guid.to_bytes_le());
        header[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        header[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        header[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        header[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        header
    }

    fn encode_protective_mbr(&self, sector: &mut [u8]) {
        // One partition of type 0xEE covering the disk (or as much as 32 bits can say), so
        // that MBR-only tools see the disk as in use rather than empty.
        let entry = &mut sector[446..462];
        entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        entry[4] = 0xEE;
        entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        entry[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = u32::try_from(self.disk_sectors - 1).unwrap_or(u32::MAX);
        entry[12..16].copy_from_slice(&size.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }
}

/// Reads the primary table of a disk (an image file or a block device) of `disk_bytes` bytes.
pub fn read_table<D: Read + Seek>(disk: &mut D, disk_bytes: u64) -> Result<Gpt, GptError> {
    let mut first = vec![0u8; ((2 + ENTRY_ARRAY_SECTORS) * SECTOR_SIZE) as usize];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut first)?;
    Gpt::decode(&first, disk_bytes / SECTOR_SIZE)
}

/// Writes both copies of the table: the backup first, then the primary (see the module
/// documentation for why this order survives a power cut).
pub fn write_table<D: Write + Seek>(disk: &mut D, gpt: &Gpt) -> Result<(), GptError> {
    let encoded = gpt.encode();
    disk.seek(SeekFrom::Start(encoded.backup_offset))?;
    disk.write_all(&encoded.backup)?;
    disk.flush()?;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&encoded.primary)?;
    disk.flush()?;
    Ok(())
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

fn guid_from_disk(bytes: &[u8]) -> Uuid {
    let mut raw = [0u8; 16];
    raw.copy_from_slice(bytes);
    Uuid::from_bytes_le(raw)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;
    use std::io::Cursor;

    const MIB: u64 = 1024 * 1024;

    fn sample(disk_bytes: u64) -> Gpt {
        let mut gpt = Gpt::new(disk_bytes / SECTOR_SIZE, Uuid::from_u128(7)).unwrap();
        gpt.append(
            layout::ESP_LABEL,
            layout::ESP_TYPE,
            Uuid::from_u128(1),
            8 * MIB,
        )
        .unwrap();
        gpt.append(
            layout::STATE_LABEL,
            layout::LINUX_DATA_TYPE,
            Uuid::from_u128(2),
            4 * MIB,
        )
        .unwrap();
        gpt
    }

    #[test]
    fn encode_then_decode_gives_the_same_table() {
        let gpt = sample(32 * MIB);
        let mut disk = Cursor::new(vec![0u8; 32 * MIB as usize]);
        write_table(&mut disk, &gpt).unwrap();
        let read = read_table(&mut disk, 32 * MIB).unwrap();
        assert_eq!(read, gpt);
        assert_eq!(
            read.find(layout::STATE_LABEL).unwrap().first_lba,
            2048 + 8 * 2048
        );
    }

    #[test]
    fn partitions_are_mib_aligned_and_inside_the_usable_range() {
        let gpt = sample(32 * MIB);
        for partition in &gpt.partitions {
            assert_eq!(partition.first_lba % ALIGNMENT_SECTORS, 0);
            assert!(partition.last_lba <= gpt.last_usable_lba());
        }
    }

    #[test]
    fn growing_moves_the_backup_and_extends_the_last_partition() {
        let mut disk = Cursor::new(vec![0u8; 32 * MIB as usize]);
        write_table(&mut disk, &sample(32 * MIB)).unwrap();
        disk.get_mut().resize(64 * MIB as usize, 0);

        let mut gpt = read_table(&mut disk, 64 * MIB).unwrap();
        gpt.set_disk_sectors(64 * MIB / SECTOR_SIZE).unwrap();
        let grown = gpt.grow_to_end(2).unwrap().unwrap();
        write_table(&mut disk, &gpt).unwrap();

        let read = read_table(&mut disk, 64 * MIB).unwrap();
        assert_eq!(read.partitions[1].last_lba, 64 * MIB / SECTOR_SIZE - 34);
        assert_eq!(read.partitions[1].size_bytes(), grown);
        // The backup header sits in the new last sector and checks out.
        let last = &disk.get_ref()[(64 * MIB - SECTOR_SIZE) as usize..];
        assert_eq!(&last[0..8], SIGNATURE);
        // Growing again is a no-op.
        let mut again = read;
        assert_eq!(again.grow_to_end(2).unwrap(), None);
    }

    #[test]
    fn only_the_last_partition_may_grow() {
        let mut gpt = sample(32 * MIB);
        assert!(matches!(gpt.grow_to_end(1), Err(GptError::NotLast(1))));
        assert!(matches!(
            gpt.grow_to_end(9),
            Err(GptError::NoSuchPartition(9))
        ));
    }

    #[test]
    fn corruption_is_detected() {
        let mut disk = Cursor::new(vec![0u8; 32 * MIB as usize]);
        write_table(&mut disk, &sample(32 * MIB)).unwrap();
        disk.get_mut()[2 * SECTOR_SIZE as usize + 60] ^= 1;
        assert!(matches!(
            read_table(&mut disk, 32 * MIB),
            Err(GptError::BadEntries { .. })
        ));
        disk.get_mut()[SECTOR_SIZE as usize + 40] ^= 1;
        assert!(matches!(
            read_table(&mut disk, 32 * MIB),
            Err(GptError::BadHeader { .. })
        ));
    }

    #[test]
    fn a_partition_that_does_not_fit_is_refused() {
        let mut gpt = Gpt::new(16 * MIB / SECTOR_SIZE, Uuid::nil()).unwrap();
        let error = gpt
            .append("big", layout::LINUX_DATA_TYPE, Uuid::nil(), 64 * MIB)
            .unwrap_err();
        assert!(
            error.to_string().contains("past the last usable LBA"),
            "{error}"
        );
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        bolero::check!().with_type::<Vec<u8>>().for_each(|bytes| {
            let _ = Gpt::decode(bytes, 1 << 20);
        });
    }
}
