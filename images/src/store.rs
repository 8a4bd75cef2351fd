//! The content-addressed store on STATE, and the records of what it holds.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     verified blobs: indexes, manifests, configs, layer tarballs
//! <root>/ingest/<n>             blobs being written; cleared when the store opens
//! <root>/layers/sha256/<hex>/   a layer unpacked once, by its diff id (uncompressed digest)
//! <root>/layers/.staging-…      a layer being unpacked; cleared when the store opens
//! <root>/images.json            the records: image names and the containers' layer holds
//! ```
//!
//! A blob reaches `blobs/` only by a rename after its bytes were hashed, matched and
//! synced, and a layer reaches `layers/` only by a rename after its whole stream was
//! unpacked and matched its diff id; so a power cut or a failed pull leaves at most an
//! orphan in `ingest/` or a staging directory, never a partial blob or layer under a
//! trusted name. The records are replaced with the durable write.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, DigestingReader};
use crate::error::{io_error, ImageError};

/// Where the agent keeps the store.
pub const DEFAULT_ROOT: &str = "/var/lib/keelson/images";
/// The largest index, manifest or config read into memory.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    /// The (usually compressed) blob.
    pub blob: Digest,
    /// The uncompressed tar's digest: the unpacked layer's name.
    pub diff_id: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size.
    pub size: u64,
}

/// An image the store holds under a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// The index or manifest list it was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// The platform manifest: the image's id.
    pub manifest: Digest,
    /// The image config.
    pub config: Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of config and layer blobs.
    pub size: u64,
    /// When it was stored (Unix seconds).
    pub stored_at: i64,
    /// Where it came from: `archive FILE` or `registry HOST`.
    pub source: String,
}

impl ImageRecord {
    /// Every blob the image refers to.
    pub fn blobs(&self) -> BTreeSet<Digest> {
        let mut blobs: BTreeSet<Digest> = self.layers.iter().map(|l| l.blob.clone()).collect();
        blobs.insert(self.manifest.clone());
        blobs.insert(self.config.clone());
        blobs.extend(self.index.clone());
        blobs
    }

    /// Its unpacked layers, by diff id.
    pub fn diff_ids(&self) -> BTreeSet<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// `images.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// Images by name.
    pub images: BTreeMap<String, ImageRecord>,
    /// Layers held by containers, by container id: kept whatever happens to images.
    pub holds: BTreeMap<String, BTreeSet<Digest>>,
}

/// The store's directories.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    next_ingest: AtomicU64,
}

impl Store {
    /// Opens (creating) the store at `root` and clears what an interrupted write left.
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        let store = Store {
            root: root.to_path_buf(),
            next_ingest: AtomicU64::new(0),
        };
        for directory in [
            store.root.join("blobs/sha256"),
            store.root.join("blobs/sha512"),
            store.root.join("layers/sha256"),
            store.root.join("layers/sha512"),
            store.ingest_dir(),
        ] {
            std::fs::create_dir_all(&directory).map_err(io_error("creating", &directory))?;
        }
        remove_entries(&store.ingest_dir(), |_| true)?;
        remove_entries(&store.root.join("layers"), |name| name.starts_with('.'))?;
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Where a verified blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// True when the blob is stored.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where an unpacked layer lives (the directory overlayfs takes as a lower layer).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(diff_id.algorithm().name())
            .join(diff_id.hex())
    }

    /// True when the layer is unpacked.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    /// A fresh staging path under `layers/` for unpacking.
    pub fn layer_staging(&self, diff_id: &Digest) -> PathBuf {
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        self.root.join("layers").join(format!(
            ".staging-{}-{}-{n}",
            diff_id.short(),
            std::process::id()
        ))
    }

    /// Writes a blob from `reader`: hashed as it streams into `ingest/`, synced, checked
    /// against `expected` (digest and size, when known) and only then renamed into place.
    /// Returns its digest and size. A blob already stored is not written again (the reader
    /// is then left unread).
    pub fn write_blob(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(digest) = expected {
            if self.has_blob(digest) {
                // Stored already: the bytes offered are still checked (they are read past
                // anyway), so that a tampered copy is refused rather than quietly ignored.
                return self.verify_only(reader, digest, expected_size, what);
            }
        }
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        let staging = self
            .ingest_dir()
            .join(format!("{}-{n}", std::process::id()));
        let outcome = self.stream_into(&staging, reader, expected, expected_size, what);
        if outcome.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        outcome
    }

    fn verify_only(
        &self,
        reader: impl Read,
        expected: &Digest,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64), ImageError> {
        let mut hashing = DigestingReader::new(reader, expected.algorithm());
        io::copy(&mut hashing, &mut io::sink()).map_err(|source| ImageError::Source {
            what: what.to_owned(),
            source,
        })?;
        let (actual, size, _) = hashing.finish();
        check_blob(what, expected, expected_size, &actual, size)?;
        Ok((actual, size))
    }

    fn stream_into(
        &self,
        staging: &Path,
        reader: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64), ImageError> {
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let file = File::create(staging).map_err(io_error("creating", staging))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let mut hashing = DigestingReader::new(reader, algorithm);
        // Copied by hand so that a failed read (the source's fault) and a failed write
        // (STATE's) are told apart.
        let mut buffer = vec![0; 256 << 10];
        loop {
            let read = match hashing.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ImageError::Source {
                        what: what.to_owned(),
                        source,
                    })
                }
            };
            writer
                .write_all(&buffer[..read])
                .map_err(io_error("writing", staging))?;
        }
        let file = writer
            .into_inner()
            .map_err(|error| io_error("writing", staging)(error.into_error()))?;
        let (actual, size, _) = hashing.finish();
        if let Some(expected) = expected {
            check_blob(what, expected, expected_size, &actual, size)?;
        }
        file.sync_all().map_err(io_error("syncing", staging))?;
        drop(file);
        let target = self.blob_path(&actual);
        std::fs::rename(staging, &target).map_err(io_error("renaming to", &target))?;
        sync_dir(target.parent().unwrap_or(&self.root))?;
        Ok((actual, size))
    }

    /// Writes a blob held in memory.
    pub fn write_blob_bytes(&self, bytes: &[u8], what: &str) -> Result<Digest, ImageError> {
        self.write_blob(bytes, None, None, what)
            .map(|(digest, _)| digest)
    }

    /// Reads a small blob (index, manifest, config), checking it against its digest again:
    /// a bit flipped on disk is reported, not parsed.
    pub fn read_document(&self, digest: &Digest, what: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob {
                    what: what.to_owned(),
                    digest: digest.clone(),
                    source_name: "the store".into(),
                })
            }
            Err(error) => return Err(io_error("opening", &path)(error)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error("reading", &path))?;
        if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(ImageError::Archive {
                source_name: what.to_owned(),
                reason: format!("it is larger than {MAX_DOCUMENT_BYTES} bytes"),
            });
        }
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("{what} (stored at {})", path.display()),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Every stored blob.
    pub fn stored_blobs(&self) -> Result<BTreeSet<Digest>, ImageError> {
        self.scan("blobs")
    }

    /// Every unpacked layer.
    pub fn stored_layers(&self) -> Result<BTreeSet<Digest>, ImageError> {
        self.scan("layers")
    }

    fn scan(&self, kind: &str) -> Result<BTreeSet<Digest>, ImageError> {
        let mut found = BTreeSet::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let directory = self.root.join(kind).join(algorithm.name());
            let entries = std::fs::read_dir(&directory).map_err(io_error("listing", &directory))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Ok(digest) = format!("{}:{name}", algorithm.name()).parse() {
                    found.insert(digest);
                }
            }
        }
        Ok(found)
    }

    /// Removes a blob.
    pub fn remove_blob(&self, digest: &Digest) -> Result<(), ImageError> {
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(io_error("removing", &path)(error))
            }
            _ => Ok(()),
        }
    }

    /// Removes an unpacked layer: renamed to a staging name first, so that a crash part-way
    /// never leaves half a layer under its trusted name.
    pub fn remove_layer(&self, diff_id: &Digest) -> Result<(), ImageError> {
        let path = self.layer_path(diff_id);
        if !path.exists() {
            return Ok(());
        }
        let doomed = self.layer_staging(diff_id);
        std::fs::rename(&path, &doomed).map_err(io_error("renaming", &path))?;
        std::fs::remove_dir_all(&doomed).map_err(io_error("removing", &doomed))
    }

    fn records_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// The records (empty for a new store).
    pub fn records(&self) -> Result<Records, ImageError> {
        let path = self.records_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| ImageError::Io {
                action: "reading",
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, error),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Records::default()),
            Err(error) => Err(io_error("reading", &path)(error)),
        }
    }

    /// Replaces the records durably.
    pub fn save_records(&self, records: &Records) -> Result<(), ImageError> {
        let path = self.records_path();
        let bytes = serde_json::to_vec_pretty(records).unwrap_or_default();
        keelson_linux::durable::write(&path, &bytes).map_err(|error| {
            let path = error.path.clone();
            io_error(error.step, &path)(error.source)
        })
    }
}

/// A blob's digest and size against what announced it.
fn check_blob(
    what: &str,
    expected: &Digest,
    expected_size: Option<u64>,
    actual: &Digest,
    size: u64,
) -> Result<(), ImageError> {
    if actual != expected {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.clone(),
            actual: actual.clone(),
        });
    }
    match expected_size {
        Some(expected_size) if size != expected_size => Err(ImageError::SizeMismatch {
            what: what.to_owned(),
            expected: expected_size,
            actual: size,
        }),
        _ => Ok(()),
    }
}

/// Syncs a directory so that renames into it survive a power cut.
pub fn sync_dir(directory: &Path) -> Result<(), ImageError> {
    keelson_linux::durable::sync_directory(directory).map_err(|error| {
        let path = error.path.clone();
        io_error("syncing", &path)(error.source)
    })
}

fn remove_entries(directory: &Path, doomed: impl Fn(&str) -> bool) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(directory).map_err(io_error("listing", directory))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !doomed(&name) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(io_error("removing", &path))?;
    }
    Ok(())
}
