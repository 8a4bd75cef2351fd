//! The store's one error type: each variant says what failed, where, and what to do.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::manifest::ManifestError;
use crate::reference::ReferenceError;

/// Why an image operation failed. Nothing of a failed operation is kept.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("writing", "renaming"…).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading what is being stored failed (the archive, the connection).
    #[error("reading {what}: {source}")]
    Source {
        /// What was being read.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// STATE is full.
    #[error(
        "STATE is full while writing {path}: free space by removing images (keelctl image rm) \
         or give the node a larger disk"
    )]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// A blob's bytes do not match its digest.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}; the blob was not kept")]
    DigestMismatch {
        /// The blob (`layer 2 of docker.io/library/busybox:1`…).
        what: String,
        /// The digest it was announced with.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A blob's size does not match its descriptor.
    #[error("{what}: {actual} bytes, but its descriptor says {expected}; the blob was not kept")]
    SizeMismatch {
        /// The blob.
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// An index, manifest or config cannot be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A blob an image needs is not in the archive or the store.
    #[error("{what} ({digest}) is missing from {source_name}")]
    MissingBlob {
        /// What the blob is.
        what: String,
        /// Its digest.
        digest: Digest,
        /// Where it was looked for.
        source_name: String,
    },
    /// An archive is not an OCI or Docker image archive.
    #[error("{source_name} is not an image archive: {reason}")]
    Archive {
        /// The archive.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// An archive names no image and no name was given.
    #[error(
        "{source_name} does not name its image (no io.containerd.image.name, no full \
         org.opencontainers.image.ref.name, no RepoTags); give one with --name REF"
    )]
    Unnamed {
        /// The archive.
        source_name: String,
    },
    /// A layer cannot be unpacked.
    #[error("layer {digest}: {reason}")]
    Layer {
        /// The layer blob.
        digest: Digest,
        /// What is wrong, with the entry's path.
        reason: String,
    },
    /// Every endpoint refused or failed.
    #[error("cannot pull {reference}: {}", attempts.join("; "))]
    Pull {
        /// The image.
        reference: String,
        /// Each endpoint's failure, in the order tried.
        attempts: Vec<String>,
    },
    /// No such image in the store.
    #[error("no image {reference} on this node (keelctl image ls lists them)")]
    NotFound {
        /// What was asked for.
        reference: String,
    },
    /// A name that is not an image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// An I/O failure on `path` while doing `action`; a full disk is named as such.
pub fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| {
        if source.kind() == io::ErrorKind::StorageFull {
            ImageError::DiskFull { path }
        } else {
            ImageError::Io {
                action,
                path,
                source,
            }
        }
    }
}

/// An error and its causes, as one line (tar's and reqwest's errors keep the system's
/// reason as their source).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
