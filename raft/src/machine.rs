//! The state machine: the store, the last entry applied and the last membership, with
//! snapshots kept on STATE.
//!
//! The state itself lives in memory; a restarted node rebuilds it from its last snapshot
//! (`dir/snapshot`, replaced atomically) and openraft replays the committed entries after
//! it. A snapshot is the store's own snapshot (`keelson_store::Store::snapshot`); the file
//! adds openraft's metadata beside it.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keelson_store::Store;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::durable;
use crate::types::{Applied, ControlPlane, NodeAddr};

type NodeId = u64;
type Error = StorageError<NodeId>;
type Meta = SnapshotMeta<NodeId, NodeAddr>;

/// Events kept for watches.
const HISTORY: usize = keelson_store::store::DEFAULT_HISTORY;

/// The state machine, shared with the snapshot builder and with readers (the API's gets,
/// lists and watches).
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    store: Store,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeAddr>,
    snapshot: Option<(Meta, Vec<u8>)>,
    snapshots_built: u64,
}

/// The snapshot file: openraft's metadata and the store's snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: Meta,
    store: serde_json::Value,
}

impl Machine {
    /// Opens the state machine in `dir`, from its last snapshot if there is one.
    pub fn open(dir: &Path) -> io::Result<Machine> {
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner {
            dir: dir.to_owned(),
            store: Store::new(HISTORY),
            applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(bytes) = durable::read(dir, "snapshot")? {
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join("snapshot").display()),
                )
            })?;
            let data = serde_json::to_vec(&file.store).expect("JSON values serialise");
            inner.restore(file.meta, data)?;
        }
        Ok(Machine {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Runs `read` over the store as it stands.
    pub async fn read<T>(&self, read: impl FnOnce(&Store) -> T) -> T {
        read(&self.inner.lock().await.store)
    }
}

impl Inner {
    /// Takes the state a snapshot describes.
    fn restore(&mut self, meta: Meta, data: Vec<u8>) -> io::Result<()> {
        self.store = Store::restore(&data, HISTORY)
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.snapshot = Some((meta, data));
        Ok(())
    }

    /// Keeps a snapshot on STATE, replacing the last one.
    fn keep(&mut self, meta: &Meta, data: &[u8]) -> io::Result<()> {
        let store: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let file = SnapshotFile {
            meta: meta.clone(),
            store,
        };
        let bytes = serde_json::to_vec(&file).expect("snapshots serialise");
        durable::replace(&self.dir, "snapshot", &bytes)
    }
}

fn snapshot_error(meta: Option<&Meta>, error: &io::Error) -> Error {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::new(error)).into()
}

impl RaftSnapshotBuilder<ControlPlane> for Machine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ControlPlane>, Error> {
        let mut inner = self.inner.lock().await;
        inner.snapshots_built += 1;
        let data = inner.store.snapshot();
        let last = inner.applied;
        let meta = Meta {
            last_log_id: last,
            last_membership: inner.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                last.map_or(0, |id| id.index),
                inner.snapshots_built
            ),
        };
        inner
            .keep(&meta, &data)
            .map_err(|e| snapshot_error(Some(&meta), &e))?;
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<ControlPlane> for Machine {
    type SnapshotBuilder = Machine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>), Error> {
        let inner = self.inner.lock().await;
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, Error>
    where
        I: IntoIterator<Item = Entry<ControlPlane>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let mut replies = Vec::new();
        for entry in entries {
            inner.applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Applied::Nothing,
                EntryPayload::Normal(command) => {
                    Applied::Store(inner.store.apply(entry.log_id.index, &command))
                }
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Applied::Nothing
                }
            };
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Machine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let data = snapshot.into_inner();
        let mut inner = self.inner.lock().await;
        inner
            .keep(meta, &data)
            .map_err(|e| snapshot_error(Some(meta), &e))?;
        inner.restore(meta.clone(), data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<ControlPlane>>, Error> {
        let inner = self.inner.lock().await;
        Ok(inner.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
