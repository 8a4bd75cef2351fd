//! What the agent hands the container-init process: everything needed to create one
//! container, already decided. The agent writes it as `spec.json` in the container's
//! bundle directory; container-init reads it and performs it without deciding anything.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file in a bundle that holds its [`ContainerSpec`].
pub const SPEC_FILE: &str = "spec.json";

/// One container, ready to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// A name unique on the node (`<pod uid>.<container>.<run>`), used in messages.
    pub id: String,
    /// The root filesystem.
    pub root: RootSpec,
    /// The process it runs.
    pub process: Process,
    /// The container's hostname (the pod's name).
    pub hostname: String,
    /// Its network.
    pub network: NetworkMode,
    /// Its cgroup directory (absolute, under `/sys/fs/cgroup`), created beforehand.
    pub cgroup: PathBuf,
    /// A user namespace of its own (`hostUsers: false`): the container's ids 0.. are
    /// these node ids. None: the node's ids.
    #[serde(default)]
    pub user_namespace: Option<IdMapping>,
    /// Its pod's namespaces, which it joins rather than making its own.
    #[serde(default)]
    pub shared: SharedNamespaces,
    /// Its pod's volumes, bound into its root in this order.
    #[serde(default)]
    pub mounts: Vec<VolumeMount>,
}

/// A volume bound into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume on the node: a directory, or a file (a `hostPath` file).
    pub source: PathBuf,
    /// A path inside the volume to bind instead of all of it (`subPath`), resolved inside
    /// the volume and made as a directory when missing.
    #[serde(default)]
    pub sub_path: Option<String>,
    /// Where in the container (`mountPath`, absolute), resolved inside its root and made
    /// when missing.
    pub destination: String,
    /// Read-only.
    pub read_only: bool,
    /// Whose files it holds.
    pub kind: VolumeKind,
}

/// Whose files a volume holds, which decides how it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeKind {
    /// The pod's own (emptyDir, downward API): no set-user-id programs, no devices; made
    /// by the kubelet owned by the pod's root.
    Pod,
    /// The node's (`hostPath`): bound as it is, seen through the container's user
    /// namespace when it has one.
    Node,
}

/// Namespaces a container joins (its pod's sandbox, [`crate::shell::sandbox`]), each the
/// path of a pinned `nsfs` file. Those left out the container makes for itself (or, for
/// the network, takes the node's when its mode is [`NetworkMode::Host`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedNamespaces {
    /// The network namespace: its links, addresses and ports are the pod's.
    pub network: Option<PathBuf>,
    /// The IPC namespace (System V IPC and POSIX message queues).
    pub ipc: Option<PathBuf>,
    /// The UTS namespace: the hostname is set there once, for the pod.
    pub uts: Option<PathBuf>,
}

/// A user namespace's mapping: container ids `0..size` are node ids
/// `host_id..host_id + size`, for users and groups alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// The node id of the container's root.
    pub host_id: u32,
    /// How many ids.
    pub size: u32,
}

impl IdMapping {
    /// The `uid_map`/`gid_map` line.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_id, self.size)
    }

    /// The node id of container id `id`, if the mapping holds it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.host_id + id)
    }
}

/// A process in a container: its first, or one `exec` adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// `argv`; the program is looked up in the `PATH` of `env` when it has no `/`.
    pub args: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    /// Working directory, absolute; created when the image lacks it, as runc does.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Resource limits (`RLIMIT_*`).
    pub rlimits: Vec<Rlimit>,
    /// The capabilities the process keeps (`CAP_…` names); every other is dropped.
    pub capabilities: Vec<String>,
    /// Set `no_new_privs` (`allowPrivilegeEscalation: false`).
    pub no_new_privileges: bool,
    /// The seccomp profile.
    pub seccomp: SeccompProfile,
}

/// A process to start in a running container (`keelctl exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The container's id, for messages.
    pub container: String,
    /// The container's first process, whose namespaces the new process joins.
    pub pid: i32,
    /// That process's start time: if it differs, the container is gone.
    pub start_time: u64,
    /// The container's cgroup.
    pub cgroup: PathBuf,
    /// The process.
    pub process: Process,
    /// Give it a terminal of the container's own `/dev/pts`: container-exec's standard
    /// input is then a Unix socket, on which it sends the terminal's master
    /// ([`crate::shell::exec`]).
    pub terminal: bool,
}

/// An overlayfs root over the image's layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSpec {
    /// The image's unpacked layers, top first (overlayfs' `lowerdir` order).
    pub layers: Vec<PathBuf>,
    /// The container's writable layer.
    pub upper: PathBuf,
    /// overlayfs' work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the root is mounted before `pivot_root`.
    pub mount_point: PathBuf,
    /// Mount the root read-only (`readOnlyRootFilesystem`).
    pub read_only: bool,
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// A namespace of its own, with loopback only.
    Private,
    /// The node's (`hostNetwork: true`).
    Host,
}

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// `RLIMIT_NOFILE`, the one limit every container gets (1048576 open files, as Docker and
/// containerd give under systemd's `LimitNOFILE=infinity`).
pub const DEFAULT_RLIMITS: &[Rlimit] = &[Rlimit {
    resource: 7,
    soft: 1_048_576,
    hard: 1_048_576,
}];

/// A container's seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// The runtime's default ([`crate::shell::seccomp`]).
    RuntimeDefault,
    /// No filter (`seccompProfile.type: Unconfined`).
    Unconfined,
}

impl ContainerSpec {
    /// Reads the spec in `bundle`.
    pub fn read(bundle: &Path) -> Result<ContainerSpec, String> {
        let path = bundle.join(SPEC_FILE);
        let text = std::fs::read(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        serde_json::from_slice(&text)
            .map_err(|error| format!("{} is not a container spec: {error}", path.display()))
    }

    /// Writes the spec into `bundle`.
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(bundle.join(SPEC_FILE), text)
    }
}

impl Process {
    /// The program to execute: `args[0]` itself when it holds a `/`, else the first
    /// executable of that name in the `PATH` of the container's environment, found under
    /// `root` (the container's root, before or after `pivot_root`).
    pub fn program(&self, root: &Path) -> Result<PathBuf, String> {
        let Some(name) = self.args.first() else {
            return Err(
                "the container has no command (neither the image nor the pod names one)".into(),
            );
        };
        if name.contains('/') {
            return Ok(PathBuf::from(name));
        }
        let path = self
            .env
            .iter()
            .find_map(|entry| entry.strip_prefix("PATH="))
            .unwrap_or(crate::process::DEFAULT_PATH);
        for directory in path
            .split(':')
            .filter(|directory| directory.starts_with('/'))
        {
            let candidate = Path::new(directory).join(name);
            let inside = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
            if is_executable(&inside) {
                return Ok(candidate);
            }
        }
        Err(format!(
            "executable file {name:?} not found in $PATH ({path}): check the pod's command or the image"
        ))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(args: &[&str], env: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: "pod.app.0".into(),
            root: RootSpec {
                layers: vec![],
                upper: "/u".into(),
                work: "/w".into(),
                mount_point: "/m".into(),
                read_only: false,
            },
            process: Process {
                args: args.iter().map(|arg| arg.to_string()).collect(),
                env: env.iter().map(|entry| entry.to_string()).collect(),
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                groups: vec![],
                rlimits: DEFAULT_RLIMITS.to_vec(),
                capabilities: vec![],
                no_new_privileges: false,
                seccomp: SeccompProfile::RuntimeDefault,
            },
            hostname: "pod".into(),
            network: NetworkMode::Private,
            cgroup: "/sys/fs/cgroup/keelson/pods/x/app".into(),
            user_namespace: None,
            shared: Default::default(),
            mounts: Vec::new(),
        }
    }

    #[test]
    fn programs_are_found_in_the_containers_path_not_the_hosts() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("opt/tools")).unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        let tool = root.path().join("opt/tools/hello");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.path().join("bin/hello"), "not executable").unwrap();

        let found = spec(&["hello"], &["PATH=/bin:/opt/tools"])
            .process
            .program(root.path());
        assert_eq!(found.unwrap(), PathBuf::from("/opt/tools/hello"));
        let missing = spec(&["hello"], &["PATH=/bin"])
            .process
            .program(root.path())
            .unwrap_err();
        assert!(
            missing.contains("\"hello\" not found in $PATH (/bin)"),
            "{missing}"
        );
        assert_eq!(
            spec(&["/x/y"], &[]).process.program(root.path()).unwrap(),
            PathBuf::from("/x/y")
        );
        assert!(spec(&[], &[])
            .process
            .program(root.path())
            .unwrap_err()
            .contains("no command"));
    }

    #[test]
    fn specs_survive_the_trip_through_their_file() {
        let bundle = tempfile::tempdir().unwrap();
        let written = spec(&["sh", "-c", "true"], &["A=1"]);
        written.write(bundle.path()).unwrap();
        assert_eq!(ContainerSpec::read(bundle.path()).unwrap(), written);
        std::fs::write(bundle.path().join(SPEC_FILE), "{").unwrap();
        assert!(ContainerSpec::read(bundle.path())
            .unwrap_err()
            .contains("is not a container spec"));
    }
}
