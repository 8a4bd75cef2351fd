//! The log and state machine on disk: openraft's storage conformance suite, and what a
//! power cut and a restart leave.

use std::io::Write;

use keelson_raft::log::DiskLog;
use keelson_raft::machine::Machine;
use keelson_raft::types::ControlPlane;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, LogId, RaftLogReader, StorageError, Vote};

struct OnDisk;

impl StoreBuilder<ControlPlane, DiskLog, Machine, tempfile::TempDir> for OnDisk {
    async fn build(&self) -> Result<(tempfile::TempDir, DiskLog, Machine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (log, _) = DiskLog::open(&dir.path().join("log")).expect("the log opens");
        let machine = Machine::open(&dir.path().join("machine")).expect("the machine opens");
        Ok((dir, log, machine))
    }
}

#[test]
fn the_disk_log_and_machine_pass_openrafts_storage_suite() {
    Suite::test_all(OnDisk).unwrap();
}

fn command_entry(term: u64, index: u64, name: &str) -> Entry<ControlPlane> {
    let object =
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(keelson_store::Command {
            at_millis: 0,
            op: keelson_store::Op::Apply(object),
        }),
    }
}

#[tokio::test]
async fn a_restart_finds_what_was_synced_and_cuts_off_a_torn_append() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    {
        let (mut log, opened) = DiskLog::open(&log_dir).unwrap();
        assert_eq!(opened.entries, 0);
        log.save_vote(&Vote::new(3, 7)).await.unwrap();
        let entries: Vec<_> = (1..=3)
            .map(|i| command_entry(3, i, &format!("n{i}")))
            .collect();
        log.blocking_append(entries).await.unwrap();
    }
    // A power cut in the middle of the next append: half a record at the end.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(log_dir.join("log"))
        .unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(file);

    let (mut log, opened) = DiskLog::open(&log_dir).unwrap();
    assert_eq!(opened.entries, 3);
    assert_eq!(opened.torn_bytes, 9);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|id| id.index), Some(3));
    // The log goes on from where it was cut.
    log.blocking_append([command_entry(3, 4, "n4")])
        .await
        .unwrap();
    let (mut reopened, opened) = DiskLog::open(&log_dir).unwrap();
    assert_eq!((opened.entries, opened.torn_bytes), (4, 0));
    let read = reopened.try_get_log_entries(1..5).await.unwrap();
    assert_eq!(read.len(), 4);
}

#[tokio::test]
async fn purged_entries_are_compacted_away_and_stay_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let total = keelson_raft::log::COMPACT_AFTER as u64 + 10;
    {
        let (mut log, _) = DiskLog::open(&log_dir).unwrap();
        let entries: Vec<_> = (1..=total).map(|i| command_entry(1, i, "n")).collect();
        log.blocking_append(entries).await.unwrap();
        let before = std::fs::metadata(log_dir.join("log")).unwrap().len();
        log.purge(LogId::new(
            openraft::CommittedLeaderId::new(1, 1),
            total - 5,
        ))
        .await
        .unwrap();
        let after = std::fs::metadata(log_dir.join("log")).unwrap().len();
        assert!(after * 100 < before, "{after} bytes left of {before}");
    }
    let (mut log, opened) = DiskLog::open(&log_dir).unwrap();
    assert_eq!(opened.entries, 5);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(total - 5));
    assert_eq!(state.last_log_id.map(|id| id.index), Some(total));
}

#[tokio::test]
async fn the_machine_resumes_from_its_last_snapshot() {
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut machine = Machine::open(dir.path()).unwrap();
        machine
            .apply((1..=3).map(|i| command_entry(1, i, &format!("n{i}"))))
            .await
            .unwrap();
        machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // Applied after the snapshot: replayed from the log after a restart, not kept here.
        machine.apply([command_entry(1, 4, "n4")]).await.unwrap();
    }
    let mut machine = Machine::open(dir.path()).unwrap();
    let (applied, _) = machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(3));
    let nodes = keelson_store::KindRef::new("v1", "Node");
    let names: Vec<String> = machine
        .read(|store| {
            store
                .list(&nodes, None)
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .await;
    assert_eq!(names, ["n1", "n2", "n3"]);
}
