//! Unpacking a layer blob into its own directory, once, with OCI whiteouts turned into
//! overlayfs whiteouts so that the runtime can stack layers with overlayfs as they are.
//!
//! - `.wh.NAME` (NAME deleted by this layer) becomes a character device 0:0 named NAME;
//! - `.wh..wh..opq` (the directory's lower contents hidden) becomes the directory's
//!   `trusted.overlay.opaque=y` extended attribute.
//!
//! Entries keep their modes, owners (when the store runs as root, as on a node), times and
//! extended attributes. A path that climbs out (`..`) or goes through a symbolic link is
//! refused. The decompressed stream is hashed as it is unpacked and must match the diff id
//! from the image config, or the staging directory is thrown away.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, DigestingReader};
use crate::error::{error_chain, io_error, ImageError};
use crate::manifest::Compression;
use crate::store::{sync_dir, Store};

/// The whiteout prefix.
const WHITEOUT: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs reads for an opaque directory.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Unpacks the layer blob `blob` (compressed as `compression`) as the layer `diff_id`,
/// unless it is unpacked already. Returns the layer's directory.
pub fn unpack(
    store: &Store,
    blob: &Digest,
    compression: Compression,
    diff_id: &Digest,
) -> Result<PathBuf, ImageError> {
    let target = store.layer_path(diff_id);
    if target.is_dir() {
        return Ok(target);
    }
    let staging = store.layer_staging(diff_id);
    let outcome = unpack_into(store, blob, compression, diff_id, &staging).and_then(|()| {
        // One sync of the filesystem is far cheaper than one per file, and the rename
        // below is what makes the layer trusted.
        if let Ok(handle) = File::open(&staging) {
            let _ = nix::unistd::syncfs(&handle);
        }
        std::fs::rename(&staging, &target).map_err(io_error("renaming to", &target))?;
        sync_dir(target.parent().unwrap_or(store.root()))
    });
    if outcome.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    outcome.map(|()| target)
}

fn unpack_into(
    store: &Store,
    blob: &Digest,
    compression: Compression,
    diff_id: &Digest,
    staging: &Path,
) -> Result<(), ImageError> {
    let blob_path = store.blob_path(blob);
    let file = File::open(&blob_path).map_err(io_error("opening", &blob_path))?;
    let buffered = BufReader::with_capacity(256 << 10, file);
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(
            |error| ImageError::Layer {
                digest: blob.clone(),
                reason: format!("not zstd: {error}"),
            },
        )?),
    };
    std::fs::create_dir(staging).map_err(io_error("creating", staging))?;
    let layer_error = |reason: String| ImageError::Layer {
        digest: blob.clone(),
        reason,
    };
    let hashing = DigestingReader::new(decompressed, diff_id.algorithm());
    let mut archive = tar::Archive::new(hashing);
    let as_root = nix::unistd::geteuid().is_root();
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(as_root);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(as_root);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|error| layer_error(format!("not a tar archive: {error}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| layer_error(format!("a tar entry: {error}")))?;
        let path = entry
            .path()
            .map_err(|error| layer_error(format!("an entry's path: {error}")))?
            .into_owned();
        unpack_entry(&mut entry, &path, staging)
            .map_err(|reason| layer_error(format!("{}: {reason}", path.display())))?;
    }
    // The end-of-archive blocks and any padding belong to the diff id too.
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|error| layer_error(format!("reading to the end: {error}")))?;
    let (actual, _, _) = hashing.finish();
    if &actual != diff_id {
        return Err(ImageError::DigestMismatch {
            what: format!("the uncompressed layer {blob}"),
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(())
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    root: &Path,
) -> Result<(), String> {
    let name = path.file_name().unwrap_or_default();
    let kind = entry.header().entry_type();
    if name == OsStr::new(OPAQUE) {
        let directory = inside(root, path.parent().unwrap_or(Path::new("")))?;
        std::fs::create_dir_all(&directory).map_err(|error| error.to_string())?;
        return set_xattr(&directory, OPAQUE_XATTR, b"y");
    }
    if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT.as_bytes()) {
        let target = inside(root, &path.with_file_name(OsStr::from_bytes(hidden)))?;
        make_parent(&target)?;
        return make_node(&target, nix::sys::stat::SFlag::S_IFCHR, 0o000, 0);
    }
    if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        let target = inside(root, path)?;
        make_parent(&target)?;
        let header = entry.header();
        let mode = header.mode().map_err(|error| error.to_string())?;
        let (major, minor) = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let flag = if kind.is_fifo() {
            nix::sys::stat::SFlag::S_IFIFO
        } else if kind.is_block_special() {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFCHR
        };
        make_node(
            &target,
            flag,
            mode,
            nix::sys::stat::makedev(major.into(), minor.into()),
        )?;
        if nix::unistd::geteuid().is_root() {
            let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &target,
                Some(nix::unistd::Uid::from_raw(uid as u32)),
                Some(nix::unistd::Gid::from_raw(gid as u32)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|error| format!("owning it: {error}"))?;
        }
        return Ok(());
    }
    inside(root, path)?;
    match entry.unpack_in(root) {
        Ok(true) => Ok(()),
        Ok(false) => Err("the path leaves the layer".into()),
        Err(error) => Err(error_chain(&error)),
    }
}

/// `path` (from an entry) under `root`, refusing `..` and paths through symbolic links.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut resolved = root.to_path_buf();
    let components: Vec<Component<'_>> = path.components().collect();
    for (index, component) in components.iter().enumerate() {
        match component {
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                return Err("the path climbs out of the layer ('..')".into())
            }
            Component::Normal(part) => {
                resolved.push(part);
                let last = index + 1 == components.len();
                if !last {
                    if let Ok(metadata) = std::fs::symlink_metadata(&resolved) {
                        if metadata.file_type().is_symlink() {
                            return Err(format!(
                                "the path goes through the symbolic link {}",
                                resolved.strip_prefix(root).unwrap_or(&resolved).display()
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(resolved)
}

fn make_parent(target: &Path) -> Result<(), String> {
    match target.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|error| error.to_string()),
        None => Ok(()),
    }
}

fn make_node(
    target: &Path,
    kind: nix::sys::stat::SFlag,
    mode: u32,
    device: nix::libc::dev_t,
) -> Result<(), String> {
    if std::fs::symlink_metadata(target).is_ok() {
        let removed = if target.is_dir() && !target.is_symlink() {
            std::fs::remove_dir_all(target)
        } else {
            std::fs::remove_file(target)
        };
        removed.map_err(|error| format!("replacing it: {error}"))?;
    }
    nix::sys::stat::mknod(
        target,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(mode),
        device,
    )
    .map_err(|error| format!("mknod: {error} (unpacking layers needs root)"))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt as _;
    let path_c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "a NUL byte in the path".to_owned())?;
    let name_c = std::ffi::CString::new(name).map_err(|_| "a NUL byte in the name".to_owned())?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the value pointer and
    // length describe `value`.
    let result = unsafe {
        nix::libc::lsetxattr(
            path_c.as_ptr(),
            name_c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(format!(
            "setting {name}: {} (opaque directories need root)",
            io::Error::last_os_error()
        ))
    }
}
