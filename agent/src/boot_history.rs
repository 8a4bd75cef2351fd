//! The list of boots kept on STATE, one JSON object per line.
//!
//! Each boot appends one record, keyed by the kernel's boot id, so an agent restart within
//! the same boot adds nothing. Operators read it through `Machine.Status`; it is also the
//! plainest evidence that STATE persists across reboots.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::system::Identity;

/// One boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// The kernel's boot id.
    pub boot_id: String,
    /// Slot booted.
    pub slot: String,
    /// OS version booted.
    pub os_version: String,
    /// Seconds since the Unix epoch.
    pub booted_at: i64,
}

impl BootRecord {
    /// The record of the current boot.
    pub fn now(identity: &Identity) -> BootRecord {
        let uptime = crate::system::uptime_seconds() as i64;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs() as i64)
            .unwrap_or(0);
        BootRecord {
            boot_id: identity.boot_id.clone(),
            slot: identity.slot.clone(),
            os_version: identity.os_version.clone(),
            booted_at: epoch - uptime,
        }
    }
}

/// The history file.
#[derive(Debug, Clone)]
pub struct BootHistory {
    path: PathBuf,
}

impl BootHistory {
    /// A history stored at `path`.
    pub fn new(path: PathBuf) -> BootHistory {
        BootHistory { path }
    }

    /// Where it is stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every readable record, oldest first. Lines that do not parse (a torn last line after
    /// a power cut) are skipped.
    pub fn records(&self) -> Vec<BootRecord> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Appends `record` unless its boot is already recorded; true when appended. The line
    /// is written with one `write` and synced, so a power cut leaves at most a torn line.
    pub fn record(&self, record: &BootRecord) -> std::io::Result<bool> {
        if self
            .records()
            .iter()
            .any(|known| known.boot_id == record.boot_id)
        {
            return Ok(false);
        }
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> BootRecord {
        BootRecord {
            boot_id: id.into(),
            slot: "a".into(),
            os_version: "1".into(),
            booted_at: 5,
        }
    }

    #[test]
    fn a_boot_is_recorded_once_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let history = BootHistory::new(dir.path().join("lib/boots.jsonl"));
        assert!(history.record(&record("one")).unwrap());
        assert!(!history.record(&record("one")).unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(history.path())
            .unwrap()
            .write_all(b"{\"boot_")
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(history.path())
            .unwrap()
            .write_all(b"\n")
            .unwrap();
        assert!(history.record(&record("two")).unwrap());
        let ids: Vec<_> = history.records().into_iter().map(|r| r.boot_id).collect();
        assert_eq!(ids, ["one", "two"]);
    }
}
