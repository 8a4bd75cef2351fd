//! End-to-end: the image store on a node, driven by keelctl as an operator would: an image
//! built on the host with umoci and skopeo from Debian's busybox-static is pulled from a
//! real registry on the host's loopback (by its address, and as a Docker Hub name through
//! the mirror the config names), imported from archives (OCI and gzipped Docker), listed,
//! refused when tampered with, removed, and still there after a reboot. One VM for every
//! check.

use keelson_api::roles::Role;
use keelson_config::model::RegistryMirror;
use keelson_testkit::oci::{self, ArchiveKind};
use keelson_tests::{expect_failure, expect_success, TestCluster, TestNode};

/// The port the guest reaches the host's registry on, at QEMU's guestfwd address.
const REGISTRY_PORT: u16 = 5000;

#[test]
fn images_are_imported_listed_refused_and_removed_through_keelctl() {
    if !oci::ready_for(
        "images_are_imported_listed_refused_and_removed_through_keelctl",
        true,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    oci::busybox_layout(work.path()).unwrap();
    let oci_archive = oci::archive(
        work.path(),
        ArchiveKind::Oci,
        "busybox.tar",
        "example/busybox:1",
    )
    .unwrap();
    let docker_archive = oci::archive(
        work.path(),
        ArchiveKind::Docker,
        "saved.tar",
        "example/busybox:2",
    )
    .unwrap();
    let gzipped = work.path().join("saved.tar.gz");
    let status = std::process::Command::new("gzip")
        .args(["-k", "-1"])
        .arg(&docker_archive)
        .status()
        .unwrap();
    assert!(status.success());
    // The OCI archive with its layer changed by one byte, its digest left as it was.
    let tampered = work.path().join("tampered.tar");
    tamper_with_largest_blob(&oci_archive, &tampered);

    let registry = oci::Registry::start(work.path()).unwrap();
    registry.push(work.path(), "example/busybox:1").unwrap();
    let guest_registry = format!("{}:{REGISTRY_PORT}", keelson_qemu::GUEST_SERVICE_ADDRESS);
    let config = TestCluster::get().node_config_with("registries.yaml", |config| {
        config.registries.insecure = vec![guest_registry.clone()];
        config.registries.mirrors.insert(
            "docker.io".into(),
            RegistryMirror {
                endpoints: vec![format!("http://{guest_registry}")],
            },
        );
    });
    let (mut node, _) = TestNode::boot_with(|options| {
        options.config = Some(config);
        options.host_services = vec![(REGISTRY_PORT, registry.port)];
    })
    .unwrap();
    let keelctl = |role: Role, arguments: &[&str]| node.keelctl(role, arguments).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    // Pulled by the registry's address (listed as insecure), and by a Docker Hub name
    // through the mirror.
    let pulled = expect_success(
        keelctl(
            Role::Operator,
            &[
                "image",
                "pull",
                &format!("{guest_registry}/example/busybox:1"),
            ],
        ),
        "image pull",
    );
    assert!(
        pulled.contains(&format!("pulled {guest_registry}/example/busybox:1 (")),
        "{pulled}"
    );
    assert!(
        pulled
            .trim_end()
            .ends_with(&format!("from {guest_registry}")),
        "{pulled}"
    );
    let mirrored = expect_success(
        keelctl(Role::Operator, &["image", "pull", "example/busybox:1"]),
        "image pull through the mirror",
    );
    assert!(
        mirrored.contains("pulled docker.io/example/busybox:1 ("),
        "{mirrored}"
    );
    let missing_tag = expect_failure(
        keelctl(
            Role::Operator,
            &[
                "image",
                "pull",
                &format!("{guest_registry}/example/busybox:nope"),
            ],
        ),
        "pull of an unknown tag",
    );
    assert!(
        missing_tag.contains(&format!(
            "http://{guest_registry} has no example/busybox:nope: check the name and tag"
        )),
        "{missing_tag}"
    );
    expect_success(
        keelctl(
            Role::Operator,
            &[
                "image",
                "rm",
                &format!("{guest_registry}/example/busybox:1"),
                "example/busybox:1",
            ],
        ),
        "image rm of the pulled images",
    );

    let imported = expect_success(
        keelctl(Role::Operator, &["image", "import", &path(&oci_archive)]),
        "image import",
    );
    assert!(
        imported.starts_with(&format!(
            "127.0.0.1:{}: imported docker.io/example/busybox:1 (",
            node.api_port
        )),
        "{imported}"
    );
    let renamed = expect_success(
        keelctl(
            Role::Operator,
            &["image", "import", &path(&gzipped), "--name", "tools/box:3"],
        ),
        "image import --name",
    );
    assert!(
        renamed.contains("imported docker.io/tools/box:3 ("),
        "{renamed}"
    );

    // A reader may look but not change.
    let refused = expect_failure(
        keelctl(Role::Reader, &["image", "import", &path(&oci_archive)]),
        "image import as a reader",
    );
    assert!(
        refused.contains("Import needs role operator; \"e2e-reader\" has role reader"),
        "{refused}"
    );
    let listed = list(&node);
    assert_eq!(
        listed,
        ["docker.io/example/busybox:1", "docker.io/tools/box:3"]
    );
    let table = expect_success(keelctl(Role::Reader, &["image", "ls"]), "image ls");
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table.contains("IMAGE") && table.contains("docker.io/tools/box:3"),
        "{table}"
    );

    // A tampered archive is refused, naming the blob and both digests, and keeps nothing.
    let error = expect_failure(
        keelctl(Role::Operator, &["image", "import", &path(&tampered)]),
        "import of a tampered archive",
    );
    assert!(
        error.contains("digest mismatch: expected sha256:"),
        "{error}"
    );
    assert!(error.contains("in tampered.tar"), "{error}");
    assert!(error.contains("the blob was not kept"), "{error}");
    // An unknown image.
    let error = expect_failure(
        keelctl(Role::Operator, &["image", "rm", "nothing"]),
        "rm nothing",
    );
    assert!(
        error.contains("no image nothing on this node (keelctl image ls lists them)"),
        "{error}"
    );

    // Removing one name keeps the layer the other image shares.
    let removed = expect_success(
        keelctl(Role::Operator, &["image", "rm", "example/busybox:1"]),
        "image rm",
    );
    assert!(
        removed.contains("removed docker.io/example/busybox:1 (freed"),
        "{removed}"
    );
    assert!(
        removed.contains(" 0 layers)"),
        "the shared layer stays: {removed}"
    );

    // The store is on STATE: the image is there after a reboot.
    expect_success(
        keelctl(Role::Operator, &["reboot", "--wait"]),
        "reboot --wait",
    );
    assert_eq!(list(&node), ["docker.io/tools/box:3"]);
    node.power_off().unwrap();
}

fn list(node: &TestNode) -> Vec<String> {
    let json = expect_success(
        node.keelctl(Role::Reader, &["-o", "json", "image", "ls"])
            .unwrap(),
        "image ls -o json",
    );
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut names: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|answer| answer["images"].as_array().cloned().unwrap_or_default())
        .map(|image| image["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Copies an archive with one byte of its largest blob (the layer) flipped, under the same
/// file name, so that the blob no longer matches the digest its path names.
fn tamper_with_largest_blob(original: &std::path::Path, copy: &std::path::Path) {
    let mut archive = tar::Archive::new(std::fs::File::open(original).unwrap());
    let mut entries: Vec<(tar::Header, Vec<u8>)> = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        entries.push((entry.header().clone(), bytes));
    }
    let largest = (0..entries.len())
        .max_by_key(|&i| entries[i].1.len())
        .unwrap();
    let middle = entries[largest].1.len() / 2;
    entries[largest].1[middle] ^= 0xff;
    let mut builder = tar::Builder::new(std::fs::File::create(copy).unwrap());
    for (header, bytes) in entries {
        builder.append(&header, &bytes[..]).unwrap();
    }
    builder.finish().unwrap();
}
