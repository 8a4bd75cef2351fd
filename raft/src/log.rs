//! The Raft log on STATE.
//!
//! A directory holds:
//! - `log`: the entries, each a record of a 4-byte length, a 4-byte CRC-32 of the payload,
//!   and the entry as JSON; appends are synced (`fdatasync`) before openraft is told they
//!   are done, which is what lets a node acknowledge them to the leader;
//! - `vote`, `committed` and `purged`: small JSON files replaced atomically.
//!
//! At open, the log is read back record by record; a record that is cut short or whose
//! checksum fails (a power cut in the middle of an append that was never acknowledged)
//! ends the log there, and the file is cut to that length. Entries are also kept in memory
//! (the control plane's log is small); once more than [`COMPACT_AFTER`] purged entries sit
//! at the front of the file, the rest is rewritten to a new file that replaces it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use tokio::sync::Mutex;

use crate::durable;
use crate::types::ControlPlane;

/// Purged entries left at the front of the file before it is rewritten without them.
pub const COMPACT_AFTER: usize = 1024;

type NodeId = u64;
type Error = StorageError<NodeId>;

/// The log, shared between the writer openraft drives and the readers it asks for.
#[derive(Clone)]
pub struct DiskLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    /// Each entry present, and the byte offset of its record.
    entries: BTreeMap<u64, (Entry<ControlPlane>, u64)>,
    /// Where the next record goes.
    end: u64,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    /// Records of purged entries still at the front of the file.
    purged_records: usize,
}

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// Entries read back.
    pub entries: usize,
    /// Bytes cut off the end: a record a power cut left unfinished.
    pub torn_bytes: u64,
}

impl DiskLog {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<(DiskLog, Opened)> {
        std::fs::create_dir_all(dir)?;
        let vote: Option<Vote<NodeId>> = read_saved(dir, "vote")?;
        let committed: Option<LogId<NodeId>> = read_saved(dir, "committed")?.flatten();
        let purged: Option<LogId<NodeId>> = read_saved(dir, "purged")?;

        let path = dir.join("log");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let length = file.metadata()?.len();
        let mut bytes = Vec::with_capacity(length as usize);
        file.read_to_end(&mut bytes)?;
        let mut entries = BTreeMap::new();
        let mut offset = 0usize;
        let mut purged_records = 0;
        while let Some((entry, size)) = read_record(&bytes[offset..]) {
            let index = entry.log_id.index;
            if purged.is_some_and(|p| index <= p.index) {
                purged_records += 1;
            } else {
                entries.insert(index, (entry, offset as u64));
            }
            offset += size;
        }
        let torn_bytes = length - offset as u64;
        if torn_bytes > 0 {
            file.set_len(offset as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        let opened = Opened {
            entries: entries.len(),
            torn_bytes,
        };
        let inner = Inner {
            dir: dir.to_owned(),
            file,
            entries,
            end: offset as u64,
            vote,
            committed,
            purged,
            purged_records,
        };
        Ok((
            DiskLog {
                inner: Arc::new(Mutex::new(inner)),
            },
            opened,
        ))
    }
}

impl DiskLog {
    /// The last log index known committed (0 before any), for status reports.
    pub async fn committed_index(&self) -> u64 {
        self.inner
            .lock()
            .await
            .committed
            .map_or(0, |committed| committed.index)
    }
}

/// A small JSON file the log saved, or `None` before it was first saved.
fn read_saved<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    let Some(bytes) = durable::read(dir, name)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid(format!("{}: {e}", dir.join(name).display())))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// One record at the start of `bytes`, and its size; `None` at the end or at a record
/// that is incomplete or damaged.
fn read_record(bytes: &[u8]) -> Option<(Entry<ControlPlane>, usize)> {
    let header = bytes.get(..8)?;
    let length = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let checksum = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let payload = bytes.get(8..8 + length)?;
    if crc32fast::hash(payload) != checksum {
        return None;
    }
    let entry = serde_json::from_slice(payload).ok()?;
    Some((entry, 8 + length))
}

fn record(entry: &Entry<ControlPlane>) -> Vec<u8> {
    let payload = serde_json::to_vec(entry).expect("log entries serialise");
    let mut record = Vec::with_capacity(8 + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

fn write_error(error: &io::Error) -> Error {
    StorageIOError::write_logs(AnyError::new(error)).into()
}

impl Inner {
    fn save(&self, name: &str, value: &impl serde::Serialize) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).expect("log metadata serialises");
        durable::replace(&self.dir, name, &bytes)
    }

    /// Rewrites the file with only the entries present, once enough purged ones pile up.
    fn compact(&mut self) -> io::Result<()> {
        if self.purged_records < COMPACT_AFTER {
            return Ok(());
        }
        let mut rewritten = Vec::new();
        let mut offsets = BTreeMap::new();
        for (index, (entry, _)) in &self.entries {
            offsets.insert(*index, rewritten.len() as u64);
            rewritten.extend_from_slice(&record(entry));
        }
        durable::replace(&self.dir, "log", &rewritten)?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join("log"))?;
        self.file.seek(SeekFrom::End(0))?;
        for (index, offset) in offsets {
            if let Some(slot) = self.entries.get_mut(&index) {
                slot.1 = offset;
            }
        }
        self.end = rewritten.len() as u64;
        self.purged_records = 0;
        Ok(())
    }
}

impl RaftLogReader<ControlPlane> for DiskLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<ControlPlane>>, Error> {
        let inner = self.inner.lock().await;
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (entry, _))| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<ControlPlane> for DiskLog {
    type LogReader = DiskLog;

    async fn get_log_state(&mut self) -> Result<LogState<ControlPlane>, Error> {
        let inner = self.inner.lock().await;
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|(entry, _)| *entry.get_log_id());
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last.or(inner.purged),
        })
    }

    async fn get_log_reader(&mut self) -> DiskLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        inner
            .save("vote", vote)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Error> {
        Ok(self.inner.lock().await.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        inner
            .save("committed", &committed)
            .map_err(|e| write_error(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, Error> {
        Ok(self.inner.lock().await.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<ControlPlane>,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<ControlPlane>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut bytes = Vec::new();
        let mut added = Vec::new();
        for entry in entries {
            let offset = inner.end + bytes.len() as u64;
            bytes.extend_from_slice(&record(&entry));
            added.push((entry, offset));
        }
        let written = inner
            .file
            .write_all(&bytes)
            .and_then(|()| inner.file.sync_data());
        if let Err(error) = written {
            // Leave the file as it was before this append: nothing of it was acknowledged.
            let end = inner.end;
            let _ = inner.file.set_len(end);
            let _ = inner.file.seek(SeekFrom::Start(end));
            let message = error.to_string();
            callback.log_io_completed(Err(io::Error::new(error.kind(), message)));
            return Err(write_error(&error));
        }
        inner.end += bytes.len() as u64;
        for (entry, offset) in added {
            inner.entries.insert(entry.log_id.index, (entry, offset));
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        let Some(offset) = inner.entries.get(&log_id.index).map(|(_, offset)| *offset) else {
            return Ok(());
        };
        inner
            .file
            .set_len(offset)
            .and_then(|()| inner.file.sync_data())
            .map_err(|e| write_error(&e))?;
        inner
            .file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| write_error(&e))?;
        inner.end = offset;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let mut inner = self.inner.lock().await;
        inner.save("purged", &log_id).map_err(|e| write_error(&e))?;
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.purged_records += inner.entries.len();
        inner.entries = kept;
        inner.compact().map_err(|e| write_error(&e))?;
        Ok(())
    }
}
