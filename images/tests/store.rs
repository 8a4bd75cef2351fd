//! The image store against real archives that the tests build: OCI (plain, gzip and zstd
//! layers, whiteouts, a multi-platform index) and Docker archives, shared layers, garbage
//! collection with container holds, and every refusal leaving nothing behind.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Entry, Image, Packing};
use keelson_images::{Digest, ImageError, ImageStore};
use serde_json::json;

fn as_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    keelson_testkit::skip(test, "unpacking whiteouts and owners needs root");
    false
}

fn base_layer(packing: Packing) -> common::Layer {
    common::layer(
        &[
            Entry::Dir("bin", 0o755),
            Entry::File("bin/tool", 0o4755, 0, b"#!tool\n"),
            Entry::Dir("etc", 0o755),
            Entry::File("etc/motd", 0o644, 1000, b"base\n"),
            Entry::File("etc/old", 0o644, 0, b"deleted above\n"),
            Entry::Dir("data", 0o700),
            Entry::File("data/hidden", 0o600, 0, b"hidden by an opaque dir\n"),
            Entry::Symlink("bin/sh", "tool"),
            Entry::Hardlink("bin/tool2", "bin/tool"),
        ],
        packing,
    )
}

fn top_layer(packing: Packing) -> common::Layer {
    common::layer(
        &[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/.wh.old", 0o644, 0, b""),
            Entry::File("etc/motd", 0o644, 0, b"top\n"),
            Entry::Dir("data", 0o700),
            Entry::File("data/.wh..wh..opq", 0o644, 0, b""),
            Entry::File("data/fresh", 0o600, 0, b"new\n"),
        ],
        packing,
    )
}

fn nothing_stored(root: &Path) {
    for kind in ["blobs/sha256", "layers/sha256", "ingest"] {
        let left: Vec<_> = std::fs::read_dir(root.join(kind))
            .unwrap()
            .flatten()
            .collect();
        assert!(
            left.is_empty(),
            "{kind} still holds {:?}",
            left.iter().map(|e| e.path()).collect::<Vec<_>>()
        );
    }
    let staging: Vec<_> = std::fs::read_dir(root.join("layers"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(staging.is_empty());
}

#[test]
fn an_oci_archive_is_imported_with_its_layers_unpacked_once_and_whiteouts_for_overlayfs() {
    if !as_root("an_oci_archive_is_imported…") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = Image::new(
        vec![base_layer(Packing::Gzip), top_layer(Packing::Zstd)],
        &["/bin/tool"],
    );
    let archive = common::oci_archive(
        vec![image.descriptor(json!({ "org.opencontainers.image.ref.name": "example/tool:1" }))],
        image.blobs(),
    );
    let records = store
        .import_archive(&archive[..], "tool.tar", None)
        .unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.name, "docker.io/example/tool:1");
    assert_eq!(record.manifest, image.id());
    assert_eq!(record.layers.len(), 2);
    assert_eq!(store.get("example/tool:1").unwrap(), *record);
    assert_eq!(
        store.get(&image.id().hex()[..12]).unwrap(),
        *record,
        "found by id prefix"
    );

    let dirs = store.layer_dirs(record);
    let (top, base) = (&dirs[0], &dirs[1]);
    // The base layer: modes (setuid kept), owners, links.
    let tool = std::fs::metadata(base.join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        std::fs::metadata(base.join("etc/motd")).unwrap().uid(),
        1000
    );
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::metadata(base.join("bin/tool2")).unwrap().ino(),
        tool.ino()
    );
    assert_eq!(
        std::fs::metadata(base.join("etc/motd")).unwrap().mtime(),
        1_700_000_000
    );
    // The top layer: a whiteout is a 0:0 character device, an opaque directory an xattr.
    let whiteout = std::fs::symlink_metadata(top.join("etc/old")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!top.join("etc/.wh.old").exists());
    assert!(!top.join("data/.wh..wh..opq").exists());
    assert_eq!(
        xattr(&top.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(std::fs::read(top.join("data/fresh")).unwrap(), b"new\n");

    let config = store.config(record).unwrap();
    let command = config.config().as_ref().unwrap().cmd().clone().unwrap();
    assert_eq!(command, ["/bin/tool"]);

    // A second image on the same base shares its unpacked layer.
    let other = Image::new(vec![base_layer(Packing::Gzip)], &["/bin/sh"]);
    let archive = common::oci_archive(
        vec![other.descriptor(json!({ "io.containerd.image.name": "docker.io/library/base:2" }))],
        other.blobs(),
    );
    let other_record = store
        .import_archive(&archive[..], "base.tar", None)
        .unwrap()
        .remove(0);
    assert_eq!(store.layer_dirs(&other_record)[0], *base);
    assert_eq!(store.list().unwrap().len(), 2);

    // Removing the first image frees its top layer but not the shared base.
    store.remove("example/tool:1").unwrap();
    assert!(!top.exists());
    assert!(base.join("bin/tool").exists());
    assert!(!store.store().has_blob(&image.id()));
    store.remove("base:2").unwrap();
    nothing_stored(root.path());
}

#[test]
fn a_layer_held_by_a_container_outlives_its_image() {
    if !as_root("a_layer_held_by_a_container_outlives_its_image") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = Image::new(vec![base_layer(Packing::Plain)], &["/bin/tool"]);
    let archive = common::oci_archive(
        vec![image.descriptor(json!({ "io.containerd.image.name": "app:1" }))],
        image.blobs(),
    );
    let record = store
        .import_archive(&archive[..], "app.tar", None)
        .unwrap()
        .remove(0);
    let layer = store.layer_dirs(&record).remove(0);
    store.hold("web-1", record.diff_ids()).unwrap();
    store.remove("app:1").unwrap();
    assert!(
        layer.join("bin/tool").exists(),
        "a running container's layer was removed"
    );
    // Reopening (as after an agent restart) keeps it too.
    drop(store);
    let store = ImageStore::open(root.path()).unwrap();
    assert!(layer.join("bin/tool").exists());
    store.release("web-1").unwrap();
    store.collect_garbage().unwrap();
    nothing_stored(root.path());
}

#[test]
fn a_gzipped_docker_archive_is_imported_under_its_repo_tags() {
    if !as_root("a_gzipped_docker_archive_is_imported_under_its_repo_tags") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = Image::new(
        vec![base_layer(Packing::Plain), top_layer(Packing::Gzip)],
        &["/bin/sh"],
    );
    let archive = common::gzip(&common::docker_archive(
        &image,
        &["busybox:1.36", "registry.local:5000/tools/busybox:latest"],
    ));
    let records = store
        .import_archive(&archive[..], "saved.tar.gz", None)
        .unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/busybox:1.36",
            "registry.local:5000/tools/busybox:latest"
        ]
    );
    let dirs = store.layer_dirs(&records[0]);
    assert_eq!(std::fs::read(dirs[0].join("etc/motd")).unwrap(), b"top\n");
    assert_eq!(
        records[0].layers[1].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    // --name replaces the archive's names.
    let renamed = store
        .import_archive(&archive[..], "saved.tar.gz", Some("mine"))
        .unwrap();
    assert_eq!(renamed[0].name, "docker.io/library/mine:latest");
    assert_eq!(renamed[0].manifest, records[0].manifest);
}

#[test]
fn the_nodes_platform_is_chosen_from_an_index() {
    if !as_root("the_nodes_platform_is_chosen_from_an_index") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let amd64 = Image::new(vec![base_layer(Packing::Gzip)], &["amd64"]);
    let arm64 = Image::new(vec![top_layer(Packing::Gzip)], &["arm64"]);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64.id().to_string(),
              "size": arm64.manifest.len(), "platform": { "os": "linux", "architecture": "arm64" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64.id().to_string(),
              "size": amd64.manifest.len(), "platform": { "os": "linux", "architecture": "amd64" } },
        ],
    })
    .to_string()
    .into_bytes();
    // Only the amd64 image's blobs travel, as `skopeo copy` of one platform leaves it.
    let mut blobs = amd64.blobs();
    blobs.push(arm64.manifest.clone());
    blobs.push(index.clone());
    let archive = common::oci_archive(
        vec![json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": Digest::sha256(&index).to_string(),
            "size": index.len(),
            "annotations": { "io.containerd.image.name": "multi:1" },
        })],
        blobs,
    );
    let record = store
        .import_archive(&archive[..], "multi.tar", None)
        .unwrap()
        .remove(0);
    assert_eq!(record.manifest, amd64.id());
    assert_eq!(record.index, Some(Digest::sha256(&index)));

    // An index without linux/amd64 is refused, naming what it offers.
    let only_arm = json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": arm64.id().to_string(), "size": arm64.manifest.len(),
            "platform": { "os": "linux", "architecture": "arm64" } }],
    })
    .to_string()
    .into_bytes();
    let mut blobs = arm64.blobs();
    blobs.push(only_arm.clone());
    let archive = common::oci_archive(
        vec![json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": Digest::sha256(&only_arm).to_string(), "size": only_arm.len(),
            "annotations": { "io.containerd.image.name": "arm:1" },
        })],
        blobs,
    );
    let error = store
        .import_archive(&archive[..], "arm.tar", None)
        .unwrap_err();
    assert!(
        error.to_string().ends_with("has no image for linux/amd64; it offers linux/arm64. Build or pull the image for linux/amd64"),
        "{error}"
    );
    assert_eq!(
        store.list().unwrap().len(),
        1,
        "nothing of the refused image was recorded"
    );
}

/// An archive with one blob changed after its digest was taken.
#[test]
fn a_digest_mismatch_names_the_blob_and_both_digests_and_keeps_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = Image::new(vec![base_layer(Packing::Gzip)], &["/bin/tool"]);
    let honest = Digest::sha256(&image.layers[0].blob);
    let mut files = Vec::new();
    for blob in image.blobs() {
        let digest = Digest::sha256(&blob);
        let mut bytes = blob.clone();
        if digest == honest {
            bytes.push(0);
        }
        files.push((format!("blobs/sha256/{}", digest.hex()), bytes));
    }
    let index = json!({ "schemaVersion": 2, "manifests": [image.descriptor(json!({ "io.containerd.image.name": "bad:1" }))] });
    files.push(("index.json".into(), index.to_string().into_bytes()));
    let archive = common::tar_files(&files);
    let error = store
        .import_archive(&archive[..], "bad.tar", None)
        .unwrap_err();
    match &error {
        ImageError::DigestMismatch {
            what,
            expected,
            actual,
        } => {
            assert_eq!(what, &format!("blobs/sha256/{} in bad.tar", honest.hex()));
            assert_eq!(expected, &honest);
            let mut tampered = image.layers[0].blob.clone();
            tampered.push(0);
            assert_eq!(actual, &Digest::sha256(&tampered));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(
        error.to_string().ends_with("the blob was not kept"),
        "{error}"
    );
    nothing_stored(root.path());
}

#[test]
fn a_layer_whose_contents_differ_from_its_diff_id_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let mut layer = base_layer(Packing::Gzip);
    layer.diff_id = Digest::sha256(b"some other tar");
    let image = Image::new(vec![layer], &["/bin/tool"]);
    let archive = common::oci_archive(
        vec![image.descriptor(json!({ "io.containerd.image.name": "liar:1" }))],
        image.blobs(),
    );
    let error = store
        .import_archive(&archive[..], "liar.tar", None)
        .unwrap_err();
    assert!(
        matches!(error, ImageError::DigestMismatch { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("the uncompressed layer sha256:"),
        "{error}"
    );
    nothing_stored(root.path());
}

#[test]
fn hostile_layer_paths_are_refused_and_nothing_escapes() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let cases: [(&str, Vec<Entry>, &str); 3] = [
        (
            "dotdot",
            vec![Entry::File("../escaped", 0o644, 0, b"x")],
            "the path climbs out of the layer",
        ),
        (
            "through-link",
            vec![
                Entry::Symlink("up", "/tmp"),
                Entry::File("up/escaped", 0o644, 0, b"x"),
            ],
            "goes through the symbolic link up",
        ),
        (
            "whiteout-through-link",
            vec![
                Entry::Symlink("up", "/tmp"),
                Entry::File("up/.wh.x", 0o644, 0, b""),
            ],
            "goes through the symbolic link up",
        ),
    ];
    for (name, entries, expected) in cases {
        let image = Image::new(vec![common::layer(&entries, Packing::Plain)], &["x"]);
        let archive = common::oci_archive(
            vec![image.descriptor(json!({ "io.containerd.image.name": format!("{name}:1") }))],
            image.blobs(),
        );
        let error = store
            .import_archive(&archive[..], "hostile.tar", None)
            .unwrap_err();
        assert!(matches!(error, ImageError::Layer { .. }), "{name}: {error}");
        assert!(error.to_string().contains(expected), "{name}: {error}");
        nothing_stored(root.path());
    }
    assert!(!root.path().join("layers/escaped").exists());
}

#[test]
fn refusals_say_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let image = Image::new(vec![base_layer(Packing::Plain)], &["x"]);
    // No name anywhere.
    let unnamed = common::oci_archive(
        vec![image.descriptor(json!({ "org.opencontainers.image.ref.name": "1" }))],
        image.blobs(),
    );
    let error = store
        .import_archive(&unnamed[..], "unnamed.tar", None)
        .unwrap_err();
    assert!(matches!(error, ImageError::Unnamed { .. }), "{error}");
    assert!(
        error.to_string().ends_with("give one with --name REF"),
        "{error}"
    );
    nothing_stored(root.path());
    // An unknown layer media type.
    let mut odd = Image::new(vec![base_layer(Packing::Plain)], &["x"]);
    odd.layers[0].media_type = "application/x-squashfs";
    let odd = Image::new(odd.layers, &["x"]);
    let archive = common::oci_archive(
        vec![odd.descriptor(json!({ "io.containerd.image.name": "odd:1" }))],
        odd.blobs(),
    );
    let error = store
        .import_archive(&archive[..], "odd.tar", None)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "layer 1 of docker.io/library/odd:1 has media type \"application/x-squashfs\", which Keelson \
         does not read; it reads OCI images and Docker v2 schema 2 images (push the image again \
         with a current tool)"
    );
    nothing_stored(root.path());
    // A missing blob.
    let mut blobs = image.blobs();
    blobs.pop();
    let archive = common::oci_archive(
        vec![image.descriptor(json!({ "io.containerd.image.name": "partial:1" }))],
        blobs,
    );
    let error = store
        .import_archive(&archive[..], "partial.tar", None)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("layer 1 of docker.io/library/partial:1 (sha256:"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .ends_with("is missing from archive partial.tar"),
        "{error}"
    );
    nothing_stored(root.path());
    // Not an archive at all.
    let error = store
        .import_archive(&b"hello, world"[..], "notes.txt", None)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("notes.txt is not an image archive"),
        "{error}"
    );
    // Unknown images.
    let error = store.remove("nothing:here").unwrap_err();
    assert_eq!(
        error.to_string(),
        "no image nothing:here on this node (keelctl image ls lists them)"
    );
}

#[test]
fn what_an_interrupted_write_left_is_cleared_on_open() {
    let root = tempfile::tempdir().unwrap();
    drop(ImageStore::open(root.path()).unwrap());
    std::fs::write(root.path().join("ingest/123-0"), b"half a blob").unwrap();
    std::fs::create_dir(root.path().join("layers/.staging-abc-1-0")).unwrap();
    // A blob that no image refers to (the pull died before recording it).
    let orphan = Digest::sha256(b"orphan");
    std::fs::write(
        root.path().join("blobs/sha256").join(orphan.hex()),
        b"orphan",
    )
    .unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    assert!(!store.store().has_blob(&orphan));
    nothing_stored(root.path());
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buffer = vec![0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let length = unsafe {
        nix::libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    (length >= 0).then(|| buffer[..length as usize].to_vec())
}

/// A STATE that fills up mid-import: the refusal says so and what to do, and the partial
/// blob is not left behind. STATE here is a 2 MiB tmpfs (root: mounting it).
#[test]
fn a_full_state_is_named_and_the_import_keeps_nothing() {
    if !as_root("a_full_state_is_named_and_the_import_keeps_nothing") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        state.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    )
    .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount(self.0);
        }
    }
    let _unmount = Unmount(state.path());
    // 4 MiB that no compression shrinks (xorshift), in an uncompressed layer.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let noise: &'static [u8] = Box::leak(noise.into_boxed_slice());
    let image = Image::new(
        vec![common::layer(
            &[Entry::File("big", 0o644, 0, noise)],
            Packing::Plain,
        )],
        &["/big"],
    );
    let archive = common::oci_archive(
        vec![image.descriptor(json!({ "org.opencontainers.image.ref.name": "example/big:1" }))],
        image.blobs(),
    );
    let root = state.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    let error = store
        .import_archive(&archive[..], "big.tar", None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("STATE is full while writing"), "{error}");
    assert!(
        error.contains("free space by removing images (keelctl image rm)"),
        "{error}"
    );
    nothing_stored(&root);
    assert!(store.list().unwrap().is_empty());
}
