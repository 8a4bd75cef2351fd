//! What the machine is: identity, mounts, processes and boot loader facts.
//!
//! Each fact has a pure parser (tested on the host with sample text) and a thin reader of
//! the file it comes from. Readers never fail: a missing fact is reported empty, since a
//! status call should say as much as it can.

use std::path::Path;

use keelson_api::machine::{Mount, ProcessInfo};

/// Who this boot is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `a` or `b`, from `keelson.slot=` (empty when not booted by Keelson).
    pub slot: String,
    /// `VERSION_ID` from `/etc/os-release`.
    pub os_version: String,
    /// The kernel's random id of this boot.
    pub boot_id: String,
    /// The verity root hash the root was checked against.
    pub root_hash: String,
}

impl Identity {
    /// Reads the identity of the running system.
    pub fn read() -> Identity {
        let cmdline = read("/proc/cmdline");
        let value = |key: &str| {
            keelson_contract::cmdline::value(&cmdline, key)
                .unwrap_or_default()
                .to_owned()
        };
        Identity {
            slot: value("keelson.slot"),
            os_version: os_release_field(&read("/etc/os-release"), "VERSION_ID")
                .unwrap_or_else(|| "unknown".into()),
            boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_owned(),
            root_hash: value("keelson.roothash"),
        }
    }

    /// The running slot, when Keelson's loader entry named one.
    pub fn slot_letter(&self) -> Option<keelson_disk::layout::Slot> {
        keelson_disk::layout::Slot::from_letter(&self.slot)
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A field of an os-release file, unquoted.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(name, _)| name.trim() == key)
        .map(|(_, value)| value.trim().trim_matches('"').trim_matches('\'').to_owned())
}

/// The machine's hostname.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Seconds since boot.
pub fn uptime_seconds() -> u64 {
    read("/proc/uptime")
        .split_ascii_whitespace()
        .next()
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .map(|seconds| seconds as u64)
        .unwrap_or(0)
}

/// The kernel release.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|name| name.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Device or pseudo-filesystem name.
    pub source: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount options.
    pub options: String,
}

/// Parses `/proc/self/mounts`. Octal escapes (`\040` for a space) are decoded.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            Some(MountEntry {
                source: unescape(fields.next()?),
                mount_point: unescape(fields.next()?),
                fs_type: fields.next()?.to_owned(),
                options: fields.next()?.to_owned(),
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The mounts of `/` and `/var` (the last mount on each point, which is the visible one).
pub fn key_mounts() -> Vec<Mount> {
    let entries = parse_mounts(&read("/proc/self/mounts"));
    ["/", "/var"]
        .iter()
        .filter_map(|point| {
            entries
                .iter()
                .rev()
                .find(|entry| entry.mount_point == *point)
        })
        .map(|entry| {
            let (size_bytes, available_bytes) =
                nix::sys::statvfs::statvfs(entry.mount_point.as_str())
                    .map(|stats| {
                        let fragment = stats.fragment_size();
                        (
                            stats.blocks() * fragment,
                            stats.blocks_available() * fragment,
                        )
                    })
                    .unwrap_or((0, 0));
            Mount {
                mount_point: entry.mount_point.clone(),
                source: entry.source.clone(),
                fs_type: entry.fs_type.clone(),
                read_only: entry.options.split(',').any(|option| option == "ro"),
                options: entry.options.clone(),
                size_bytes,
                available_bytes,
                device_bytes: device_bytes(&entry.source),
            }
        })
        .collect()
}

/// The size of a block device such as `/dev/vda4`, from sysfs.
fn device_bytes(source: &str) -> u64 {
    let Some(name) = source.strip_prefix("/dev/") else {
        return 0;
    };
    read(format!("/sys/class/block/{name}/size"))
        .trim()
        .parse::<u64>()
        .map(|sectors| sectors * 512)
        .unwrap_or(0)
}

/// `VmRSS` from a `/proc/PID/status` text, in bytes.
pub fn parse_rss_bytes(status: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Name, executable and memory of a process.
pub fn process_info(pid: i32) -> ProcessInfo {
    let proc = format!("/proc/{pid}");
    ProcessInfo {
        pid,
        name: read(format!("{proc}/comm")).trim().to_owned(),
        executable: std::fs::read_link(format!("{proc}/exe"))
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        rss_bytes: parse_rss_bytes(&read(format!("{proc}/status"))),
    }
}

/// The GUID under which systemd-boot stores its variables.
pub const LOADER_VENDOR_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Decodes an efivarfs file holding a UTF-16LE string: 4 bytes of attributes, then the
/// string, usually NUL-terminated.
pub fn decode_efi_string(raw: &[u8]) -> Option<String> {
    let payload = raw.get(4..)?;
    let units: Vec<u16> = payload
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// A systemd-boot variable (`LoaderInfo`, `LoaderEntrySelected`, …), if set.
pub fn loader_variable(name: &str) -> String {
    std::fs::read(format!(
        "/sys/firmware/efi/efivars/{name}-{LOADER_VENDOR_GUID}"
    ))
    .ok()
    .and_then(|raw| decode_efi_string(&raw))
    .unwrap_or_default()
}

/// The dm-verity verdict on the root: `verified`, `corrupted`, or empty when the root is
/// not a verity device (a development host).
pub fn root_verity() -> String {
    match keelson_linux::devmapper::verity_status(keelson_contract::devices::ROOT_DM_NAME) {
        Ok(status) => match status.split_ascii_whitespace().nth(1) {
            Some("V") => "verified".into(),
            Some("C") => "corrupted".into(),
            _ => status,
        },
        Err(_) => String::new(),
    }
}

/// How many times PID 1 has started the agent since boot (1 on a clean boot).
pub fn agent_starts() -> u32 {
    let reported = std::env::var(keelson_contract::pid1::AGENT_START_ENV).ok();
    keelson_contract::pid1::parse_agent_start(reported.as_deref()).unwrap_or(1)
}

/// Removes everything in `directory` (not the directory itself, not `lost+found`, and
/// nothing on another filesystem mounted beneath it); returns how many entries went.
pub fn wipe_directory(directory: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(directory)?.dev();
    let mut removed = 0;
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        if entry.file_name() == "lost+found" {
            continue;
        }
        let metadata = entry.path().symlink_metadata()?;
        if metadata.dev() != device {
            continue;
        }
        if metadata.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed += 1;
    }
    // The removals must reach the disk before PID 1 reboots.
    nix::unistd::sync();
    Ok(removed)
}

/// Asks PID 1 for a power action (`keelson_contract::pid1` signals) a moment from now, so
/// that the API response that caused it reaches the client first.
pub fn ask_pid1(signal: i32, what: &'static str) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tracing::info!("asking PID 1 to {what}");
        // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
        unsafe { libc::kill(1, signal) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiping_keeps_the_directory_and_lost_and_found() {
        let var = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(var.path().join("lib/keelson/config")).unwrap();
        std::fs::write(var.path().join("lib/keelson/config/machine.yaml"), "x").unwrap();
        std::fs::write(var.path().join("log"), "x").unwrap();
        std::fs::create_dir(var.path().join("lost+found")).unwrap();
        assert_eq!(wipe_directory(var.path()).unwrap(), 2);
        let left: Vec<_> = std::fs::read_dir(var.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found"]);
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "NAME=\"Keelson\"\nVERSION_ID=1.2.3\nPRETTY_NAME='Keelson 1.2.3'\n";
        assert_eq!(
            os_release_field(text, "VERSION_ID").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(os_release_field(text, "NAME").as_deref(), Some("Keelson"));
        assert_eq!(os_release_field(text, "ID"), None);
    }

    #[test]
    fn mounts_parse_with_escapes() {
        let text = "/dev/dm-0 / squashfs ro,relatime 0 0\n/dev/vda4 /var ext4 rw,nosuid 0 0\nx /a\\040b tmpfs rw 0 0\n";
        let mounts = parse_mounts(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].fs_type, "squashfs");
        assert_eq!(mounts[1].mount_point, "/var");
        assert_eq!(mounts[2].mount_point, "/a b");
    }

    #[test]
    fn rss_is_read_in_bytes() {
        assert_eq!(
            parse_rss_bytes("Name:\tinit\nVmRSS:\t    1234 kB\n"),
            1234 * 1024
        );
        assert_eq!(parse_rss_bytes("Name:\tkthreadd\n"), 0);
    }

    #[test]
    fn efi_strings_decode() {
        let mut raw = vec![6, 0, 0, 0];
        for unit in "keelson-a.conf".encode_utf16().chain([0]) {
            raw.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(decode_efi_string(&raw).as_deref(), Some("keelson-a.conf"));
        assert_eq!(decode_efi_string(&[1, 2]), None);
    }
}
