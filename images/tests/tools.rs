//! Archives written by the real tools: an image built with umoci from Debian's
//! busybox-static, copied by skopeo into an OCI archive and a Docker archive, as a user
//! would make them, and imported.

use std::path::Path;

use keelson_images::ImageStore;
use keelson_testkit::oci::{self, ArchiveKind};

#[test]
fn archives_from_skopeo_are_imported_as_docker_would_name_them() {
    if !oci::ready_for(
        "archives_from_skopeo_are_imported_as_docker_would_name_them",
        false,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    oci::busybox_layout(work.path()).unwrap();
    let archives = [
        (ArchiveKind::Oci, "busybox.tar", "example/busybox:1"),
        (
            ArchiveKind::Docker,
            "busybox-docker.tar",
            "example/busybox:2",
        ),
    ];

    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    for (kind, file, name) in archives {
        let path = oci::archive(work.path(), kind, file, name).unwrap();
        let records = store
            .import_archive(std::fs::File::open(path).unwrap(), file, None)
            .unwrap();
        assert_eq!(records.len(), 1, "{file}");
        assert_eq!(records[0].name, format!("docker.io/{name}"));
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
