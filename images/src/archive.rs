//! Importing image archives: an OCI archive (as `skopeo copy … oci-archive:` and
//! `docker save` since Docker 25 write) or a Docker archive (`docker save` before that),
//! gzip-compressed or not.
//!
//! The archive is read once, as a stream: every blob goes straight into the store through
//! the verifying write (OCI blobs against the digest their path names; Docker's files by
//! the digest of what arrives), and the small JSON documents are kept in memory. The images
//! are then resolved from the index or the Docker manifest.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

use oci_spec::image::Descriptor;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::{self, sniff_compression};
use crate::reference::Reference;
use crate::store::{Store, MAX_DOCUMENT_BYTES};

/// The annotation containerd (and `docker save`) name an image with.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation that holds a tag, or (as skopeo writes it) a whole reference.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image found in an archive, its blobs stored, ready to be unpacked and recorded.
#[derive(Debug, Clone)]
pub struct Found {
    /// The names it goes by (normalised).
    pub names: Vec<Reference>,
    /// The index it was chosen from, if any.
    pub index: Option<Digest>,
    /// Its manifest, stored.
    pub manifest: Digest,
}

/// What the archive held besides blobs.
#[derive(Default)]
struct Contents {
    index_json: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    /// Files stored as blobs, by their path in the archive.
    files: BTreeMap<String, Digest>,
}

/// Reads the archive from `reader` into `store` and returns the images it holds. `name`
/// replaces the archive's own names (it must then hold one image).
pub fn read(
    store: &Store,
    reader: impl Read,
    source_name: &str,
    name: Option<&Reference>,
) -> Result<Vec<Found>, ImageError> {
    let contents = store_contents(store, reader, source_name)?;
    let mut found = if let Some(index) = &contents.index_json {
        from_oci_index(store, index, source_name)?
    } else if let Some(manifest) = &contents.docker_manifest {
        from_docker_manifest(store, manifest, &contents.files, source_name)?
    } else {
        return Err(ImageError::Archive {
            source_name: source_name.to_owned(),
            reason: "it has neither index.json (OCI) nor manifest.json (Docker)".into(),
        });
    };
    if let Some(name) = name {
        if found.len() != 1 {
            return Err(ImageError::Archive {
                source_name: source_name.to_owned(),
                reason: format!(
                    "it holds {} images, and --name names one; import it without --name",
                    found.len()
                ),
            });
        }
        found[0].names = vec![name.clone()];
    }
    if found.iter().any(|image| image.names.is_empty()) {
        return Err(ImageError::Unnamed {
            source_name: source_name.to_owned(),
        });
    }
    Ok(found)
}

fn store_contents(
    store: &Store,
    reader: impl Read,
    source_name: &str,
) -> Result<Contents, ImageError> {
    let not_archive = |reason: String| ImageError::Archive {
        source_name: source_name.to_owned(),
        reason,
    };
    let mut buffered = BufReader::with_capacity(256 << 10, reader);
    let head = buffered
        .fill_buf()
        .map_err(|source| ImageError::Source {
            what: source_name.to_owned(),
            source,
        })?
        .to_vec();
    let stream: Box<dyn Read> = match sniff_compression(&head) {
        manifest::Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        manifest::Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|error| not_archive(format!("not zstd: {error}")))?,
        ),
        manifest::Compression::None => Box::new(buffered),
    };
    let mut archive = tar::Archive::new(stream);
    let mut contents = Contents::default();
    let entries = archive
        .entries()
        .map_err(|error| not_archive(format!("not a tar archive: {error}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|error| not_archive(format!("not a tar archive: {error}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|error| not_archive(format!("an entry's path: {error}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        match path.as_str() {
            "index.json" => {
                contents.index_json = Some(read_document(&mut entry, &path, source_name)?)
            }
            "manifest.json" => {
                contents.docker_manifest = Some(read_document(&mut entry, &path, source_name)?)
            }
            "oci-layout" | "repositories" => {}
            _ => {
                let what = format!("{path} in {source_name}");
                let expected = blob_digest(&path);
                let size = entry.header().size().ok();
                let (digest, _) = store.write_blob(&mut entry, expected.as_ref(), size, &what)?;
                contents.files.insert(path, digest);
            }
        }
    }
    Ok(contents)
}

/// The digest an OCI layout path names: `blobs/sha256/<hex>`.
fn blob_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (algorithm, hex) = rest.split_once('/')?;
    format!("{algorithm}:{hex}").parse().ok()
}

fn read_document(
    entry: &mut impl Read,
    path: &str,
    source_name: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    entry
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Source {
            what: format!("{path} in {source_name}"),
            source,
        })?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(ImageError::Archive {
            source_name: source_name.to_owned(),
            reason: format!("{path} is larger than {MAX_DOCUMENT_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

fn from_oci_index(
    store: &Store,
    index_json: &[u8],
    source_name: &str,
) -> Result<Vec<Found>, ImageError> {
    let what = format!("index.json in {source_name}");
    let index = match manifest::parse_document(&what, index_json, Some(manifest::OCI_INDEX))? {
        manifest::Document::Index(index) => index,
        manifest::Document::Manifest(_) => {
            return Err(ImageError::Archive {
                source_name: source_name.to_owned(),
                reason: "index.json is a manifest, not an index".into(),
            })
        }
    };
    if index.manifests().is_empty() {
        return Err(ImageError::Archive {
            source_name: source_name.to_owned(),
            reason: "index.json lists no image".into(),
        });
    }
    index
        .manifests()
        .iter()
        .map(|descriptor| {
            let names = names_from_annotations(descriptor)?;
            let (index, manifest) = resolve_descriptor(store, descriptor, source_name)?;
            Ok(Found {
                names,
                index,
                manifest,
            })
        })
        .collect()
}

/// The descriptor's image name: containerd's annotation, else an OCI ref name that is a
/// whole reference (skopeo's `example/busybox:1`; a bare tag such as `1` names nothing).
fn names_from_annotations(descriptor: &Descriptor) -> Result<Vec<Reference>, ImageError> {
    let annotations = descriptor.annotations().clone().unwrap_or_default();
    if let Some(name) = annotations.get(CONTAINERD_NAME) {
        return Ok(vec![Reference::parse(name)?]);
    }
    match annotations.get(OCI_REF_NAME) {
        Some(name) if name.contains('/') || name.contains(':') => Ok(vec![Reference::parse(name)?]),
        _ => Ok(Vec::new()),
    }
}

/// Follows a descriptor from an index to the node's platform manifest, which must be
/// stored. Returns the index it passed through, if any, and the manifest.
pub fn resolve_descriptor(
    store: &Store,
    descriptor: &Descriptor,
    source_name: &str,
) -> Result<(Option<Digest>, Digest), ImageError> {
    let digest: Digest =
        descriptor
            .digest()
            .to_string()
            .parse()
            .map_err(|error: crate::digest::DigestError| ImageError::Archive {
                source_name: source_name.to_owned(),
                reason: error.to_string(),
            })?;
    let what = format!("manifest {digest}");
    let bytes = stored_document(store, &digest, &what, source_name)?;
    let media_type = descriptor.media_type().to_string();
    match manifest::parse_document(&what, &bytes, Some(&media_type))? {
        manifest::Document::Manifest(_) => Ok((None, digest)),
        manifest::Document::Index(index) => {
            let (os, architecture) = manifest::node_platform();
            let chosen = manifest::select_platform(&what, &index, os, architecture)?;
            let (_, manifest) = resolve_descriptor(store, &chosen, source_name)?;
            Ok((Some(digest), manifest))
        }
    }
}

fn stored_document(
    store: &Store,
    digest: &Digest,
    what: &str,
    source_name: &str,
) -> Result<Vec<u8>, ImageError> {
    if !store.has_blob(digest) {
        return Err(ImageError::MissingBlob {
            what: what.to_owned(),
            digest: digest.clone(),
            source_name: source_name.to_owned(),
        });
    }
    store.read_document(digest, what)
}

/// One image of a Docker archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn from_docker_manifest(
    store: &Store,
    manifest_json: &[u8],
    files: &BTreeMap<String, Digest>,
    source_name: &str,
) -> Result<Vec<Found>, ImageError> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(manifest_json).map_err(|error| ImageError::Archive {
            source_name: source_name.to_owned(),
            reason: format!("manifest.json: {error}"),
        })?;
    let file = |path: &str, what: &str| {
        files.get(path).cloned().ok_or_else(|| ImageError::Archive {
            source_name: source_name.to_owned(),
            reason: format!("manifest.json names {what} {path:?}, which the archive lacks"),
        })
    };
    entries
        .iter()
        .map(|entry| {
            let config = file(&entry.config, "the config")?;
            let config_size = blob_size(store, &config)?;
            let mut layers = Vec::new();
            for path in &entry.layers {
                let blob = file(path, "the layer")?;
                let mut head = [0u8; 4];
                let read = std::fs::File::open(store.blob_path(&blob))
                    .and_then(|mut file| file.read(&mut head))
                    .unwrap_or(0);
                let compression = sniff_compression(&head[..read]);
                layers.push(serde_json::json!({
                    "mediaType": manifest::oci_layer_media_type(compression),
                    "digest": blob.to_string(),
                    "size": blob_size(store, &blob)?,
                }));
            }
            // Docker archives carry no manifest: write the one a registry would serve.
            let synthesized = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::OCI_MANIFEST,
                "config": {
                    "mediaType": manifest::OCI_CONFIG,
                    "digest": config.to_string(),
                    "size": config_size,
                },
                "layers": layers,
            });
            let manifest = store.write_blob_bytes(
                synthesized.to_string().as_bytes(),
                &format!("the manifest of {} in {source_name}", entry.config),
            )?;
            let names = entry
                .repo_tags
                .iter()
                .flatten()
                .map(|tag| Reference::parse(tag))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Found {
                names,
                index: None,
                manifest,
            })
        })
        .collect()
}

fn blob_size(store: &Store, digest: &Digest) -> Result<u64, ImageError> {
    let path = store.blob_path(digest);
    std::fs::metadata(&path)
        .map(|metadata| metadata.len())
        .map_err(crate::error::io_error("reading", &path))
}
