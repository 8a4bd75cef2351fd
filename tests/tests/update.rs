//! End-to-end: A/B updates of the real image in QEMU, driven with `keelctl` as an operator
//! would.
//!
//! One node walks the whole path: its first boot blesses slot A; bundles that are corrupted,
//! truncated or signed by an unknown key are refused with their reason and leave slot A the
//! default and slot B empty; the next release then installs into slot B, boots, is
//! blessed, stays on B across a reboot; and an explicit rollback returns to A.

use std::time::{Duration, Instant};

use keelson_api::roles::Role;
use keelson_tests::{expect_failure, expect_success, next_bundle, TestNode};

/// `keelctl update status -o json` for the one node.
fn update_status(node: &TestNode) -> serde_json::Value {
    let text = expect_success(
        node.keelctl(Role::Reader, &["update", "status", "-o", "json"])
            .unwrap(),
        "update status",
    );
    let answers: serde_json::Value = serde_json::from_str(&text).unwrap();
    answers[0].clone()
}

fn slot<'a>(status: &'a serde_json::Value, letter: &str) -> &'a serde_json::Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|slot| slot["slot"] == letter)
        .unwrap()
}

/// Waits until the running slot is blessed.
fn wait_blessed(node: &TestNode) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = update_status(node);
        let running = status["running_slot"].as_str().unwrap().to_owned();
        if slot(&status, &running)["state"] == "good" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "slot {running} was never blessed: {status:#}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn bad_bundles_are_refused_and_a_good_one_upgrades_survives_reboot_and_rolls_back() {
    let (bundle, next_version) = next_bundle();
    let mut node = TestNode::boot(None).unwrap();
    let status = wait_blessed(&node);
    let first_version = slot(&status, "a")["version"].as_str().unwrap().to_owned();
    assert_eq!(status["running_slot"], "a", "{status:#}");
    assert_eq!(slot(&status, "b")["state"], "empty", "{status:#}");
    assert!(
        node.vm.console_text().contains("keelson: update: slot a"),
        "the first boot's blessing is not on the console"
    );

    // Refusals: each names its reason, and slot A stays the untouched default.
    let scratch = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    let corrupted = scratch.path().join("corrupted.bundle");
    let mut flipped = bytes.clone();
    let at = flipped.len() - 4096;
    flipped[at] ^= 0x40;
    std::fs::write(&corrupted, &flipped).unwrap();
    let truncated = scratch.path().join("truncated.bundle");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let foreign_key = scratch.path().join("foreign.key");
    keelson_image::keygen(&foreign_key).unwrap();
    let foreign = scratch.path().join("foreign.bundle");
    resign(&bytes, &foreign_key, &foreign);
    for (file, reason) in [
        (&corrupted, "corrupted"),
        (&truncated, "truncated"),
        (&foreign, "does not trust"),
    ] {
        let error = expect_failure(
            node.keelctl(
                Role::Operator,
                &["upgrade", "--bundle", file.to_str().unwrap()],
            )
            .unwrap(),
            "upgrade with a bad bundle",
        );
        assert!(error.contains(reason), "{reason}: {error}");
        let status = update_status(&node);
        assert_eq!(status["default_slot"], "a", "{status:#}");
        assert_eq!(slot(&status, "a")["state"], "good", "{status:#}");
        assert_eq!(slot(&status, "b")["state"], "empty", "{status:#}");
        assert!(
            status["last_error"].as_str().unwrap().contains(reason) || reason == "does not trust",
            "{status:#}"
        );
    }
    // A reader may look but not upgrade.
    let error = expect_failure(
        node.keelctl(
            Role::Reader,
            &["upgrade", "--bundle", bundle.to_str().unwrap()],
        )
        .unwrap(),
        "upgrade as a reader",
    );
    assert!(error.contains("needs role operator"), "{error}");

    // The good bundle lands on B, boots, and is blessed.
    let line = expect_success(
        node.keelctl(
            Role::Operator,
            &[
                "upgrade",
                "--bundle",
                bundle.to_str().unwrap(),
                "--wait",
                "--timeout",
                "600",
            ],
        )
        .unwrap(),
        "upgrade --wait",
    );
    assert!(
        line.contains(&format!("running {next_version} on slot b, blessed")),
        "{line}"
    );
    let machine = node.status().unwrap();
    assert_eq!(machine.slot, "b");
    assert_eq!(machine.os_version, next_version);
    let status = update_status(&node);
    assert_eq!(status["default_slot"], "b", "{status:#}");
    assert_eq!(slot(&status, "a")["state"], "good", "{status:#}");

    // It stays on B across a reboot.
    let line = expect_success(
        node.keelctl(Role::Operator, &["reboot", "--wait", "--timeout", "400"])
            .unwrap(),
        "reboot --wait",
    );
    assert!(line.contains("on slot b"), "{line}");

    // An explicit rollback returns to A and the first version.
    let line = expect_success(
        node.keelctl(Role::Operator, &["rollback", "--wait", "--timeout", "400"])
            .unwrap(),
        "rollback --wait",
    );
    assert!(
        line.contains(&format!("running {first_version} on slot a")),
        "{line}"
    );
    assert_eq!(node.status().unwrap().slot, "a");
    node.power_off().unwrap();
}

/// The same bundle, its manifest signed again with another key.
fn resign(bundle: &[u8], key: &std::path::Path, out: &std::path::Path) {
    let key =
        keelson_update::keys::SigningKey::parse(&std::fs::read_to_string(key).unwrap()).unwrap();
    let length = u32::from_le_bytes(bundle[104..108].try_into().unwrap()) as usize;
    let manifest = &bundle[108..108 + length];
    let mut signed = keelson_update::bundle::SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(manifest);
    let mut copy = bundle.to_vec();
    copy[8..40].copy_from_slice(&key.public().id().0);
    copy[40..104].copy_from_slice(&key.sign(&signed));
    std::fs::write(out, copy).unwrap();
}
