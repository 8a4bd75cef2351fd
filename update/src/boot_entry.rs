//! Boot Loader Specification entries for the root slots, with boot counting.
//!
//! systemd-boot's Automatic Boot Assessment keeps a counter in the entry's file name:
//! `keelson-a+3.conf` has three tries left; each boot attempt renames it to `+2-1`,
//! `+1-2`, `+0-3`. An entry with no tries left is "bad" and sorted last, so the firmware
//! falls back to the other slot without any Keelson code running. Blessing a slot removes
//! the counter (`keelson-a.conf`), as `systemd-bless-boot` does.

use keelson_disk::layout::Slot;

/// Number of boot attempts a freshly written slot gets before the loader gives up on it.
pub const DEFAULT_TRIES: u32 = 3;

/// The name of a slot's entry file, with its boot counter when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    /// The slot the entry boots.
    pub slot: Slot,
    /// The boot counter, or `None` for a blessed entry.
    pub counter: Option<BootCounter>,
}

/// systemd-boot's `+LEFT[-DONE]` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCounter {
    /// Attempts left before the entry is considered bad.
    pub tries_left: u32,
    /// Attempts already made.
    pub tries_done: u32,
}

impl EntryName {
    /// A new, untried entry for `slot` with `tries` attempts.
    pub fn counted(slot: Slot, tries: u32) -> EntryName {
        EntryName {
            slot,
            counter: Some(BootCounter {
                tries_left: tries,
                tries_done: 0,
            }),
        }
    }

    /// The entry after blessing: no counter.
    pub fn blessed(slot: Slot) -> EntryName {
        EntryName {
            slot,
            counter: None,
        }
    }

    /// The entry identifier without counter (`keelson-a`), which loader.conf's `default`
    /// and the `LoaderEntrySelected` EFI variable use.
    pub fn id(&self) -> String {
        format!("keelson-{}", self.slot.letter())
    }

    /// The file name under `/loader/entries/`.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}.conf", self.id()),
            Some(BootCounter {
                tries_left,
                tries_done: 0,
            }) => format!("{}+{tries_left}.conf", self.id()),
            Some(BootCounter {
                tries_left,
                tries_done,
            }) => {
                format!("{}+{tries_left}-{tries_done}.conf", self.id())
            }
        }
    }

    /// Parses a file name such as `keelson-b+1-2.conf`; `None` for anything that is not a
    /// Keelson slot entry.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let stem = file_name.strip_suffix(".conf")?.strip_prefix("keelson-")?;
        let (letter, counter) = match stem.split_once('+') {
            None => (stem, None),
            Some((letter, counter)) => {
                let (left, done) = match counter.split_once('-') {
                    None => (counter, "0"),
                    Some(pair) => pair,
                };
                let counter = BootCounter {
                    tries_left: parse_count(left)?,
                    tries_done: parse_count(done)?,
                };
                (letter, Some(counter))
            }
        };
        Some(EntryName {
            slot: Slot::from_letter(letter)?,
            counter,
        })
    }

    /// True when the loader will no longer pick this entry on its own.
    pub fn is_bad(&self) -> bool {
        matches!(self.counter, Some(BootCounter { tries_left: 0, .. }))
    }
}

fn parse_count(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Where a slot's kernel and initrd live on the ESP.
pub fn kernel_path(slot: Slot) -> String {
    format!("/keelson/{}/vmlinuz", slot.letter())
}

/// Where a slot's initrd lives on the ESP.
pub fn initrd_path(slot: Slot) -> String {
    format!("/keelson/{}/initrd", slot.letter())
}

/// The text of a slot's entry file.
pub fn entry_text(slot: Slot, version: &str, options: &str) -> String {
    format!(
        "title Keelson {version} (slot {slot})\n\
         version {version}\n\
         sort-key keelson-{slot}\n\
         linux {kernel}\n\
         initrd {initrd}\n\
         options {options}\n",
        slot = slot.letter(),
        kernel = kernel_path(slot),
        initrd = initrd_path(slot),
    )
}

/// The text of `/loader/loader.conf`, booting `default` without showing a menu.
pub fn loader_conf(default: Slot) -> String {
    // `timeout 0` boots at once; holding a key at power-on still shows the menu.
    format!(
        "default {}\ntimeout 0\nconsole-mode keep\neditor no\n",
        EntryName::blessed(default).id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            EntryName::counted(Slot::A, 3),
            EntryName {
                slot: Slot::B,
                counter: Some(BootCounter {
                    tries_left: 1,
                    tries_done: 2,
                }),
            },
            EntryName::blessed(Slot::B),
        ] {
            assert_eq!(EntryName::parse(&name.file_name()), Some(name));
        }
        assert_eq!(
            EntryName::counted(Slot::A, 3).file_name(),
            "keelson-a+3.conf"
        );
    }

    #[test]
    fn systemd_boot_renames_parse_as_expected() {
        let name = EntryName::parse("keelson-a+0-3.conf").unwrap();
        assert!(name.is_bad());
        assert_eq!(name.slot, Slot::A);
        assert!(!EntryName::parse("keelson-b+2-1.conf").unwrap().is_bad());
        assert!(!EntryName::parse("keelson-b.conf").unwrap().is_bad());
    }

    #[test]
    fn foreign_names_are_not_slot_entries() {
        for name in [
            "debian.conf",
            "keelson-c.conf",
            "keelson-a+.conf",
            "keelson-a+x.conf",
            "keelson-a+1-.conf",
            "keelson-a",
        ] {
            assert_eq!(EntryName::parse(name), None, "{name}");
        }
    }

    #[test]
    fn entry_text_points_at_the_slot_files() {
        let text = entry_text(Slot::B, "1.2.3", "console=ttyS0 keelson.slot=b");
        assert!(text.contains("linux /keelson/b/vmlinuz\n"));
        assert!(text.contains("initrd /keelson/b/initrd\n"));
        assert!(text.contains("options console=ttyS0 keelson.slot=b\n"));
    }

    #[test]
    fn parsing_arbitrary_names_never_panics() {
        bolero::check!().with_type::<String>().for_each(|name| {
            if let Some(parsed) = EntryName::parse(name) {
                assert_eq!(EntryName::parse(&parsed.file_name()), Some(parsed));
            }
        });
    }
}
