//! Image documents: OCI image indexes and manifests, Docker v2 schema 2 manifests and
//! manifest lists (the same shapes under other media types), platform selection, and what
//! each layer media type means. Pure: bytes in, typed values out.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker schema 1 (signed or not): refused, it has no content-addressed config.
pub const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Every manifest media type the store reads, for registries' `Accept` headers.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Why a document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What it is (`manifest sha256:…`, `index.json`).
        what: String,
        /// The parser's words.
        reason: String,
    },
    /// A media type the store does not read.
    #[error(
        "{what} has media type {media_type:?}, which Keelson does not read; it reads OCI \
         images and Docker v2 schema 2 images (push the image again with a current tool)"
    )]
    UnknownMediaType {
        /// The blob.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// An index without the node's platform.
    #[error(
        "{what} has no image for {wanted}; it offers {available}. Build or pull the image for \
         {wanted}"
    )]
    NoPlatform {
        /// The index.
        what: String,
        /// `linux/amd64`.
        wanted: String,
        /// What it offers, comma-separated.
        available: String,
    },
    /// A manifest whose config and layers disagree.
    #[error("{what} is inconsistent: {reason}")]
    Inconsistent {
        /// The image.
        what: String,
        /// How.
        reason: String,
    },
}

/// A manifest document: an index (or list) of per-platform manifests, or one manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// OCI index or Docker manifest list.
    Index(Box<ImageIndex>),
    /// OCI or Docker v2 manifest.
    Manifest(Box<ImageManifest>),
}

/// Parses a manifest document named `what`; `media_type` is what the registry or the
/// referring descriptor said, and the document's own `mediaType` field decides otherwise.
pub fn parse_document(
    what: &str,
    bytes: &[u8],
    media_type: Option<&str>,
) -> Result<Document, ManifestError> {
    let malformed = |reason: String| ManifestError::Malformed {
        what: what.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| malformed(error.to_string()))?;
    let declared = value
        .get("mediaType")
        .and_then(serde_json::Value::as_str)
        .or(media_type)
        .map(str::to_owned);
    let kind = match declared.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => Kind::Index,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => Kind::Manifest,
        // OCI allows an index or manifest without mediaType: tell them by their fields.
        None if value.get("manifests").is_some() => Kind::Index,
        None if value.get("layers").is_some() => Kind::Manifest,
        Some(other) => {
            return Err(ManifestError::UnknownMediaType {
                what: what.to_owned(),
                media_type: other.to_owned(),
            })
        }
        None => {
            return Err(malformed(
                "neither an index (manifests) nor a manifest (layers)".into(),
            ))
        }
    };
    match kind {
        Kind::Index => serde_json::from_value(value)
            .map(|index| Document::Index(Box::new(index)))
            .map_err(|error| malformed(error.to_string())),
        Kind::Manifest => serde_json::from_value(value)
            .map(|manifest| Document::Manifest(Box::new(manifest)))
            .map_err(|error| malformed(error.to_string())),
    }
}

enum Kind {
    Index,
    Manifest,
}

/// The platform this node runs: `linux` and the machine's architecture in OCI's words.
pub fn node_platform() -> (&'static str, &'static str) {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", architecture)
}

/// The manifest of `index` for `os`/`architecture`. Attestation manifests (BuildKit's
/// `unknown/unknown`) never match.
pub fn select_platform(
    what: &str,
    index: &ImageIndex,
    os: &str,
    architecture: &str,
) -> Result<Descriptor, ManifestError> {
    let platform_of = |descriptor: &Descriptor| {
        descriptor.platform().as_ref().map(|platform| {
            (
                platform.os().to_string(),
                platform.architecture().to_string(),
            )
        })
    };
    let found = index.manifests().iter().find(|descriptor| {
        platform_of(descriptor).is_some_and(|(o, a)| o == os && a == architecture)
    });
    // An index of one manifest that names no platform is taken as the node's.
    let single_unnamed = match index.manifests().as_slice() {
        [only] if only.platform().is_none() => Some(only),
        _ => None,
    };
    found.or(single_unnamed).cloned().ok_or_else(|| {
        let available: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(platform_of)
            .map(|(o, a)| format!("{o}/{a}"))
            .collect();
        ManifestError::NoPlatform {
            what: what.to_owned(),
            wanted: format!("{os}/{architecture}"),
            available: if available.is_empty() {
                "no platform".into()
            } else {
                available.join(", ")
            },
        }
    })
}

/// How a layer of `media_type` is compressed, or why it cannot be used.
pub fn layer_compression(what: &str, media_type: &str) -> Result<Compression, ManifestError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(ManifestError::UnknownMediaType {
            what: what.to_owned(),
            media_type: other.to_owned(),
        }),
    }
}

/// The compression a blob's first bytes show (for Docker archives, whose manifest names no
/// media types).
pub fn sniff_compression(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// The OCI media type of a layer compressed as `compression`.
pub fn oci_layer_media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// Parses an image config named `what`.
pub fn parse_config(what: &str, bytes: &[u8]) -> Result<ImageConfiguration, ManifestError> {
    serde_json::from_slice(bytes).map_err(|error| ManifestError::Malformed {
        what: what.to_owned(),
        reason: error.to_string(),
    })
}

/// The config's layer digests (`rootfs.diff_ids`), checked against the manifest's layers.
pub fn diff_ids(
    what: &str,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<Vec<Digest>, ManifestError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ManifestError::Inconsistent {
            what: what.to_owned(),
            reason: format!(
                "the manifest has {} layers but the config lists {} (rootfs.diff_ids)",
                manifest.layers().len(),
                diff_ids.len()
            ),
        });
    }
    diff_ids
        .iter()
        .map(|text| {
            text.parse::<Digest>()
                .map_err(|error| ManifestError::Inconsistent {
                    what: what.to_owned(),
                    reason: format!("rootfs.diff_ids: {error}"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(n, (os, arch))| {
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": format!("sha256:{:064x}", n),
                    "size": 100,
                    "platform": { "os": os, "architecture": arch },
                })
            })
            .collect();
        let document = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": manifests
        });
        match parse_document("list", document.to_string().as_bytes(), None).unwrap() {
            Document::Index(index) => *index,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_nodes_platform_is_chosen_from_a_docker_list() {
        let list = index(&[
            ("unknown", "unknown"),
            ("linux", "arm64"),
            ("linux", "amd64"),
        ]);
        let chosen = select_platform("list", &list, "linux", "amd64").unwrap();
        assert_eq!(chosen.digest().to_string(), format!("sha256:{:064x}", 2));
    }

    #[test]
    fn a_missing_platform_names_what_is_offered() {
        let list = index(&[("linux", "arm64"), ("linux", "s390x")]);
        let error = select_platform("busybox", &list, "linux", "amd64").unwrap_err();
        assert_eq!(
            error.to_string(),
            "busybox has no image for linux/amd64; it offers linux/arm64, linux/s390x. Build \
             or pull the image for linux/amd64"
        );
    }

    #[test]
    fn layer_media_types_map_to_their_compression() {
        assert_eq!(
            layer_compression("l", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("l", "application/vnd.oci.image.layer.v1.tar+zstd"),
            Ok(Compression::Zstd)
        );
        let error = layer_compression("layer sha256:1", "application/x-squashfs").unwrap_err();
        assert!(matches!(error, ManifestError::UnknownMediaType { .. }));
        assert!(error.to_string().contains("\"application/x-squashfs\""));
    }

    #[test]
    fn schema_1_is_refused_by_name() {
        let document = serde_json::json!({
            "schemaVersion": 1, "mediaType": DOCKER_SCHEMA1[1], "fsLayers": []
        });
        let error = parse_document("old", document.to_string().as_bytes(), None).unwrap_err();
        assert!(
            matches!(error, ManifestError::UnknownMediaType { .. }),
            "{error}"
        );
    }
}
