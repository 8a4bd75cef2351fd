//! Keelson's OCI image store: images imported from archives (and, next, pulled from
//! registries), kept content-addressed on STATE, each layer unpacked once into its own
//! directory for the runtime to stack with overlayfs.
//!
//! - [`reference`], [`digest`], [`manifest`]: pure: names normalised as Docker's, digests,
//!   OCI and Docker v2 documents, platform selection, layer media types.
//! - [`gc`]: pure: what may be removed, given what images and containers use.
//! - [`store`]: the directories on STATE, the verifying blob write, the records.
//! - [`layer`]: unpacking with overlayfs whiteouts; [`archive`]: OCI and Docker archives.
//! - [`ImageStore`]: the operations the agent calls (import, list, inspect, remove, hold
//!   layers for a container, collect garbage).
//!
//! Every blob is verified against its digest before it is kept, every layer against its
//! diff id; a failed operation keeps nothing (what it wrote is collected at once). Known
//! limits: one operation at a time (the agent holds a lock around the store); layers are
//! unpacked one after another.

pub mod archive;
pub mod digest;
pub mod error;
pub mod gc;
pub mod layer;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;

pub use digest::Digest;
pub use error::ImageError;
pub use reference::Reference;
pub use store::{ImageRecord, LayerRecord};

use store::{Records, Store};

/// The image store on STATE.
#[derive(Debug)]
pub struct ImageStore {
    store: Store,
    /// Held through every read-modify-write of the records file, so that a container's
    /// hold never undoes a pull's record (or the reverse): holds do not wait for pulls.
    records_lock: std::sync::Mutex<()>,
}

impl ImageStore {
    /// Opens the store at `root` (creating it), clears what an interrupted operation left
    /// and collects garbage.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let images = ImageStore {
            store: Store::open(root)?,
            records_lock: std::sync::Mutex::new(()),
        };
        images.collect_garbage()?;
        Ok(images)
    }

    /// The underlying directories.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Imports an OCI or Docker archive (gzip-compressed or not) named `source_name`; `name`
    /// replaces the archive's own names. Returns the images recorded.
    pub fn import_archive(
        &self,
        reader: impl Read,
        source_name: &str,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let name = name.map(Reference::parse).transpose()?;
        let outcome =
            archive::read(&self.store, reader, source_name, name.as_ref()).and_then(|found| {
                let source = format!("archive {source_name}");
                let mut records = Vec::new();
                for image in found {
                    for name in &image.names {
                        records.push(self.describe(
                            name,
                            image.index.clone(),
                            &image.manifest,
                            &source,
                        )?);
                    }
                }
                self.record(&records)?;
                Ok(records)
            });
        self.keep_nothing_on_failure(outcome)
    }

    /// Stores the image of `manifest` (already a stored blob) under `name`: its config and
    /// layers must be stored; the layers are unpacked. Used by pulls and imports.
    pub fn describe(
        &self,
        name: &Reference,
        index: Option<Digest>,
        manifest: &Digest,
        source: &str,
    ) -> Result<ImageRecord, ImageError> {
        let what = name.to_string();
        let bytes = self
            .store
            .read_document(manifest, &format!("the manifest of {what}"))?;
        let manifest_document =
            match manifest::parse_document(&what, &bytes, Some(manifest::OCI_MANIFEST))? {
                manifest::Document::Manifest(document) => document,
                manifest::Document::Index(_) => {
                    return Err(manifest::ManifestError::Inconsistent {
                        what,
                        reason: format!("{manifest} is an index where a manifest was expected"),
                    }
                    .into())
                }
            };
        let config: Digest = parse_descriptor_digest(&what, manifest_document.config())?;
        let config_bytes = self
            .store
            .read_document(&config, &format!("the config of {what}"))?;
        let config_document =
            manifest::parse_config(&format!("the config of {what}"), &config_bytes)?;
        let diff_ids = manifest::diff_ids(&what, &manifest_document, &config_document)?;
        let mut layers = Vec::new();
        for (number, (descriptor, diff_id)) in
            manifest_document.layers().iter().zip(diff_ids).enumerate()
        {
            let layer_what = format!("layer {} of {what}", number + 1);
            let blob = parse_descriptor_digest(&layer_what, descriptor)?;
            if !self.store.has_blob(&blob) {
                return Err(ImageError::MissingBlob {
                    what: layer_what,
                    digest: blob,
                    source_name: source.to_owned(),
                });
            }
            let media_type = descriptor.media_type().to_string();
            let compression = manifest::layer_compression(&layer_what, &media_type)?;
            layer::unpack(&self.store, &blob, compression, &diff_id)?;
            layers.push(LayerRecord {
                blob,
                diff_id,
                media_type,
                size: descriptor.size(),
            });
        }
        let size = layers.iter().map(|layer| layer.size).sum::<u64>() + config_bytes.len() as u64;
        Ok(ImageRecord {
            name: name.to_string(),
            index,
            manifest: manifest.clone(),
            config,
            layers,
            size,
            stored_at: keelson_linux::clock::unix_now(),
            source: source.to_owned(),
        })
    }

    /// Records images (replacing any of the same names) durably.
    pub fn record(&self, images: &[ImageRecord]) -> Result<(), ImageError> {
        self.update_records(|records| {
            for image in images {
                records.images.insert(image.name.clone(), image.clone());
            }
            Ok(true)
        })
    }

    /// Reads the records, lets `change` change them, and saves them when it says so, with
    /// no other change in between.
    fn update_records(
        &self,
        change: impl FnOnce(&mut store::Records) -> Result<bool, ImageError>,
    ) -> Result<(), ImageError> {
        let _exclusive = self
            .records_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut records = self.store.records()?;
        if change(&mut records)? {
            self.store.save_records(&records)?;
        }
        Ok(())
    }

    /// Every image, by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.store.records()?.images.into_values().collect())
    }

    /// The image `reference` names (short names normalised), or its id (manifest digest or
    /// a prefix of its hex of at least 12 digits).
    pub fn get(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let records = self.store.records()?;
        find(&records, reference)
            .cloned()
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_owned(),
            })
    }

    /// The image's config.
    pub fn config(&self, image: &ImageRecord) -> Result<ImageConfiguration, ImageError> {
        let what = format!("the config of {}", image.name);
        let bytes = self.store.read_document(&image.config, &what)?;
        Ok(manifest::parse_config(&what, &bytes)?)
    }

    /// The image's unpacked layers, top first (as overlayfs's `lowerdir` lists them).
    pub fn layer_dirs(&self, image: &ImageRecord) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|layer| self.store.layer_path(&layer.diff_id))
            .collect()
    }

    /// Removes an image's name and collects what nothing uses any more (layers held by
    /// containers stay). Returns the record removed and what was freed with it.
    pub fn remove(
        &self,
        reference: &str,
    ) -> Result<(ImageRecord, gc::Garbage<Digest, Digest>), ImageError> {
        let mut removed = None;
        self.update_records(|records| {
            let image = find(records, reference)
                .map(|image| image.name.clone())
                .and_then(|name| records.images.remove(&name))
                .ok_or_else(|| ImageError::NotFound {
                    reference: reference.to_owned(),
                })?;
            removed = Some(image);
            Ok(true)
        })?;
        let removed = removed.ok_or_else(|| ImageError::NotFound {
            reference: reference.to_owned(),
        })?;
        let freed = self.collect_garbage()?;
        Ok((removed, freed))
    }

    /// Keeps `layers` for `container` until [`ImageStore::release`], whatever happens to
    /// their image.
    pub fn hold(&self, container: &str, layers: BTreeSet<Digest>) -> Result<(), ImageError> {
        self.update_records(|records| {
            records.holds.insert(container.to_owned(), layers);
            Ok(true)
        })
    }

    /// Lets go of a container's layers.
    pub fn release(&self, container: &str) -> Result<(), ImageError> {
        self.update_records(|records| Ok(records.holds.remove(container).is_some()))
    }

    /// Removes every blob and layer that no image and no container uses.
    pub fn collect_garbage(&self) -> Result<gc::Garbage<Digest, Digest>, ImageError> {
        // Under the records' lock: a hold recorded meanwhile is either seen or comes after.
        let _exclusive = self
            .records_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let records = self.store.records()?;
        let usage = gc::Usage {
            stored_blobs: self.store.stored_blobs()?,
            stored_layers: self.store.stored_layers()?,
            images: records
                .images
                .iter()
                .map(|(name, image)| {
                    (
                        name.clone(),
                        gc::ImageUse {
                            blobs: image.blobs(),
                            layers: image.diff_ids(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            containers: records.holds.clone(),
        };
        let garbage = gc::collect(&usage);
        for blob in &garbage.blobs {
            self.store.remove_blob(blob)?;
        }
        for layer in &garbage.layers {
            self.store.remove_layer(layer)?;
        }
        Ok(garbage)
    }

    /// A failed operation keeps nothing: what it stored is collected before the error is
    /// returned (a failure to collect is left for the next open).
    fn keep_nothing_on_failure<T>(&self, outcome: Result<T, ImageError>) -> Result<T, ImageError> {
        if outcome.is_err() {
            let _ = self.collect_garbage();
        }
        outcome
    }
}

fn parse_descriptor_digest(
    what: &str,
    descriptor: &oci_spec::image::Descriptor,
) -> Result<Digest, ImageError> {
    descriptor
        .digest()
        .to_string()
        .parse()
        .map_err(|error: digest::DigestError| {
            manifest::ManifestError::Inconsistent {
                what: what.to_owned(),
                reason: error.to_string(),
            }
            .into()
        })
}

fn find<'r>(records: &'r Records, reference: &str) -> Option<&'r ImageRecord> {
    if let Some(image) = Reference::parse(reference)
        .ok()
        .and_then(|normal| records.images.get(&normal.to_string()))
    {
        return Some(image);
    }
    let id = reference.trim_start_matches("sha256:");
    if id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        return records
            .images
            .values()
            .find(|image| image.manifest.hex().starts_with(id));
    }
    None
}
