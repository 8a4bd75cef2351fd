//! Garbage collection of the store, as a pure function: what may be removed, given what is
//! stored, what each image uses and what each container holds.
//!
//! The rule is reference counting by reachability: a blob or a layer is kept while any
//! image or any container refers to it, and every other one is garbage. Containers count
//! on their own, so a layer in use by a running container stays even after its image is
//! removed. Generic over the key types so that the proof harness can use small integers.

use std::collections::{BTreeMap, BTreeSet};

/// What one image refers to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageUse<B, L> {
    /// Blobs: its manifest (and index), config and compressed layers.
    pub blobs: BTreeSet<B>,
    /// Unpacked layers, by diff id.
    pub layers: BTreeSet<L>,
}

/// Everything the store holds and everything that refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Usage<I, C, B, L> {
    /// Blobs on disk.
    pub stored_blobs: BTreeSet<B>,
    /// Unpacked layers on disk.
    pub stored_layers: BTreeSet<L>,
    /// Each image's references, by name.
    pub images: BTreeMap<I, ImageUse<B, L>>,
    /// Each container's layers, by container id.
    pub containers: BTreeMap<C, BTreeSet<L>>,
}

/// What may be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage<B, L> {
    /// Blobs no image refers to.
    pub blobs: BTreeSet<B>,
    /// Layers no image and no container refers to.
    pub layers: BTreeSet<L>,
}

impl<B, L> Garbage<B, L> {
    /// True when nothing is to be removed.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.layers.is_empty()
    }
}

/// Computes the garbage of `usage`. Does no I/O.
pub fn collect<I: Ord, C: Ord, B: Ord + Clone, L: Ord + Clone>(
    usage: &Usage<I, C, B, L>,
) -> Garbage<B, L> {
    let live_blobs: BTreeSet<&B> = usage
        .images
        .values()
        .flat_map(|image| &image.blobs)
        .collect();
    let live_layers: BTreeSet<&L> = usage
        .images
        .values()
        .flat_map(|image| &image.layers)
        .chain(usage.containers.values().flatten())
        .collect();
    let garbage = Garbage {
        blobs: usage
            .stored_blobs
            .iter()
            .filter(|blob| !live_blobs.contains(blob))
            .cloned()
            .collect(),
        layers: usage
            .stored_layers
            .iter()
            .filter(|layer| !live_layers.contains(layer))
            .cloned()
            .collect(),
    };
    debug_assert!(garbage.blobs.iter().all(|blob| !live_blobs.contains(blob)));
    debug_assert!(garbage
        .layers
        .iter()
        .all(|layer| !live_layers.contains(layer)));
    garbage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_held_by_a_container_outlives_its_image() {
        let mut usage: Usage<&str, &str, u8, u8> = Usage {
            stored_blobs: [1, 2, 3].into(),
            stored_layers: [10, 11].into(),
            ..Usage::default()
        };
        usage.images.insert(
            "busybox",
            ImageUse {
                blobs: [1, 2].into(),
                layers: [10].into(),
            },
        );
        usage.containers.insert("web", [11].into());
        let garbage = collect(&usage);
        assert_eq!(garbage.blobs, [3].into());
        assert!(garbage.layers.is_empty());

        usage.images.clear();
        let garbage = collect(&usage);
        assert_eq!(garbage.blobs, [1, 2, 3].into());
        assert_eq!(
            garbage.layers,
            [10].into(),
            "11 is still in use by a container"
        );
    }
}
