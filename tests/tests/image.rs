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
