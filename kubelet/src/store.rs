//! Pods on STATE: one JSON file per pod (`<namespace>_<name>.json` under
//! `/var/lib/keelson/pods`), written durably, holding the admitted `v1/Pod` and what the
//! kubelet must remember of each of its containers across agent restarts and reboots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use keelson_runtime::lifecycle::{Terminated, TerminationReason};
use keelson_runtime::spec::IdMapping;
use serde::{Deserialize, Serialize};

/// A kept pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// The admitted pod (no status: that is computed).
    pub pod: Pod,
    /// What is remembered of each container, by name.
    #[serde(default)]
    pub containers: BTreeMap<String, SavedContainer>,
    /// A pod kept by a release whose pods had one container: its memory, moved into
    /// `containers` when read.
    #[serde(default, skip_serializing)]
    container: Option<SavedContainer>,
    /// The node ids of its user namespace (`hostUsers: false`), given when admitted.
    #[serde(default)]
    pub user_namespace: Option<IdMapping>,
    /// Its address of the node's pod CIDR (pods with a network of their own), given when
    /// admitted and kept for its life.
    #[serde(default)]
    pub pod_ip: Option<std::net::Ipv4Addr>,
    /// Why the node evicted it, once it did: the pod stays failed until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<String>,
}

impl PodRecord {
    /// A newly admitted pod.
    pub fn new(pod: Pod, user_namespace: Option<IdMapping>) -> PodRecord {
        PodRecord {
            pod,
            containers: BTreeMap::new(),
            container: None,
            user_namespace,
            pod_ip: None,
            evicted: None,
        }
    }

    /// What is remembered of container `name` (nothing yet: the default).
    pub fn saved(&self, name: &str) -> SavedContainer {
        self.containers.get(name).cloned().unwrap_or_default()
    }

    /// Moves a one-container record of an earlier release to its container's name.
    fn upgrade(&mut self) {
        if let Some(saved) = self.container.take() {
            if let Some(first) = crate::pod::default_container(&self.pod) {
                self.containers.entry(first.name.clone()).or_insert(saved);
            }
        }
    }
}

/// What is remembered of a pod's container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedContainer {
    /// Restarts so far.
    pub restart_count: u32,
    /// The previous run (`lastState`).
    pub last: Option<SavedRun>,
    /// The final run, when it will not restart (`state.terminated`).
    pub finished: Option<SavedRun>,
    /// The run in progress.
    pub running: Option<RunningRecord>,
    /// Runs started so far (names the next run's bundle and log file).
    pub runs: u32,
    /// When the first run started.
    pub first_started_at: Option<u64>,
    /// `imageID` of the image the runs use.
    pub image_id: Option<String>,
}

/// A run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningRecord {
    /// `<pod uid>.<container>.<run>`.
    pub run_id: String,
    /// Its first process.
    pub pid: i32,
    /// That process's start time (names its exit record).
    pub start_time: u64,
    /// When it started (seconds since the epoch).
    pub started_at: u64,
}

/// A finished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRun {
    /// Exit code.
    pub exit_code: i32,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: SavedReason,
    /// Started (seconds since the epoch).
    pub started_at: u64,
    /// Finished.
    pub finished_at: u64,
}

/// [`TerminationReason`], as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavedReason {
    /// Exit 0.
    Completed,
    /// Anything else.
    Error,
    /// Killed at its memory limit.
    OomKilled,
    /// Never started.
    StartError,
}

impl From<Terminated> for SavedRun {
    fn from(run: Terminated) -> SavedRun {
        SavedRun {
            exit_code: run.exit_code,
            reason: match run.reason {
                TerminationReason::Completed => SavedReason::Completed,
                TerminationReason::Error => SavedReason::Error,
                TerminationReason::OomKilled => SavedReason::OomKilled,
                TerminationReason::StartError => SavedReason::StartError,
            },
            started_at: run.started_at,
            finished_at: run.finished_at,
        }
    }
}

impl From<SavedRun> for Terminated {
    fn from(run: SavedRun) -> Terminated {
        Terminated {
            exit_code: run.exit_code,
            reason: match run.reason {
                SavedReason::Completed => TerminationReason::Completed,
                SavedReason::Error => TerminationReason::Error,
                SavedReason::OomKilled => TerminationReason::OomKilled,
                SavedReason::StartError => TerminationReason::StartError,
            },
            started_at: run.started_at,
            finished_at: run.finished_at,
        }
    }
}

/// The directory of kept pods.
#[derive(Debug, Clone)]
pub struct PodStore {
    directory: PathBuf,
}

impl PodStore {
    /// The store in `directory` (created when missing).
    pub fn open(directory: &Path) -> Result<PodStore, String> {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
        Ok(PodStore {
            directory: directory.to_owned(),
        })
    }

    fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.directory.join(format!("{namespace}_{name}.json"))
    }

    /// Writes `record` durably (complete or not at all).
    pub fn save(&self, record: &PodRecord) -> Result<(), String> {
        let (namespace, name) = crate::key(&record.pod);
        let path = self.path(&namespace, &name);
        let bytes = serde_json::to_vec_pretty(record).map_err(|error| error.to_string())?;
        keelson_linux::durable::write(&path, &bytes)
            .map_err(|error| format!("cannot keep pod {namespace}/{name}: {error}"))
    }

    /// Forgets a pod.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<(), String> {
        let path = self.path(namespace, name);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {error}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Every kept pod; a file that cannot be read is reported and left alone.
    pub fn load_all(&self) -> (Vec<PodRecord>, Vec<String>) {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.directory) else {
            return (records, problems);
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "json")
            })
            .collect();
        paths.sort();
        for path in paths {
            match std::fs::read(&path)
                .map_err(|error| error.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<PodRecord>(&bytes).map_err(|error| error.to_string())
                }) {
                Ok(mut record) => {
                    PodRecord::upgrade(&mut record);
                    records.push(record)
                }
                Err(error) => problems.push(format!("{}: {error}", path.display())),
            }
        }
        (records, problems)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kept_pods_come_back_and_a_damaged_file_is_reported() {
        let directory = tempfile::tempdir().unwrap();
        let store = PodStore::open(directory.path()).unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": "busybox"}]}
        }))
        .unwrap();
        let mut record = PodRecord::new(pod.clone(), Some(crate::userns::mapping(2)));
        let saved = SavedContainer {
            restart_count: 2,
            running: Some(RunningRecord {
                run_id: "u.web.2".into(),
                pid: 42,
                start_time: 9,
                started_at: 1000,
            }),
            ..SavedContainer::default()
        };
        record.containers.insert("web".into(), saved.clone());
        store.save(&record).unwrap();
        std::fs::write(directory.path().join("default_broken.json"), "{").unwrap();
        // A pod kept by the release before, whose record had one container.
        let earlier = serde_json::json!({
            "pod": {"metadata": {"name": "old", "namespace": "default"},
                    "spec": {"containers": [{"name": "app", "image": "busybox"}]}},
            "container": {"restart_count": 4, "last": null, "finished": null, "running": null,
                          "runs": 5, "first_started_at": 7, "image_id": null}
        });
        std::fs::write(
            directory.path().join("default_old.json"),
            earlier.to_string(),
        )
        .unwrap();
        let (records, problems) = store.load_all();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].saved("app").restart_count, 4);
        assert_eq!(records[0].saved("app").runs, 5);
        assert_eq!(records[1].saved("web"), saved);
        store.remove("default", "old").unwrap();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("default_broken.json"));
        store.remove("default", "web").unwrap();
        store.remove("default", "web").unwrap();
        assert!(store.load_all().0.is_empty());
    }
}
