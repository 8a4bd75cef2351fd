//! End-to-end: boot the image in QEMU and check what an operator would check.

use std::time::Duration;

use keelson_api::machine::{RebootRequest, RestartAgentRequest};
use keelson_disk::layout;
use keelson_qemu::READY_PATTERN;
use keelson_tests::{host_command, partition_table, test_image, TestNode, BOOT_TIMEOUT};

const GIB: u64 = 1 << 30;

#[test]
fn first_boot_runs_slot_a_from_a_verified_root_with_state_grown() {
    let node = TestNode::boot(Some(3 * GIB)).unwrap();
    let console = node.vm.console_text();
    let status = node.status().unwrap();

    // Booted slot A through systemd-boot, into Keelson's PID 1.
    assert_eq!(status.slot, "a");
    assert!(
        status.boot_loader.starts_with("systemd-boot"),
        "boot loader: {:?}",
        status.boot_loader
    );
    assert!(
        status.boot_entry.starts_with("keelson-1-a"),
        "entry: {:?}",
        status.boot_entry
    );
    let pid1 = status.pid1.clone().unwrap();
    assert_eq!(pid1.pid, 1);
    assert_eq!(pid1.executable, "/usr/bin/keelson-init");
    assert!(
        console.contains("keelson-init: stage 1"),
        "stage 1 never logged"
    );
    assert!(
        console.contains("keelson-init: stage 2"),
        "stage 2 never logged"
    );
    let ready = console
        .lines()
        .find(|line| line.contains(READY_PATTERN))
        .unwrap();
    assert_eq!(
        ready.trim(),
        format!(
            "keelson: ready hostname={} slot=a version={} config=fw_cfg",
            status.hostname, status.os_version
        )
    );

    // / is the read-only squashfs on the dm-verity device; STATE is ext4 at /var.
    let root = status.mounts.iter().find(|m| m.mount_point == "/").unwrap();
    assert!(
        root.source.starts_with("/dev/dm-"),
        "root source {:?}",
        root.source
    );
    assert_eq!(root.fs_type, "squashfs");
    assert!(root.read_only);
    assert_eq!(status.root_verity, "verified");
    let var = status
        .mounts
        .iter()
        .find(|m| m.mount_point == "/var")
        .unwrap();
    assert_eq!(var.fs_type, "ext4");
    assert!(!var.read_only);

    // STATE fills the 3 GiB disk: everything after the other partitions, less the backup GPT.
    let table = partition_table(&test_image()).unwrap();
    let state_start = table.find(layout::STATE_LABEL).unwrap().offset_bytes();
    // The partition ends right before the backup GPT: 32 sectors of entries and 1 header.
    let expected = 3 * GIB - state_start - 33 * 512;
    assert_eq!(
        var.device_bytes, expected,
        "STATE partition was not grown to the end of the disk"
    );
    assert!(
        var.size_bytes > expected * 9 / 10,
        "ext4 is {} bytes on a {expected}-byte partition",
        var.size_bytes
    );
    assert!(
        console.contains("grew KEELSON-STATE"),
        "no grow message on the console"
    );
}

#[test]
fn pid1_restarts_a_killed_agent() {
    let mut node = TestNode::boot(None).unwrap();
    let before = node.status().unwrap();
    assert_eq!(before.agent_starts, 1);
    let mark = node.vm.console_mark();
    let killed = node
        .machine(|mut client| async move { client.restart_agent(RestartAgentRequest {}).await })
        .unwrap();
    node.vm
        .wait_for_console_from(
            mark,
            &format!(
                "keelsond (pid {}) was killed by SIGKILL; restarting",
                killed.pid
            ),
            BOOT_TIMEOUT,
        )
        .unwrap();
    node.vm
        .wait_for_console_from(mark, READY_PATTERN, BOOT_TIMEOUT)
        .unwrap();
    let after = node.status().unwrap();
    assert_eq!(after.agent_starts, 2);
    assert_ne!(after.agent.unwrap().pid, killed.pid);
    // Same boot: the restart did not reboot the machine.
    assert_eq!(after.boots.len(), before.boots.len());
}

#[test]
fn state_survives_a_reboot_and_powerdown_leaves_it_clean() {
    let mut node = TestNode::boot(None).unwrap();
    let first = node.status().unwrap();
    assert_eq!(first.boots.len(), 1, "a fresh disk has one boot on record");

    // Reboot through the API: PID 1 goes down in order and the machine comes back.
    let mark = node.vm.console_mark();
    node.machine(|mut client| async move { client.reboot(RebootRequest {}).await })
        .unwrap();
    node.vm
        .wait_for_console_from(mark, "keelson-init: reboot: now", BOOT_TIMEOUT)
        .unwrap();
    node.vm
        .wait_for_console_from(mark, READY_PATTERN, BOOT_TIMEOUT)
        .unwrap();
    let second = node.status().unwrap();
    assert_eq!(
        second.boots.len(),
        2,
        "the record of the first boot was written to /var and must survive"
    );
    assert_eq!(second.boots[0].boot_id, first.boots[0].boot_id);
    assert_ne!(second.boots[1].boot_id, first.boots[0].boot_id);

    // The ACPI power button powers off in order within 15 s.
    node.vm.powerdown().unwrap();
    let status = node.vm.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    assert!(node
        .vm
        .console_text()
        .contains("power button pressed: poweroff"));

    // STATE's ext4 was unmounted cleanly.
    let exported = node.vm.dir().join("exported.raw");
    node.vm.export_raw(&exported).unwrap();
    let table = partition_table(&exported).unwrap();
    let state = table.find(layout::STATE_LABEL).unwrap();
    let header = host_command(
        "dumpe2fs",
        &[
            "-h",
            &format!("{}?offset={}", exported.display(), state.offset_bytes()),
        ],
    )
    .unwrap();
    let state_line = header
        .lines()
        .find(|line| line.starts_with("Filesystem state:"))
        .unwrap();
    assert!(state_line.ends_with(" clean"), "{state_line}");
}

#[test]
fn a_flipped_root_byte_stops_the_boot_naming_dm_verity() {
    let mut node = TestNode::prepare(None).unwrap();
    let table = partition_table(&test_image()).unwrap();
    let root = table.find(layout::ROOT_A_LABEL).unwrap();
    // A byte inside the squashfs superblock's block, which mounting reads first.
    let offset = root.offset_bytes() + 1000;
    let original = std::fs::read(test_image()).unwrap()[offset as usize];
    node.vm.write_disk_byte(offset, original ^ 0xff).unwrap();
    node.vm.power_on().unwrap();

    let line = node
        .vm
        .wait_for_console("keelson-init: FATAL:", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("dm-verity"),
        "the fatal line must name dm-verity: {line}"
    );
    assert!(
        line.contains("KEELSON-ROOT-A"),
        "the fatal line must name the partition: {line}"
    );
    // It reboots to let the boot counter act, and never reaches the ready line meanwhile.
    let mark = node.vm.console_mark();
    node.vm
        .wait_for_console_from(mark, "keelson-init: FATAL:", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        !node.vm.console_text().contains(READY_PATTERN),
        "a corrupted root must never reach ready"
    );
}
