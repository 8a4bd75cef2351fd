//! The device-mapper names stage 1 gives the verified root, which the agent reads back to
//! report the root's verity status.

use keelson_disk::layout::Slot;

/// The device-mapper name of the verified root (`/dev/mapper/keelson-root`).
pub const ROOT_DM_NAME: &str = "keelson-root";

/// The device-mapper uuid of the verified root of `slot`: `KEELSON-VERITY-A` or `-B`.
pub fn root_dm_uuid(slot: Slot) -> String {
    format!("KEELSON-VERITY-{}", slot.letter().to_ascii_uppercase())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn uuids_name_the_slot() {
        assert_eq!(root_dm_uuid(Slot::A), "KEELSON-VERITY-A");
        assert_eq!(root_dm_uuid(Slot::B), "KEELSON-VERITY-B");
    }
}
