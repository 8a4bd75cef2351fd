//! End-to-end: A/B updates of the real image in QEMU, driven with `keelctl` as an operator
//! would.
//!
//! One node walks the whole path: its first boot blesses slot A; bundles that are corrupted,
//! truncated or signed by an unknown key are refused with their reason and leave slot A the
//! default and slot B empty, and so is an expired channel; the next release, taken from a
//! signed channel served over HTTP, installs into slot B, waits for a FleetLock reboot
//! slot, boots, is blessed, gives the slot back, stays on B across a reboot; and an
//! explicit rollback returns to A.
//!
//! Another node is sent a release whose agent cannot run: it tries it on slot B until the
//! boot counter gives up and is back on A, naming the failed version. The same node then
//! gets the next release written and activated, and a byte of ROOT-B flipped while it is
//! off: dm-verity refuses B and the node returns to A.
//!
//! A node that runs a static pod whose readiness probe passes only on the version it runs
//! is sent the next release: it boots and serves the API, but the pod never becomes
//! Ready, so the health gate rolls it back to A, naming the pod.
//!
//! A fourth node loses power three times while it fetches and writes a bundle (inside the
//! kernel on the ESP, midway through the root image and near its end; the server stops
//! sending at each cut so the point is exact): each restart boots slot A, with B empty and
//! the interruption named, and a retry by upload then installs the release.

use keelson_linux::clock::unix_now;
use keelson_update::bundle::header;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_api::roles::Role;
use keelson_config::model::{FleetLock as FleetLockConfig, RebootPolicy, StaticPod, UpdatePolicy};
use keelson_disk::layout;
use keelson_qemu::GUEST_SERVICE_ADDRESS;
use keelson_testkit::oci;
use keelson_tests::http::{FleetLock, HttpServer, Reply};
use keelson_tests::{
    broken_bundle, expect_failure, expect_success, next_bundle, partition_table, test_image,
    update_key, TestCluster, TestNode, BOOT_TIMEOUT,
};

/// Guest ports of the host services.
const CHANNEL_PORT: u16 = 8080;
const FLEETLOCK_PORT: u16 = 8081;
const BUNDLE_PORT: u16 = 8082;

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

/// After an upgrade that failed with `error`: the node came back on slot A with
/// `first_version`, slot B is marked bad for `failed_version`, and both the error and the
/// status give `reason`.
fn assert_rolled_back_to_a(
    node: &TestNode,
    error: &str,
    first_version: &str,
    failed_version: &str,
    reason: &str,
) {
    assert!(
        error.contains(&format!("came back on slot a ({first_version})")),
        "{error}"
    );
    assert!(error.contains(reason), "{error}");
    let status = wait_running_good(node, "a", Duration::from_secs(60));
    assert_eq!(status["default_slot"], "a", "{status:#}");
    assert_eq!(slot(&status, "b")["state"], "bad", "{status:#}");
    assert_eq!(status["failed_version"], failed_version, "{status:#}");
    assert!(
        status["last_error"].as_str().unwrap().contains(reason),
        "{status:#}"
    );
}

/// `keelctl upgrade --bundle FILE --wait`: uploads, then follows the node through its
/// reboots until it settles on a blessed slot.
fn upgrade_and_wait(node: &TestNode, bundle: &std::path::Path) -> (bool, String, String) {
    node.keelctl(
        Role::Operator,
        &[
            "upgrade",
            "--bundle",
            bundle.to_str().unwrap(),
            "--wait",
            "--timeout",
            "900",
        ],
    )
    .unwrap()
}

/// Waits until the node runs `letter` and it is blessed; tolerates the node being away.
fn wait_running_good(node: &TestNode, letter: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((true, text, _)) = node.keelctl(Role::Reader, &["update", "status", "-o", "json"])
        {
            let answers: serde_json::Value = serde_json::from_str(&text).unwrap();
            let status = answers[0].clone();
            if status["running_slot"] == letter && slot(&status, letter)["state"] == "good" {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node never ran a blessed slot {letter}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A channel directory holding `bundle`, its metadata signed by the test key, valid from
/// `now` for `valid_for_secs`.
fn publish_channel(dir: &std::path::Path, bundle: &std::path::Path, now: i64, valid_for_secs: i64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(bundle, dir.join(bundle.file_name().unwrap())).unwrap();
    keelson_image::publish::publish(&keelson_image::publish::PublishOptions {
        dir: dir.to_owned(),
        signing_key: update_key(),
        trusted_keys: Vec::new(),
        name: "e2e".into(),
        valid_for_secs,
        now,
    })
    .unwrap();
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
fn bad_updates_are_refused_and_a_channel_release_upgrades_through_fleetlock_and_rolls_back() {
    let (bundle, next_version) = next_bundle();
    // The channel and an expired one, side by side on one HTTP server.
    let served = tempfile::tempdir().unwrap();
    publish_channel(&served.path().join("stable"), &bundle, unix_now(), 86_400);
    publish_channel(
        &served.path().join("expired"),
        &bundle,
        unix_now() - 2 * 86_400,
        86_400,
    );
    let channel_server = HttpServer::directory(served.path().to_owned());
    let lock = FleetLock::start();
    let config = TestCluster::get().node_config_with("update-channel.yaml", |config| {
        config.update = Some(UpdatePolicy {
            channel: Some(format!(
                "http://{GUEST_SERVICE_ADDRESS}:{CHANNEL_PORT}/stable/"
            )),
            reboot_policy: Some(RebootPolicy::FleetLock),
            fleet_lock: Some(FleetLockConfig {
                url: Some(format!("http://{GUEST_SERVICE_ADDRESS}:{FLEETLOCK_PORT}")),
                group: Some("e2e".into()),
            }),
            ..UpdatePolicy::default()
        });
    });
    let (mut node, _) = TestNode::boot_with(|options| {
        options.config = Some(config);
        options.host_services = vec![
            (CHANNEL_PORT, channel_server.port),
            (FLEETLOCK_PORT, lock.server.port),
        ];
    })
    .unwrap();
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
    // A damaged payload is caught while the slot is written ("installing V failed"); a
    // bundle from an untrusted signer is refused from its header, before any slot is
    // touched. Either way `update status` keeps the reason.
    let next = &next_version;
    let damaged = format!("installing {next} failed: ");
    for (file, reason, recorded_as) in [
        (&corrupted, "corrupted", damaged.as_str()),
        (&truncated, "truncated", damaged.as_str()),
        (&foreign, "does not trust", "refused a bundle: "),
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
        let last_error = status["last_error"].as_str().unwrap();
        assert!(last_error.starts_with(recorded_as), "{reason}: {status:#}");
        assert!(last_error.contains(reason), "{reason}: {status:#}");
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

    // Expired channel metadata is refused, by check and by upgrade, and touches nothing.
    let expired = format!("http://{GUEST_SERVICE_ADDRESS}:{CHANNEL_PORT}/expired/");
    for arguments in [
        vec!["update", "check", "--channel", &expired],
        vec!["upgrade", "--channel", &expired],
    ] {
        let error = expect_failure(
            node.keelctl(Role::Operator, &arguments).unwrap(),
            "an expired channel",
        );
        assert!(error.contains("expired at"), "{error}");
        assert!(error.contains("re-sign"), "{error}");
        let status = update_status(&node);
        assert_eq!(slot(&status, "b")["state"], "empty", "{status:#}");
    }

    // The configured channel offers the next release.
    let line = expect_success(
        node.keelctl(Role::Reader, &["update", "check"]).unwrap(),
        "update check",
    );
    assert!(
        line.contains(&format!("e2e offers {next_version}")),
        "{line}"
    );

    // Installed from the channel, the release waits while another node holds the reboot
    // slot, and reboots once the slot is free.
    let hostname = node.status().unwrap().hostname;
    let uptime_before = node.status().unwrap().uptime_seconds;
    lock.hold("other-node");
    let line = expect_success(
        node.keelctl(Role::Operator, &["upgrade"]).unwrap(),
        "upgrade from the channel",
    );
    assert!(
        line.contains(&format!("wrote {next_version} to slot b")),
        "{line}"
    );
    assert!(
        line.contains("waiting for a reboot slot from FleetLock"),
        "{line}"
    );
    let waiting_since = Instant::now();
    let status = loop {
        let status = update_status(&node);
        if status["reboot_pending"]
            .as_str()
            .unwrap()
            .contains("semaphore is full")
        {
            break status;
        }
        assert!(
            waiting_since.elapsed() < Duration::from_secs(60),
            "{status:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(status["default_slot"], "b", "{status:#}");
    assert_eq!(status["reboot_policy"], "fleet-lock", "{status:#}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        node.status().unwrap().uptime_seconds >= uptime_before + 5,
        "the node rebooted without the lock"
    );
    lock.release();
    wait_running_good(&node, "b", Duration::from_secs(600));
    let released_since = Instant::now();
    while lock.holder().is_some() {
        assert!(
            released_since.elapsed() < Duration::from_secs(120),
            "the node kept the reboot slot after blessing: {:?}",
            lock.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let log = lock.log();
    let granted = log
        .iter()
        .position(|line| *line == format!("pre-reboot {hostname} granted"))
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(
        log[granted..]
            .iter()
            .any(|line| *line == format!("steady-state {hostname}")),
        "{log:?}"
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
    let manifest = &bundle[header::manifest(bundle).unwrap()];
    let mut signed = keelson_update::bundle::SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(manifest);
    let mut copy = bundle.to_vec();
    copy[header::KEY_ID].copy_from_slice(&key.public().id().0);
    copy[header::SIGNATURE].copy_from_slice(&key.sign(&signed));
    std::fs::write(out, copy).unwrap();
}

#[test]
fn a_release_that_cannot_run_and_a_tampered_slot_both_fall_back_to_a() {
    let (bundle, broken_version) = broken_bundle();
    let mut node = TestNode::boot(None).unwrap();
    let status = wait_blessed(&node);
    let first_version = slot(&status, "a")["version"].as_str().unwrap().to_owned();
    // The upload succeeds; the node reboots into B, whose agent dies at once, again and
    // again, until the loader's tries run out and it boots A.
    let error = expect_failure(
        upgrade_and_wait(&node, &bundle),
        "upgrade to a broken release",
    );
    assert_rolled_back_to_a(
        &node,
        &error,
        &first_version,
        &broken_version,
        &format!("{broken_version} on slot b did not prove healthy"),
    );
    let console = node.vm.console_text();
    assert!(
        console.contains("on trial has crashed 3 times"),
        "PID 1 never gave up on the crashing agent"
    );
    assert_eq!(node.status().unwrap().os_version, first_version);

    // Tampered slot: the next release is written and activated, then a byte of ROOT-B
    // changes while the machine is off. dm-verity stops each boot of B, and the loader
    // falls back to A.
    let (next, next_version) = next_bundle();
    let line = expect_success(
        node.keelctl(
            Role::Operator,
            &["upgrade", "--bundle", next.to_str().unwrap(), "--no-reboot"],
        )
        .unwrap(),
        "upgrade --no-reboot",
    );
    assert!(line.contains("takes effect at the next reboot"), "{line}");
    node.power_off().unwrap();
    let table = partition_table(&test_image()).unwrap();
    let root_b = table.find(layout::ROOT_B_LABEL).unwrap();
    // Inside the squashfs superblock's block, which mounting reads first.
    let offset = root_b.offset_bytes() + 1000;
    let original = std::fs::read(&next).unwrap();
    let root_in_bundle = bundle_root_offset(&original);
    node.vm
        .write_disk_byte(offset, original[root_in_bundle + 1000] ^ 0xff)
        .unwrap();
    let mark = node.vm.console_mark();
    node.vm.power_on().unwrap();
    let line = node
        .vm
        .wait_for_console_from(mark, "keelson-init: FATAL:", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        line.contains("dm-verity") && line.contains("KEELSON-ROOT-B"),
        "{line}"
    );
    let status = wait_running_good(&node, "a", Duration::from_secs(600));
    assert_eq!(slot(&status, "b")["state"], "bad", "{status:#}");
    assert_eq!(
        status["failed_version"],
        next_version.as_str(),
        "{status:#}"
    );
    node.power_off().unwrap();
}

/// The image of the health gate test's static pod.
const IMAGE: &str = "example/busybox:1";
/// The health gate test's `update.healthTimeoutSeconds`: enough for a boot under TCG and
/// the pod's first probes, short enough to keep the test's wait down.
const HEALTH_TIMEOUT_SECONDS: u64 = 150;

#[test]
fn a_release_that_breaks_a_static_pod_is_rolled_back_by_the_health_gate() {
    if !oci::ready_for(
        "a_release_that_breaks_a_static_pod_is_rolled_back_by_the_health_gate",
        false,
    ) {
        return;
    }
    let (bundle, next_version) = next_bundle();
    let config_with = |file: &str, static_pods: Vec<StaticPod>| {
        TestCluster::get().node_config_with(file, |config| {
            config.update = Some(UpdatePolicy {
                health_timeout_seconds: Some(HEALTH_TIMEOUT_SECONDS),
                ..UpdatePolicy::default()
            });
            config.static_pods = static_pods;
        })
    };
    let (mut node, _) = TestNode::boot_with(|options| {
        options.config = Some(config_with("health-gate.yaml", Vec::new()));
    })
    .unwrap();
    let status = wait_blessed(&node);
    let first_version = slot(&status, "a")["version"].as_str().unwrap().to_owned();
    let layout = tempfile::tempdir().unwrap();
    oci::busybox_layout(layout.path()).unwrap();
    node.import_layout(layout.path(), IMAGE).unwrap();

    // A workload that only this release can run: its readiness probe reads the node's
    // os-release and passes on the version running now.
    let pinned: StaticPod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pinned"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "pinned",
                "image": IMAGE,
                "command": ["busybox", "sleep", "100000"],
                "readinessProbe": {
                    "exec": {"command": ["busybox", "grep", "-qx",
                        format!("VERSION_ID={first_version}"), "/host/os-release"]},
                    "periodSeconds": 2,
                },
                "volumeMounts": [{"name": "os-release", "mountPath": "/host/os-release",
                    "readOnly": true}],
            }],
            "volumes": [{"name": "os-release",
                "hostPath": {"path": "/etc/os-release", "type": "File"}}],
        },
    }))
    .unwrap();
    let config = config_with("health-gate-pinned.yaml", vec![pinned]);
    expect_success(
        node.keelctl(
            Role::Admin,
            &["apply-config", "-f", config.to_str().unwrap()],
        )
        .unwrap(),
        "apply-config with the pinned static pod",
    );
    let pod = format!("pinned-{}", node.status().unwrap().hostname);
    wait_pod_ready(&node, &pod);

    // The next release boots and serves the API, but the pod never becomes Ready there:
    // the health gate rolls the node back to A when its time is up, naming the pod.
    let error = expect_failure(
        upgrade_and_wait(&node, &bundle),
        "upgrade to a release that breaks the pinned pod",
    );
    let reason = format!(
        "{next_version} on slot b failed its health checks: static pod default/{pod} is not Ready"
    );
    assert_rolled_back_to_a(&node, &error, &first_version, &next_version, &reason);
    assert!(
        node.vm
            .console_text()
            .contains(&format!("keelson: update: {reason}")),
        "the rollback's reason is not on the console"
    );
    // Back on A, the workload runs again.
    wait_pod_ready(&node, &pod);
    node.power_off().unwrap();
}

/// Waits until the pod's container is ready (three minutes at most).
fn wait_pod_ready(node: &TestNode, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (ok, text, _) = node
            .keelctl(Role::Reader, &["get", "pod", pod, "-o", "json"])
            .unwrap();
        let last: serde_json::Value = match ok {
            true => serde_json::from_str(&text).unwrap(),
            false => serde_json::Value::Null,
        };
        if last["status"]["containerStatuses"][0]["ready"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod {pod} never became ready: {last:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Everything written to a file shared with a child process.
fn read_all(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut text).unwrap();
    text
}

/// Where the artifacts start in a bundle: after the header and the manifest.
fn bundle_payload_offset(bundle: &[u8]) -> usize {
    header::manifest(bundle).unwrap().end
}

/// Where the root image starts in a bundle: after the header, the manifest, the kernel and
/// the initrd.
fn bundle_root_offset(bundle: &[u8]) -> usize {
    let start = bundle_payload_offset(bundle);
    let manifest: serde_json::Value =
        serde_json::from_slice(&bundle[header::BYTES..start]).unwrap();
    let boot_files: u64 = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|artifact| artifact["name"] != "root")
        .map(|artifact| artifact["size"].as_u64().unwrap())
        .sum();
    start + boot_files as usize
}

#[test]
fn power_loss_while_writing_leaves_slot_a_and_a_retry_succeeds() {
    let (bundle, next_version) = next_bundle();
    let size = std::fs::metadata(&bundle).unwrap().len();
    // The node fetches the bundle from a server that stops sending at the cut point, so
    // the power goes off at that byte however fast the write runs.
    let cut_at = Arc::new(AtomicU64::new(0));
    let server = {
        let (bundle, cut_at) = (bundle.clone(), cut_at.clone());
        HttpServer::start(move |_| Reply::Stalled {
            path: bundle.clone(),
            bytes: cut_at.load(Ordering::SeqCst),
        })
    };
    let url = format!("http://{GUEST_SERVICE_ADDRESS}:{BUNDLE_PORT}/next.bundle");
    let (mut node, _) = TestNode::boot_with(|options| {
        options.host_services = vec![(BUNDLE_PORT, server.port)];
    })
    .unwrap();
    wait_blessed(&node);
    // Where the payload starts, and three cuts: inside the kernel (a vfat write on the
    // ESP), and midway and near the end of the root image (on ROOT-B).
    let bytes = std::fs::read(&bundle).unwrap();
    let payload_start = bundle_payload_offset(&bytes) as u64;
    let root_start = bundle_root_offset(&bytes) as u64;
    let root_size = size - root_start;
    let cuts = [
        (
            "inside the kernel",
            payload_start + (root_start - payload_start) / 3,
        ),
        ("midway through the root image", root_start + root_size / 2),
        (
            "near the end of the root image",
            root_start + root_size * 9 / 10,
        ),
    ];
    for (place, cut) in cuts {
        cut_at.store(cut, Ordering::SeqCst);
        let output = tempfile::tempfile().unwrap();
        let mut upgrade = node
            .keelctl_command(Role::Operator, &["upgrade", "--url", &url])
            .unwrap()
            .stdout(output.try_clone().unwrap())
            .stderr(output.try_clone().unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            if let Some(exit) = upgrade.try_wait().unwrap() {
                panic!(
                    "keelctl upgrade ended ({exit}) before the cut {place}: {}",
                    read_all(output)
                );
            }
            let status = update_status(&node);
            let progress = &status["progress"];
            let done = progress["done_bytes"].as_u64().unwrap_or(0);
            // Within 512 KiB of the cut: what the network and the client may still hold.
            if progress["phase"] == "receiving" && payload_start + done + (512 << 10) >= cut {
                eprintln!(
                    "power cut {place}: the server stopped at byte {cut} of {size}; the node \
                     had written {done} bytes of the payload"
                );
                break;
            }
            assert!(
                progress["phase"] != "verifying" && progress["phase"] != "activating",
                "the write went past the cut {place}: {status:#}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the write never reached the cut {place} (byte {cut}): {status:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node.vm.kill();
        let _ = upgrade.wait();
        let mark = node.vm.console_mark();
        node.vm.power_on().unwrap();
        node.vm
            .wait_for_console_from(mark, keelson_qemu::READY_PATTERN, BOOT_TIMEOUT)
            .unwrap();
        let status = wait_running_good(&node, "a", Duration::from_secs(120));
        assert_eq!(status["default_slot"], "a", "{status:#}");
        assert_eq!(slot(&status, "b")["state"], "empty", "{status:#}");
        assert!(
            status["last_error"]
                .as_str()
                .unwrap()
                .contains("was interrupted"),
            "after the cut {place}: {status:#}"
        );
    }
    // The retry installs the release and the node boots it.
    let line = expect_success(
        upgrade_and_wait(&node, &bundle),
        "upgrade after the power cuts",
    );
    assert!(
        line.contains(&format!("running {next_version} on slot b, blessed")),
        "{line}"
    );
    node.power_off().unwrap();
}
