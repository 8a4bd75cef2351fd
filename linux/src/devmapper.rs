//! Just enough of the device-mapper ioctl interface to create, inspect and remove a
//! read-only dm-verity device, without libdevmapper or veritysetup in the image.
//!
//! Every command is one `struct dm_ioctl` (312 bytes), optionally followed by a payload
//! (for TABLE_LOAD: one `struct dm_target_spec` plus the target's parameter string), sent
//! to `/dev/mapper/control`. Layouts follow `<linux/dm-ioctl.h>`, interface version 4.

use std::fs::File;
use std::os::fd::AsRawFd;

use keelson_disk::verity::VerityParams;

const DM_IOCTL_SIZE: usize = 312;
const TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const NAME_OFFSET: usize = 48;
const UUID_OFFSET: usize = NAME_OFFSET + DM_NAME_LEN;

const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;

/// ioctl command numbers (the `nr` of `_IOWR(0xfd, nr, struct dm_ioctl)`).
#[derive(Debug, Clone, Copy)]
enum Command {
    DevCreate = 3,
    DevRemove = 4,
    DevSuspend = 6,
    TableLoad = 9,
    TableStatus = 12,
}

/// A mapped device that was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedDevice {
    /// The device-mapper name.
    pub name: String,
    /// Device number.
    pub major: u32,
    /// Device number; the node is `/dev/dm-<minor>`.
    pub minor: u32,
}

impl MappedDevice {
    /// The node devtmpfs creates for it.
    pub fn path(&self) -> String {
        format!("/dev/dm-{}", self.minor)
    }
}

/// A device-mapper failure, naming the step.
#[derive(Debug)]
pub struct DmError {
    /// What was being done.
    pub step: String,
    /// The errno.
    pub source: std::io::Error,
}

impl std::fmt::Display for DmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device-mapper {}: {}", self.step, self.source)
    }
}

/// Creates `name` as a read-only dm-verity device over `device` (`MAJOR:MINOR`), whose
/// data and hash tree are both on that device as described by `verity`.
pub fn create_verity(
    name: &str,
    uuid: &str,
    device: &str,
    verity: &VerityParams,
) -> Result<MappedDevice, DmError> {
    let control = open_control()?;
    let created = run(&control, Command::DevCreate, name, uuid, 0, &[])?;
    let dev = read_u64(&created, 40);
    // Linux's new_encode_dev layout.
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    let sectors = verity.data_blocks * (keelson_disk::verity::BLOCK_SIZE / 512);
    let table = target_spec(0, sectors, "verity", &verity.table_params(device));
    let loaded = run(
        &control,
        Command::TableLoad,
        name,
        "",
        DM_READONLY_FLAG,
        &table,
    )
    .and_then(|_| run(&control, Command::DevSuspend, name, "", 0, &[])); // resume
    if let Err(error) = loaded {
        let _ = run(&control, Command::DevRemove, name, "", 0, &[]);
        return Err(error);
    }
    Ok(MappedDevice {
        name: name.to_owned(),
        major,
        minor,
    })
}

/// The status line of a verity device: `V` while every block read so far verified, `C`
/// once a corrupted block was found.
pub fn verity_status(name: &str) -> Result<String, DmError> {
    let control = open_control()?;
    let reply = run(&control, Command::TableStatus, name, "", 0, &[])?;
    Ok(first_target_text(&reply))
}

/// The loaded table of a device (its parameters), for reporting.
pub fn table(name: &str) -> Result<String, DmError> {
    let control = open_control()?;
    let reply = run(
        &control,
        Command::TableStatus,
        name,
        "",
        DM_STATUS_TABLE_FLAG,
        &[],
    )?;
    Ok(first_target_text(&reply))
}

fn open_control() -> Result<File, DmError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|source| DmError {
            step: "open /dev/mapper/control (is dm_mod loaded?)".into(),
            source,
        })
}

/// Builds a `dm_target_spec` followed by its NUL-terminated, 8-byte-padded parameters.
fn target_spec(start_sector: u64, sectors: u64, target: &str, params: &str) -> Vec<u8> {
    let mut spec = vec![0u8; TARGET_SPEC_SIZE];
    write_bytes(&mut spec, 0, &start_sector.to_le_bytes());
    write_bytes(&mut spec, 8, &sectors.to_le_bytes());
    write_bytes(&mut spec, 24, target.as_bytes());
    spec.extend_from_slice(params.as_bytes());
    spec.push(0);
    spec.resize(spec.len().div_ceil(8) * 8, 0);
    let next = spec.len() as u32;
    write_bytes(&mut spec, 20, &next.to_le_bytes());
    spec
}

/// Sends one command; returns the whole reply buffer (header plus data).
fn run(
    control: &File,
    command: Command,
    name: &str,
    uuid: &str,
    flags: u32,
    payload: &[u8],
) -> Result<Vec<u8>, DmError> {
    // Room for the kernel's reply (status text) beyond what is sent.
    let size = DM_IOCTL_SIZE + payload.len().max(16 * 1024);
    let mut buffer = vec![0u8; size];
    write_bytes(&mut buffer, 0, &4u32.to_le_bytes()); // interface version 4.0.0
    write_bytes(&mut buffer, 12, &(size as u32).to_le_bytes()); // data_size
    write_bytes(&mut buffer, 16, &(DM_IOCTL_SIZE as u32).to_le_bytes()); // data_start
    let targets = u32::from(!payload.is_empty());
    write_bytes(&mut buffer, 20, &targets.to_le_bytes()); // target_count
    write_bytes(&mut buffer, 28, &flags.to_le_bytes());
    write_bytes(
        &mut buffer,
        NAME_OFFSET,
        name.as_bytes()
            .get(..DM_NAME_LEN - 1)
            .unwrap_or(name.as_bytes()),
    );
    write_bytes(
        &mut buffer,
        UUID_OFFSET,
        uuid.as_bytes()
            .get(..DM_UUID_LEN - 1)
            .unwrap_or(uuid.as_bytes()),
    );
    write_bytes(&mut buffer, DM_IOCTL_SIZE, payload);

    // _IOWR(0xfd, nr, struct dm_ioctl): direction read|write, size 312.
    let request = ((3u64 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | command as u64)
        as libc::c_ulong;
    // SAFETY: the buffer is a valid, writable dm_ioctl of `size` bytes as announced in data_size.
    let result = unsafe { libc::ioctl(control.as_raw_fd(), request as _, buffer.as_mut_ptr()) };
    if result < 0 {
        return Err(DmError {
            step: format!("{command:?} {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(buffer)
}

fn first_target_text(reply: &[u8]) -> String {
    let data_start = read_u32(reply, 16) as usize;
    let text_start = data_start + TARGET_SPEC_SIZE;
    let target = reply
        .get(data_start + 24..data_start + 40)
        .map(c_text)
        .unwrap_or_default();
    let params = reply.get(text_start..).map(c_text).unwrap_or_default();
    format!("{target} {params}").trim().to_owned()
}

fn c_text(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned()
}

fn write_bytes(buffer: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = buffer.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

fn read_u32(buffer: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(bytes) = buffer.get(at..at + 4) {
        raw.copy_from_slice(bytes);
    }
    u32::from_le_bytes(raw)
}

fn read_u64(buffer: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(bytes) = buffer.get(at..at + 8) {
        raw.copy_from_slice(bytes);
    }
    u64::from_le_bytes(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn target_spec_is_padded_and_points_past_itself() {
        let spec = target_spec(0, 16, "verity", "1 2 3");
        assert_eq!(spec.len() % 8, 0);
        assert_eq!(read_u32(&spec, 20) as usize, spec.len());
        assert_eq!(&spec[24..30], b"verity");
        assert_eq!(&spec[40..45], b"1 2 3");
        assert_eq!(spec[45], 0);
    }
}
