//! User namespaces (`hostUsers: false`).
//!
//! container-init builds the container as the node's root, exactly as without a user
//! namespace: every other namespace stays owned by the node's user namespace. The
//! container's processes join the user namespace last, just before they take the
//! container's credentials ([`enter`]). So the container's root is root only over what its
//! user namespace owns, which is nothing but itself: it cannot mount, reconfigure its
//! network or set the hostname, and its ids are node ids that nothing else on the node
//! uses. What it may still want of its network, binding ports below 1024 and ICMP echo
//! sockets, is opened to it by sysctl in its own network namespace, as Docker does.
//!
//! The image's layers are owned by the node's ids on disk and are shared with every other
//! container. Each is bound into the container through an idmapped mount
//! ([`idmapped_bind`], Linux 5.12 and later; overlayfs takes them from 5.19), so the
//! container sees its files owned by its own root without a copy or a `chown`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};

use super::mounts::{bind, open_path, BindOptions};
use crate::spec::IdMapping;

/// Creates a user namespace with `mapping` for users and groups; returns a descriptor
/// that keeps it alive. A helper process unshares it and waits while this process (the
/// node's root, in the parent namespace) writes its maps: a namespace cannot be given a
/// map of many ids from inside.
pub fn create(mapping: &IdMapping) -> Result<OwnedFd, String> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|errno| format!("cannot create a pipe: {}", errno.desc()))
    };
    let (ready_read, ready_write) = pipe()?;
    let (release_read, release_write) = pipe()?;
    // SAFETY: container-init is single-threaded; the helper only makes system calls.
    match unsafe { nix::unistd::fork() } {
        Err(errno) => Err(format!("cannot fork: {}", errno.desc())),
        Ok(ForkResult::Child) => {
            drop((ready_read, release_write));
            let unshared = nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = std::fs::File::from(ready_write).write_all(&[u8::from(unshared)]);
            let _ = std::fs::File::from(release_read).read(&mut [0]);
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop((ready_write, release_read));
            let mut unshared = [0];
            let _ = std::fs::File::from(ready_read).read(&mut unshared);
            let namespace = if unshared[0] == 1 {
                write_maps(child.as_raw(), mapping)
            } else {
                Err("cannot create a user namespace: this kernel refuses one".to_owned())
            };
            drop(release_write);
            let _ = nix::sys::wait::waitpid(child, None);
            namespace
        }
    }
}

fn write_maps(pid: i32, mapping: &IdMapping) -> Result<OwnedFd, String> {
    for map in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{map}");
        std::fs::write(&path, mapping.map_line()).map_err(|error| {
            format!(
                "cannot map the user namespace's ids to node ids {}..{}: {path}: {error}",
                mapping.host_id,
                u64::from(mapping.host_id) + u64::from(mapping.size)
            )
        })?;
    }
    let path = format!("/proc/{pid}/ns/user");
    std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|error| format!("cannot open {path}: {error}"))
}

/// Binds `source` at `target` with its ids shifted as `namespace` maps them: a file the
/// node's root owns appears owned by the node id of the container's root.
pub fn idmapped_bind(source: &Path, target: &Path, namespace: &OwnedFd) -> Result<(), String> {
    std::fs::create_dir_all(target)
        .map_err(|error| format!("cannot create {}: {error}", target.display()))?;
    let (source_fd, target_fd) = (open_path(source)?, open_path(target)?);
    let options = BindOptions {
        idmap: Some(namespace.as_fd()),
        ..BindOptions::default()
    };
    bind(source_fd.as_fd(), target_fd.as_fd(), options).map_err(|error| {
        format!(
            "cannot bind {} into the container's user namespace ({error}); idmapped \
             mounts need Linux 5.12 or later and a filesystem that supports them (ext4, \
             xfs, btrfs; tmpfs from 6.3)",
            source.display()
        )
    })
}

/// Opens what an unprivileged root needs of a network namespace that the node's user
/// namespace owns: ports below 1024 and ICMP echo sockets. Run in the container's own
/// network namespace, before `/proc/sys` is made read-only.
pub fn open_network_to_unprivileged() -> Result<(), String> {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
    ] {
        std::fs::write(path, value).map_err(|error| format!("cannot write {path}: {error}"))?;
    }
    Ok(())
}

/// Joins the user namespace and becomes its root (the credentials that follow are taken
/// inside it). The calling process must be single-threaded.
pub fn enter(namespace: impl AsFd) -> Result<(), String> {
    nix::sched::setns(namespace, CloneFlags::CLONE_NEWUSER).map_err(|errno| {
        format!(
            "cannot join the container's user namespace: {}",
            errno.desc()
        )
    })?;
    let root_group = Gid::from_raw(0);
    let root = Uid::from_raw(0);
    nix::unistd::setresgid(root_group, root_group, root_group)
        .and_then(|()| nix::unistd::setresuid(root, root, root))
        .map_err(|errno| {
            format!(
                "cannot become root in the container's user namespace: {}",
                errno.desc()
            )
        })
}

/// The node id of `id` under a `/proc/PID/uid_map` (or `gid_map`) text.
pub fn host_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        let [inside, outside, count] = fields[..] else {
            return None;
        };
        let id = u64::from(id);
        (inside <= id && id < inside + count)
            .then(|| u32::try_from(outside + id - inside).ok())
            .flatten()
    })
}

/// The user namespace `pid` is in, when it is not this process's own.
pub fn of_process(pid: i32) -> Result<Option<OwnedFd>, String> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/ns/user");
    let theirs =
        std::fs::metadata(&path).map_err(|error| format!("cannot read {path}: {error}"))?;
    let ours = std::fs::metadata("/proc/self/ns/user")
        .map_err(|error| format!("cannot read /proc/self/ns/user: {error}"))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(None);
    }
    std::fs::File::open(&path)
        .map(|file| Some(OwnedFd::from(file)))
        .map_err(|error| format!("cannot open {path}: {error}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_map_through_every_range_of_a_map() {
        let node = "         0          0 4294967295\n";
        assert_eq!(super::host_id(node, 1000), Some(1000));
        let pod = "         0     131072      65536\n     65536      10000          1\n";
        assert_eq!(super::host_id(pod, 0), Some(131072));
        assert_eq!(super::host_id(pod, 65535), Some(196607));
        assert_eq!(super::host_id(pod, 65536), Some(10000));
        assert_eq!(super::host_id(pod, 65537), None);
    }
}
