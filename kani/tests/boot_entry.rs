//! Boot-assessment entry names (`keelson_update::boot_entry`).

use keelson_disk::layout::Slot;
use keelson_update::boot_entry::{BootCounter, EntryName};

/// Every name Keelson writes parses back to itself, and a name is bad exactly when no
/// tries are left (as systemd-boot decides).
#[test]
#[cfg_attr(kani, kani::proof)]
fn entry_names_round_trip() {
    bolero::check!()
        .with_type::<(u32, bool, Option<(u8, u8)>)>()
        .for_each(|&(generation, slot_b, counter)| {
            let slot = if slot_b { Slot::B } else { Slot::A };
            let counter = counter.map(|(left, done)| BootCounter {
                tries_left: u32::from(left),
                tries_done: u32::from(done),
            });
            let name = EntryName {
                generation,
                slot,
                counter,
            };
            let parsed = EntryName::parse(&name.file_name());
            assert_eq!(parsed, Some(name));
            assert_eq!(
                name.is_bad(),
                matches!(counter, Some(BootCounter { tries_left: 0, .. }))
            );
        });
}

/// systemd-boot's renames of a counted entry walk down to a bad entry in exactly as many
/// steps as it had tries.
#[test]
fn counted_entries_go_bad_after_their_tries() {
    for tries in 1..=5u32 {
        let mut name = EntryName::counted(7, Slot::B, tries);
        let mut attempts = 0;
        while !name.is_bad() {
            let counter = name.counter.unwrap();
            // What systemd-boot does to the file name before booting it.
            let renamed = format!(
                "keelson-7-b+{}-{}.conf",
                counter.tries_left - 1,
                counter.tries_done + 1
            );
            name = EntryName::parse(&renamed).unwrap();
            attempts += 1;
        }
        assert_eq!(attempts, tries);
    }
}
