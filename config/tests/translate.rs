//! Translation of each format, read from the fixtures in `tests/data/`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use keelson_config::plan::{Contents, FilePlan};
use keelson_config::{load, load_nocloud, Diagnostic, Format, Loaded, NoCloudSeed, Severity};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn file<'a>(loaded: &'a Loaded, path: &str) -> &'a FilePlan {
    loaded
        .plan
        .files
        .iter()
        .find(|file| file.path == Path::new(path))
        .unwrap_or_else(|| panic!("{path} is not in the plan: {:#?}", loaded.plan.files))
}

fn inline(file: &FilePlan) -> &[u8] {
    match &file.contents {
        Contents::Inline(bytes) => bytes,
        other => panic!("expected inline contents, got {other:?}"),
    }
}

fn warning_fields(warnings: &[Diagnostic]) -> Vec<&str> {
    warnings
        .iter()
        .filter(|warning| warning.severity == Severity::Warning)
        .map(|warning| warning.field.as_str())
        .collect()
}

#[test]
fn ignition_3_4_files_directories_links_and_warnings() {
    let loaded = load("fw_cfg", &fixture("ignition/full-3.4.json")).expect("valid");
    assert_eq!(loaded.format, Format::Ignition);
    assert_eq!(loaded.plan.hostname.as_deref(), Some("ign-node"));

    let motd = file(&loaded, "/etc/motd");
    assert_eq!(inline(motd), b"Configured by Ignition.\n");
    assert_eq!(motd.mode, 0o644);

    let settings = file(&loaded, "/var/lib/app/settings.conf");
    assert_eq!(inline(settings), b"compressed=yes\n");
    assert_eq!(
        (settings.mode, settings.owner, settings.group),
        (0o600, 1000, 1000)
    );

    let log = file(&loaded, "/var/log/app.log");
    assert!(log.append);
    assert_eq!(inline(log), b"first line\n");

    assert_eq!(
        loaded.plan.directories[0].path,
        PathBuf::from("/var/lib/app/cache")
    );
    assert_eq!(loaded.plan.directories[0].mode, 0o700);
    assert_eq!(
        loaded.plan.links[0].target,
        PathBuf::from("/var/lib/app/settings.conf")
    );

    let warnings = warning_fields(&loaded.warnings);
    assert_eq!(
        warnings,
        ["storage.disks", "passwd.users[0]", "systemd.units[0]"],
        "{:#?}",
        loaded.warnings
    );
    let user_warning = &loaded.warnings[1];
    assert!(user_warning.reason.contains("no SSH"), "{user_warning}");
    assert!(user_warning.reason.contains("API"), "{user_warning}");
}

#[test]
fn ignition_3_0_is_read_too() {
    let loaded = load("fw_cfg", &fixture("ignition/minimal-3.0.json")).expect("valid");
    assert_eq!(loaded.plan.hostname.as_deref(), Some("old-spec"));
    assert_eq!(inline(file(&loaded, "/var/lib/note")), b"three-oh");
}

#[test]
fn ignition_http_sources_are_fetched_later_with_their_hash() {
    let text = r#"{"ignition": {"version": "3.2.0"}, "storage": {"files": [{"path": "/var/lib/x",
        "contents": {"source": "http://10.0.2.2:8080/x", "verification": {"hash":
        "sha256-2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}}}]}}"#;
    let loaded = load("test", text.as_bytes()).expect("valid");
    match &loaded.plan.files[0].contents {
        Contents::Fetch { url, hash, gzip } => {
            assert_eq!(url, "http://10.0.2.2:8080/x");
            assert!(hash.as_ref().unwrap().verify(b"hello").is_ok());
            assert!(!gzip);
        }
        other => panic!("expected a fetch, got {other:?}"),
    }
}

#[test]
fn ignition_errors_name_the_ignition_field() {
    let rejected = load(
        "fw_cfg opt/com.coreos/config",
        &fixture("invalid/outside-tree.ign.json"),
    )
    .expect_err("a file outside /etc and /var must be rejected");
    let errors: Vec<&Diagnostic> = rejected.errors().collect();
    assert_eq!(errors.len(), 1, "{rejected}");
    assert_eq!(errors[0].source, "fw_cfg opt/com.coreos/config");
    assert_eq!(errors[0].field, "storage.files[1].path");
    assert!(
        errors[0].reason.contains("outside /etc and /var"),
        "{}",
        errors[0]
    );

    let rejected = load("fw_cfg", &fixture("invalid/spec2.ign.json")).unwrap_err();
    let error = rejected.errors().next().unwrap();
    assert_eq!(error.field, "ignition.version");
    assert!(error.reason.contains("2.3.0 is not supported"), "{error}");

    let rejected = load(
        "fw_cfg",
        br#"{"ignition": {"version": "3.4.0"}, "storage": {"files": [{"mode": 420}]}}"#,
    )
    .unwrap_err();
    let error = rejected.errors().next().unwrap();
    assert_eq!(error.field, "storage.files[0]", "{error}");
    assert!(error.reason.contains("path"), "{error}");

    let rejected = load(
        "fw_cfg",
        br#"{"ignition": {"version": "3.4.0"}, "storage": {"files": [{"path": "/var/x", "mode": 99999}]}}"#,
    )
    .unwrap_err();
    assert_eq!(
        rejected.errors().next().unwrap().field,
        "storage.files[0].mode"
    );
}

#[test]
fn nocloud_seed_with_cloud_config_and_static_network() {
    let (meta, user, network) = (
        fixture("nocloud/static/meta-data"),
        fixture("nocloud/static/user-data"),
        fixture("nocloud/static/network-config"),
    );
    let (loaded, meta) = load_nocloud(&NoCloudSeed {
        meta_data: Some(&meta),
        user_data: Some(&user),
        network_config: Some(&network),
    })
    .expect("valid");
    assert_eq!(meta.instance_id.as_deref(), Some("keelson-e2e-1"));
    assert_eq!(loaded.format, Format::CloudConfig);
    // `hostname` wins over `fqdn`'s first label and over meta-data's local-hostname.
    assert_eq!(loaded.plan.hostname.as_deref(), Some("seeded"));

    let plain = file(&loaded, "/etc/keelson-test/plain.txt");
    assert_eq!(inline(plain), b"written from cloud-config\n");
    assert_eq!(plain.mode, 0o640);
    let b64 = file(&loaded, "/var/lib/seeded/b64.txt");
    assert_eq!(inline(b64), b"b64 content\n");
    assert_eq!((b64.owner, b64.group), (1000, 1000));
    assert_eq!(
        inline(file(&loaded, "/var/lib/seeded/gzip.txt")),
        b"gzipped content\n"
    );
    let hosts = String::from_utf8(inline(file(&loaded, "/etc/hosts")).to_vec()).unwrap();
    assert!(
        hosts.contains("127.0.1.1 seeded.example.test seeded"),
        "{hosts}"
    );

    let interface = &loaded.plan.network.interfaces[0];
    assert_eq!(interface.matcher.name.as_deref(), Some("e*"));
    assert!(!interface.dhcp);
    assert_eq!(interface.addresses[0].to_string(), "10.0.2.50/24");
    assert_eq!(interface.routes[0].destination.to_string(), "0.0.0.0/0");
    assert_eq!(
        interface.routes[0].via,
        Some("10.0.2.2".parse::<IpAddr>().unwrap())
    );
    assert_eq!(interface.mtu, Some(1400));
    assert_eq!(
        loaded.plan.network.nameservers,
        ["10.0.2.3".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(loaded.plan.network.search_domains, ["example.test"]);

    assert_eq!(
        warning_fields(&loaded.warnings),
        [
            "users",
            "ssh_authorized_keys",
            "runcmd",
            "packages",
            "ntp.servers"
        ],
        "{:#?}",
        loaded.warnings
    );
}

#[test]
fn nocloud_without_user_data_uses_local_hostname() {
    let (loaded, _) = load_nocloud(&NoCloudSeed {
        meta_data: Some(b"instance-id: i-9\nlocal-hostname: meta-host\n"),
        user_data: None,
        network_config: None,
    })
    .expect("valid");
    assert_eq!(loaded.plan.hostname.as_deref(), Some("meta-host"));
}

#[test]
fn network_config_errors_name_their_document() {
    let rejected = load_nocloud(&NoCloudSeed {
        meta_data: Some(b"instance-id: i-1\n"),
        user_data: Some(b"#cloud-config\nhostname: ok\n"),
        network_config: Some(b"version: 2\nethernets:\n  eth0:\n    addresses: [10.0.0.1]\n"),
    })
    .unwrap_err();
    let error = rejected.errors().next().unwrap();
    assert_eq!(error.source, "nocloud network-config");
    assert_eq!(error.field, "ethernets.eth0.addresses[0]");
    assert!(error.reason.contains("prefix length"), "{error}");

    let rejected = load_nocloud(&NoCloudSeed {
        network_config: Some(b"network:\n  version: 1\n  config: []\n"),
        ..NoCloudSeed::default()
    })
    .unwrap_err();
    assert_eq!(rejected.errors().next().unwrap().field, "network.version");
}

#[test]
fn cloud_config_errors_name_the_key() {
    let rejected = load("nocloud user-data", &fixture("invalid/cloud-config.yaml")).unwrap_err();
    let fields: Vec<&str> = rejected.errors().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["write_files[1].content"], "{rejected}");
    let rejected = load("ud", b"#cloud-config\nwrite_files:\n  - content: x\n").unwrap_err();
    let error = rejected.errors().next().unwrap();
    assert_eq!(error.field, "write_files[0]");
    assert!(error.reason.contains("missing field `path`"), "{error}");
    let rejected = load("ud", b"#cloud-config\nhostname: [a]\n").unwrap_err();
    assert_eq!(rejected.errors().next().unwrap().field, "hostname");
    let rejected = load(
        "ud",
        b"#cloud-config\nwrite_files:\n - path: /var/x\n   owner: core\n",
    )
    .unwrap_err();
    assert_eq!(
        rejected.errors().next().unwrap().field,
        "write_files[0].owner"
    );
}

#[test]
fn native_config_with_every_section() {
    let loaded = load(
        "fw_cfg opt/dev.keelson/config",
        &fixture("native/full.yaml"),
    )
    .expect("valid");
    assert_eq!(loaded.format, Format::Native);
    assert_eq!(loaded.plan.hostname.as_deref(), Some("worker-1"));
    let interfaces = &loaded.plan.network.interfaces;
    assert!(interfaces[0].dhcp);
    assert_eq!(
        interfaces[1].matcher.mac,
        Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
    );
    assert_eq!(interfaces[1].addresses.len(), 2);
    assert_eq!(interfaces[1].routes[1].metric, Some(50));
    let token = file(&loaded, "/var/lib/app/token");
    assert_eq!(inline(token), b"secret\n");
    assert_eq!(token.mode, 0o600);
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
}

#[test]
fn native_errors_are_all_reported_at_once() {
    let rejected = load(
        "fw_cfg opt/dev.keelson/config",
        &fixture("invalid/native.yaml"),
    )
    .unwrap_err();
    let fields: Vec<&str> = rejected.errors().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["network.interfaces[0].addresses[0]", "files[0].mode"],
        "{rejected}"
    );
    assert!(rejected
        .to_string()
        .contains("error: fw_cfg opt/dev.keelson/config: files[0].mode:"));
}

#[test]
fn native_rejects_other_versions_and_short_secrets() {
    let text =
        "apiVersion: keelson.dev/v2\nkind: MachineConfig\ncluster: {name: lab, secret: short}\n";
    let rejected = load("test", text.as_bytes()).unwrap_err();
    let fields: Vec<&str> = rejected.errors().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["apiVersion", "cluster.secret"]);
}

#[test]
fn cluster_control_plane_settings_are_read_and_checked() {
    let base = "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\n";
    let secret = "0123456789abcdef0123456789abcdef";
    let accepted = load(
        "test",
        format!(
            "{base}cluster:\n  name: lab\n  secret: {secret}\n  controlPlanes: 5\n  \
             replaceDeadVoterSeconds: 60\n  podCIDR: 10.96.0.0/12\n  nodeCIDRMaskSize: 26\n  \
             rebootLock: {{slots: 2, groups: {{workers: 3}}}}\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let cluster = accepted.config.cluster.unwrap();
    assert_eq!(cluster.control_planes(), 5);
    assert_eq!(cluster.replace_dead_voter_after().as_secs(), 60);
    assert_eq!(cluster.pod_cidr(), "10.96.0.0/12");
    assert_eq!(cluster.node_cidr_mask_size(), 26);
    assert_eq!(cluster.reboot_slots("workers"), 3);
    assert_eq!(cluster.reboot_slots("default"), 2);

    let defaults = keelson_config::model::Cluster::new("lab", secret);
    assert_eq!(defaults.control_planes(), 3);
    assert_eq!(defaults.replace_dead_voter_after().as_secs(), 300);
    assert_eq!(defaults.pod_cidr(), "10.244.0.0/16");
    assert_eq!(defaults.node_cidr_mask_size(), 24);
    assert_eq!(defaults.reboot_slots("default"), 1);

    let rejected = load(
        "test",
        format!(
            "{base}cluster:\n  name: lab\n  secret: {secret}\n  controlPlanes: 2\n  \
             replaceDeadVoterSeconds: 5\n  podCIDR: 10.244.1.0/16\n  \
             rebootLock: {{slots: 0, groups: {{db: 0}}}}\n"
        )
        .as_bytes(),
    )
    .unwrap_err();
    let fields: Vec<&str> = rejected.errors().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "cluster.controlPlanes",
            "cluster.replaceDeadVoterSeconds",
            "cluster.podCIDR",
            "cluster.rebootLock.slots",
            "cluster.rebootLock.groups.db"
        ]
    );
    let text = rejected.to_string();
    assert!(text.contains("2 voters is not 1, 3 or 5"), "{text}");
    assert!(text.contains("did you mean 10.244.0.0/16?"), "{text}");

    let too_wide = load(
        "test",
        format!(
            "{base}cluster:\n  name: lab\n  secret: {secret}\n  podCIDR: 10.244.0.0/20\n  \
             nodeCIDRMaskSize: 18\n"
        )
        .as_bytes(),
    )
    .unwrap_err();
    let text = too_wide.to_string();
    assert!(
        text.contains("cluster.nodeCIDRMaskSize")
            && text.contains("wider than the cluster's 10.244.0.0/20"),
        "{text}"
    );
}

#[test]
fn the_committed_schema_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/machineconfig.v1alpha1.json");
    let generated = keelson_config::json_schema();
    if std::env::var_os("KEELSON_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date; regenerate it with KEELSON_UPDATE_SCHEMA=1 cargo test -p keelson-config",
        path.display()
    );
}

#[test]
fn update_policies_are_checked_whole() {
    let base = "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\n";
    let accepted = load(
        "test",
        format!(
            "{base}update:\n  strategy: auto\n  channel: http://updates.lab/stable/\n  window: {{days: [sat, sun], start: \"02:30\", lengthMinutes: 120}}\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let update = accepted.config.update.clone().unwrap();
    assert_eq!(
        update.effective_reboot_policy(),
        keelson_config::model::RebootPolicy::Window
    );
    assert_eq!(
        update.window.unwrap().to_window().unwrap().describe(),
        "sat,sun 02:30 UTC for 120 min"
    );
    for (section, field, words) in [
        (
            "  window: {days: [someday], start: \"02:00\", lengthMinutes: 60}\n",
            "update.window",
            "\"someday\" is not a day",
        ),
        (
            "  window: {days: [sat], start: \"25:00\", lengthMinutes: 60}\n",
            "update.window",
            "HH:MM",
        ),
        ("  rebootPolicy: fleet-lock\n", "update.rebootPolicy", "fleetLock"),
        ("  rebootPolicy: window\n", "update.rebootPolicy", "update.window"),
        (
            "  fleetLock: {url: http://lock}\n  window: {days: [sat], start: \"02:00\", lengthMinutes: 60}\n",
            "update.rebootPolicy",
            "say which one",
        ),
        ("  channel: ftp://old\n", "update.channel", "ftp://old"),
        ("  checkIntervalMinutes: 1\n", "update.checkIntervalMinutes", "5 to 10080"),
    ] {
        assert_refused_at(&format!("{base}update:\n{section}"), field, words);
    }
}

#[test]
fn in_a_cluster_fleet_lock_needs_no_url_and_uses_the_built_in_server() {
    let base = "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\n";
    let cluster = "cluster:\n  name: lab\n  secret: 0123456789abcdef0123456789abcdef\n";
    let update = "update:\n  rebootPolicy: fleet-lock\n  fleetLock: {group: workers}\n";
    let accepted = load("test", format!("{base}{cluster}{update}").as_bytes()).unwrap();
    let policy = accepted
        .config
        .update_policy("http://127.0.0.1:4242")
        .unwrap();
    let lock = policy.fleet_lock.unwrap();
    assert_eq!(lock.url.as_deref(), Some("http://127.0.0.1:4242"));
    assert_eq!(lock.group.as_deref(), Some("workers"));
    // A URL given wins over the built-in server.
    let given = "update:\n  fleetLock: {url: http://airlock.lab:3333}\n";
    let accepted = load("test", format!("{base}{cluster}{given}").as_bytes()).unwrap();
    let policy = accepted
        .config
        .update_policy("http://127.0.0.1:4242")
        .unwrap();
    assert_eq!(
        policy.fleet_lock.unwrap().url.as_deref(),
        Some("http://airlock.lab:3333")
    );
    // Outside a cluster there is no built-in server to fall back on.
    assert_refused_at(
        &format!("{base}{update}"),
        "update.rebootPolicy",
        "outside a cluster",
    );
}

#[test]
fn accepted_secrets_are_checked_like_the_secret() {
    let base = "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\n";
    let secret = "0123456789abcdef0123456789abcdef";
    let cluster = |accept: &str| {
        format!("{base}cluster:\n  name: lab\n  secret: {secret}\n  acceptSecrets: [{accept}]\n")
    };
    let accepted = load(
        "test",
        cluster("fedcba9876543210fedcba9876543210").as_bytes(),
    )
    .unwrap();
    assert_eq!(accepted.config.cluster.unwrap().accept_secrets.len(), 1);
    assert_refused_at(&cluster("short"), "cluster.acceptSecrets[0]", "at least 32");
    assert_refused_at(
        &cluster(secret),
        "cluster.acceptSecrets[0]",
        "`secret` itself",
    );
}

/// `document` is refused with an error at `field` whose reason holds `words`.
fn assert_refused_at(document: &str, field: &str, words: &str) {
    let rejected = load("test", document.as_bytes()).unwrap_err();
    let error = rejected
        .errors()
        .find(|error| error.field == field)
        .unwrap_or_else(|| panic!("no error at {field} for {document}"));
    assert!(error.reason.contains(words), "{}", error.reason);
}

#[test]
fn kubelet_log_limits_are_read_as_quantities_and_checked() {
    let base = "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nkubelet:\n";
    let accepted = load(
        "test",
        format!("{base}  containerLogMaxSize: 64Ki\n  containerLogMaxFiles: 3\n  podCIDR: 10.88.0.0/16\n  shutdownGracePeriod: 45s\n  evictionHard:\n    memory.available: 300Mi\n    nodefs.available: 15%\n")
            .as_bytes(),
    )
    .unwrap();
    let kubelet = accepted.config.kubelet.clone().unwrap();
    use keelson_config::model::{EvictionThreshold, EvictionThresholds};
    assert_eq!(
        kubelet.eviction_thresholds(),
        Ok(EvictionThresholds {
            memory_available: EvictionThreshold::Bytes(300 << 20),
            nodefs_available: EvictionThreshold::Percent(15),
        })
    );
    assert_eq!(
        keelson_config::model::KubeletSettings::default().eviction_thresholds(),
        Ok(EvictionThresholds {
            memory_available: EvictionThreshold::Bytes(100 << 20),
            nodefs_available: EvictionThreshold::Percent(10),
        })
    );
    assert_eq!(EvictionThreshold::Percent(10).bytes_of(1000), 100);
    assert_eq!(kubelet.pod_cidr(), "10.88.0.0/16");
    assert_eq!(
        keelson_config::model::KubeletSettings::default().pod_cidr(),
        "10.244.0.0/24"
    );
    assert_eq!(kubelet.log_max_size_bytes(), Ok(Some(65536)));
    assert_eq!(kubelet.container_log_max_files, Some(3));
    assert_eq!(kubelet.shutdown_grace_seconds(), Ok(45));
    let longer = keelson_config::model::KubeletSettings {
        shutdown_grace_period: Some("1m5s".into()),
        ..Default::default()
    };
    assert_eq!(longer.shutdown_grace_seconds(), Ok(65));
    assert_eq!(
        keelson_config::model::KubeletSettings::default().shutdown_grace_seconds(),
        Ok(30)
    );
    for (section, field, words) in [
        (
            "  containerLogMaxSize: 10MB\n",
            "kubelet.containerLogMaxSize",
            "use Ki, Mi or Gi",
        ),
        (
            "  containerLogMaxSize: 4Ki\n",
            "kubelet.containerLogMaxSize",
            "below the 16Ki minimum",
        ),
        (
            "  containerLogMaxSize: lots\n",
            "kubelet.containerLogMaxSize",
            "use Ki",
        ),
        (
            "  containerLogMaxFiles: 1\n",
            "kubelet.containerLogMaxFiles",
            "below 2",
        ),
        (
            "  podCIDR: 10.244.0.1/24\n",
            "kubelet.podCIDR",
            "did you mean 10.244.0.0/24?",
        ),
        (
            "  podCIDR: 10.0.0.0/8\n",
            "kubelet.podCIDR",
            "/8 is outside /16 to /30",
        ),
        (
            "  evictionHard:\n    memory.free: 1Gi\n",
            "kubelet.evictionHard.memory.free",
            "use memory.available or nodefs.available",
        ),
        (
            "  evictionHard:\n    nodefs.available: 100%\n",
            "kubelet.evictionHard.nodefs.available",
            "not a whole percentage from 0% to 99%",
        ),
        (
            "  evictionHard:\n    memory.available: 1GB\n",
            "kubelet.evictionHard.memory.available",
            "use Ki, Mi or Gi",
        ),
        (
            "  shutdownGracePeriod: 61s\n",
            "kubelet.shutdownGracePeriod",
            "61s is over the 60s a shutdown waits",
        ),
        (
            "  shutdownGracePeriod: 30\n",
            "kubelet.shutdownGracePeriod",
            "it must end with a unit",
        ),
        (
            "  shutdownGracePeriod: 1.5m\n",
            "kubelet.shutdownGracePeriod",
            "'.' is not a unit",
        ),
        (
            "  podCIDR: fd00::/64\n",
            "kubelet.podCIDR",
            "\"fd00::/64\" is no pod CIDR: its address is not an IPv4 address",
        ),
    ] {
        assert_refused_at(&format!("{base}{section}"), field, words);
    }
}

/// The API credential files leave the plan, so a plan's position is not the config's: the
/// agent once inlined a fetched file into the config entry of the CA certificate.
#[test]
fn a_plan_file_knows_its_place_in_the_config() {
    let pem = |label: &str| {
        format!(
            "data:,-----BEGIN%20{label}-----%0ATUlJQg==%0A-----END%20{label}-----%0A",
            label = label.replace(' ', "%20")
        )
    };
    let document = serde_json::json!({
        "ignition": { "version": "3.4.0" },
        "storage": { "files": [
            { "path": "/etc/keelson/api/ca.crt", "contents": { "source": pem("CERTIFICATE") } },
            { "path": "/etc/keelson/api/node.crt", "contents": { "source": pem("CERTIFICATE") } },
            { "path": "/etc/keelson/api/node.key", "contents": { "source": pem("PRIVATE KEY") } },
            { "path": "/var/lib/fetched", "contents": { "source": "https://files.example/x" } },
        ] },
    });
    let loaded = load("test", document.to_string().as_bytes()).unwrap();
    assert!(loaded.plan.api.is_some());
    assert_eq!(loaded.plan.files.len(), 1);
    assert_eq!(loaded.plan.files[0].config_index, 3);
    assert_eq!(loaded.config.files[3].path, "/var/lib/fetched");
}

#[test]
fn registries_are_checked_and_plain_http_must_be_listed_as_insecure() {
    let text = "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nregistries:\n  mirrors:\n    docker.io:\n      endpoints: [\"http://10.0.2.100:5000\", \"https://mirror.example\"]\n    ghcr.io:\n      endpoints: [\"http://cache.local:5000\"]\n  insecure: [\"10.0.2.100:5000\"]\n  auth:\n    \"registry.example:5000\": {username: ci, password: secret}\n";
    let rejected = load("test", text.as_bytes()).unwrap_err();
    let errors: Vec<String> = rejected
        .errors()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect();
    assert_eq!(
        errors,
        ["registries.mirrors.ghcr.io.endpoints[0]: \"http://cache.local:5000\" is plain HTTP, but \
          cache.local:5000 is not listed under registries.insecure; list it there or use https://"]
    );
    let fixed = text.replace(
        "[\"10.0.2.100:5000\"]",
        "[\"10.0.2.100:5000\", \"cache.local:5000\"]",
    );
    let loaded = load("test", fixed.as_bytes()).unwrap();
    assert_eq!(
        loaded.plan.registries.mirrors["docker.io"].endpoints.len(),
        2
    );
    assert_eq!(
        loaded.plan.registries.auth["registry.example:5000"].username,
        "ci"
    );
    let bad_host = text.replace("registry.example:5000", "registry.example:99999");
    let rejected = load("test", bad_host.as_bytes()).unwrap_err();
    assert!(
        rejected
            .to_string()
            .contains("the port \"99999\" is not a number"),
        "{rejected}"
    );
}

#[test]
fn static_pods_are_whole_manifests_or_the_short_form() {
    let base = "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nstaticPods:\n";
    let manifest = "- apiVersion: v1\n  kind: Pod\n  metadata: {name: web, labels: {tier: edge}}\n  spec:\n    containers: [{name: web, image: nginx}]\n";
    let short = "- name: note\n  image: busybox\n  command: [sh, -c, echo $A]\n  env: {A: hello}\n";
    let accepted = load("test", format!("{base}{manifest}{short}").as_bytes()).unwrap();
    let pods = &accepted.config.static_pods;
    assert!(matches!(
        pods[0],
        keelson_config::model::StaticPod::Manifest(_)
    ));
    assert_eq!(pods[0].name(), "web");
    assert_eq!(pods[0].manifest()["metadata"]["labels"]["tier"], "edge");
    // The short form is a pod of one container named after it.
    assert_eq!(
        pods[1].manifest(),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "note"},
            "spec": {"containers": [{"name": "note", "image": "busybox",
                "command": ["sh", "-c", "echo $A"], "env": [{"name": "A", "value": "hello"}]}]},
        })
    );
    for (pods, field, words) in [
        (
            "- apiVersion: v1\n  kind: Service\n  metadata: {name: web}\n  spec: {}\n",
            "staticPods[0]",
            "v1/Service is not a v1/Pod",
        ),
        (
            "- apiVersion: v1\n  kind: Pod\n  metadata: {name: Web_1}\n  spec: {}\n",
            "staticPods[0].metadata.name",
            "",
        ),
        (
            "- apiVersion: v1\n  kind: Pod\n  metadata: {name: web, generateName: w-}\n  spec: {}\n",
            "staticPods[0].metadata.generateName",
            "use metadata.name",
        ),
        (
            &format!("{manifest}- name: web\n  image: busybox\n"),
            "staticPods[1].name",
            "another static pod is also called \"web\"",
        ),
        // A typo is told in the form the entry is written in, with what is allowed.
        (
            "- name: web\n  imagee: busybox\n",
            "staticPods[0]",
            "the short form {name, image, command, args, env} (or a v1 Pod manifest, with \
             apiVersion, kind, metadata and spec): unknown field `imagee`, expected one of \
             `name`, `image`",
        ),
        (
            "- apiVersion: v1\n  kind: Pod\n  metadata: {name: web}\n  spek: {}\n",
            "staticPods[0]",
            "a v1 Pod manifest: unknown field `spek`, expected one of `apiVersion`, `kind`, \
             `metadata`, `spec`",
        ),
    ] {
        assert_refused_at(&format!("{base}{pods}"), field, words);
    }
}
