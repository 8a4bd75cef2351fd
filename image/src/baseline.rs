//! Baselines for the benchmarks: the same firmware, kernel and VM as Keelson, doing only
//! the plain thing Keelson's figure is compared with.
//!
//! - [`build_baseline`]: a disk whose initramfs powers off at once (the boot benchmark).
//! - [`build_write_baseline`]: a kernel and initramfs, booted directly in a VM that has
//!   Keelson's disk attached, which writes a root image to ROOT-B with BusyBox `dd` (the
//!   update benchmark). BusyBox comes from Debian's `busybox-static`, like the kernel.

use std::path::PathBuf;

use anyhow::{bail, Context};
use keelson_disk::layout::{self, sizes, Slot};
use keelson_update::boot_entry::{self, EntryName};

use crate::host::{self, PackageCache};
use crate::kmod::KernelModules;
use crate::{fetch_kernel, make_esp, write_disk, write_initramfs, BuildOptions, EspSlot};

/// Debian's statically linked BusyBox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Builds a disk with the same firmware path (OVMF → systemd-boot → the same kernel) whose
/// initramfs powers off at once: the boot benchmark's baseline.
pub fn build_baseline(options: &BuildOptions) -> anyhow::Result<PathBuf> {
    host::check_tools()?;
    std::fs::create_dir_all(&options.out_dir)?;
    let work = tempfile::Builder::new()
        .prefix(".keelson-baseline-")
        .tempdir_in(&options.out_dir)?;
    let binaries = crate::binaries_dir(options)?;
    let init_binary = std::fs::read(binaries.join("keelson-init"))?;
    let packages = PackageCache::new(options.cache_dir.clone());
    let kernel = fetch_kernel(&packages)?;
    let (boot_loader_tree, _) = packages.unpack(crate::BOOT_LOADER_PACKAGE)?;
    let modules = KernelModules::scan(&kernel.modules_root)?;
    let initrd = work.path().join("initrd");
    write_initramfs(
        &initrd,
        &[("keelson-baseline", 0o755, &init_binary)],
        &kernel.release,
        &modules,
        &Default::default(),
    )?;
    let esp_image = work.path().join("esp.img");
    let cmdline = "console=ttyS0,115200 panic=10 rdinit=/keelson-baseline keelson.slot=a";
    make_esp(
        &esp_image,
        sizes::ESP,
        &boot_loader_tree.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        &[EspSlot {
            slot: Slot::A,
            kernel: &kernel.vmlinuz,
            initrd: &initrd,
            entry_file: EntryName::blessed(1, Slot::A).file_name(),
            entry_text: boot_entry::entry_text(Slot::A, "baseline", cmdline),
        }],
    )?;
    let image = options.out_dir.join("baseline.raw");
    write_disk(
        &image,
        &[(
            layout::ESP_LABEL,
            layout::ESP_TYPE,
            sizes::ESP,
            Some(esp_image.as_path()),
        )],
    )?;
    Ok(image)
}

/// The kernel and initramfs of the update benchmark's `dd` baseline.
#[derive(Debug, Clone)]
pub struct WriteBaseline {
    /// The image's kernel (from the package cache).
    pub kernel: PathBuf,
    /// The initramfs: BusyBox, the script, the virtio modules and the payload.
    pub initrd: PathBuf,
}

impl WriteBaseline {
    /// The kernel command line: `runs` timed `dd` writes, then as many `wget | dd` runs
    /// from `url` when one is given (the guest reaches it over its user-mode network).
    pub fn cmdline(runs: usize, url: Option<&str>) -> String {
        let mut cmdline = format!("{} keelson.bench.runs={runs}", crate::BASE_CMDLINE);
        if let Some(url) = url {
            cmdline.push_str(&format!(" keelson.bench.url={url}"));
        }
        cmdline
    }
}

/// The modules the baseline loads: the disk and the network card.
const WRITE_BASELINE_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net"];

/// The baseline's PID 1. Every step is written to /dev/kmsg so that the host reads the
/// kernel's microsecond timestamps off the console: BusyBox's `dd` prints no timing, and
/// its `date` has no sub-second field.
const WRITE_BASELINE_SCRIPT: &str = r#"#!/bin/busybox sh
# Keelson's update benchmark baseline, run as PID 1 in the VM Keelson ran in: writes the
# root image in this initramfs to ROOT-B with dd, then fetches it into dd with wget.
/bin/busybox --install -s /bin
export PATH=/bin
set -o pipefail
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mark() { echo "keelson-bench: $*" > /dev/kmsg; }
fail() { mark "failed: $*"; poweroff -f; }
runs=1
url=
for argument in $(cat /proc/cmdline); do
    case "$argument" in
        keelson.bench.runs=*) runs="${argument#*=}" ;;
        keelson.bench.url=*) url="${argument#*=}" ;;
    esac
done
for module in $(cat /modules); do
    modprobe "$module" || fail "modprobe $module"
done
target=
for attempt in $(seq 100); do
    for uevent in /sys/class/block/*/uevent; do
        if grep -qx PARTNAME=KEELSON-ROOT-B "$uevent"; then
            target="/dev/$(basename "$(dirname "$uevent")")"
        fi
    done
    [ -n "$target" ] && break
    sleep 0.1
done
[ -n "$target" ] || fail "no partition labelled KEELSON-ROOT-B"
mark "target $target bytes $(stat -c %s /root.img)"
for run in $(seq "$runs"); do
    mark dd-start
    dd if=/root.img of="$target" bs=1M conv=fsync 2>/dev/null || fail "dd to $target"
    mark dd-end
done
if [ -n "$url" ]; then
    ip link set lo up
    ip link set eth0 up || fail "no eth0"
    ip addr add 10.0.2.15/24 dev eth0
    for run in $(seq "$runs"); do
        mark fetch-start
        wget -q -O - "$url" | dd of="$target" bs=1M conv=fsync 2>/dev/null \
            || fail "wget $url | dd to $target"
        mark fetch-end
    done
fi
mark done
poweroff -f
"#;

/// Builds the `dd` baseline for writing `payload` (a root image with its hash tree, as a
/// bundle carries it) into `options.out_dir/write-baseline.initrd`.
pub fn build_write_baseline(
    options: &BuildOptions,
    payload: &[u8],
) -> anyhow::Result<WriteBaseline> {
    std::fs::create_dir_all(&options.out_dir)?;
    let packages = PackageCache::new(options.cache_dir.clone());
    let kernel = fetch_kernel(&packages)?;
    let (busybox_tree, _) = packages.unpack(BUSYBOX_PACKAGE)?;
    let busybox_path = busybox_tree.join("bin/busybox");
    let busybox = std::fs::read(&busybox_path)
        .with_context(|| format!("{BUSYBOX_PACKAGE} holds no {}", busybox_path.display()))?;
    let modules = KernelModules::scan(&kernel.modules_root)?;
    let (chosen, _) = modules.closure(WRITE_BASELINE_MODULES)?;
    // Built-in ones are not in `chosen`; modprobe would not find them.
    let module_list = chosen.keys().cloned().collect::<Vec<_>>().join("\n");
    let initrd = options.out_dir.join("write-baseline.initrd");
    write_initramfs(
        &initrd,
        &[
            ("bin/busybox", 0o755, &busybox),
            ("init", 0o755, WRITE_BASELINE_SCRIPT.as_bytes()),
            ("modules", 0o644, module_list.as_bytes()),
            ("root.img", 0o644, payload),
        ],
        &kernel.release,
        &modules,
        &chosen,
    )?;
    Ok(WriteBaseline {
        kernel: kernel.vmlinuz,
        initrd,
    })
}

/// What one boot of the write baseline measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBaselineRun {
    /// Bytes of the payload.
    pub bytes: u64,
    /// Seconds of each `dd` from memory to ROOT-B, `conv=fsync` included.
    pub dd_seconds: Vec<f64>,
    /// Seconds of each `wget | dd`.
    pub fetch_seconds: Vec<f64>,
}

impl WriteBaselineRun {
    /// Reads the marks off a console log; fails with the script's own reason if it failed,
    /// or when it did not finish.
    pub fn parse(console: &str) -> anyhow::Result<WriteBaselineRun> {
        let mut run = WriteBaselineRun::default();
        let mut started: Option<f64> = None;
        let mut finished = false;
        for line in console.lines() {
            let Some((prefix, mark)) = line.split_once("keelson-bench: ") else {
                continue;
            };
            let Some(time) = kernel_timestamp(prefix) else {
                continue;
            };
            let mark = mark.trim();
            if let Some(reason) = mark.strip_prefix("failed: ") {
                bail!("the dd baseline failed in the guest: {reason}");
            } else if let Some(target) = mark.strip_prefix("target ") {
                let bytes = target.rsplit(' ').next().unwrap_or_default();
                run.bytes = bytes.parse().unwrap_or_default();
            } else if mark.ends_with("-start") {
                started = Some(time);
            } else if let (Some(step), Some(start)) = (mark.strip_suffix("-end"), started.take()) {
                match step {
                    "dd" => run.dd_seconds.push(time - start),
                    "fetch" => run.fetch_seconds.push(time - start),
                    _ => {}
                }
            } else if mark == "done" {
                finished = true;
            }
        }
        if !finished || run.dd_seconds.is_empty() {
            bail!("the dd baseline did not finish: no `keelson-bench: done` on the console");
        }
        Ok(run)
    }
}

/// The seconds of a kernel log prefix such as `[   12.345678] `.
fn kernel_timestamp(prefix: &str) -> Option<f64> {
    let inside = prefix.trim().strip_prefix('[')?.strip_suffix(']')?;
    inside.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marks_on_the_console_become_durations() {
        let console = "\
[    2.000000] virtio_blk virtio1: [vda] 1445888 512-byte logical blocks
[    2.100000] keelson-bench: target /dev/vda3 bytes 6635520
[    2.200000] keelson-bench: dd-start
[    2.450000] keelson-bench: dd-end
[    2.500000] keelson-bench: fetch-start
[    4.500000] keelson-bench: fetch-end
[    4.600000] keelson-bench: done
";
        let run = WriteBaselineRun::parse(console).unwrap();
        assert_eq!(run.bytes, 6_635_520);
        assert_eq!(run.dd_seconds.len(), 1);
        assert!((run.dd_seconds[0] - 0.25).abs() < 1e-9);
        assert!((run.fetch_seconds[0] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_failure_or_a_missing_end_is_an_error() {
        let failed = "[    2.1] keelson-bench: failed: no partition labelled KEELSON-ROOT-B\n";
        let error = WriteBaselineRun::parse(failed).unwrap_err().to_string();
        assert!(
            error.contains("no partition labelled KEELSON-ROOT-B"),
            "{error}"
        );
        let cut = "[    2.2] keelson-bench: dd-start\n";
        let error = WriteBaselineRun::parse(cut).unwrap_err().to_string();
        assert!(error.contains("did not finish"), "{error}");
    }

    #[test]
    fn the_cmdline_names_the_runs_and_the_url() {
        assert!(WriteBaseline::cmdline(3, None).ends_with("keelson.bench.runs=3"));
        assert!(
            WriteBaseline::cmdline(1, Some("http://10.0.2.100:8080/root.img")).ends_with(
                "keelson.bench.runs=1 keelson.bench.url=http://10.0.2.100:8080/root.img"
            )
        );
    }
}
