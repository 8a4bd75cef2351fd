//! The cgroup v2 shell: a cgroup per container under its pod's, with the values
//! [`crate::resources::CgroupValues`] decided, and the OOM kills `memory.events` counts.
//!
//! ```text
//! /sys/fs/cgroup/keelson/pods/<pod uid>/<container>
//! ```
//!
//! Each level from the root down enables the `cpu`, `memory` and `pids` controllers for its
//! children (`cgroup.subtree_control`), as the kernel requires before a child can be given
//! limits. The tree's root is a parameter, so the order of writes is tested against a plain
//! directory on the host (which runs hybrid cgroups); the kernel's answers are tested in
//! the guest, where PID 1 mounts cgroup2 alone.

use std::path::{Path, PathBuf};

use crate::resources::CgroupValues;

/// Where the kernel mounts the unified hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The controllers every level hands down.
pub const CONTROLLERS: &str = "+cpu +memory +pids";

/// A cgroup operation that failed: what, on which file.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct CgroupError {
    /// What was being done.
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The kernel's answer.
    pub source: std::io::Error,
}

/// `memory.events`, the counters the runtime reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times the limit was reached and reclaim failed.
    pub oom: u64,
    /// Processes the OOM killer killed in this cgroup.
    pub oom_kill: u64,
}

/// Parses `memory.events` (`name value` lines; unknown names are ignored).
pub fn parse_memory_events(text: &str) -> MemoryEvents {
    let mut events = MemoryEvents::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let value = value.parse().unwrap_or(0);
        match name {
            "oom" => events.oom = value,
            "oom_kill" => events.oom_kill = value,
            _ => {}
        }
    }
    events
}

/// What a cgroup has used: the counters `top` reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the cgroup was made (`cpu.stat` `usage_usec`), in microseconds.
    pub cpu_usec: u64,
    /// Memory in use now, in bytes, as the kubelet's working set (see [`working_set`]):
    /// the figure `kubectl top` shows.
    pub memory_bytes: u64,
}

/// The working set as the kubelet computes it: `memory.current` less the inactive file
/// pages of `memory.stat` (`inactive_file`), which the kernel reclaims first.
pub fn working_set(current: u64, memory_stat: &str) -> u64 {
    let inactive_file = stat_value(memory_stat, "inactive_file").unwrap_or(0);
    current.saturating_sub(inactive_file)
}

/// The value of `name` in a flat keyed file (`cpu.stat`, `memory.stat`).
pub fn stat_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(name))
            .then(|| fields.next()?.parse().ok())
            .flatten()
    })
}

/// The tree the runtime's cgroups live in.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    root: PathBuf,
}

impl CgroupTree {
    /// The tree under `root` (the real one is [`CGROUP_ROOT`]).
    pub fn new(root: impl Into<PathBuf>) -> CgroupTree {
        CgroupTree { root: root.into() }
    }

    /// A container's cgroup, relative to the root.
    pub fn container_path(pod_uid: &str, container: &str) -> PathBuf {
        Path::new("keelson/pods").join(pod_uid).join(container)
    }

    /// Creates the cgroup at `relative` (and the levels above it), enables the controllers
    /// on the way down, and writes `values`. Returns its directory.
    pub fn create(&self, relative: &Path, values: &CgroupValues) -> Result<PathBuf, CgroupError> {
        let mut level = self.root.clone();
        for component in relative.components() {
            enable_controllers(&level)?;
            level.push(component);
            match std::fs::create_dir(&level) {
                Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError {
                        action: "creating",
                        path: level,
                        source: error,
                    })
                }
                _ => {}
            }
        }
        for (file, value) in values.files() {
            let path = level.join(file);
            std::fs::write(&path, value).map_err(|source| CgroupError {
                action: "writing",
                path,
                source,
            })?;
        }
        Ok(level)
    }

    /// The OOM counters of the cgroup at `relative`.
    pub fn memory_events(&self, relative: &Path) -> Result<MemoryEvents, CgroupError> {
        let path = self.root.join(relative).join("memory.events");
        std::fs::read_to_string(&path)
            .map(|text| parse_memory_events(&text))
            .map_err(|source| CgroupError {
                action: "reading",
                path,
                source,
            })
    }

    /// What the cgroup at `relative` has used.
    pub fn usage(&self, relative: &Path) -> Result<Usage, CgroupError> {
        let directory = self.root.join(relative);
        let read = |file: &str| {
            let path = directory.join(file);
            std::fs::read_to_string(&path).map_err(|source| CgroupError {
                action: "reading",
                path,
                source,
            })
        };
        let current = read("memory.current")?.trim().parse().unwrap_or(0);
        Ok(Usage {
            cpu_usec: stat_value(&read("cpu.stat")?, "usage_usec").unwrap_or(0),
            memory_bytes: working_set(current, &read("memory.stat")?),
        })
    }

    /// Moves process `pid` into the cgroup at `relative`.
    pub fn add_process(&self, relative: &Path, pid: i32) -> Result<(), CgroupError> {
        let path = self.root.join(relative).join("cgroup.procs");
        std::fs::write(&path, pid.to_string()).map_err(|source| CgroupError {
            action: "writing",
            path,
            source,
        })
    }

    /// Removes the (empty) cgroup at `relative`; one already gone is not an error.
    pub fn remove(&self, relative: &Path) -> Result<(), CgroupError> {
        let path = self.root.join(relative);
        match std::fs::remove_dir(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(CgroupError {
                action: "removing",
                path,
                source: error,
            }),
            _ => Ok(()),
        }
    }
}

/// Hands the controllers down from `level`, unless they already are.
fn enable_controllers(level: &Path) -> Result<(), CgroupError> {
    let path = level.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let enabled: Vec<&str> = current.split_whitespace().collect();
    if ["cpu", "memory", "pids"]
        .iter()
        .all(|controller| enabled.contains(controller))
    {
        return Ok(());
    }
    std::fs::write(&path, CONTROLLERS).map_err(|source| CgroupError {
        action: "enabling controllers in",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    #[test]
    fn usage_is_read_as_the_kubelet_reads_it() {
        let cpu = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n";
        assert_eq!(stat_value(cpu, "usage_usec"), Some(1_500_000));
        assert_eq!(stat_value(cpu, "nr_periods"), None);
        let memory = "anon 4096\nfile 8192\nactive_file 4096\ninactive_file 3072\n";
        assert_eq!(working_set(20_000, memory), 16_928);
        assert_eq!(working_set(1_000, memory), 0, "never below zero");
        let root = tempfile::tempdir().unwrap();
        let cgroup = root.path().join("keelson/pods/u/c");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(cgroup.join("cpu.stat"), cpu).unwrap();
        std::fs::write(cgroup.join("memory.current"), "20000\n").unwrap();
        std::fs::write(cgroup.join("memory.stat"), memory).unwrap();
        let tree = CgroupTree::new(root.path());
        assert_eq!(
            tree.usage(&CgroupTree::container_path("u", "c")).unwrap(),
            Usage {
                cpu_usec: 1_500_000,
                memory_bytes: 16_928
            }
        );
        let error = tree.usage(Path::new("keelson/pods/u/gone")).unwrap_err();
        assert!(error.to_string().starts_with("reading "), "{error}");
    }

    #[test]
    fn a_container_cgroup_is_made_level_by_level_with_its_limits() {
        let root = std::env::temp_dir().join(format!("keelson-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let tree = CgroupTree::new(&root);
        let relative = CgroupTree::container_path("0a1b", "web");
        let values = CgroupValues::of(&Resources {
            cpu_limit_millis: Some(250),
            memory_limit_bytes: Some(32 << 20),
            ..Resources::default()
        });
        let made = tree.create(&relative, &values).unwrap();
        assert_eq!(made, root.join("keelson/pods/0a1b/web"));
        for level in ["", "keelson", "keelson/pods", "keelson/pods/0a1b"] {
            let control =
                std::fs::read_to_string(root.join(level).join("cgroup.subtree_control")).unwrap();
            assert_eq!(control, CONTROLLERS, "level {level:?}");
        }
        assert_eq!(
            std::fs::read_to_string(made.join("cpu.max")).unwrap(),
            "25000 100000"
        );
        assert_eq!(
            std::fs::read_to_string(made.join("memory.max")).unwrap(),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(made.join("memory.swap.max")).unwrap(),
            "0"
        );
        std::fs::write(
            made.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            tree.memory_events(&relative).unwrap(),
            MemoryEvents {
                oom: 1,
                oom_kill: 1
            }
        );
        let missing = tree
            .memory_events(Path::new("keelson/pods/none"))
            .unwrap_err();
        assert!(missing.to_string().starts_with("reading "), "{missing}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
