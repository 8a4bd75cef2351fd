//! Bind mounts that cannot be tricked by symlinks: the pod's volumes into the container's
//! root, and the image's layers into a user namespace.
//!
//! A path inside the container's root (a volume's `mountPath`) or inside a volume (a
//! `subPath`) is resolved with `openat2(RESOLVE_IN_ROOT)`: a symlink the image or another
//! container put there resolves inside that root, never onto the node. Missing
//! directories are made one component at a time on descriptors resolved the same way.
//! The mount itself goes through the new mount API (`open_tree`, `mount_setattr`,
//! `move_mount`), from descriptor to descriptor, so no path is looked up twice.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `open_tree(2)`: a detached copy of the tree, as a bind mount makes.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `open_tree(2)`/`mount_setattr(2)`: the whole tree, submounts included.
const AT_RECURSIVE: libc::c_uint = 0x8000;
/// `mount_setattr(2)` attributes.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `move_mount(2)`: the source, and the target, are the descriptors themselves.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `openat2(2)`'s `struct open_how`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// How a bind mount looks from the container.
#[derive(Debug, Clone, Copy, Default)]
pub struct BindOptions<'a> {
    /// Read-only.
    pub read_only: bool,
    /// No set-user-id programs and no device nodes (the pod's own volumes).
    pub no_suid_no_dev: bool,
    /// Seen through this user namespace's ids.
    pub idmap: Option<BorrowedFd<'a>>,
}

/// What to make when a path's last component is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// A directory (mode 0755).
    Directory,
    /// An empty file (mode 0644), to bind a file onto.
    File,
}

/// Opens `path` (a node path) as an `O_PATH` descriptor.
pub fn open_path(path: &Path) -> Result<OwnedFd, String> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} holds a NUL byte", path.display()))?;
    // SAFETY: open with a valid path; returns a new descriptor or -1.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "cannot open {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `relative` under `root` as `O_PATH`, symlinks resolved as if `root` were `/`.
pub fn open_in_root(root: BorrowedFd<'_>, relative: &str) -> std::io::Result<OwnedFd> {
    let relative = relative.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    let c_relative = CString::new(relative)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid directory descriptor, path and a struct of the size
    // passed; returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_relative.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens `relative` under `root` (resolved inside it), making what is missing: the
/// directories on the way, and the last component as `leaf`. `what` names the path in
/// errors.
pub fn make_in_root(
    root: BorrowedFd<'_>,
    relative: &str,
    leaf: Leaf,
    what: &str,
) -> Result<OwnedFd, String> {
    let components: Vec<&str> = relative
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if components.contains(&"..") {
        return Err(format!("{what} {relative:?} must not contain '..'"));
    }
    let mut prefix = String::new();
    for (index, component) in components.iter().enumerate() {
        let parent = prefix.clone();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        match open_in_root(root, &prefix) {
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("cannot open {what} {prefix:?}: {error}")),
        }
        let parent = open_in_root(root, &parent)
            .map_err(|error| format!("cannot open {what} {parent:?}: {error}"))?;
        let name = CString::new(*component)
            .map_err(|_| format!("{what} {relative:?} holds a NUL byte"))?;
        let last = index + 1 == components.len();
        // SAFETY: mkdirat/openat on a directory descriptor with a single component name
        // (no '/'); O_EXCL refuses to follow a symlink that appeared meanwhile.
        let made = unsafe {
            if last && leaf == Leaf::File {
                let fd = libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                fd.min(0)
            } else {
                libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755)
            }
        };
        if made != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(format!("cannot create {what} {prefix:?}: {error}"));
            }
        }
    }
    open_in_root(root, &prefix).map_err(|error| format!("cannot open {what} {prefix:?}: {error}"))
}

/// True when the descriptor names a directory.
pub fn is_directory(fd: BorrowedFd<'_>) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|stat| {
        nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode)
            .contains(nix::sys::stat::SFlag::S_IFDIR)
    })
}

/// Binds the tree at `source` onto `target` (both descriptors), with `options`.
pub fn bind(
    source: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    options: BindOptions<'_>,
) -> Result<(), String> {
    // SAFETY: open_tree on a valid descriptor with an empty path; returns a new
    // descriptor or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | AT_RECURSIVE
                | (libc::AT_EMPTY_PATH | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(format!("open_tree: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor, ours alone.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr_set = 0;
    if options.read_only {
        attr_set |= MOUNT_ATTR_RDONLY;
    }
    if options.no_suid_no_dev {
        attr_set |= MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    }
    if options.idmap.is_some() {
        attr_set |= MOUNT_ATTR_IDMAP;
    }
    if attr_set != 0 {
        let attributes = MountAttr {
            attr_set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: options.idmap.map_or(0, |fd| fd.as_raw_fd() as u64),
        };
        // SAFETY: mount_setattr on our detached tree, with a struct of the size passed.
        let set = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attributes as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if set != 0 {
            return Err(format!(
                "mount_setattr: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: move_mount of our detached tree onto a descriptor.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_fd().as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if moved != 0 {
        return Err(format!("move_mount: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
