//! Archives written by the real tools: an image built with umoci from Debian's
//! busybox-static, copied by skopeo into an OCI archive and a Docker archive, as a user
//! would make them, and imported.

use std::path::Path;
use std::process::Command;

use keelson_images::ImageStore;

fn run(program: &str, arguments: &[&str], directory: &Path) {
    let output = Command::new(program)
        .args(arguments)
        .current_dir(directory)
        .output()
        .unwrap_or_else(|error| panic!("{program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An OCI layout `layout:busybox` holding /bin/busybox and /bin/sh, made with umoci.
fn build_busybox(directory: &Path) {
    run("umoci", &["init", "--layout", "layout"], directory);
    run("umoci", &["new", "--image", "layout:busybox"], directory);
    run(
        "umoci",
        &["unpack", "--image", "layout:busybox", "bundle"],
        directory,
    );
    let bin = directory.join("bundle/rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    run(
        "umoci",
        &["repack", "--image", "layout:busybox", "bundle"],
        directory,
    );
    run(
        "umoci",
        &[
            "config",
            "--image",
            "layout:busybox",
            "--config.cmd",
            "/bin/sh",
        ],
        directory,
    );
}

#[test]
fn archives_from_skopeo_are_imported_as_docker_would_name_them() {
    let test = "archives_from_skopeo_are_imported_as_docker_would_name_them";
    let missing: Vec<&str> = ["umoci", "skopeo", "/bin/busybox"]
        .into_iter()
        .filter(|tool| {
            !Path::new(tool).exists()
                && !Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        keelson_testkit::skip(
            test,
            &format!("missing {missing:?} (apt-get install umoci skopeo busybox-static)"),
        );
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        keelson_testkit::skip(test, "umoci unpack and layer owners need root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    build_busybox(work.path());
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "oci:layout:busybox",
            "oci-archive:busybox.tar:example/busybox:1",
        ],
        work.path(),
    );
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "oci:layout:busybox",
            "docker-archive:busybox-docker.tar:example/busybox:2",
        ],
        work.path(),
    );

    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    for (file, name) in [
        ("busybox.tar", "docker.io/example/busybox:1"),
        ("busybox-docker.tar", "docker.io/example/busybox:2"),
    ] {
        let archive = std::fs::File::open(work.path().join(file)).unwrap();
        let records = store.import_archive(archive, file, None).unwrap();
        assert_eq!(records.len(), 1, "{file}");
        assert_eq!(records[0].name, name);
        let top = &store.layer_dirs(&records[0])[0];
        assert_eq!(
            std::fs::read(top.join("bin/busybox")).unwrap(),
            busybox,
            "{file}"
        );
        assert_eq!(
            std::fs::read_link(top.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let config = store.config(&records[0]).unwrap();
        assert_eq!(
            config.config().as_ref().unwrap().cmd().clone().unwrap(),
            ["/bin/sh"]
        );
    }
    // Both archives hold the same layer: it is unpacked once.
    let images = store.list().unwrap();
    assert_eq!(store.layer_dirs(&images[0]), store.layer_dirs(&images[1]));
}
