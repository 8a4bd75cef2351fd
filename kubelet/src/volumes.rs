//! A pod's volumes: which ones this node supports and how a container mounts them
//! ([`check`], [`mounts_of`], pure), and the volumes on the node ([`prepare`],
//! [`remove`]).
//!
//! - `emptyDir` is a directory of the pod's under `/var/lib/keelson/volumes/<uid>/` on
//!   STATE (it outlives container restarts and reboots, and goes with the pod), or with
//!   `medium: Memory` a tmpfs of `sizeLimit` (default: half the node's memory, tmpfs'
//!   own default) mounted there.
//! - `hostPath` is the node's path, checked (or made) as its `type` says.
//! - `downwardAPI` is a directory of files the kubelet writes before each start; always
//!   mounted read-only, as Kubernetes mounts it.
//!
//! configMap, secret, projected and persistent volumes come with the cluster; a pod that
//! uses one is refused, naming it.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use keelson_runtime::resources;
use keelson_runtime::spec::{IdMapping, VolumeKind, VolumeMount};

use crate::downward::{self, NodeFacts, Use};

/// Kubernetes' `hostPath.type`s.
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

/// What a volume is, as this node runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `emptyDir`: on STATE, or a tmpfs of at most this many bytes.
    EmptyDir {
        /// `medium: Memory`, with its size (None: tmpfs' default).
        memory: Option<Option<u64>>,
    },
    /// `hostPath`.
    HostPath {
        /// The node's path.
        path: String,
        /// Its `type` ("" checks nothing).
        kind: String,
    },
    /// `downwardAPI`: files.
    DownwardApi,
}

/// The source of `volume`, or why this node cannot give it.
pub fn source_of(volume: &Volume) -> Result<Source, String> {
    if let Some(empty_dir) = &volume.empty_dir {
        let memory = match empty_dir.medium.as_deref().unwrap_or("") {
            "" => None,
            "Memory" => {
                let size = empty_dir
                    .size_limit
                    .as_ref()
                    .map(|quantity| resources::memory_bytes(&quantity.0))
                    .transpose()
                    .map_err(|error| format!("emptyDir.sizeLimit: {error}"))?;
                Some(size)
            }
            other => {
                return Err(format!(
                    "emptyDir.medium {other:?} is not supported: leave it out (disk) or use Memory"
                ))
            }
        };
        return Ok(Source::EmptyDir { memory });
    }
    if let Some(host_path) = &volume.host_path {
        let kind = host_path.type_.clone().unwrap_or_default();
        if !HOST_PATH_TYPES.contains(&kind.as_str()) {
            return Err(format!(
                "hostPath.type {kind:?} is not one of {}",
                HOST_PATH_TYPES[1..].join(", ")
            ));
        }
        if !host_path.path.starts_with('/') || host_path.path.split('/').any(|part| part == "..") {
            return Err(format!(
                "hostPath.path {:?} must be absolute, without '..'",
                host_path.path
            ));
        }
        return Ok(Source::HostPath {
            path: host_path.path.clone(),
            kind,
        });
    }
    if volume.downward_api.is_some() {
        return Ok(Source::DownwardApi);
    }
    let named = [
        (volume.config_map.is_some(), "configMap"),
        (volume.secret.is_some(), "secret"),
        (volume.projected.is_some(), "projected"),
        (
            volume.persistent_volume_claim.is_some(),
            "persistentVolumeClaim",
        ),
        (volume.nfs.is_some(), "nfs"),
        (volume.csi.is_some(), "csi"),
        (volume.ephemeral.is_some(), "ephemeral"),
        (volume.image.is_some(), "image"),
    ];
    match named.iter().find(|(present, _)| *present) {
        Some((_, kind)) => Err(format!(
            "{kind} volumes are not supported yet; this node runs emptyDir, hostPath and \
             downwardAPI volumes"
        )),
        None => Err("names no source this node supports (emptyDir, hostPath, downwardAPI)".into()),
    }
}

/// Checks the pod's volumes and every container's `volumeMounts`, naming the field.
pub fn check(pod: &Pod) -> Result<(), String> {
    let Some(spec) = &pod.spec else {
        return Ok(());
    };
    let mut names = BTreeMap::new();
    for (index, volume) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{index}]");
        if names.insert(volume.name.clone(), index).is_some() {
            return Err(format!("{field}.name: Duplicate value {:?}", volume.name));
        }
        let source =
            source_of(volume).map_err(|error| format!("{field} ({}): {error}", volume.name))?;
        if let (Source::DownwardApi, Some(api)) = (&source, &volume.downward_api) {
            for (item_index, item) in api.items.iter().flatten().enumerate() {
                let item_field = format!("{field}.downwardAPI.items[{item_index}]");
                check_relative(&item.path)
                    .map_err(|error| format!("{item_field}.path: {error}"))?;
                let value = match (&item.field_ref, &item.resource_field_ref) {
                    (Some(field_ref), None) => downward::field(
                        pod,
                        &field_ref.field_path,
                        &NodeFacts::default(),
                        Use::File,
                    ),
                    (None, Some(selector)) => {
                        downward::resource(pod, selector, None, &NodeFacts::default())
                    }
                    _ => Err("needs exactly one of fieldRef and resourceFieldRef".into()),
                };
                value.map_err(|error| format!("{item_field}: {error}"))?;
            }
        }
    }
    for (field, container) in crate::pod::fields(pod) {
        let mut paths = BTreeMap::new();
        for (index, mount) in container.volume_mounts.iter().flatten().enumerate() {
            let mount_field = format!("{field}.volumeMounts[{index}]");
            if !names.contains_key(&mount.name) {
                return Err(format!(
                    "{mount_field}.name: {:?} names no volume of spec.volumes",
                    mount.name
                ));
            }
            if !mount.mount_path.starts_with('/')
                || mount.mount_path.split('/').any(|part| part == "..")
            {
                return Err(format!(
                    "{mount_field}.mountPath {:?} must be absolute, without '..'",
                    mount.mount_path
                ));
            }
            if paths.insert(mount.mount_path.clone(), index).is_some() {
                return Err(format!(
                    "{mount_field}.mountPath: Duplicate value {:?}",
                    mount.mount_path
                ));
            }
            if let Some(sub_path) = mount.sub_path.as_deref().filter(|sub| !sub.is_empty()) {
                check_relative(sub_path)
                    .map_err(|error| format!("{mount_field}.subPath: {error}"))?;
            }
            if mount.sub_path_expr.is_some() {
                return Err(format!("{mount_field}.subPathExpr is not supported yet"));
            }
            if mount
                .mount_propagation
                .as_deref()
                .is_some_and(|propagation| propagation != "None")
            {
                return Err(format!(
                    "{mount_field}.mountPropagation: only None is supported"
                ));
            }
        }
    }
    Ok(())
}

fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} must be a relative path without '..'"));
    }
    Ok(())
}

/// Where the pod's volumes live on the node (`<volumes>/<uid>`).
pub fn pod_dir(volumes: &Path, pod: &Pod) -> PathBuf {
    volumes.join(pod.metadata.uid.as_deref().unwrap_or_default())
}

/// The node path of volume `volume` of the pod.
fn path_of(pod_dir: &Path, volume: &Volume) -> Result<PathBuf, String> {
    Ok(match source_of(volume)? {
        Source::EmptyDir { .. } => pod_dir.join("empty-dir").join(&volume.name),
        Source::HostPath { path, .. } => PathBuf::from(path),
        Source::DownwardApi => pod_dir.join("downward-api").join(&volume.name),
    })
}

/// The container's mounts, in the order it lists them.
pub fn mounts_of(
    pod: &Pod,
    container: &Container,
    pod_dir: &Path,
) -> Result<Vec<VolumeMount>, String> {
    let volumes: BTreeMap<&str, &Volume> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .map(|volume| (volume.name.as_str(), volume))
        .collect();
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| {
            let volume = volumes
                .get(mount.name.as_str())
                .ok_or_else(|| format!("volumeMounts {:?} names no volume", mount.name))?;
            let source = source_of(volume)?;
            Ok(VolumeMount {
                source: path_of(pod_dir, volume)?,
                sub_path: mount.sub_path.clone().filter(|sub| !sub.is_empty()),
                destination: mount.mount_path.clone(),
                read_only: mount.read_only.unwrap_or(false) || source == Source::DownwardApi,
                kind: match source {
                    Source::HostPath { .. } => VolumeKind::Node,
                    _ => VolumeKind::Pod,
                },
            })
        })
        .collect()
}

/// Makes (or checks) the pod's volumes on the node, owned by the pod's root (`mapping`'s
/// first id when the pod has a user namespace), and writes its downward API files.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    mapping: Option<IdMapping>,
    node: &NodeFacts,
) -> Result<(), String> {
    let owner = mapping.map(|mapping| mapping.host_id);
    for volume in pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
    {
        let named = |error: String| format!("volume {:?}: {error}", volume.name);
        let path = path_of(pod_dir, volume).map_err(named)?;
        match source_of(volume).map_err(named)? {
            Source::EmptyDir { memory } => {
                make_dir(&path, 0o777, owner).map_err(named)?;
                if let Some(size) = memory {
                    mount_tmpfs(&path, size, owner).map_err(named)?;
                }
            }
            Source::HostPath { path: _, kind } => check_host_path(&path, &kind).map_err(named)?,
            Source::DownwardApi => {
                write_downward(pod, volume, &path, node, owner).map_err(named)?
            }
        }
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32, owner: Option<u32>) -> Result<(), String> {
    std::fs::create_dir_all(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| format!("cannot set the mode of {}: {error}", path.display()))?;
    if let Some(owner) = owner {
        std::os::unix::fs::chown(path, Some(owner), Some(owner))
            .map_err(|error| format!("cannot chown {}: {error}", path.display()))?;
    }
    Ok(())
}

fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|stat| stat.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

fn mount_tmpfs(path: &Path, size: Option<u64>, owner: Option<u32>) -> Result<(), String> {
    if is_tmpfs(path) {
        return Ok(());
    }
    let mut options = String::from("mode=0777");
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    if let Some(owner) = owner {
        options.push_str(&format!(",uid={owner},gid={owner}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| {
        format!(
            "cannot mount a tmpfs at {}: {}",
            path.display(),
            errno.desc()
        )
    })
}

/// Kubernetes' `hostPath.type` checks.
fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    let failed = |what: &str| {
        format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        )
    };
    let metadata = std::fs::metadata(path);
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if metadata.is_err() => make_dir(path, 0o755, None),
        "FileOrCreate" if metadata.is_err() => std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|error| format!("cannot create {} (FileOrCreate): {error}", path.display())),
        "DirectoryOrCreate" | "Directory" => metadata
            .ok()
            .filter(|metadata| metadata.is_dir())
            .map(drop)
            .ok_or_else(|| failed("a directory")),
        "FileOrCreate" | "File" => metadata
            .ok()
            .filter(|metadata| metadata.is_file())
            .map(drop)
            .ok_or_else(|| failed("a file")),
        "Socket" => metadata
            .ok()
            .filter(|metadata| metadata.file_type().is_socket())
            .map(drop)
            .ok_or_else(|| failed("a socket")),
        "CharDevice" => metadata
            .ok()
            .filter(|metadata| metadata.file_type().is_char_device())
            .map(drop)
            .ok_or_else(|| failed("a character device")),
        "BlockDevice" => metadata
            .ok()
            .filter(|metadata| metadata.file_type().is_block_device())
            .map(drop)
            .ok_or_else(|| failed("a block device")),
        other => Err(format!("hostPath.type {other:?} is not supported")),
    }
}

/// Writes the volume's files, each into place by a rename inside the volume's directory:
/// the directory itself stays, as running containers have it mounted.
fn write_downward(
    pod: &Pod,
    volume: &Volume,
    path: &Path,
    node: &NodeFacts,
    owner: Option<u32>,
) -> Result<(), String> {
    let api = volume.downward_api.clone().unwrap_or_default();
    make_dir(path, 0o755, owner)?;
    for item in api.items.iter().flatten() {
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(field_ref), _) => downward::field(pod, &field_ref.field_path, node, Use::File)?,
            (None, Some(selector)) => downward::resource(pod, selector, None, node)?,
            (None, None) => String::new(),
        };
        let file = path.join(&item.path);
        if let Some(parent) = file.parent() {
            make_dir(parent, 0o755, owner)?;
        }
        let written = file.with_file_name(format!(
            ".{}.new",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&written, value)
            .map_err(|error| format!("cannot write {}: {error}", written.display()))?;
        let mode = item.mode.or(api.default_mode).unwrap_or(0o644) as u32;
        std::fs::set_permissions(&written, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|error| format!("cannot set the mode of {}: {error}", written.display()))?;
        if let Some(owner) = owner {
            std::os::unix::fs::chown(&written, Some(owner), Some(owner))
                .map_err(|error| format!("cannot chown {}: {error}", written.display()))?;
        }
        std::fs::rename(&written, &file)
            .map_err(|error| format!("cannot move {} into place: {error}", file.display()))?;
    }
    Ok(())
}

/// Removes the pod's volumes from the node (the pod is deleted): its tmpfs volumes are
/// unmounted first, and nothing under a `hostPath` is touched.
pub fn remove(pod_dir: &Path) {
    let empty_dirs = pod_dir.join("empty-dir");
    for entry in std::fs::read_dir(&empty_dirs)
        .into_iter()
        .flatten()
        .flatten()
    {
        if is_tmpfs(&entry.path()) {
            let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    if let Err(error) = std::fs::remove_dir_all(pod_dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {error}", pod_dir.display());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn volumes_and_mounts_are_checked_by_their_fields() {
        let cases = [
            (
                serde_json::json!({"volumes": [{"name": "v", "configMap": {"name": "c"}}],
                                   "containers": [{"name": "a", "image": "x"}]}),
                "spec.volumes[0] (v): configMap volumes are not supported yet",
            ),
            (
                serde_json::json!({"volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
                                   "containers": [{"name": "a", "image": "x"}]}),
                "spec.volumes[1].name: Duplicate value \"v\"",
            ),
            (
                serde_json::json!({"volumes": [{"name": "v", "hostPath": {"path": "/x", "type": "Dir"}}],
                                   "containers": [{"name": "a", "image": "x"}]}),
                "hostPath.type \"Dir\" is not one of DirectoryOrCreate",
            ),
            (
                serde_json::json!({"volumes": [{"name": "v", "emptyDir": {}}],
                                   "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "w", "mountPath": "/w"}]}]}),
                "spec.containers[0].volumeMounts[0].name: \"w\" names no volume of spec.volumes",
            ),
            (
                serde_json::json!({"volumes": [{"name": "v", "emptyDir": {}}],
                                   "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/w", "subPath": "../etc"}]}]}),
                "spec.containers[0].volumeMounts[0].subPath: \"../etc\" must be a relative path without '..'",
            ),
            (
                serde_json::json!({"volumes": [{"name": "v", "downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "spec.nodeName"}}]}}],
                                   "containers": [{"name": "a", "image": "x"}]}),
                "spec.volumes[0].downwardAPI.items[0]: fieldPath \"spec.nodeName\" is not supported here",
            ),
            (
                serde_json::json!({"volumes": [{"name": "v", "emptyDir": {"medium": "Memory", "sizeLimit": "lots"}}],
                                   "containers": [{"name": "a", "image": "x"}]}),
                "emptyDir.sizeLimit",
            ),
        ];
        for (spec, expected) in cases {
            let error = check(&pod(spec)).unwrap_err();
            assert!(
                error.contains(expected),
                "{error:?} does not say {expected:?}"
            );
        }
    }

    #[test]
    fn mounts_point_at_the_pods_volumes_and_downward_files_are_read_only() {
        let pod = pod(serde_json::json!({
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "logs", "hostPath": {"path": "/var/log/app", "type": "DirectoryOrCreate"}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
            ],
            "containers": [{"name": "a", "image": "x", "volumeMounts": [
                {"name": "scratch", "mountPath": "/data", "subPath": "a/b"},
                {"name": "logs", "mountPath": "/logs", "readOnly": true},
                {"name": "info", "mountPath": "/etc/podinfo"}
            ]}]
        }));
        check(&pod).unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let mounts = mounts_of(&pod, container, Path::new("/v/u-1")).unwrap();
        let seen: Vec<(&str, Option<&str>, &str, bool, VolumeKind)> = mounts
            .iter()
            .map(|mount| {
                (
                    mount.source.to_str().unwrap(),
                    mount.sub_path.as_deref(),
                    mount.destination.as_str(),
                    mount.read_only,
                    mount.kind,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "/v/u-1/empty-dir/scratch",
                    Some("a/b"),
                    "/data",
                    false,
                    VolumeKind::Pod
                ),
                ("/var/log/app", None, "/logs", true, VolumeKind::Node),
                (
                    "/v/u-1/downward-api/info",
                    None,
                    "/etc/podinfo",
                    true,
                    VolumeKind::Pod
                ),
            ]
        );
    }

    #[test]
    fn prepare_makes_checks_and_writes_and_remove_leaves_host_paths() {
        let directory = tempfile::tempdir().unwrap();
        let host = directory.path().join("host");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("file"), "x").unwrap();
        let pod = pod(serde_json::json!({
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "made", "hostPath": {"path": host.join("made").to_str().unwrap(), "type": "DirectoryOrCreate"}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "deep/name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600}
                ]}}
            ],
            "containers": [{"name": "a", "image": "x"}]
        }));
        let pod_dir = directory.path().join("volumes/u-1");
        prepare(&pod, &pod_dir, None, &NodeFacts::default()).unwrap();
        let scratch = pod_dir.join("empty-dir/scratch");
        assert_eq!(
            std::fs::metadata(&scratch).unwrap().permissions().mode() & 0o777,
            0o777
        );
        assert!(host.join("made").is_dir());
        let info = pod_dir.join("downward-api/info");
        assert_eq!(
            std::fs::read_to_string(info.join("labels")).unwrap(),
            "app=\"web\"\n"
        );
        assert_eq!(
            std::fs::read_to_string(info.join("deep/name")).unwrap(),
            "web"
        );
        assert_eq!(
            std::fs::metadata(info.join("deep/name"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // A second start rewrites the files in the same directory (running containers
        // have it mounted) and keeps what the pod wrote.
        use std::os::unix::fs::MetadataExt;
        let directory_inode = std::fs::metadata(&info).unwrap().ino();
        std::fs::write(scratch.join("kept"), "1").unwrap();
        std::fs::write(info.join("labels"), "stale").unwrap();
        prepare(&pod, &pod_dir, None, &NodeFacts::default()).unwrap();
        assert!(scratch.join("kept").exists());
        assert_eq!(std::fs::metadata(&info).unwrap().ino(), directory_inode);
        assert_eq!(
            std::fs::read_to_string(info.join("labels")).unwrap(),
            "app=\"web\"\n"
        );
        // A type that does not hold.
        let wrong = self::pod(serde_json::json!({
            "volumes": [{"name": "f", "hostPath": {"path": host.join("file").to_str().unwrap(), "type": "Directory"}}],
            "containers": [{"name": "a", "image": "x"}]
        }));
        let error = prepare(&wrong, &pod_dir, None, &NodeFacts::default()).unwrap_err();
        assert_eq!(
            error,
            format!(
                "volume \"f\": hostPath type check failed: {} is not a directory",
                host.join("file").display()
            )
        );
        remove(&pod_dir);
        assert!(!pod_dir.exists());
        assert!(host.join("made").is_dir() && host.join("file").exists());
    }
}
