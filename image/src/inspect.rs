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
    text.push_str(&format!(
        "  loader default: slot {} (highest generation; loader.conf default {pattern})\n",
        view.default_slot()
            .map_or_else(|| "none".to_owned(), |slot| slot.to_string())
    ));
    for name in view.entries.iter().flatten() {
        let file_name = name.file_name();
        let entry = run(mtools("mtype").arg(format!("::/loader/entries/{file_name}")))?;
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
    Ok(text)
}
