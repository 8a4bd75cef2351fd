//! End-to-end: the operator's path through a node's life with `keelctl`, against the real
//! image in QEMU: a node with no config waits in maintenance mode; `apply-config` with the
//! console's token makes it ready; status, services, logs, dmesg and files answer; a
//! reader may not reboot; `reboot --wait` follows it down and up on the same slot; `reset`
//! wipes STATE and returns it to maintenance mode.

use std::time::Duration;

use keelson_api::roles::Role;
use keelson_qemu::READY_PATTERN;
use keelson_tests::{
    expect_failure, expect_success, maintenance_credentials, ExportedState, TestCluster, TestNode,
    BOOT_TIMEOUT,
};

#[test]
fn a_node_goes_from_maintenance_to_ready_reboots_and_resets() {
    let cluster = TestCluster::get();
    let (mut node, line) = TestNode::boot_with(|options| options.config = None).unwrap();
    assert!(
        line.contains("keelson: maintenance reason=no-config"),
        "{line}"
    );
    node.vm
        .wait_for_console("keelson: maintenance api ", Duration::from_secs(60))
        .unwrap();
    let (fingerprint, token) = maintenance_credentials(&node.vm.console_text()).unwrap();

    // The config to send: the cluster's, with a hostname.
    let mut config = std::fs::read_to_string(&cluster.node_config).unwrap();
    config.push_str("hostname: applied-node\n");
    let config_path = cluster.dir.join("derived-applied.yaml");
    std::fs::create_dir_all(&cluster.dir).unwrap();
    std::fs::write(&config_path, &config).unwrap();
    let config_arg = config_path.to_str().unwrap();

    // Without the token, or with a wrong one, nothing happens; nor does anything else work.
    let wrong = expect_failure(
        node.keelctl(
            Role::Admin,
            &[
                "apply-config",
                "--insecure",
                "--token",
                "00000000",
                "-f",
                config_arg,
            ],
        )
        .unwrap(),
        "apply-config with a wrong token",
    );
    assert!(wrong.contains("wrong token"), "{wrong}");
    let refused = expect_failure(node.keelctl(Role::Admin, &["status"]).unwrap(), "status");
    // The maintenance certificate is self-signed, so the cluster's keelctl cannot verify
    // it: the connection fails, and keelctl says why and what to do instead.
    assert!(refused.contains("cannot connect: "), "{refused}");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(
        refused.contains("a node in maintenance mode serves a self-signed one (keelctl apply-config --insecure --token …)"),
        "{refused}"
    );

    // With the console's token and fingerprint, the config goes in live.
    let mark = node.vm.console_mark();
    let applied = expect_success(
        node.keelctl(
            Role::Admin,
            &[
                "apply-config",
                "--insecure",
                "--token",
                &token,
                "--fingerprint",
                &fingerprint,
                "-f",
                config_arg,
            ],
        )
        .unwrap(),
        "apply-config in maintenance mode",
    );
    assert!(applied.contains("hostname applied-node"), "{applied}");
    let ready = node
        .vm
        .wait_for_console_from(mark, READY_PATTERN, Duration::from_secs(60))
        .unwrap();
    assert!(ready.contains("hostname=applied-node"), "{ready}");
    assert!(ready.contains("config=api"), "{ready}");

    // Reading: status (table and JSON), services, version, logs, dmesg, files.
    let status = expect_success(node.keelctl(Role::Reader, &["status"]).unwrap(), "status");
    assert!(status.contains("HOSTNAME  applied-node"), "{status}");
    let json = expect_success(
        node.keelctl(Role::Reader, &["status", "-o", "json"])
            .unwrap(),
        "status -o json",
    );
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed[0]["hostname"], "applied-node", "{json}");
    assert_eq!(parsed[0]["slot"], "a", "{json}");
    assert_eq!(parsed[0]["config"]["source"], "api", "{json}");
    let services = expect_success(
        node.keelctl(Role::Reader, &["services"]).unwrap(),
        "services",
    );
    assert!(services.contains("mutual TLS"), "{services}");
    let version = expect_success(node.keelctl(Role::Reader, &["version"]).unwrap(), "version");
    assert!(version.contains("Client: keelctl"), "{version}");
    let logs = expect_success(node.keelctl(Role::Reader, &["logs"]).unwrap(), "logs");
    assert!(
        logs.contains("config applied by maintenance client"),
        "{logs}"
    );
    assert!(
        logs.contains("keelson: ready hostname=applied-node"),
        "{logs}"
    );
    // The config names a cluster (keelctl gen config writes one, without seeds): leaving
    // maintenance mode, the node starts gossiping and lists itself, alive, with what it
    // tells the others.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let members = loop {
        let (ok, text, errors) = node
            .keelctl(Role::Reader, &["cluster", "members", "-o", "json"])
            .unwrap();
        if ok {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cluster members kept failing: {errors}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let parsed: serde_json::Value = serde_json::from_str(&members).unwrap();
    let listed = parsed[0]["members"].as_array().expect("a members list");
    assert_eq!(listed.len(), 1, "{members}");
    let me = &listed[0];
    assert_eq!(me["name"], "applied-node", "{members}");
    assert_eq!(me["state"], "alive", "{members}");
    assert_eq!(me["slot"], "a", "{members}");
    assert_eq!(me["role"], "auto", "{members}");
    assert_eq!(me["local"], true, "{members}");
    assert!(
        me["address"].as_str().unwrap().ends_with(":7946"),
        "{members}"
    );
    assert_eq!(me["version"], status_version(&json), "{members}");
    let table = expect_success(
        node.keelctl(Role::Reader, &["cluster", "members"]).unwrap(),
        "cluster members",
    );
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("applied-node"), "{table}");
    let init_logs = expect_success(
        node.keelctl(Role::Reader, &["logs", "init"]).unwrap(),
        "logs init",
    );
    assert!(init_logs.contains("keelson-init: "), "{init_logs}");
    let dmesg = expect_success(node.keelctl(Role::Reader, &["dmesg"]).unwrap(), "dmesg");
    assert!(
        dmesg.contains("Linux version"),
        "{}",
        &dmesg[..dmesg.len().min(2000)]
    );
    let hostname = expect_success(
        node.keelctl(Role::Reader, &["read", "/etc/hostname"])
            .unwrap(),
        "read",
    );
    assert_eq!(hostname, "applied-node\n");
    let listing = expect_success(
        node.keelctl(Role::Reader, &["ls", "/var/lib"]).unwrap(),
        "ls",
    );
    assert!(
        !listing.contains("/var/lib/keelson"),
        "the agent's state is hidden: {listing}"
    );

    // Alone, the node forms a control plane of one once the formation wait has passed
    // (three voters are wanted and it sees only itself), and leads it.
    let formed = wait_for_leader(&node, Duration::from_secs(150));
    assert_eq!(formed["leader"], "applied-node", "{formed}");
    assert_eq!(
        formed["voters"],
        serde_json::json!(["applied-node"]),
        "{formed}"
    );
    assert_eq!(formed["learners"], serde_json::json!([]), "{formed}");
    assert_eq!(formed["answeredBy"], "applied-node", "{formed}");
    let term = formed["term"].as_u64().unwrap();
    let applied = formed["appliedIndex"].as_u64().unwrap();
    assert!(term >= 1, "{formed}");
    assert!(applied >= 1, "the membership entry is applied: {formed}");
    assert!(
        formed["commitIndex"].as_u64().unwrap() >= applied,
        "{formed}"
    );
    let table = expect_success(
        node.keelctl(Role::Reader, &["cluster", "status"]).unwrap(),
        "cluster status",
    );
    assert!(table.starts_with("NODE "), "{table}");
    // The node registers its v1/Node through the leader (itself) and is leased the first
    // block of the cluster's pod network.
    let registered = wait_for_node_object(&node);
    assert_eq!(
        registered["spec"]["podCIDR"], "10.244.0.0/24",
        "{registered}"
    );
    assert_eq!(
        registered["metadata"]["labels"]["keelson.dev/slot"], "a",
        "{registered}"
    );
    assert_eq!(
        registered["status"]["nodeInfo"]["osImage"],
        format!("Keelson {}", status_version(&json)),
        "{registered}"
    );
    assert_eq!(
        registered["status"]["addresses"][0]["address"], "10.0.2.15",
        "{registered}"
    );
    let uid = registered["metadata"]["uid"].as_str().unwrap().to_owned();
    let nodes_table = expect_success(
        node.keelctl(Role::Reader, &["get", "nodes", "-o", "wide"])
            .unwrap(),
        "get nodes -o wide",
    );
    assert!(nodes_table.starts_with("NAME "), "{nodes_table}");
    let row = nodes_table.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("applied-node ") && row.contains(" Ready "),
        "{nodes_table}"
    );
    assert!(row.contains("10.244.0.0/24"), "{nodes_table}");

    // The agent restarts on request; PID 1 counts a second start.
    let restarted = expect_success(
        node.keelctl(Role::Operator, &["services", "restart", "keelsond"])
            .unwrap(),
        "services restart keelsond",
    );
    assert!(restarted.contains(": keelsond (pid "), "{restarted}");
    let refused = expect_failure(
        node.keelctl(Role::Operator, &["services", "restart", "init"])
            .unwrap(),
        "services restart init",
    );
    assert!(refused.contains("only keelsond can"), "{refused}");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let listed = node
            .keelctl(Role::Reader, &["-o", "json", "services"])
            .unwrap();
        let starts = serde_json::from_str::<serde_json::Value>(&listed.1)
            .ok()
            .and_then(|value| {
                value[0]["services"]
                    .as_array()?
                    .iter()
                    .find(|service| service["name"] == "keelsond")
                    .and_then(|service| service["starts"].as_u64())
            });
        if starts == Some(2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keelsond was not restarted: {listed:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // A reader may not reboot; an operator may, and --wait sees it back on slot a.
    let denied = expect_failure(
        node.keelctl(Role::Reader, &["reboot"]).unwrap(),
        "reboot as reader",
    );
    assert!(denied.contains("Reboot needs role operator"), "{denied}");
    let rebooted = expect_success(
        node.keelctl(Role::Operator, &["reboot", "--wait", "--timeout", "400"])
            .unwrap(),
        "reboot --wait",
    );
    assert!(rebooted.contains("on slot a"), "{rebooted}");
    let after = node.status().unwrap();
    assert_eq!(after.hostname, "applied-node");
    assert_eq!(after.boots.len(), 2);
    assert_eq!(after.config.unwrap().source, "saved");
    // The cluster is on STATE: after the reboot the node leads it again at once, with its
    // log (no second formation, which would start again at index 1 in a new term 1).
    // (A formation anew would have made a new object with a new uid.)
    let again = wait_for_leader(&node, Duration::from_secs(90));
    assert_eq!(
        again["voters"],
        serde_json::json!(["applied-node"]),
        "{again}"
    );
    assert!(again["term"].as_u64().unwrap() >= term, "{again}");
    let kept = wait_for_node_object(&node);
    assert_eq!(
        kept["metadata"]["uid"],
        uid.as_str(),
        "the same object: {kept}"
    );
    assert_eq!(
        kept["spec"]["podCIDR"], "10.244.0.0/24",
        "the same lease: {kept}"
    );

    // Reset wipes STATE and the node is back in maintenance mode.
    let mark = node.vm.console_mark();
    expect_success(
        node.keelctl(Role::Admin, &["reset", "--yes"]).unwrap(),
        "reset",
    );
    node.vm
        .wait_for_console_from(mark, "keelson: maintenance reason=no-config", BOOT_TIMEOUT)
        .unwrap();
    node.power_off().unwrap();
    let state = ExportedState::of(&mut node.vm).unwrap();
    assert_eq!(
        state.stat("/lib/keelson/config/machine.yaml").unwrap(),
        None
    );
    let boots = state.read("/lib/keelson/boots.jsonl").unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&boots).lines().count(),
        1,
        "only the boot after the reset is recorded"
    );
}

/// The OS version in `keelctl status -o json`'s answer.
/// `cluster status -o json`'s answer once it names a leader.
fn wait_for_leader(node: &TestNode, timeout: Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (ok, text, errors) = node
            .keelctl(Role::Reader, &["cluster", "status", "-o", "json"])
            .unwrap();
        if ok {
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            return parsed[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader within {} s: {errors}{text}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The node's own object from `get nodes -o json`, once it has registered.
fn wait_for_node_object(node: &TestNode) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, text, errors) = node
            .keelctl(Role::Reader, &["get", "nodes", "-o", "json"])
            .unwrap();
        if ok {
            let list: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(list["kind"], "List", "{text}");
            let items = list["items"].as_array().unwrap();
            if let Some(found) = items
                .iter()
                .find(|item| item["metadata"]["name"] == "applied-node")
            {
                if found["spec"]["podCIDR"].is_string() {
                    return found.clone();
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never registered: {errors}{text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn status_version(status_json: &str) -> String {
    let parsed: serde_json::Value = serde_json::from_str(status_json).unwrap();
    parsed[0]["os_version"]
        .as_str()
        .unwrap_or_else(|| panic!("no os_version in {status_json}"))
        .to_string()
}
