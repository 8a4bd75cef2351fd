//! A pod's sandbox: the network, IPC and UTS namespaces its containers share, made once
//! per pod and pinned by bind mounts of their `nsfs` files (as `ip netns add` pins one),
//! so that they outlive every container and every restart of the agent. Each container's
//! init joins them ([`crate::spec::SharedNamespaces`]) rather than making its own.
//!
//! They are made on a thread of their own that ends afterwards: network, IPC and UTS
//! namespaces belong to a thread, so the agent's other threads are untouched and no
//! process stays behind to hold them.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::spec::SharedNamespaces;

/// What a sandbox is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The pod's hostname (set once, in the shared UTS namespace).
    pub hostname: String,
    /// A network namespace of its own (false: the node's, for `hostNetwork`; the UTS
    /// namespace is then the node's as well, as the kubelet does).
    pub own_network: bool,
    /// Let unprivileged users bind low ports and ping (the pod's root is not the node's
    /// root: `hostUsers: false`).
    pub open_to_unprivileged: bool,
}

/// The namespaces pinned in `directory` for a sandbox of `spec`'s kind.
pub fn namespaces(directory: &Path, own_network: bool) -> SharedNamespaces {
    SharedNamespaces {
        network: own_network.then(|| directory.join("net")),
        ipc: Some(directory.join("ipc")),
        uts: own_network.then(|| directory.join("uts")),
    }
}

/// True when the sandbox in `directory` is there: every namespace it pins is mounted (a
/// reboot leaves none).
pub fn exists(directory: &Path, own_network: bool) -> bool {
    let pinned = namespaces(directory, own_network);
    [pinned.network, pinned.ipc, pinned.uts]
        .into_iter()
        .flatten()
        .all(|path| is_pinned_namespace(&path))
}

fn is_pinned_namespace(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path).is_ok_and(|stat| stat.filesystem_type().0 == NSFS_MAGIC)
}

/// Makes the sandbox in `directory` (what a reboot left there is replaced). Returns the
/// namespaces its containers join. Nothing is left behind when it fails.
pub fn create(directory: &Path, spec: &SandboxSpec) -> Result<SharedNamespaces, String> {
    remove(directory);
    std::fs::create_dir_all(directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let pinned = namespaces(directory, spec.own_network);
    let (directory_owned, spec_owned) = (directory.to_owned(), spec.clone());
    let made = std::thread::Builder::new()
        .name("pod-sandbox".into())
        .spawn(move || make_on_this_thread(&directory_owned, &spec_owned))
        .map_err(|error| format!("cannot start the sandbox's thread: {error}"))?
        .join()
        .unwrap_or_else(|_| Err("the sandbox's thread panicked".into()));
    if let Err(error) = made {
        remove(directory);
        return Err(error);
    }
    Ok(pinned)
}

/// On a thread that ends right after: unshares, sets up and pins the namespaces.
fn make_on_this_thread(directory: &Path, spec: &SandboxSpec) -> Result<(), String> {
    let mut flags = CloneFlags::CLONE_NEWIPC;
    if spec.own_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    nix::sched::unshare(flags)
        .map_err(|errno| format!("cannot create the pod's namespaces: {}", errno.desc()))?;
    if spec.own_network {
        nix::unistd::sethostname(&spec.hostname).map_err(|errno| {
            format!(
                "cannot set the pod's hostname {:?}: {}",
                spec.hostname,
                errno.desc()
            )
        })?;
        super::rootfs::loopback_up()?;
        if spec.open_to_unprivileged {
            super::userns::open_network_to_unprivileged()?;
        }
    }
    let pinned = namespaces(directory, spec.own_network);
    for (kind, path) in [
        ("net", pinned.network),
        ("ipc", pinned.ipc),
        ("uts", pinned.uts),
    ] {
        let Some(path) = path else { continue };
        pin(&format!("/proc/thread-self/ns/{kind}"), &path)?;
    }
    Ok(())
}

fn pin(namespace: &str, at: &Path) -> Result<(), String> {
    std::fs::File::create(at)
        .map_err(|error| format!("cannot create {}: {error}", at.display()))?;
    nix::mount::mount(
        Some(namespace),
        at,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| {
        format!(
            "cannot pin the pod's namespace at {}: {}",
            at.display(),
            errno.desc()
        )
    })
}

/// Unpins the sandbox's namespaces (they end with their last process) and removes
/// `directory`. Whatever is not there is skipped.
pub fn remove(directory: &Path) {
    for kind in ["net", "ipc", "uts"] {
        let path: PathBuf = directory.join(kind);
        while is_pinned_namespace(&path) {
            if nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(directory);
}
