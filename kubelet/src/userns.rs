//! Node ids for pods with `hostUsers: false`. Pure.
//!
//! Each such pod gets a block of 65536 node ids of its own, as the kubelet gives: the
//! container's ids 0..65535 are node ids `65536 × block ..`. Block 0 is the node's own ids
//! (root, system users), so it is never given. A block is the pod's for its life, kept
//! with it on STATE, and no two pods hold the same one.

use keelson_runtime::spec::IdMapping;

/// Ids in each pod's block.
pub const IDS_PER_POD: u32 = 65_536;

/// Blocks that can be given (1..=this): ids up to 2^31, which every filesystem stores.
pub const LAST_BLOCK: u32 = (1 << 15) - 1;

/// The lowest block no pod holds, or None when every block is taken.
pub fn first_free_block(held: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut held: Vec<u32> = held.into_iter().collect();
    held.sort_unstable();
    held.dedup();
    let mut candidate = 1;
    for block in held {
        if block == candidate {
            candidate += 1;
        } else if block > candidate {
            break;
        }
    }
    (candidate <= LAST_BLOCK).then_some(candidate)
}

/// The mapping of `block`.
pub fn mapping(block: u32) -> IdMapping {
    IdMapping {
        host_id: block * IDS_PER_POD,
        size: IDS_PER_POD,
    }
}

/// The block a mapping was made from.
pub fn block_of(mapping: &IdMapping) -> u32 {
    mapping.host_id / IDS_PER_POD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_the_lowest_free_and_never_the_nodes_own() {
        assert_eq!(first_free_block([]), Some(1));
        assert_eq!(first_free_block([1, 2, 4]), Some(3));
        assert_eq!(first_free_block([2, 0, 3]), Some(1));
        assert_eq!(first_free_block(1..=LAST_BLOCK), None);
        assert_eq!(mapping(3).host_id, 196_608);
        assert_eq!(block_of(&mapping(3)), 3);
    }

    /// Whatever is held, the block given is free, in range, and the lowest such.
    #[test]
    fn a_given_block_is_never_held_already() {
        bolero::check!()
            .with_type::<Vec<u16>>()
            .for_each(|held: &Vec<u16>| {
                let held: Vec<u32> = held.iter().map(|block| u32::from(*block) % 64).collect();
                let given = first_free_block(held.clone()).unwrap();
                assert!((1..=LAST_BLOCK).contains(&given));
                assert!(!held.contains(&given));
                assert!((1..given).all(|lower| held.contains(&lower)));
                // The ids of the block lie inside it and past the node's own.
                let ids = mapping(given);
                assert!(ids.host_id >= IDS_PER_POD);
                assert_eq!(block_of(&ids), given);
            });
    }
}
