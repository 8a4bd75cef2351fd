//! `keelson-image inspect`: what is on an image or a flashed disk, without root.
//!
//! Reads the GPT with `keelson-disk`, and the ESP's loader configuration and slot entries
//! with mtools straight from the file (at the ESP's offset), so nothing is mounted.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use keelson_disk::layout;
use keelson_update::boot_entry::{EntryName, LoaderView};

use crate::host::run;

/// A slot entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    /// The entry's file name (with its boot counter).
    pub file_name: String,
    /// What the name says.
    pub name: EntryName,
    /// `version` line.
    pub version: String,
    /// `keelson.roothash=` from its options.
    pub root_hash: String,
}

/// Describes the partitions and boot entries of the disk image at `image`.
pub fn inspect(image: &Path) -> anyhow::Result<String> {
    read_image(image).map(|(text, _, _)| text)
}

/// What the shallow inspection read: the description, the partition table and each
/// slot's entry with its text.
type ImageContents = (String, keelson_disk::gpt::Gpt, Vec<(EntryName, String)>);

fn read_image(image: &Path) -> anyhow::Result<ImageContents> {
    let mut file =
        std::fs::File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let size = file.metadata()?.len();
    let table = keelson_disk::gpt::read_table(&mut file, size)
        .with_context(|| format!("{} does not start with a GPT", image.display()))?;
    let mut text = format!(
        "{} ({:.1} MiB, disk {})\n",
        image.display(),
        size as f64 / 1048576.0,
        table.disk_guid
    );
    for partition in &table.partitions {
        text.push_str(&format!(
            "  {} {:<16} {:>9.1} MiB at {:>11}  {}\n",
            partition.number,
            partition.name,
            partition.size_bytes() as f64 / 1048576.0,
            partition.offset_bytes(),
            partition.unique_guid
        ));
    }
    let esp = table
        .find(layout::ESP_LABEL)
        .context("no KEELSON-ESP partition: not a Keelson disk")?;
    let drive = format!("{}@@{}", image.display(), esp.offset_bytes());
    let mtools = |program: &str| {
        let mut command = Command::new(program);
        command.env("MTOOLS_SKIP_CHECK", "1").args(["-i", &drive]);
        command
    };
    let loader = run(mtools("mtype").arg("::/loader/loader.conf")).unwrap_or_default();
    let pattern = loader
        .lines()
        .find_map(|line| line.strip_prefix("default "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let listing = run(mtools("mdir").args(["-b", "::/loader/entries"])).unwrap_or_default();
    let file_names: Vec<String> = listing
        .lines()
        .map(|path| path.rsplit('/').next().unwrap_or(path).trim().to_owned())
        .collect();
    let view = LoaderView::from_file_names(file_names.iter().map(String::as_str));
    let mut entries = Vec::new();
    text.push_str(&format!(
        "  loader default: slot {} (highest generation; loader.conf default {pattern})\n",
        view.default_slot()
            .map_or_else(|| "none".to_owned(), |slot| slot.to_string())
    ));
    for name in view.entries.iter().flatten() {
        let file_name = name.file_name();
        let entry = run(mtools("mtype").arg(format!("::/loader/entries/{file_name}")))?;
        entries.push((*name, entry.clone()));
        let version = entry
            .lines()
            .find_map(|line| line.strip_prefix("version "))
            .unwrap_or("?")
            .trim()
            .to_owned();
        let root_hash = entry
            .split_ascii_whitespace()
            .find_map(|word| word.strip_prefix("keelson.roothash="))
            .unwrap_or("?")
            .to_owned();
        let state = match name.counter {
            None => "blessed".to_owned(),
            Some(counter) if name.is_bad() => format!("bad (tried {} times)", counter.tries_done),
            Some(counter) => format!("on trial, {} tries left", counter.tries_left),
        };
        text.push_str(&format!(
            "  slot {}: version {version}, {state}, entry {file_name}\n          root hash {root_hash}\n",
            name.slot
        ));
    }
    Ok((text, table, entries))
}

/// `inspect --deep`, as root: the shallow description, then a look inside through loop
/// devices, attached read-only and detached again: each slot's root checked against the
/// dm-verity root hash its entry names (the tree is computed again from the data), the
/// files of each root, and what STATE holds.
pub fn inspect_deep(image: &Path, list_files: bool) -> anyhow::Result<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "inspect --deep needs root: it attaches loop devices and mounts read-only; \
             without --deep, inspect reads the partition table and entries as any user"
        );
    }
    let (mut text, table, entries) = read_image(image)?;
    for (name, entry) in &entries {
        let options = entry
            .lines()
            .find_map(|line| line.strip_prefix("options "))
            .unwrap_or_default();
        let params = keelson_contract::cmdline::parse_boot_params(options).map_err(|error| {
            anyhow::anyhow!("the entry of slot {} cannot be read: {error}", name.slot)
        })?;
        let partition = table
            .find(name.slot.root_label())
            .with_context(|| format!("no {} partition", name.slot.root_label()))?;
        let device =
            LoopAttachment::attach(image, partition.offset_bytes(), partition.size_bytes())?;
        let mut data = std::fs::File::open(&device.path)?;
        let computed = keelson_disk::verity::build_hash_tree(
            &mut data,
            params.verity.data_blocks,
            &params.verity.salt,
            std::io::sink(),
        )
        .with_context(|| {
            format!(
                "reading slot {} through {}",
                name.slot,
                device.path.display()
            )
        })?;
        let verdict = if computed.root_hash == params.verity.root_hash {
            "matches its entry"
        } else {
            "DOES NOT MATCH its entry: the slot was altered or damaged"
        };
        text.push_str(&format!(
            "  slot {}: verity root hash {} {verdict} ({} data blocks read through {})\n",
            name.slot,
            keelson_disk::verity::hex(&computed.root_hash),
            params.verity.data_blocks,
            device.path.display()
        ));
        match list_mounted(&device.path, "squashfs", "ro") {
            Ok(files) => {
                text.push_str(&format!(
                    "  slot {} root: {} files and directories\n",
                    name.slot,
                    files.len()
                ));
                if list_files {
                    for file in &files {
                        text.push_str(&format!("    /{file}\n"));
                    }
                }
            }
            Err(error) => text.push_str(&format!(
                "  slot {} root: cannot be listed: {error:#}\n",
                name.slot
            )),
        }
    }
    if let Some(state) = table.find(layout::STATE_LABEL) {
        let device = LoopAttachment::attach(image, state.offset_bytes(), state.size_bytes())?;
        // noload: a read-only look must not replay the journal.
        let files = list_mounted(&device.path, "ext4", "ro,noload")?;
        text.push_str(&format!("  STATE: {} files and directories\n", files.len()));
        for file in files
            .iter()
            .filter(|file| list_files || !file.contains('/'))
        {
            text.push_str(&format!("    /var/{file}\n"));
        }
    }
    Ok(text)
}

/// A read-only loop device over part of a file, detached when dropped.
struct LoopAttachment {
    device: loopdev::LoopDevice,
    path: std::path::PathBuf,
}

impl LoopAttachment {
    fn attach(file: &Path, offset: u64, size: u64) -> anyhow::Result<LoopAttachment> {
        let control = loopdev::LoopControl::open().context("cannot open /dev/loop-control")?;
        let device = control.next_free().context("no free loop device")?;
        device
            .with()
            .read_only(true)
            .offset(offset)
            .size_limit(size)
            .attach(file)
            .with_context(|| format!("cannot attach {} to a loop device", file.display()))?;
        let path = device.path().context("the loop device has no path")?;
        Ok(LoopAttachment { device, path })
    }
}

impl Drop for LoopAttachment {
    fn drop(&mut self) {
        let _ = self.device.detach();
    }
}

/// Mounts `device` read-only in a temporary directory, lists every path under it (sorted,
/// relative), and unmounts it.
fn list_mounted(device: &Path, fstype: &str, options: &str) -> anyhow::Result<Vec<String>> {
    let mount_point = tempfile::tempdir()?;
    let status = Command::new("mount")
        .args(["-t", fstype, "-o", options])
        .arg(device)
        .arg(mount_point.path())
        .status()
        .context("cannot run mount")?;
    if !status.success() {
        anyhow::bail!("cannot mount {} ({fstype}) read-only", device.display());
    }
    let walked = crate::host::paths_under(mount_point.path());
    let unmounted = Command::new("umount").arg(mount_point.path()).status();
    let files = walked?
        .into_iter()
        .map(|(path, _)| path.to_string_lossy().into_owned())
        .collect();
    if !unmounted.map(|status| status.success()).unwrap_or(false) {
        anyhow::bail!("cannot unmount {}", mount_point.path().display());
    }
    Ok(files)
}
