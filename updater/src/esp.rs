//! The ESP as the update engine changes it: slot entries, their counters and order, and
//! each slot's kernel and initrd.
//!
//! [`Esp`] mounts the FAT partition only for the moment an operation needs it and unmounts
//! it after, so that what the loader will read is on the disk when the call returns. The
//! operations themselves ([`EspTree`]) work on any directory, which is how the unit tests
//! run them. Every change that the loader could see half-done is a rename: an entry is
//! written under a name the loader ignores, synced, then renamed into place.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use keelson_update::boot_entry::{
    self, BootCounter, EntryName, LoaderView, DEFAULT_TRIES, ENTRIES_DIR,
};
use keelson_update::slots::Action;
use nix::mount::MsFlags;

/// The ESP partition and where it is mounted while in use.
#[derive(Debug, Clone)]
pub struct Esp {
    device: PathBuf,
    mount_point: PathBuf,
    /// Held while the ESP is mounted. Shared by clones: two mounts at one mount point
    /// would stack, and the first unmount would pull the ESP from under the other.
    in_use: Arc<Mutex<()>>,
}

impl Esp {
    /// Finds the partition labelled KEELSON-ESP.
    pub fn find() -> anyhow::Result<Esp> {
        let partition = keelson_linux::block::find_partition(keelson_disk::layout::ESP_LABEL)
            .context("no partition labelled KEELSON-ESP")?;
        Ok(Esp {
            device: partition.path(),
            mount_point: PathBuf::from("/run/keelson/esp"),
            in_use: Arc::default(),
        })
    }

    /// Mounts the ESP, runs `work` on it, syncs and unmounts, whatever `work` returned.
    /// Waits while another caller has it mounted.
    pub fn with_mounted<T>(
        &self,
        work: impl FnOnce(&EspTree) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        // A poisoned lock only means a caller panicked while mounted; the mount itself
        // was undone by then (or the next mount reports why not).
        let _in_use = self
            .in_use
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.mounted(work)
    }

    /// Like [`Esp::with_mounted`], but returns `None` at once when another caller has the
    /// ESP mounted. For readers that can make do with what they saw last.
    pub fn try_with_mounted<T>(
        &self,
        work: impl FnOnce(&EspTree) -> anyhow::Result<T>,
    ) -> Option<anyhow::Result<T>> {
        let _in_use = match self.in_use.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.mounted(work))
    }

    fn mounted<T>(&self, work: impl FnOnce(&EspTree) -> anyhow::Result<T>) -> anyhow::Result<T> {
        std::fs::create_dir_all(&self.mount_point)?;
        let mount = || {
            nix::mount::mount(
                Some(&self.device),
                &self.mount_point,
                Some("vfat"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("umask=0077,shortname=mixed"),
            )
        };
        // A mount left behind at our mount point (an unmount that failed earlier) or a
        // device busy for a moment is not a reason to leave a trial undecided: detach what
        // is there and try again, a few times.
        let mut mounted = mount();
        for _ in 0..3 {
            if mounted != Err(nix::errno::Errno::EBUSY) {
                break;
            }
            let _ = nix::mount::umount2(&self.mount_point, nix::mount::MntFlags::MNT_DETACH);
            std::thread::sleep(std::time::Duration::from_millis(500));
            mounted = mount();
        }
        mounted.with_context(|| {
            format!(
                "mounting the ESP {} at {}",
                self.device.display(),
                self.mount_point.display()
            )
        })?;
        let tree = EspTree {
            root: self.mount_point.clone(),
        };
        let outcome = work(&tree);
        let synced = tree.sync();
        let unmounted = nix::mount::umount(&self.mount_point)
            .with_context(|| format!("unmounting the ESP at {}", self.mount_point.display()));
        let value = outcome?;
        synced?;
        unmounted?;
        Ok(value)
    }
}

/// A slot entry with what its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The parsed file name.
    pub name: EntryName,
    /// Its `version` line.
    pub version: String,
}

/// The ESP's files, under `root`.
#[derive(Debug, Clone)]
pub struct EspTree {
    root: PathBuf,
}

impl EspTree {
    /// An ESP tree rooted at `root` (a mount point, or a test directory).
    pub fn at(root: impl Into<PathBuf>) -> EspTree {
        EspTree { root: root.into() }
    }

    fn entries_dir(&self) -> PathBuf {
        self.root.join(ENTRIES_DIR.trim_start_matches('/'))
    }

    fn entry_path(&self, name: &EntryName) -> PathBuf {
        self.entries_dir().join(name.file_name())
    }

    /// A slot's kernel or initrd path (`/keelson/<slot>/vmlinuz`).
    pub fn boot_file(&self, esp_path: &str) -> PathBuf {
        self.root.join(esp_path.trim_start_matches('/'))
    }

    /// The entries as the loader will order them, with their versions. Stale duplicates
    /// left by an interrupted rename are deleted on the way.
    pub fn read(&self) -> anyhow::Result<(LoaderView, [Option<EntryInfo>; 2])> {
        let directory = self.entries_dir();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&directory)
            .with_context(|| format!("listing {}", directory.display()))?
        {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        let view = LoaderView::from_file_names(names.iter().map(String::as_str));
        for stale in &view.stale {
            let _ = std::fs::remove_file(directory.join(stale));
        }
        let mut infos = [None, None];
        for (index, entry) in view.entries.iter().enumerate() {
            if let Some(name) = entry {
                let text = std::fs::read_to_string(self.entry_path(name)).unwrap_or_default();
                let version = text
                    .lines()
                    .find_map(|line| line.strip_prefix("version "))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                infos[index] = Some(EntryInfo {
                    name: *name,
                    version,
                });
            }
        }
        Ok((view, infos))
    }

    /// Carries out one ESP action of the slot machine. `install` gives the version and
    /// kernel options for [`Action::InstallEntry`].
    pub fn apply(&self, action: Action, install: Option<(&str, &str)>) -> anyhow::Result<()> {
        let (view, _) = self.read()?;
        match action {
            Action::RemoveEntry(slot) => {
                if let Some(name) = view.entry(slot) {
                    std::fs::remove_file(self.entry_path(&name))
                        .with_context(|| format!("removing {}", name.file_name()))?;
                }
            }
            Action::InstallEntry { slot, tries } => {
                let (version, options) =
                    install.context("installing an entry needs its version and options")?;
                let name = EntryName::counted(view.next_generation(), slot, tries);
                self.write_entry(&name, &boot_entry::entry_text(slot, version, options))?;
            }
            Action::SetDefault(slot) => {
                let current = view
                    .entry(slot)
                    .with_context(|| format!("slot {slot} has no entry to make the default"))?;
                let others_newer = view
                    .entry(slot.other())
                    .is_some_and(|other| other.generation >= current.generation);
                if others_newer {
                    let renamed = EntryName {
                        generation: view.next_generation(),
                        ..current
                    };
                    self.rename(&current, &renamed)?;
                }
            }
            Action::Bless(slot) => {
                let current = view
                    .entry(slot)
                    .with_context(|| format!("slot {slot} has no entry to bless"))?;
                self.rename(
                    &current,
                    &EntryName {
                        counter: None,
                        ..current
                    },
                )?;
            }
            Action::MarkBad(slot) => {
                let current = view
                    .entry(slot)
                    .with_context(|| format!("slot {slot} has no entry to mark bad"))?;
                let done = current.counter.map_or(DEFAULT_TRIES, |counter| {
                    counter.tries_done + counter.tries_left
                });
                self.rename(
                    &current,
                    &EntryName {
                        counter: Some(BootCounter {
                            tries_left: 0,
                            tries_done: done,
                        }),
                        ..current
                    },
                )?;
            }
            Action::Reboot => {}
        }
        Ok(())
    }

    /// Writes an entry under a name the loader ignores, syncs it, then renames it into
    /// place.
    fn write_entry(&self, name: &EntryName, text: &str) -> anyhow::Result<()> {
        let directory = self.entries_dir();
        let staging = directory.join(format!(".{}.new", name.id()));
        let mut file =
            File::create(&staging).with_context(|| format!("creating {}", staging.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&staging, self.entry_path(name))
            .with_context(|| format!("installing {}", name.file_name()))?;
        Ok(())
    }

    fn rename(&self, from: &EntryName, to: &EntryName) -> anyhow::Result<()> {
        if from == to {
            return Ok(());
        }
        std::fs::rename(self.entry_path(from), self.entry_path(to))
            .with_context(|| format!("renaming {} to {}", from.file_name(), to.file_name()))
    }

    /// Flushes the filesystem to the disk.
    pub fn sync(&self) -> anyhow::Result<()> {
        let directory = File::open(&self.root)?;
        nix::unistd::syncfs(&directory).context("syncing the ESP")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_disk::layout::Slot;

    fn tree() -> (tempfile::TempDir, EspTree) {
        let directory = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(directory.path().join("loader/entries")).unwrap();
        std::fs::write(
            directory.path().join("loader/entries/keelson-1-a.conf"),
            boot_entry::entry_text(Slot::A, "1.0.0", "console=ttyS0"),
        )
        .unwrap();
        let tree = EspTree::at(directory.path());
        (directory, tree)
    }

    #[test]
    fn a_reader_that_finds_the_esp_in_use_gets_none_instead_of_waiting() {
        let directory = tempfile::tempdir().unwrap();
        let esp = Esp {
            device: directory.path().join("no-such-device"),
            mount_point: directory.path().join("esp"),
            in_use: Arc::default(),
        };
        let operation = esp.clone();
        let held = operation.in_use.lock().unwrap();
        assert!(esp.try_with_mounted(|_| Ok(())).is_none());
        drop(held);
        // Free again: the reader goes ahead, and here the mount itself fails.
        let error = esp.try_with_mounted(|_| Ok(())).unwrap().unwrap_err();
        assert!(
            format!("{error:#}").contains("mounting the ESP"),
            "{error:#}"
        );
    }

    fn names(tree: &EspTree) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(tree.entries_dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn install_bless_and_roll_back_by_renaming() {
        let (_directory, tree) = tree();
        tree.apply(
            Action::InstallEntry {
                slot: Slot::B,
                tries: 3,
            },
            Some(("2.0.0", "console=ttyS0 keelson.slot=b")),
        )
        .unwrap();
        assert_eq!(names(&tree), ["keelson-1-a.conf", "keelson-2-b+3.conf"]);
        let (view, infos) = tree.read().unwrap();
        assert_eq!(view.default_slot(), Some(Slot::B));
        assert_eq!(infos[1].as_ref().unwrap().version, "2.0.0");

        // systemd-boot counts an attempt, then the agent blesses.
        std::fs::rename(
            tree.entries_dir().join("keelson-2-b+3.conf"),
            tree.entries_dir().join("keelson-2-b+2-1.conf"),
        )
        .unwrap();
        tree.apply(Action::Bless(Slot::B), None).unwrap();
        assert_eq!(names(&tree), ["keelson-1-a.conf", "keelson-2-b.conf"]);

        tree.apply(Action::SetDefault(Slot::A), None).unwrap();
        assert_eq!(names(&tree), ["keelson-2-b.conf", "keelson-3-a.conf"]);
        assert_eq!(tree.read().unwrap().0.default_slot(), Some(Slot::A));
    }

    /// The slot systemd-boot would start from these entry names: the highest generation
    /// that still has tries (or no counter), else any entry at all.
    fn loader_pick(names: &[String]) -> Option<Slot> {
        let view = LoaderView::from_file_names(names.iter().map(String::as_str));
        let mut entries: Vec<EntryName> = view.entries.iter().flatten().copied().collect();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.generation));
        let usable = |entry: &EntryName| entry.counter.is_none_or(|c| c.tries_left > 0);
        entries
            .iter()
            .find(|entry| usable(entry))
            .or(entries.first())
            .map(|entry| entry.slot)
    }

    /// Power can fail between any two filesystem operations of an entry switch, and (on
    /// FAT, which has no journal) inside a rename, leaving the old and the new name both
    /// present. After every such cut, at every step of an update's life, the loader must
    /// still find an entry, and it must be the slot that was booting before the step or
    /// the one the step moves to: never an entry-less or half-written slot.
    #[test]
    fn a_power_cut_inside_any_entry_switch_leaves_a_bootable_choice() {
        let (_directory, tree) = tree();
        let options = Some(("2.0.0", "console=ttyS0 keelson.slot=b"));
        let firmware_attempt = |tree: &EspTree| {
            let (view, _) = tree.read().unwrap();
            let current = view.entry(Slot::B).unwrap();
            let counter = current.counter.unwrap();
            let next = EntryName {
                counter: Some(BootCounter {
                    tries_left: counter.tries_left - 1,
                    tries_done: counter.tries_done + 1,
                }),
                ..current
            };
            std::fs::rename(tree.entry_path(&current), tree.entry_path(&next)).unwrap();
        };
        // An update's life: install B on trial, one firmware attempt, bless B, roll back
        // to A, write B again (its entry goes first), install and mark it bad. `None` is
        // the firmware's attempt.
        let install = Action::InstallEntry {
            slot: Slot::B,
            tries: 3,
        };
        let steps = [
            ("install", Some(install)),
            ("attempt", None),
            ("bless", Some(Action::Bless(Slot::B))),
            ("rollback", Some(Action::SetDefault(Slot::A))),
            ("remove", Some(Action::RemoveEntry(Slot::B))),
            ("reinstall", Some(install)),
            ("mark bad", Some(Action::MarkBad(Slot::B))),
        ];
        let mut cuts = 0;
        for (what, step) in steps {
            let before = names(&tree);
            let picked_before = loader_pick(&before).unwrap();
            match step {
                Some(action) => tree.apply(action, options).unwrap(),
                None => firmware_attempt(&tree),
            }
            let after = names(&tree);
            let picked_after = loader_pick(&after).unwrap();
            // The states a cut can leave: every prefix of the change, as sets of names:
            // nothing done, only the new names added (a staged file or a half-done
            // rename), and all done.
            let added: Vec<String> = after
                .iter()
                .filter(|n| !before.contains(n))
                .cloned()
                .collect();
            let mut half_done = before.clone();
            half_done.extend(added.iter().cloned());
            half_done.push(".b.new".to_owned());
            for cut in [&before, &half_done, &after] {
                cuts += 1;
                let picked = loader_pick(cut)
                    .unwrap_or_else(|| panic!("{what}: nothing to boot after a cut: {cut:?}"));
                assert!(
                    picked == picked_before || picked == picked_after,
                    "{what}: a cut leaves {cut:?}, which boots slot {picked}, neither slot \
                     {picked_before} nor slot {picked_after}"
                );
            }
        }
        assert_eq!(cuts, 21);
    }

    #[test]
    fn marking_bad_spends_every_try() {
        let (_directory, tree) = tree();
        tree.apply(
            Action::InstallEntry {
                slot: Slot::B,
                tries: 3,
            },
            Some(("2.0.0", "x")),
        )
        .unwrap();
        tree.apply(Action::MarkBad(Slot::B), None).unwrap();
        assert!(names(&tree).contains(&"keelson-2-b+0-3.conf".to_owned()));
        tree.apply(Action::RemoveEntry(Slot::B), None).unwrap();
        assert_eq!(names(&tree), ["keelson-1-a.conf"]);
    }
}
