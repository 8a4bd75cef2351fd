//! The built image, checked with host tools the way a person flashing it would.

use keelson_disk::layout;
use keelson_tests::{host_command, test_image};

#[test]
fn sgdisk_sees_the_four_keelson_partitions_and_a_valid_table() {
    let image = test_image();
    let listing = host_command("sgdisk", &["-p", image.to_str().unwrap()]).unwrap();
    for label in [
        layout::ESP_LABEL,
        layout::ROOT_A_LABEL,
        layout::ROOT_B_LABEL,
        layout::STATE_LABEL,
    ] {
        assert!(
            listing.contains(label),
            "sgdisk -p does not show {label}:\n{listing}"
        );
    }
    let verify = host_command("sgdisk", &["-v", image.to_str().unwrap()]).unwrap();
    assert!(verify.contains("No problems found"), "{verify}");
}

#[test]
fn the_esp_holds_systemd_boot_and_a_counted_entry_for_slot_a() {
    let image = test_image();
    let report = keelson_image::inspect::inspect(&image).unwrap();
    assert!(report.contains("loader default: slot a"), "{report}");
    assert!(report.contains("slot a: version"), "{report}");
    assert!(
        report.contains("on trial, 3 tries left, entry keelson-1-a+3.conf"),
        "{report}"
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.with_file_name("build.json")).unwrap())
            .unwrap();
    assert!(
        report.contains(summary["root_hash"].as_str().unwrap()),
        "entry and build disagree on the root hash"
    );

    let table = keelson_tests::partition_table(&image).unwrap();
    let esp = table.find(layout::ESP_LABEL).unwrap();
    let drive = format!("{}@@{}", image.display(), esp.offset_bytes());
    let boot = std::process::Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &drive, "-b", "::/EFI/BOOT"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&boot.stdout).contains("BOOTX64.EFI"),
        "no /EFI/BOOT/BOOTX64.EFI on the ESP"
    );
}

/// A loop device over a fresh sparse file, with partition scanning, detached on drop.
struct LoopDisk {
    device: loopdev::LoopDevice,
    path: std::path::PathBuf,
    _backing: tempfile::NamedTempFile,
}

impl LoopDisk {
    fn new(size: u64) -> LoopDisk {
        let backing = tempfile::NamedTempFile::new().unwrap();
        backing.as_file().set_len(size).unwrap();
        let device = loopdev::LoopControl::open().unwrap().next_free().unwrap();
        device
            .with()
            .part_scan(true)
            .attach(backing.path())
            .unwrap();
        let path = device.path().unwrap();
        LoopDisk {
            device,
            path,
            _backing: backing,
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = self.device.detach();
    }
}

fn image_tool(arguments: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(keelson_tests::keelson_image_binary().unwrap())
        .args(arguments)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `flash` as a person uses it, against a loop device: it refuses a partition, a mounted
/// disk and an unconfirmed write, and otherwise writes the image and reads it back.
#[test]
fn flash_writes_a_whole_idle_disk_and_refuses_everything_else() {
    if !nix::unistd::geteuid().is_root() {
        keelson_testkit::skip(
            "flash_writes_a_whole_idle_disk_and_refuses_everything_else",
            "loop devices need root",
        );
        return;
    }
    let image = test_image();
    let image_arg = image.to_str().unwrap();
    let size = std::fs::metadata(&image).unwrap().len();
    let disk = LoopDisk::new(size + (64 << 20));
    let device = disk.path.to_str().unwrap().to_owned();

    let unconfirmed = image_tool(&["flash", image_arg, "--device", &device], "no\n");
    assert!(!unconfirmed.status.success());
    assert!(
        text(&unconfirmed.stderr).contains("not confirmed; nothing was written"),
        "{}",
        text(&unconfirmed.stderr)
    );

    let flashed = image_tool(&["flash", image_arg, "--device", &device, "--yes"], "");
    assert!(flashed.status.success(), "{}", text(&flashed.stderr));
    assert!(
        text(&flashed.stdout).contains(&format!("{device} is written and verified ({size} bytes)")),
        "{}",
        text(&flashed.stdout)
    );
    let written = std::fs::read(&device).unwrap();
    assert!(
        written[..size as usize] == std::fs::read(&image).unwrap()[..],
        "the disk differs"
    );

    // The kernel now sees the image's partitions on the loop device.
    host_command("partx", &["-u", &device]).ok();
    let esp = format!("{device}p1");
    for _ in 0..50 {
        if std::path::Path::new(&esp).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let partition = image_tool(&["flash", image_arg, "--device", &esp, "--yes"], "");
    assert!(!partition.status.success());
    let loop_name = device.trim_start_matches("/dev/");
    assert!(
        text(&partition.stderr).contains(&format!(
            "it is a partition; write the whole disk, /dev/{loop_name}"
        )),
        "{}",
        text(&partition.stderr)
    );

    // STATE (ext4) rather than the ESP: build hosts need not have vfat.
    let state = format!("{device}p4");
    let mount_point = tempfile::tempdir().unwrap();
    host_command(
        "mount",
        &[
            "-o",
            "ro,noload",
            &state,
            mount_point.path().to_str().unwrap(),
        ],
    )
    .unwrap();
    let mounted = image_tool(&["flash", image_arg, "--device", &device, "--yes"], "");
    host_command("umount", &[mount_point.path().to_str().unwrap()]).unwrap();
    assert!(!mounted.status.success());
    assert!(
        text(&mounted.stderr).contains(&format!(
            "it is in use ({}); unmount everything on it first",
            mount_point.path().display()
        )),
        "{}",
        text(&mounted.stderr)
    );
}

/// `inspect --deep` looks inside through loop devices: slot A's root matches its verity
/// root hash and holds the agent; a root altered by one byte is reported as such.
#[test]
fn deep_inspect_checks_each_slot_against_its_root_hash_and_lists_the_root() {
    if !nix::unistd::geteuid().is_root() {
        keelson_testkit::skip(
            "deep_inspect_checks_each_slot_against_its_root_hash_and_lists_the_root",
            "loop devices and mounts need root",
        );
        return;
    }
    let image = test_image();
    let report = image_tool(
        &["inspect", "--deep", "--files", image.to_str().unwrap()],
        "",
    );
    let printed = text(&report.stdout);
    assert!(report.status.success(), "{}", text(&report.stderr));
    assert!(printed.contains("slot a: verity root hash "), "{printed}");
    assert!(printed.contains(" matches its entry ("), "{printed}");
    assert!(printed.contains("    /usr/bin/keelsond\n"), "{printed}");
    assert!(printed.contains("    /usr/sbin/init\n"), "{printed}");
    assert!(printed.contains("STATE: "), "{printed}");
    // What containers and pod networking need is in the root.
    for module in [
        "overlay",
        "veth",
        "bridge",
        "br_netfilter",
        "vxlan",
        "nf_tables",
        "nft_nat",
    ] {
        assert!(
            printed.contains(&format!("/{module}.ko\n")),
            "no {module} module in the root"
        );
    }

    let altered = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(&image, altered.path()).unwrap();
    let table = keelson_tests::partition_table(&image).unwrap();
    let root_a = table.find(layout::ROOT_A_LABEL).unwrap();
    let at = root_a.offset_bytes() + 8192;
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(altered.path())
            .unwrap();
        let mut byte = [0u8; 1];
        file.seek(SeekFrom::Start(at)).unwrap();
        file.read_exact(&mut byte).unwrap();
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&[byte[0] ^ 0xff]).unwrap();
    }
    let report = image_tool(&["inspect", "--deep", altered.path().to_str().unwrap()], "");
    let printed = text(&report.stdout);
    assert!(
        printed.contains("DOES NOT MATCH its entry: the slot was altered or damaged"),
        "{printed}{}",
        text(&report.stderr)
    );
}
