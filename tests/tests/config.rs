//! End-to-end: a node configured on first boot by Ignition, cloud-init NoCloud or a native
//! config, and a node that rejects a bad config and applies none of it.
//!
//! What a user would check: the ready line and `Machine.Status` (hostname, addresses,
//! routes, DNS, config source and warnings), the API's refusal in maintenance mode, and the
//! files on STATE, read from the powered-off disk with e2fsprogs. Every config carries the
//! test cluster's API credentials (as files for Ignition and cloud-init).

use std::net::Ipv4Addr;
use std::time::Duration;

use keelson_api::machine::StatusResponse;
use keelson_qemu::{MAINTENANCE_PATTERN, READY_PATTERN};
use keelson_tests::http::{HttpServer, Reply, TlsIdentity};
use keelson_tests::{
    fixture, maintenance_credentials, ExportedState, TestCluster, TestNode, BOOT_TIMEOUT,
};

/// The ready line of a node booted from the image under test, whose version is the
/// workspace's.
fn ready_line(hostname: &str, source: &str) -> String {
    format!(
        "keelson: ready hostname={hostname} slot=a version={} config={source}",
        env!("CARGO_PKG_VERSION")
    )
}

fn has_address(status: &StatusResponse, interface: &str, cidr: &str) -> bool {
    status
        .addresses
        .iter()
        .any(|address| address.interface == interface && address.address == cidr)
}

fn warning_fields(status: &StatusResponse) -> Vec<String> {
    let config = status.config.clone().unwrap_or_default();
    config.warnings.iter().map(|w| w.field.clone()).collect()
}

fn mode_of(stat: &str) -> String {
    // debugfs: "Inode: 12   Type: regular    Mode:  0640   Flags: 0x80000"
    stat.split("Mode:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_owned()
}

fn owner_of(stat: &str) -> String {
    // debugfs: "User:  1000   Group:  1000   Project: …"
    stat.split("User:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn ignition_by_fw_cfg_sets_the_hostname_and_writes_a_file() {
    let (mut node, line) = TestNode::boot_with(|options| {
        options.config = Some(TestCluster::get().ignition_fixture("ignition/e2e.json"));
    })
    .unwrap();
    assert_eq!(line.trim(), ready_line("ignited", "fw_cfg"));
    let status = node.status().unwrap();
    assert_eq!(status.hostname, "ignited");
    let config = status.config.clone().unwrap();
    assert_eq!(config.source, "fw_cfg");
    assert_eq!(config.location, "fw_cfg opt/com.coreos/config");
    assert_eq!(config.format, "ignition");
    assert!(!config.maintenance);
    // The user Ignition asked for is reported, not silently dropped.
    assert_eq!(warning_fields(&status), ["passwd.users[0]"]);
    assert!(node
        .vm
        .console_text()
        .contains("keelson: warning: fw_cfg opt/com.coreos/config: passwd.users[0]:"));
    // With no network section, DHCP on the first interface gave QEMU's first address.
    assert!(
        has_address(&status, "eth0", "10.0.2.15/24"),
        "{:?}",
        status.addresses
    );

    node.power_off().unwrap();
    let state = ExportedState::of(&mut node.vm).unwrap();
    assert_eq!(
        state.read("/lib/ignition-proof").unwrap().as_deref(),
        Some(&b"written by ignition\n"[..])
    );
    let stat = state.stat("/lib/ignition-proof").unwrap().unwrap();
    assert_eq!(mode_of(&stat), "0640", "{stat}");
    // The config in force was saved for later boots.
    let saved = state
        .read("/lib/keelson/config/machine.yaml")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&saved).contains("hostname: ignited"));
}

#[test]
fn a_nocloud_seed_configures_the_node_and_the_saved_copy_outlives_the_seed() {
    let (mut node, line) = TestNode::boot_with(|options| {
        options.config = None;
        options.seed = Some(TestCluster::get().nocloud_fixture("nocloud/static"));
        options.guest_address = Ipv4Addr::new(10, 0, 2, 50);
    })
    .unwrap();
    assert_eq!(line.trim(), ready_line("seeded", "nocloud"));
    let status = node.status().unwrap();
    assert_eq!(status.hostname, "seeded");
    // The static address from network-config, and no DHCP address.
    assert!(
        has_address(&status, "eth0", "10.0.2.50/24"),
        "{:?}",
        status.addresses
    );
    assert!(
        !has_address(&status, "eth0", "10.0.2.15/24"),
        "{:?}",
        status.addresses
    );
    let default_route = status
        .routes
        .iter()
        .find(|route| route.destination == "0.0.0.0/0")
        .unwrap_or_else(|| panic!("no default route in {:?}", status.routes));
    assert_eq!(default_route.gateway, "10.0.2.2");
    assert_eq!(default_route.interface, "eth0");
    assert_eq!(status.dns_servers, ["10.0.2.3"]);
    assert_eq!(status.search_domains, ["example.test"]);
    let config = status.config.clone().unwrap();
    assert_eq!(config.source, "nocloud");
    assert_eq!(config.format, "cloud-config");
    assert_eq!(config.instance_id, "keelson-e2e-1");
    let warnings = warning_fields(&status);
    for key in ["users", "ssh_authorized_keys", "runcmd", "packages"] {
        assert!(
            warnings.iter().any(|w| w == key),
            "no warning for {key}: {warnings:?}"
        );
    }
    assert!(config
        .applied
        .iter()
        .any(|line| line == "file /etc/keelson-test/plain.txt"));

    // Take the seed out and boot again: the copy saved on STATE is used.
    node.power_off().unwrap();
    node.vm.detach_config();
    let mark = node.vm.console_text().len();
    node.vm.power_on().unwrap();
    let line = node
        .vm
        .wait_for_console_from(mark, READY_PATTERN, BOOT_TIMEOUT)
        .unwrap();
    assert_eq!(line.trim(), ready_line("seeded", "saved"));
    let again = node.status().unwrap();
    assert_eq!(again.hostname, "seeded");
    assert!(
        has_address(&again, "eth0", "10.0.2.50/24"),
        "{:?}",
        again.addresses
    );
    assert_eq!(again.config.unwrap().source, "saved");

    node.power_off().unwrap();
    let state = ExportedState::of(&mut node.vm).unwrap();
    assert_eq!(
        state.read("/lib/seeded/b64.txt").unwrap().as_deref(),
        Some(&b"b64 content\n"[..])
    );
    let stat = state.stat("/lib/seeded/b64.txt").unwrap().unwrap();
    assert_eq!(owner_of(&stat), "1000", "{stat}");
    assert_eq!(
        state.read("/lib/seeded/gzip.txt").unwrap().as_deref(),
        Some(&b"gzipped content\n"[..])
    );
}

#[test]
fn a_native_config_by_fw_cfg_is_applied() {
    let (mut node, line) = TestNode::boot_with(|options| {
        options.config = Some(TestCluster::get().native_fixture("native/e2e.yaml"));
    })
    .unwrap();
    assert_eq!(line.trim(), ready_line("native-node", "fw_cfg"));
    let status = node.status().unwrap();
    let config = status.config.clone().unwrap();
    assert_eq!(config.location, "fw_cfg opt/dev.keelson/config");
    assert_eq!(config.format, "native");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert!(config
        .applied
        .iter()
        .any(|line| line == "file /etc/keelson-test/native.txt"));
    // DHCP on QEMU's user network: the lease's address and the lease in the log.
    assert!(
        has_address(&status, "eth0", "10.0.2.15/24"),
        "{:?}",
        status.addresses
    );
    assert!(config
        .applied
        .iter()
        .any(|line| line.starts_with("network eth0: 10.0.2.15/24 from DHCP server 10.0.2.2")));

    node.power_off().unwrap();
    let state = ExportedState::of(&mut node.vm).unwrap();
    let stat = state.stat("/lib/native-dir").unwrap().unwrap();
    assert!(stat.contains("Type: directory"), "{stat}");
    assert_eq!(mode_of(&stat), "0700", "{stat}");
}

/// Boots with a bad config and checks that the node says why and applied none of it.
/// Returns the console.
fn rejected(
    configure: impl FnOnce(&mut keelson_qemu::VmOptions),
    source: &str,
    expected_fields: &[&str],
) -> String {
    let (mut node, line) = TestNode::boot_with(configure).unwrap();
    assert!(line.contains(MAINTENANCE_PATTERN), "{line}");
    assert!(line.contains("reason=invalid-config"), "{line}");
    // Every error is printed with its source and field, then how to reach the API.
    node.vm
        .wait_for_console("keelson: maintenance api ", Duration::from_secs(60))
        .unwrap();
    let console = node.vm.console_text();
    for field in expected_fields {
        let printed = format!("keelson: error: {source}: {field}: ");
        assert!(
            console.contains(&printed),
            "{printed:?} not on the console:\n{console}"
        );
    }
    assert!(
        !console.contains(READY_PATTERN),
        "a rejected config must not report ready"
    );

    // The API is up (reached over the DHCP address) but takes only apply-config, and its
    // refusal says why, with every field.
    let (fingerprint, token) = maintenance_credentials(&console)
        .unwrap_or_else(|| panic!("no maintenance credentials on the console:\n{console}"));
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    assert_eq!(token.len(), 24, "{token}");
    let refusal = node
        .machine_in_maintenance(&fingerprint, |mut client| async move {
            client.status(keelson_api::machine::StatusRequest {}).await
        })
        .map(|_| ())
        .map_err(|error| format!("{error:#}"))
        .unwrap_err();
    assert!(refusal.contains("PermissionDenied"), "{refusal}");
    assert!(refusal.contains("only apply-config"), "{refusal}");
    for field in expected_fields {
        assert!(
            refusal.contains(&format!("{source}: {field}: ")),
            "{refusal}"
        );
    }

    node.power_off().unwrap();
    let state = ExportedState::of(&mut node.vm).unwrap();
    assert_eq!(
        state.stat("/lib/must-not-exist").unwrap(),
        None,
        "a file was written"
    );
    assert_eq!(
        state.stat("/lib/keelson/config/machine.yaml").unwrap(),
        None,
        "a rejected config was saved"
    );
    console
}

/// A config too large for its source is refused before it is read: the node says which
/// source, how large it is and the limit, and waits in maintenance mode. (A 12 MiB
/// Ignition config by fw_cfg once kept a node silent for minutes.)
#[test]
fn an_oversized_config_is_refused_before_it_is_read() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("big.ign.json");
    let inline = "x".repeat(2 << 20);
    let config = serde_json::json!({
        "ignition": { "version": "3.4.0" },
        "storage": { "files": [
            { "path": "/etc/big", "contents": { "source": format!("data:,{inline}") } }
        ] }
    });
    std::fs::write(&path, config.to_string()).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let console = rejected(
        move |options| options.config = Some(path),
        "fw_cfg opt/com.coreos/config",
        &["$"],
    );
    let expected =
        format!("keelson: error: fw_cfg opt/com.coreos/config: $: it holds {size} bytes");
    assert!(
        console.contains(&expected),
        "{expected:?} not on the console:\n{console}"
    );
    assert!(
        console.contains("over the limit of 1048576 bytes (1.0 MiB)"),
        "{console}"
    );
}

#[test]
fn an_invalid_ignition_config_enters_maintenance_mode() {
    rejected(
        |options| options.config = Some(fixture("invalid/outside-tree.ign.json")),
        "fw_cfg opt/com.coreos/config",
        &["storage.files[1].path"],
    );
}

#[test]
fn an_invalid_native_config_enters_maintenance_mode() {
    rejected(
        |options| options.config = Some(fixture("invalid/native.yaml")),
        "fw_cfg opt/dev.keelson/config",
        &["network.interfaces[0].addresses[0]", "files[0].mode"],
    );
}

#[test]
fn an_invalid_cloud_config_seed_enters_maintenance_mode() {
    let seed = tempfile::tempdir().unwrap();
    std::fs::write(seed.path().join("meta-data"), "instance-id: bad-1\n").unwrap();
    std::fs::copy(
        fixture("invalid/cloud-config.yaml"),
        seed.path().join("user-data"),
    )
    .unwrap();
    let path = seed.path().to_owned();
    rejected(
        move |options| {
            options.config = None;
            options.seed = Some(path);
        },
        "nocloud user-data",
        &["write_files[1].content"],
    );
}

/// The pointer config that clouds with small user-data limits and provisioning servers
/// (Matchbox) hand out. The fw_cfg config only names a replacement on an HTTPS server whose
/// private CA it carries inline, with the replacement's hash; the replacement merges a
/// second config served over plain HTTP, whose file is fetched over HTTPS with the same CA.
#[test]
fn an_ignition_pointer_config_is_replaced_over_https_and_merged() {
    const HTTPS_PORT: u16 = 8443;
    const HTTP_PORT: u16 = 8080;
    let guest = std::net::IpAddr::V4(keelson_qemu::GUEST_SERVICE_ADDRESS);
    let identity = TlsIdentity::new(&[guest]);
    let ca_inline = serde_json::json!([{ "source": data_url(identity.ca_pem.as_bytes()) }]);
    let proof = b"fetched over https\n".to_vec();
    let extra = serde_json::json!({
        "ignition": { "version": "3.0.0" },
        "storage": { "files": [{
            "path": "/var/lib/pointer-proof",
            "contents": {
                "source": format!("https://{guest}:{HTTPS_PORT}/proof"),
                "verification": { "hash": sha512(&proof) },
            },
        }] },
    });
    let mut files = vec![serde_json::json!({
        "path": "/etc/hostname", "contents": { "source": "data:,pointed" }
    })];
    files.extend(keelson_ctl::generate::ignition_api_files(
        &TestCluster::get().api,
    ));
    let replacement = serde_json::json!({
        "ignition": {
            "version": "3.4.0",
            "config": { "merge": [{ "source": format!("http://{guest}:{HTTP_PORT}/extra.ign") }] },
            "security": { "tls": { "certificateAuthorities": ca_inline } },
        },
        "storage": { "files": files },
    })
    .to_string()
    .into_bytes();
    let pointer = serde_json::json!({
        "ignition": {
            "version": "3.4.0",
            "config": { "replace": {
                "source": format!("https://{guest}:{HTTPS_PORT}/node.ign"),
                "verification": { "hash": sha512(&replacement) },
            } },
            "security": { "tls": { "certificateAuthorities": ca_inline } },
        },
    });
    let served = [("/node.ign", replacement), ("/proof", proof.clone())];
    let secure = HttpServer::start_tls(&identity, move |request| {
        match served.iter().find(|(path, _)| *path == request.path) {
            Some((_, body)) => Reply::Bytes(200, body.clone()),
            None => Reply::Bytes(404, b"not found".to_vec()),
        }
    });
    let plain = HttpServer::start(move |request| match request.path.as_str() {
        "/extra.ign" => Reply::Bytes(200, extra.to_string().into_bytes()),
        _ => Reply::Bytes(404, b"not found".to_vec()),
    });
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("pointer.ign");
    std::fs::write(&path, pointer.to_string()).unwrap();

    let (mut node, line) = TestNode::boot_with(|options| {
        options.config = Some(path);
        options.host_services = vec![(HTTPS_PORT, secure.port), (HTTP_PORT, plain.port)];
    })
    .unwrap();
    assert_eq!(line.trim(), ready_line("pointed", "fw_cfg"));
    let status = node.status().unwrap();
    let config = status.config.clone().unwrap();
    assert_eq!(config.format, "ignition");
    assert!(!config.maintenance);
    assert_eq!(warning_fields(&status), Vec::<String>::new());

    node.power_off().unwrap();
    let state = ExportedState::of(&mut node.vm).unwrap();
    assert_eq!(
        state.read("/lib/pointer-proof").unwrap().as_deref(),
        Some(&proof[..])
    );
    // The saved config is self-contained: the next boot fetches nothing.
    let saved = state
        .read("/lib/keelson/config/machine.yaml")
        .unwrap()
        .unwrap();
    let saved = String::from_utf8_lossy(&saved);
    assert!(saved.contains("hostname: pointed"), "{saved}");
    assert!(saved.contains("certificateAuthorities:"), "{saved}");
    assert!(!saved.contains(&format!(":{HTTPS_PORT}/")), "{saved}");
}

/// A replacement whose hash does not match is not applied: the node names the field and
/// both digests and waits in maintenance mode, with nothing of the pointer config applied.
#[test]
fn an_ignition_replacement_that_fails_its_hash_enters_maintenance_mode() {
    const HTTP_PORT: u16 = 8080;
    let guest = keelson_qemu::GUEST_SERVICE_ADDRESS;
    let replacement = br#"{"ignition":{"version":"3.4.0"}}"#.to_vec();
    let wrong = sha512(b"another document");
    let server = HttpServer::start(move |request| match request.path.as_str() {
        "/node.ign" => Reply::Bytes(200, replacement.clone()),
        _ => Reply::Bytes(404, b"not found".to_vec()),
    });
    let pointer = serde_json::json!({
        "ignition": { "version": "3.4.0", "config": { "replace": {
            "source": format!("http://{guest}:{HTTP_PORT}/node.ign"),
            "verification": { "hash": wrong },
        } } },
        "storage": { "files": [
            { "path": "/var/lib/must-not-exist", "contents": { "source": "data:,no" } }
        ] },
    });
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("pointer.ign");
    std::fs::write(&path, pointer.to_string()).unwrap();
    let port = server.port;
    let console = rejected(
        move |options| {
            options.config = Some(path);
            options.host_services = vec![(HTTP_PORT, port)];
        },
        "fw_cfg opt/com.coreos/config",
        &["ignition.config.replace"],
    );
    let expected = format!(
        "ignition.config.replace: http://{guest}:{HTTP_PORT}/node.ign: digest mismatch: \
         expected {}, got ",
        wrong.trim_start_matches("sha512-")
    );
    assert!(
        console.contains(&expected),
        "{expected:?} not on the console:\n{console}"
    );
}

fn sha512(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha512-{hex}")
}

fn data_url(bytes: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}
