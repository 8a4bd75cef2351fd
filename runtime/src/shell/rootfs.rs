//! The container's filesystem view, built inside its new mount namespace by the forked
//! container process: an overlayfs root over the image's layers, the kernel filesystems
//! with the usual paths masked, a minimal `/dev`, then `pivot_root` so the node's
//! filesystems are out of reach.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::mounts::{self, BindOptions, Leaf};
use crate::security::{DEVICES, DEV_LINKS, MASKED_PATHS, READONLY_PATHS};
use crate::spec::{ContainerSpec, IdMapping, NetworkMode, VolumeKind, VolumeMount};

/// Builds the root at the spec's mount point and moves into it. The steps, in order.
/// With a user namespace, the image's layers are idmapped into it.
pub fn enter(spec: &ContainerSpec, user_namespace: Option<&OwnedFd>) -> Result<(), String> {
    let root = spec.root.mount_point.as_path();
    keep_mounts_private()?;
    let idmapped = match (user_namespace, spec.user_namespace) {
        (Some(namespace), Some(mapping)) => Some((namespace, mapping)),
        _ => None,
    };
    mount_overlay(spec, idmapped)?;
    mount_kernel_filesystems(root, &spec.network, spec.user_namespace)?;
    populate_dev(root, spec.user_namespace.map(|mapping| mapping.host_id))?;
    mount_volumes(root, &spec.mounts, user_namespace)?;
    pivot_into(root)?;
    mask_paths()?;
    if spec.root.read_only {
        remount_read_only("/")?;
    }
    Ok(())
}

/// Binds the pod's volumes into the root, each at its place resolved inside the root (a
/// symlink of the image cannot send it onto the node).
fn mount_volumes(
    root: &Path,
    volumes: &[VolumeMount],
    user_namespace: Option<&OwnedFd>,
) -> Result<(), String> {
    if volumes.is_empty() {
        return Ok(());
    }
    let root_fd = mounts::open_path(root)?;
    for volume in volumes {
        let failed = |error: String| {
            format!(
                "cannot mount volume {} at {}: {error}",
                volume.source.display(),
                volume.destination
            )
        };
        let mut source = mounts::open_path(&volume.source).map_err(failed)?;
        if let Some(sub_path) = &volume.sub_path {
            source = mounts::make_in_root(source.as_fd(), sub_path, Leaf::Directory, "subPath")
                .map_err(failed)?;
        }
        let leaf = if mounts::is_directory(source.as_fd()) {
            Leaf::Directory
        } else {
            Leaf::File
        };
        let target = mounts::make_in_root(root_fd.as_fd(), &volume.destination, leaf, "mountPath")
            .map_err(failed)?;
        let options = BindOptions {
            read_only: volume.read_only,
            no_suid_no_dev: volume.kind == VolumeKind::Pod,
            idmap: user_namespace
                .filter(|_| volume.kind == VolumeKind::Node)
                .map(AsFd::as_fd),
        };
        mounts::bind(source.as_fd(), target.as_fd(), options).map_err(failed)?;
    }
    Ok(())
}

/// Nothing mounted here propagates back to the node, and nothing the node mounts later
/// appears in the container.
fn keep_mounts_private() -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|errno| {
        format!(
            "cannot make the container's mounts private: {}",
            errno.desc()
        )
    })
}

fn mount_overlay(
    spec: &ContainerSpec,
    idmapped: Option<(&OwnedFd, IdMapping)>,
) -> Result<(), String> {
    let root = &spec.root;
    for directory in [&root.upper, &root.work, &root.mount_point] {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    }
    let mut layers = root.layers.clone();
    if let Some((namespace, mapping)) = idmapped {
        // Each shared layer seen through the user namespace's ids, from a mount point of
        // the container's own; and the root directory, which overlayfs takes from the
        // writable layer, owned by the container's root.
        let mounts = root.mount_point.with_file_name("lower");
        for (index, layer) in layers.iter_mut().enumerate() {
            let target = mounts.join(index.to_string());
            super::userns::idmapped_bind(layer, &target, namespace)?;
            *layer = target;
        }
        let owner = Some(mapping.host_id);
        nix::unistd::chown(
            &root.upper,
            owner.map(nix::unistd::Uid::from_raw),
            owner.map(nix::unistd::Gid::from_raw),
        )
        .map_err(|errno| format!("cannot chown {}: {}", root.upper.display(), errno.desc()))?;
    }
    let lower: Vec<String> = layers
        .iter()
        .map(|layer| layer.display().to_string())
        .collect();
    // overlayfs needs at least one lower layer; an image of no layers gets an empty one.
    let empty = root.work.with_file_name("empty");
    let lower = if lower.is_empty() {
        std::fs::create_dir_all(&empty)
            .map_err(|error| format!("cannot create {}: {error}", empty.display()))?;
        empty.display().to_string()
    } else {
        lower.join(":")
    };
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        root.upper.display(),
        root.work.display()
    );
    mount(
        Some("overlay"),
        &root.mount_point,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| {
        format!(
            "cannot mount the container's root (overlayfs over {} layers at {}): {}",
            root.layers.len(),
            root.mount_point.display(),
            errno.desc()
        )
    })
}

/// `/proc`, `/dev` (a tmpfs), `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys` read-only and
/// the container's own cgroup (its cgroup namespace's root) read-only. With a user
/// namespace, `/dev` belongs to the container's root and terminals to its `tty` group.
fn mount_kernel_filesystems(
    root: &Path,
    network: &NetworkMode,
    mapping: Option<IdMapping>,
) -> Result<(), String> {
    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let sys_flags = nosuid_noexec_nodev | MsFlags::MS_RDONLY;
    let node_id = |id: u32| {
        mapping
            .map_or(Some(id), |mapping| mapping.to_host(id))
            .unwrap_or(id)
    };
    let dev_options = format!("mode=755,size=65536k,uid={},gid={}", node_id(0), node_id(0));
    let pts_options = format!("newinstance,ptmxmode=0666,mode=0620,gid={}", node_id(5));
    let steps: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "proc", "proc", nosuid_noexec_nodev, None),
        (
            "tmpfs",
            "dev",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some(&dev_options),
        ),
        (
            "devpts",
            "dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(&pts_options),
        ),
        (
            "shm",
            "dev/shm",
            "tmpfs",
            nosuid_noexec_nodev,
            Some("mode=1777,size=65536k"),
        ),
        ("mqueue", "dev/mqueue", "mqueue", nosuid_noexec_nodev, None),
        ("sysfs", "sys", "sysfs", sys_flags, None),
        ("cgroup", "sys/fs/cgroup", "cgroup2", sys_flags, None),
    ];
    for (source, target, fstype, flags, data) in steps {
        if fstype == "sysfs" && *network == NetworkMode::Host {
            // sysfs can only be mounted anew in a network namespace of one's own; with
            // the node's network the node's /sys is bound, read-only. Not recursively:
            // the node's mounts below it (its cgroup2 among them, which would make the
            // container's own cgroup2 mount a busy duplicate) stay out of sight.
            bind_read_only(Path::new("/sys"), &root.join(target))?;
            continue;
        }
        let target = root.join(target);
        std::fs::create_dir_all(&target)
            .map_err(|error| format!("cannot create {}: {error}", target.display()))?;
        mount(Some(source), &target, Some(fstype), flags, data).map_err(|errno| {
            format!(
                "cannot mount {fstype} at {}: {}",
                target.display(),
                errno.desc()
            )
        })?;
    }
    Ok(())
}

fn bind_read_only(source: &Path, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(target)
        .map_err(|error| format!("cannot create {}: {error}", target.display()))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| {
        format!(
            "cannot bind {} at {}: {}",
            source.display(),
            target.display(),
            errno.desc()
        )
    })?;
    remount_read_only(target)
}

/// The device nodes and links of [`DEVICES`] and [`DEV_LINKS`]; nothing else. The nodes
/// belong to `owner` (the node id of the container's root), when given.
fn populate_dev(root: &Path, owner: Option<u32>) -> Result<(), String> {
    let dev = root.join("dev");
    for device in DEVICES {
        let path = dev.join(device.name);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0),
            nix::sys::stat::makedev(device.major.into(), device.minor.into()),
        )
        .map_err(|errno| format!("cannot create {}: {}", path.display(), errno.desc()))?;
        // mknod's mode passes through the umask; set the bits exactly.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            nix::sys::stat::Mode::from_bits_truncate(device.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|errno| {
            format!(
                "cannot set the mode of {}: {}",
                path.display(),
                errno.desc()
            )
        })?;
        if let Some(owner) = owner {
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(owner)),
                Some(nix::unistd::Gid::from_raw(owner)),
            )
            .map_err(|errno| format!("cannot chown {}: {}", path.display(), errno.desc()))?;
        }
    }
    for (name, target) in DEV_LINKS {
        let path = dev.join(name);
        std::os::unix::fs::symlink(target, &path)
            .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    }
    Ok(())
}

/// `pivot_root` into `root` with the old root stacked on the same directory, then the old
/// root lazily detached: afterwards no path leads back to the node's filesystems.
fn pivot_into(root: &Path) -> Result<(), String> {
    nix::unistd::chdir(root)
        .map_err(|errno| format!("cannot enter {}: {}", root.display(), errno.desc()))?;
    nix::unistd::pivot_root(".", ".").map_err(|errno| {
        format!(
            "pivot_root into {} failed: {}",
            root.display(),
            errno.desc()
        )
    })?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|errno| format!("cannot detach the node's root: {}", errno.desc()))?;
    nix::unistd::chdir("/").map_err(|errno| format!("cannot enter /: {}", errno.desc()))
}

/// Hides [`MASKED_PATHS`] and makes [`READONLY_PATHS`] read-only; paths the kernel does not
/// have are skipped.
fn mask_paths() -> Result<(), String> {
    for path in MASKED_PATHS {
        let path = Path::new(path);
        let Ok(metadata) = std::fs::metadata(path) else {
            continue;
        };
        let masked = if metadata.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        masked.map_err(|errno| format!("cannot mask {}: {}", path.display(), errno.desc()))?;
    }
    for path in READONLY_PATHS {
        let path = PathBuf::from(path);
        if !path.exists() {
            continue;
        }
        mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|errno| {
            format!(
                "cannot bind {} over itself: {}",
                path.display(),
                errno.desc()
            )
        })?;
        remount_read_only(&path)?;
    }
    Ok(())
}

fn remount_read_only(path: impl AsRef<Path>) -> Result<(), String> {
    let path = path.as_ref();
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|errno| format!("cannot make {} read-only: {}", path.display(), errno.desc()))
}

/// Brings loopback up in a new network namespace (it starts down).
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: a plain ioctl on a socket this function owns, with a zeroed ifreq naming "lo".
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return Err(format!(
                "cannot open a socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        let name = CString::from(c"lo");
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
            *slot = *byte as libc::c_char;
        }
        let mut result = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(socket, libc::SIOCSIFFLAGS, &request);
        }
        let error = std::io::Error::last_os_error();
        libc::close(socket);
        if result != 0 {
            return Err(format!("cannot bring loopback up: {error}"));
        }
    }
    Ok(())
}
