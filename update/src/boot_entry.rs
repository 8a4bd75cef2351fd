//! Boot Loader Specification entries for the root slots, with boot counting.
//!
//! systemd-boot's Automatic Boot Assessment keeps a counter in the entry's file name:
//! `keelson-2-b+3.conf` has three tries left; each boot attempt renames it to `+2-1`,
//! `+1-2`, `+0-3`. An entry with no tries left is "bad" and sorted after every other
//! entry, so the firmware falls back to the other slot without any Keelson code running.
//! Blessing a slot removes the counter (`keelson-2-b.conf`), as `systemd-bless-boot` does.
//!
//! Which slot the loader tries first is decided by the entry names too. `loader.conf` says
//! `default keelson-*`, which picks the first matching entry in systemd-boot's order: bad
//! entries last, the rest by file name in reverse version order. The number after
//! `keelson-` is a generation; the slot with the highest one is the default, so making a
//! slot the default is one rename. (A `default` naming one slot would not do: systemd-boot
//! honours an explicit default even when that entry has no tries left, so a broken slot
//! would never be given up.)

use keelson_disk::layout::Slot;

/// Number of boot attempts a freshly written slot gets before the loader gives up on it.
pub const DEFAULT_TRIES: u32 = 3;

/// The name of a slot's entry file, with its boot counter when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    /// Orders entries: the loader prefers the highest generation that is not bad.
    pub generation: u32,
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
    pub fn counted(generation: u32, slot: Slot, tries: u32) -> EntryName {
        EntryName {
            generation,
            slot,
            counter: Some(BootCounter {
                tries_left: tries,
                tries_done: 0,
            }),
        }
    }

    /// A blessed entry: no counter.
    pub fn blessed(generation: u32, slot: Slot) -> EntryName {
        EntryName {
            generation,
            slot,
            counter: None,
        }
    }

    /// The entry identifier without counter (`keelson-2-a`).
    pub fn id(&self) -> String {
        format!("keelson-{}-{}", self.generation, self.slot.letter())
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

    /// Parses a file name such as `keelson-4-b+1-2.conf`; `None` for anything that is not
    /// a Keelson slot entry.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let stem = file_name.strip_suffix(".conf")?.strip_prefix("keelson-")?;
        let (generation, stem) = stem.split_once('-')?;
        let generation = parse_count(generation)?;
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
            generation,
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

/// The text of a slot's entry file. It has no `sort-key`, so that systemd-boot orders the
/// entries by file name (see the module documentation).
pub fn entry_text(slot: Slot, version: &str, options: &str) -> String {
    format!(
        "title Keelson {version} (slot {slot})\n\
         version {version}\n\
         linux {kernel}\n\
         initrd {initrd}\n\
         options {options}\n",
        slot = slot.letter(),
        kernel = kernel_path(slot),
        initrd = initrd_path(slot),
    )
}

/// The text of `/loader/loader.conf`: boot the first Keelson entry in the loader's order
/// without showing a menu.
pub fn loader_conf() -> String {
    // `timeout 0` boots at once; holding a key at power-on still shows the menu.
    "default keelson-*\ntimeout 0\nconsole-mode keep\neditor no\n".to_owned()
}

/// Where the loader configuration and the entries live on the ESP.
pub const LOADER_CONF: &str = "/loader/loader.conf";
/// The directory of the entry files on the ESP.
pub const ENTRIES_DIR: &str = "/loader/entries";

/// The Keelson entries found on the ESP, as the loader will order them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderView {
    /// Each slot's entry (A, then B).
    pub entries: [Option<EntryName>; 2],
    /// Entry files that lost to another entry of the same slot (left by a rename cut short
    /// by power loss): to be deleted.
    pub stale: Vec<String>,
}

impl LoaderView {
    /// Reads the file names of `/loader/entries`; foreign files are ignored.
    pub fn from_file_names<'a>(names: impl IntoIterator<Item = &'a str>) -> LoaderView {
        let mut view = LoaderView::default();
        for name in names {
            let Some(entry) = EntryName::parse(name) else {
                continue;
            };
            let place = &mut view.entries[slot_index(entry.slot)];
            match place {
                Some(existing) if existing.generation >= entry.generation => {
                    view.stale.push(entry.file_name());
                }
                _ => {
                    if let Some(existing) = place.replace(entry) {
                        view.stale.push(existing.file_name());
                    }
                }
            }
        }
        view
    }

    /// The slot's entry.
    pub fn entry(&self, slot: Slot) -> Option<EntryName> {
        self.entries[slot_index(slot)]
    }

    /// The slot whose entry has the highest generation: the loader's default while it is
    /// not bad.
    pub fn default_slot(&self) -> Option<Slot> {
        self.entries
            .iter()
            .flatten()
            .max_by_key(|entry| entry.generation)
            .map(|entry| entry.slot)
    }

    /// The generation that makes an entry the default.
    pub fn next_generation(&self) -> u32 {
        self.entries
            .iter()
            .flatten()
            .map(|entry| entry.generation)
            .max()
            .unwrap_or(0)
            .saturating_add(1)
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            EntryName::counted(1, Slot::A, 3),
            EntryName {
                generation: 12,
                slot: Slot::B,
                counter: Some(BootCounter {
                    tries_left: 1,
                    tries_done: 2,
                }),
            },
            EntryName::blessed(3, Slot::B),
        ] {
            assert_eq!(EntryName::parse(&name.file_name()), Some(name));
        }
        assert_eq!(
            EntryName::counted(1, Slot::A, 3).file_name(),
            "keelson-1-a+3.conf"
        );
    }

    #[test]
    fn systemd_boot_renames_parse_as_expected() {
        let name = EntryName::parse("keelson-1-a+0-3.conf").unwrap();
        assert!(name.is_bad());
        assert_eq!(name.slot, Slot::A);
        assert!(!EntryName::parse("keelson-2-b+2-1.conf").unwrap().is_bad());
        assert!(!EntryName::parse("keelson-2-b.conf").unwrap().is_bad());
    }

    #[test]
    fn foreign_names_are_not_slot_entries() {
        for name in [
            "debian.conf",
            "keelson-1-c.conf",
            "keelson-a.conf",
            "keelson-x-a.conf",
            "keelson-1-a+.conf",
            "keelson-1-a+x.conf",
            "keelson-1-a+1-.conf",
            "keelson-1-a",
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
    fn the_view_prefers_the_highest_generation_and_drops_stale_names() {
        let view = LoaderView::from_file_names([
            "keelson-1-a.conf",
            "keelson-2-b+2-1.conf",
            "keelson-1-b+3.conf",
            "loader.conf",
        ]);
        assert_eq!(view.default_slot(), Some(Slot::B));
        assert_eq!(view.entry(Slot::B).unwrap().generation, 2);
        assert_eq!(view.stale, vec!["keelson-1-b+3.conf".to_owned()]);
        assert_eq!(view.next_generation(), 3);
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
