//! Real image archives, built by the tests: layer tarballs (plain, gzip, zstd) with files,
//! links, whiteouts and hostile paths; OCI configs, manifests and indexes; OCI archives as
//! skopeo writes them and Docker archives as `docker save` writes them.

#![allow(dead_code)]

use std::io::Write;

use keelson_images::Digest;
use serde_json::json;

/// One entry of a layer.
pub enum Entry {
    /// A directory.
    Dir(&'static str, u32),
    /// A regular file: path, mode, owner, contents.
    File(&'static str, u32, u64, &'static [u8]),
    /// A symbolic link: path, target.
    Symlink(&'static str, &'static str),
    /// A hard link: path, target.
    Hardlink(&'static str, &'static str),
}

/// How a layer blob is compressed.
#[derive(Clone, Copy)]
pub enum Packing {
    Plain,
    Gzip,
    Zstd,
}

/// A layer: its blob, media type and diff id.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: Digest,
}

/// A tar of `entries`, written entry by entry with raw headers (so that hostile paths such
/// as `../x` go in as they are).
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        let (path, data): (&str, &[u8]) = match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                (path, &[])
            }
            Entry::File(path, mode, owner, contents) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(*owner);
                header.set_gid(*owner);
                header.set_size(contents.len() as u64);
                (path, contents)
            }
            Entry::Symlink(path, target) | Entry::Hardlink(path, target) => {
                header.set_entry_type(if matches!(entry, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_mode(0o777);
                header.set_size(0);
                header.set_link_name_literal(target).unwrap();
                (path, &[])
            }
        };
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A layer of `entries` packed as `packing`.
pub fn layer(entries: &[Entry], packing: Packing) -> Layer {
    let tar = tar_of(entries);
    let diff_id = Digest::sha256(&tar);
    let (blob, media_type) = match packing {
        Packing::Plain => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Packing::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&tar).unwrap();
            (
                encoder.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Packing::Zstd => (
            zstd::stream::encode_all(&tar[..], 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    };
    Layer {
        blob,
        media_type,
        diff_id,
    }
}

/// An image's blobs: config, manifest, layers.
pub struct Image {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub layers: Vec<Layer>,
}

impl Image {
    /// An amd64 image of `layers` whose process is `command`.
    pub fn new(layers: Vec<Layer>, command: &[&str]) -> Image {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": command, "Env": ["PATH=/bin"], "WorkingDir": "/" },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            },
        })
        .to_string()
        .into_bytes();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::sha256(&config).to_string(),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": Digest::sha256(&l.blob).to_string(),
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        Image {
            config,
            manifest,
            layers,
        }
    }

    /// The manifest's digest: the image's id.
    pub fn id(&self) -> Digest {
        Digest::sha256(&self.manifest)
    }

    /// Every blob, keyed for an OCI layout.
    pub fn blobs(&self) -> Vec<Vec<u8>> {
        let mut blobs = vec![self.config.clone(), self.manifest.clone()];
        blobs.extend(self.layers.iter().map(|l| l.blob.clone()));
        blobs
    }

    /// An index descriptor of this image's manifest with `annotations`.
    pub fn descriptor(&self, annotations: serde_json::Value) -> serde_json::Value {
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.id().to_string(),
            "size": self.manifest.len(),
            "annotations": annotations,
        })
    }
}

/// A tar holding `files` (path, bytes).
pub fn tar_files(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        builder.append_data(&mut header, path, &bytes[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

/// An OCI archive: `oci-layout`, `index.json` with `descriptors`, and `blobs`.
pub fn oci_archive(descriptors: Vec<serde_json::Value>, blobs: Vec<Vec<u8>>) -> Vec<u8> {
    let mut files = vec![(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    for blob in blobs {
        files.push((
            format!("blobs/sha256/{}", Digest::sha256(&blob).hex()),
            blob,
        ));
    }
    let index = json!({ "schemaVersion": 2, "manifests": descriptors });
    files.push(("index.json".to_owned(), index.to_string().into_bytes()));
    tar_files(&files)
}

/// A Docker archive as `docker save` wrote it before Docker 25: `<id>/layer.tar`,
/// `<config hex>.json` and `manifest.json` with `RepoTags`.
pub fn docker_archive(image: &Image, repo_tags: &[&str]) -> Vec<u8> {
    let config_name = format!("{}.json", Digest::sha256(&image.config).hex());
    let mut files = vec![(config_name.clone(), image.config.clone())];
    let mut layer_names = Vec::new();
    for (number, layer) in image.layers.iter().enumerate() {
        let name = format!("{number:064x}/layer.tar");
        files.push((name.clone(), layer.blob.clone()));
        layer_names.push(name);
    }
    let manifest = json!([{ "Config": config_name, "RepoTags": repo_tags, "Layers": layer_names }]);
    files.push((
        "manifest.json".to_owned(),
        manifest.to_string().into_bytes(),
    ));
    files.push(("repositories".to_owned(), b"{}".to_vec()));
    tar_files(&files)
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
