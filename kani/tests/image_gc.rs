//! The image store's garbage collection (`keelson_images::gc::collect`): a blob or layer in
//! use is never collected, and everything unused is.
//!
//! Stores of up to eight blobs and eight layers, three images and two containers are
//! written as bit masks, so the rule can be stated with bit arithmetic, independently of
//! the set-based code it checks: garbage blobs = stored & !(any image's blobs); garbage
//! layers = stored & !(any image's or container's layers).

use std::collections::{BTreeMap, BTreeSet};

use keelson_images::gc::{collect, ImageUse, Usage};

fn members(mask: u8) -> BTreeSet<u8> {
    (0..8).filter(|bit| mask & (1 << bit) != 0).collect()
}

fn mask(members: &BTreeSet<u8>) -> u8 {
    members.iter().fold(0, |mask, bit| mask | (1 << bit))
}

fn check(stored: (u8, u8), images: [(u8, u8); 3], containers: [u8; 2], image_count: u8) {
    let images = &images[..usize::from(image_count % 4)];
    let usage = Usage {
        stored_blobs: members(stored.0),
        stored_layers: members(stored.1),
        images: images
            .iter()
            .enumerate()
            .map(|(name, (blobs, layers))| {
                (
                    name,
                    ImageUse {
                        blobs: members(*blobs),
                        layers: members(*layers),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        containers: containers
            .iter()
            .enumerate()
            .map(|(id, layers)| (id, members(*layers)))
            .collect(),
    };
    let garbage = collect(&usage);
    let used_blobs = images.iter().fold(0, |mask, (blobs, _)| mask | blobs);
    let used_layers = images.iter().fold(0, |mask, (_, layers)| mask | layers)
        | containers.iter().fold(0, |mask, layers| mask | layers);
    assert_eq!(mask(&garbage.blobs), stored.0 & !used_blobs, "{usage:?}");
    assert_eq!(mask(&garbage.layers), stored.1 & !used_layers, "{usage:?}");
}

/// Collection is exactly "stored and unused", for sampled (bolero) or all (Kani) stores.
#[test]
#[cfg_attr(kani, kani::proof)]
fn nothing_in_use_is_collected_and_nothing_unused_is_kept() {
    bolero::check!()
        .with_type::<((u8, u8), [(u8, u8); 3], [u8; 2], u8)>()
        .for_each(|&(stored, images, containers, count)| check(stored, images, containers, count));
}

/// Every store of two blobs and two layers, with every use by one image and one container.
#[test]
fn small_stores_exhaustively() {
    for stored in 0..16u8 {
        for image in 0..16u8 {
            for container in 0..4u8 {
                check(
                    (stored & 3, stored >> 2),
                    [(image & 3, image >> 2), (0, 0), (0, 0)],
                    [container, 0],
                    1,
                );
            }
        }
    }
}
