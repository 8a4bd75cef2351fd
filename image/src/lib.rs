//! `keelson-image`: builds Keelson's bootable GPT disk image, as an ordinary user.
//!
//! [`build`] reads as its list of steps: check the host tools; build (or take) the static
//! `keelson-init` and `keelsond`; fetch the kernel, systemd-boot and CA certificates as
//! Debian packages (cached); pick the modules each stage needs through their `depends=`;
//! write the initramfs as a cpio archive; compress the root with mksquashfs and append its
//! dm-verity hash tree; make the ESP with mkfs.vfat and mtools, STATE with mkfs.ext4; and
//! lay all of it into a sparse disk file behind a GPT written by `keelson-disk`.
//!
//! No step mounts anything, uses a loop device or needs root: filesystems are made inside
//! plain files by tools that support that, and device nodes exist only inside the cpio
//! archive, which is written byte by byte.
//!
//! Known limits: x86-64 only; the kernel is Debian bookworm's `linux-image-amd64`; the
//! image holds slot A only (slot B is written by the first update).

pub mod baseline;
pub mod cpio;
pub mod flash;
pub mod host;
pub mod inspect;
pub mod kmod;
pub mod publish;

pub use baseline::{build_baseline, build_write_baseline, WriteBaseline, WriteBaselineRun};

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use keelson_disk::gpt::{self, Gpt};
use keelson_disk::layout::{self, sizes, Slot};
use keelson_disk::verity::{self, VerityParams};
use keelson_update::boot_entry::{self, EntryName};
use keelson_update::bundle;
use keelson_update::keys::{self, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cpio::{CpioWriter, EntryKind};
use crate::host::{run, PackageCache};
use crate::kmod::KernelModules;

/// Modules stage 1 needs to reach the root: disk controllers, dm-verity, squashfs, ext4.
pub const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "dm_verity",
    "squashfs",
    "ext4",
    "crc32c_generic",
];
/// Modules stage 2 adds: network cards, the ACPI power button and input events, EFI
/// variables, FAT for the ESP and NoCloud seeds, ISO 9660 for NoCloud seeds, QEMU's fw_cfg
/// (config blobs), overlayfs (the writable `/etc` and container roots), the virtio entropy
/// source, and what containers and pod networking need: veth pairs, the bridge and its
/// netfilter hook, VXLAN, and nftables with connection tracking and NAT.
pub const ROOT_MODULES: &[&str] = &[
    "virtio_net",
    "e1000e",
    "igb",
    "virtio_rng",
    "button",
    "evdev",
    "efivarfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "isofs",
    "qemu_fw_cfg",
    "overlay",
    "veth",
    "bridge",
    "br_netfilter",
    "vxlan",
    "nf_tables",
    "nf_conntrack",
    "nf_nat",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_fib_inet",
    "nft_reject_inet",
];

/// Kernel arguments of every slot, before the slot and verity arguments.
pub const BASE_CMDLINE: &str = "console=ttyS0,115200 panic=10";

/// The Debian packages the image is made from.
pub const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
/// systemd-boot's EFI binaries.
pub const BOOT_LOADER_PACKAGE: &str = "systemd-boot-efi";
/// Mozilla's CA bundle.
pub const CA_PACKAGE: &str = "ca-certificates";

/// The target the static binaries are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Output directory; the image is `keelson.raw` in it.
    pub out_dir: PathBuf,
    /// OS version written into the root.
    pub version: String,
    /// Where Debian packages are cached.
    pub cache_dir: PathBuf,
    /// A directory holding prebuilt `keelson-init` and `keelsond`; built with cargo if unset.
    pub binaries: Option<PathBuf>,
    /// The Keelson workspace (for building the binaries).
    pub workspace: PathBuf,
    /// Cargo's target directory for building the binaries (cargo's default if unset). A
    /// build started from inside `cargo test` needs its own, since the outer cargo holds
    /// the lock on the default one.
    pub cargo_target_dir: Option<PathBuf>,
    /// Signs an update bundle `keelson-<version>.bundle` with this key (written by
    /// `keygen`) and trusts its public half (`<key>.pub`) in the image.
    pub signing_key: Option<PathBuf>,
    /// More public keys the image trusts for updates (key rotation).
    pub trusted_keys: Vec<PathBuf>,
    /// A directory whose files are copied over the root before it is sealed: for tests
    /// that need a deliberately different (for example broken) release.
    pub root_overlay: Option<PathBuf>,
}

impl BuildOptions {
    /// Defaults for a build of this workspace into `out_dir`.
    pub fn new(out_dir: PathBuf) -> BuildOptions {
        BuildOptions {
            out_dir,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cache_dir: host::default_cache_dir(),
            binaries: None,
            workspace: default_workspace(),
            cargo_target_dir: None,
            signing_key: None,
            trusted_keys: Vec::new(),
            root_overlay: None,
        }
    }
}

/// The workspace this builder was compiled from.
pub fn default_workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// One partition of the built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionSummary {
    /// PARTLABEL.
    pub label: String,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of content written into it (filesystem or root + hash tree).
    pub used: u64,
}

/// What was built; also written to `build.json` beside the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildSummary {
    /// The disk image.
    pub image: PathBuf,
    /// OS version.
    pub version: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Debian versions of the kernel and systemd-boot packages.
    pub packages: Vec<(String, String)>,
    /// Partitions in disk order.
    pub partitions: Vec<PartitionSummary>,
    /// Size of the compressed root filesystem.
    pub root_bytes: u64,
    /// Size of its hash tree.
    pub verity_tree_bytes: u64,
    /// dm-verity root hash.
    pub root_hash: String,
    /// Size of the (compressed) initramfs.
    pub initrd_bytes: u64,
    /// Kernel command line of slot A's entry.
    pub cmdline: String,
    /// File name of slot A's boot entry.
    pub boot_entry: String,
    /// Modules in the initramfs and in the root.
    pub modules: (Vec<String>, Vec<String>),
    /// The signed update bundle, when a signing key was given.
    pub bundle: Option<PathBuf>,
    /// Ids of the update keys the image trusts.
    pub trusted_keys: Vec<String>,
}

/// Prints numbered steps, with timings.
struct Steps {
    total: usize,
    done: usize,
    started: Instant,
    spinner: Option<indicatif::ProgressBar>,
}

impl Steps {
    fn new(total: usize) -> Steps {
        Steps {
            total,
            done: 0,
            started: Instant::now(),
            spinner: None,
        }
    }

    fn next(&mut self, what: &str) {
        self.finish_current();
        self.done += 1;
        let line = format!("[{}/{}] {what}", self.done, self.total);
        let spinner = indicatif::ProgressBar::new_spinner();
        if spinner.is_hidden() {
            // Not a terminal (CI, a log file): plain lines.
            println!("{line}");
        } else {
            spinner.set_message(line);
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            self.spinner = Some(spinner);
        }
        self.started = Instant::now();
    }

    fn finish_current(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            let message = spinner.message();
            spinner.finish_with_message(format!(
                "{message} ({:.1} s)",
                self.started.elapsed().as_secs_f64()
            ));
        }
    }
}

/// Builds the image described by `options`, as a list of phases (each printed as a
/// numbered step with its time): check the host and read the keys; the static binaries;
/// the Debian packages (kernel, systemd-boot, CA certificates); the kernel modules each
/// stage needs; the initramfs; the root filesystem; its dm-verity tree; the ESP and STATE;
/// the GPT disk; and, when a signing key is given, the update bundle.
pub fn build(options: &BuildOptions) -> anyhow::Result<BuildSummary> {
    let mut steps = Steps::new(if options.signing_key.is_some() { 10 } else { 9 });
    steps.next("checking host tools");
    host::check_tools()?;
    let keys = read_keys(options)?;
    let out = &options.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".keelson-build-")
        .tempdir_in(out)?;
    let work = work.path();

    steps.next("building static keelson-init and keelsond");
    let binaries = read_binaries(options)?;

    steps.next("fetching the kernel, systemd-boot and CA certificates (Debian packages, cached)");
    let packages = fetch_packages(options)?;

    steps.next("choosing kernel modules");
    let modules = choose_modules(&packages.kernel)?;

    steps.next("writing the initramfs");
    let initrd = work.join("initrd");
    write_initramfs(
        &initrd,
        &[("init", 0o755, &binaries.init)],
        &packages.kernel.release,
        &modules.all,
        &modules.initrd,
    )?;

    steps.next("compressing the root filesystem (mksquashfs, zstd)");
    let root_image = work.join("root.squashfs");
    let root_bytes = make_root(
        &root_image,
        &work.join("root"),
        options,
        &binaries,
        &packages,
        &modules,
        &keys.trusted,
    )?;

    steps.next("computing the dm-verity hash tree");
    let (verity_params, verity_tree) = seal_root(&root_image, &options.version)?;

    steps.next("making the ESP (FAT32) and STATE (ext4)");
    let cmdline = format!(
        "{BASE_CMDLINE} {}",
        keelson_contract::cmdline::boot_args(Slot::A, &verity_params)
    );
    let entry = EntryName::counted(1, Slot::A, boot_entry::DEFAULT_TRIES);
    let esp_image = work.join("esp.img");
    make_esp(
        &esp_image,
        sizes::ESP,
        &packages
            .boot_loader_tree
            .join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        &[EspSlot {
            slot: Slot::A,
            kernel: &packages.kernel.vmlinuz,
            initrd: &initrd,
            entry_file: entry.file_name(),
            entry_text: boot_entry::entry_text(Slot::A, &options.version, &cmdline),
        }],
    )?;
    let state_image = work.join("state.img");
    make_state(&state_image, sizes::STATE)?;

    steps.next("laying out the GPT disk");
    let image = out.join("keelson.raw");
    let partitions = lay_out_disk(&image, &esp_image, &root_image, &state_image)?;

    let bundle = match &keys.signing {
        Some(key) => {
            steps.next("signing the update bundle");
            let path = out.join(format!("keelson-{}.bundle", options.version));
            let artifacts = [
                packages.kernel.vmlinuz.as_path(),
                initrd.as_path(),
                root_image.as_path(),
            ];
            write_signed_bundle(&path, key, options, &verity_params, &artifacts)?;
            Some(path)
        }
        None => None,
    };
    steps.finish_current();

    let summary = BuildSummary {
        image,
        version: options.version.clone(),
        kernel_release: packages.kernel.release.clone(),
        packages: vec![
            (
                packages.kernel.package.clone(),
                packages.kernel.version.clone(),
            ),
            (
                BOOT_LOADER_PACKAGE.to_owned(),
                packages.boot_loader_version.clone(),
            ),
        ],
        partitions,
        root_bytes,
        verity_tree_bytes: verity_tree,
        root_hash: verity_params.root_hash_hex(),
        initrd_bytes: std::fs::metadata(&initrd)?.len(),
        cmdline,
        boot_entry: entry.file_name(),
        modules: (
            modules.initrd.keys().cloned().collect(),
            modules.root.keys().cloned().collect(),
        ),
        bundle,
        trusted_keys: keys.trusted.iter().map(|key| key.id().short()).collect(),
    };
    std::fs::write(
        out.join("build.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// The update keys of a build: the one that signs its bundle, and every key its root
/// trusts (the signing key's public half among them).
struct BuildKeys {
    signing: Option<SigningKey>,
    trusted: Vec<PublicKey>,
}

fn read_keys(options: &BuildOptions) -> anyhow::Result<BuildKeys> {
    let signing = options
        .signing_key
        .as_deref()
        .map(read_signing_key)
        .transpose()?;
    let mut trusted = Vec::new();
    if let Some(key) = &signing {
        trusted.push(key.public());
    }
    for path in &options.trusted_keys {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the public key {}", path.display()))?;
        trusted.push(PublicKey::parse(&text).with_context(|| format!("in {}", path.display()))?);
    }
    Ok(BuildKeys { signing, trusted })
}

/// PID 1 and the agent, statically linked.
struct Binaries {
    init: Vec<u8>,
    agent: Vec<u8>,
}

fn read_binaries(options: &BuildOptions) -> anyhow::Result<Binaries> {
    let directory = binaries_dir(options)?;
    let init = std::fs::read(directory.join("keelson-init")).context("reading keelson-init")?;
    let agent = std::fs::read(directory.join("keelsond")).context("reading keelsond")?;
    ensure_static("keelson-init", &init)?;
    ensure_static("keelsond", &agent)?;
    Ok(Binaries { init, agent })
}

/// What the build takes from Debian's packages.
struct Packages {
    kernel: Kernel,
    boot_loader_tree: PathBuf,
    boot_loader_version: String,
    ca_tree: PathBuf,
}

fn fetch_packages(options: &BuildOptions) -> anyhow::Result<Packages> {
    let cache = PackageCache::new(options.cache_dir.clone());
    let kernel = fetch_kernel(&cache)?;
    let (boot_loader_tree, boot_loader_version) = cache.unpack(BOOT_LOADER_PACKAGE)?;
    let (ca_tree, _) = cache.unpack(CA_PACKAGE)?;
    Ok(Packages {
        kernel,
        boot_loader_tree,
        boot_loader_version,
        ca_tree,
    })
}

/// The kernel's modules, and the closures each stage ships.
struct Modules {
    all: KernelModules,
    initrd: kmod::ModuleSelection,
    root: kmod::ModuleSelection,
}

fn choose_modules(kernel: &Kernel) -> anyhow::Result<Modules> {
    let all = KernelModules::scan(&kernel.modules_root)?;
    let (initrd, _) = all.closure(INITRAMFS_MODULES)?;
    let wanted: Vec<&str> = INITRAMFS_MODULES
        .iter()
        .chain(ROOT_MODULES)
        .copied()
        .collect();
    let (root, _) = all.closure(&wanted)?;
    Ok(Modules { all, initrd, root })
}

/// Stages the root tree in `tree` and compresses it into `image`; returns its size.
fn make_root(
    image: &Path,
    tree: &Path,
    options: &BuildOptions,
    binaries: &Binaries,
    packages: &Packages,
    modules: &Modules,
    trusted: &[PublicKey],
) -> anyhow::Result<u64> {
    stage_root(tree, options, binaries, packages, modules, trusted)?;
    run(Command::new("mksquashfs")
        .arg(tree)
        .arg(image)
        .args([
            "-comp",
            "zstd",
            "-Xcompression-level",
            "19",
            "-all-root",
            "-noappend",
            "-no-xattrs",
            "-quiet",
        ])
        .args(["-mkfs-time", "0", "-all-time", "0", "-no-progress"]))?;
    Ok(std::fs::metadata(image)?.len())
}

/// Appends the dm-verity tree to the root image (salted by the version, so builds are
/// reproducible) and checks that both fit a slot.
fn seal_root(root_image: &Path, version: &str) -> anyhow::Result<(VerityParams, u64)> {
    let salt = Sha256::digest(format!("keelson-verity:{version}").as_bytes());
    let (params, tree_bytes) = append_verity(root_image, &salt)?;
    let slot_content = std::fs::metadata(root_image)?.len();
    ensure!(
        slot_content <= sizes::ROOT_SLOT,
        "the root image with its hash tree is {slot_content} bytes, larger than a {} byte slot",
        sizes::ROOT_SLOT
    );
    Ok((params, tree_bytes))
}

/// The four partitions: the ESP, slot A with the root, an empty slot B, and STATE.
fn lay_out_disk(
    image: &Path,
    esp_image: &Path,
    root_image: &Path,
    state_image: &Path,
) -> anyhow::Result<Vec<PartitionSummary>> {
    let contents = [
        (
            layout::ESP_LABEL,
            layout::ESP_TYPE,
            sizes::ESP,
            Some(esp_image),
        ),
        (
            layout::ROOT_A_LABEL,
            layout::ROOT_X86_64_TYPE,
            sizes::ROOT_SLOT,
            Some(root_image),
        ),
        (
            layout::ROOT_B_LABEL,
            layout::ROOT_X86_64_TYPE,
            sizes::ROOT_SLOT,
            None,
        ),
        (
            layout::STATE_LABEL,
            layout::LINUX_DATA_TYPE,
            sizes::STATE,
            Some(state_image),
        ),
    ];
    write_disk(image, &contents)
}

/// The directory with the static binaries: the one given, or a fresh cargo build.
fn binaries_dir(options: &BuildOptions) -> anyhow::Result<PathBuf> {
    match &options.binaries {
        Some(directory) => Ok(directory.clone()),
        None => build_binaries(options),
    }
}

/// Runs cargo to build the two static binaries; returns the directory holding them.
fn build_binaries(options: &BuildOptions) -> anyhow::Result<PathBuf> {
    let workspace = &options.workspace;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = options
        .cargo_target_dir
        .clone()
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace.join("target"));
    let status = Command::new(&cargo)
        .current_dir(workspace)
        .args(["--quiet", "build", "--release", "--target", TARGET])
        .args(["-p", "keelson-init", "-p", "keelson-agent"])
        .arg("--target-dir")
        .arg(&target_dir)
        // Static glibc binaries: the root has no dynamic loader and no libc.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .with_context(|| {
            format!("cannot run {cargo} to build the binaries (or pass --binaries DIR)")
        })?;
    ensure!(
        status.success(),
        "building keelson-init and keelsond failed ({status})"
    );
    Ok(target_dir.join(TARGET).join("release"))
}

/// Refuses a dynamically linked binary: there is no loader in the image.
fn ensure_static(name: &str, binary: &[u8]) -> anyhow::Result<()> {
    use object::Object;
    let file =
        object::File::parse(binary).with_context(|| format!("{name} is not an ELF executable"))?;
    if file.section_by_name(".interp").is_some() {
        bail!(
            "{name} is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'"
        );
    }
    Ok(())
}

struct Kernel {
    package: String,
    version: String,
    release: String,
    vmlinuz: PathBuf,
    modules_root: PathBuf,
}

fn fetch_kernel(packages: &PackageCache) -> anyhow::Result<Kernel> {
    let package = packages.resolve_dependency(KERNEL_META_PACKAGE, "linux-image-")?;
    let (tree, version) = packages.unpack(&package)?;
    let modules_parent = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|relative| tree.join(relative))
        .find(|path| path.is_dir())
        .with_context(|| format!("{package} holds no /lib/modules"))?;
    let release = std::fs::read_dir(&modules_parent)?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{package} holds no kernel release directory"))?;
    let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
    ensure!(
        vmlinuz.is_file(),
        "{package} holds no {}",
        vmlinuz.display()
    );
    Ok(Kernel {
        modules_root: modules_parent.join(&release),
        package,
        version,
        release,
        vmlinuz,
    })
}

/// Writes a gzip-compressed cpio initramfs holding `files` (path, mode, content; their
/// directories are created), the device nodes PID 1 needs before devtmpfs, and the chosen
/// modules of `release` with their `modules.dep`.
fn write_initramfs(
    path: &Path,
    files: &[(&str, u32, &[u8])],
    release: &str,
    modules: &KernelModules,
    chosen: &kmod::ModuleSelection,
) -> anyhow::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let gzip = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut archive = CpioWriter::new(gzip);
    let mut directories = std::collections::BTreeSet::new();
    for directory in ["dev", "proc", "sys", "sysroot", "lib", "lib/modules"] {
        archive.add(directory, 0o755, &EntryKind::Directory)?;
        directories.insert(directory.to_owned());
    }
    // The kernel opens /dev/console for PID 1 before devtmpfs is mounted.
    archive.add(
        "dev/console",
        0o600,
        &EntryKind::CharDevice { major: 5, minor: 1 },
    )?;
    archive.add(
        "dev/kmsg",
        0o644,
        &EntryKind::CharDevice {
            major: 1,
            minor: 11,
        },
    )?;
    // The kernel's unpacker creates no missing parents: each directory comes first.
    let mut add_parents = |archive: &mut CpioWriter<_>, path: &str| -> std::io::Result<()> {
        let mut ancestors: Vec<String> = Vec::new();
        let mut current = Path::new(path).parent();
        while let Some(directory) = current.filter(|d| !d.as_os_str().is_empty()) {
            ancestors.push(directory.to_string_lossy().into_owned());
            current = directory.parent();
        }
        for directory in ancestors.into_iter().rev() {
            if directories.insert(directory.clone()) {
                archive.add(&directory, 0o755, &EntryKind::Directory)?;
            }
        }
        Ok(())
    };
    for (name, mode, bytes) in files {
        add_parents(&mut archive, name)?;
        archive.add(name, *mode, &EntryKind::File(bytes.to_vec()))?;
    }
    let base = format!("lib/modules/{release}");
    for name in chosen.keys() {
        let path = format!("{base}/{}", modules.paths[name]);
        add_parents(&mut archive, &path)?;
        archive.add(
            &path,
            0o644,
            &EntryKind::File(std::fs::read(modules.root.join(&modules.paths[name]))?),
        )?;
    }
    if !chosen.is_empty() {
        archive.add(
            &format!("{base}/modules.dep"),
            0o644,
            &EntryKind::File(modules.modules_dep(chosen).into_bytes()),
        )?;
    }
    archive.finish()?.finish()?.flush()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn stage_root(
    root: &Path,
    options: &BuildOptions,
    binaries: &Binaries,
    packages: &Packages,
    modules: &Modules,
    trusted: &[PublicKey],
) -> anyhow::Result<()> {
    let (init_binary, agent_binary) = (&binaries.init, &binaries.agent);
    let (release, ca_tree) = (&packages.kernel.release, &packages.ca_tree);
    let (chosen, modules) = (&modules.root, &modules.all);
    use std::os::unix::fs::{symlink, PermissionsExt};
    for directory in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "etc/ssl/certs",
        "usr/bin",
        "usr/sbin",
        "usr/lib/modules",
    ] {
        std::fs::create_dir_all(root.join(directory))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib"),
    ] {
        symlink(target, root.join(link))?;
    }
    for (name, bytes) in [("keelson-init", init_binary), ("keelsond", agent_binary)] {
        let path = root.join("usr/bin").join(name);
        std::fs::write(&path, bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    symlink("../bin/keelson-init", root.join("usr/sbin/init"))?;
    std::fs::write(
        root.join("etc/os-release"),
        format!(
            "NAME=Keelson\nID=keelson\nVERSION={0}\nVERSION_ID={0}\nPRETTY_NAME=\"Keelson {0}\"\nHOME_URL=\"https://keelson.dev\"\n",
            options.version
        ),
    )?;
    symlink("../run/keelson/resolv.conf", root.join("etc/resolv.conf"))?;
    // Mozilla's CA bundle, concatenated as update-ca-certificates would.
    let mut bundle = Vec::new();
    let certificates =
        host::files_with_extension(&ca_tree.join("usr/share/ca-certificates"), "crt")?;
    for certificate in certificates {
        bundle.extend_from_slice(&std::fs::read(certificate)?);
    }
    std::fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), bundle)?;

    let modules_dir = root.join("usr/lib/modules").join(release);
    for name in chosen.keys() {
        let relative = &modules.paths[name];
        let destination = modules_dir.join(relative);
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(modules.root.join(relative), &destination)?;
    }
    std::fs::write(modules_dir.join("modules.dep"), modules.modules_dep(chosen))?;

    let keys_dir = root.join(keys::TRUST_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&keys_dir)?;
    for key in trusted {
        std::fs::write(
            keys_dir.join(format!("{}.pub", key.id().short())),
            key.to_text(),
        )?;
    }
    if let Some(overlay) = &options.root_overlay {
        // cp keeps modes and follows nothing outside the overlay; -T copies its contents.
        run(Command::new("cp")
            .args(["-a", "-T", "--remove-destination"])
            .arg(overlay)
            .arg(root))?;
    }
    Ok(())
}

fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    SigningKey::parse(&text).with_context(|| format!("in {}", path.display()))
}

/// Writes the update bundle of this build.
fn write_signed_bundle(
    path: &Path,
    key: &SigningKey,
    options: &BuildOptions,
    verity_params: &VerityParams,
    artifacts: &[&Path; 3],
) -> anyhow::Result<()> {
    let mut described = Vec::new();
    for (kind, file) in bundle::ArtifactKind::ORDER.into_iter().zip(artifacts) {
        let (sha256, size) = bundle::sha256_of(File::open(file)?)?;
        described.push(bundle::Artifact {
            name: kind,
            size,
            sha256,
        });
    }
    let manifest = bundle::Manifest {
        format: bundle::FORMAT,
        version: options.version.clone(),
        architecture: std::env::consts::ARCH.to_owned(),
        cmdline: BASE_CMDLINE.to_owned(),
        artifacts: described,
        verity: bundle::Verity {
            root_hash: verity_params.root_hash_hex(),
            data_blocks: verity_params.data_blocks,
            salt: verity::hex(&verity_params.salt),
        },
    };
    let partial = path.with_extension("bundle.partial");
    let out = std::io::BufWriter::new(File::create(&partial)?);
    let [kernel, initrd, root] = artifacts;
    bundle::write_bundle(
        out,
        key,
        &manifest,
        [
            &mut std::io::BufReader::new(File::open(kernel)?),
            &mut std::io::BufReader::new(File::open(initrd)?),
            &mut std::io::BufReader::new(File::open(root)?),
        ],
    )
    .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// Writes a new signing key to `path` (mode 0600) and its public half to `path.pub`;
/// refuses to overwrite either. Returns the key id.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let public_path = public_key_path(path);
    for existing in [path, public_path.as_path()] {
        ensure!(
            !existing.exists(),
            "{} already exists; move it away or choose another --out",
            existing.display()
        );
    }
    let (key, text) = SigningKey::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::write(&public_path, key.public().to_text())
        .with_context(|| format!("writing {}", public_path.display()))?;
    Ok(key.public().id().short())
}

/// `PATH.pub` beside a signing key.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Pads `image` to whole 4 KiB blocks and appends its hash tree. Returns the parameters
/// and the tree's size.
fn append_verity(image: &Path, salt: &[u8]) -> anyhow::Result<(VerityParams, u64)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)?;
    let length = file.metadata()?.len();
    let data_blocks = length.div_ceil(verity::BLOCK_SIZE);
    file.set_len(data_blocks * verity::BLOCK_SIZE)?;
    file.seek(SeekFrom::Start(0))?;
    let mut tree = Vec::new();
    let params = verity::build_hash_tree(
        std::io::BufReader::new(&mut file),
        data_blocks,
        salt,
        &mut tree,
    )?;
    file.seek(SeekFrom::Start(data_blocks * verity::BLOCK_SIZE))?;
    file.write_all(&tree)?;
    file.sync_all()?;
    Ok((params, tree.len() as u64))
}

struct EspSlot<'a> {
    slot: Slot,
    kernel: &'a Path,
    initrd: &'a Path,
    entry_file: String,
    entry_text: String,
}

fn make_esp(
    image: &Path,
    bytes: u64,
    systemd_boot: &Path,
    slots: &[EspSlot<'_>],
) -> anyhow::Result<()> {
    ensure!(
        systemd_boot.is_file(),
        "{} is missing from the systemd-boot-efi package",
        systemd_boot.display()
    );
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-s", "1", "-n", "KEELSON-ESP", "-C"])
        .arg(image)
        .arg((bytes / 1024).to_string()))?;
    let scratch = image.with_extension("files");
    std::fs::create_dir_all(&scratch)?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = scratch.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let mtools = |program: &str| {
        let mut command = Command::new(program);
        command.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(image);
        command
    };
    let mut directories = vec![
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/systemd",
        "::/loader",
        "::/loader/entries",
        "::/keelson",
    ];
    let slot_dirs: Vec<String> = slots
        .iter()
        .map(|slot| format!("::/keelson/{}", slot.slot.letter()))
        .collect();
    directories.extend(slot_dirs.iter().map(String::as_str));
    run(mtools("mmd").args(&directories))?;
    let copy =
        |from: &Path, to: &str| run(mtools("mcopy").arg("-o").arg(from).arg(format!("::{to}")));
    copy(systemd_boot, "/EFI/BOOT/BOOTX64.EFI")?;
    copy(systemd_boot, "/EFI/systemd/systemd-bootx64.efi")?;
    copy(
        &write("loader.conf", &boot_entry::loader_conf())?,
        boot_entry::LOADER_CONF,
    )?;
    for slot in slots {
        copy(slot.kernel, &boot_entry::kernel_path(slot.slot))?;
        copy(slot.initrd, &boot_entry::initrd_path(slot.slot))?;
        copy(
            &write(&slot.entry_file, &slot.entry_text)?,
            &format!("{}/{}", boot_entry::ENTRIES_DIR, slot.entry_file),
        )?;
    }
    Ok(())
}

fn make_state(image: &Path, bytes: u64) -> anyhow::Result<()> {
    File::create(image)?.set_len(bytes)?;
    // 4 KiB blocks whatever the size (mkfs picks 1 KiB for small filesystems, which would
    // cap how far STATE can later grow), owned by root although built by a user.
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "KEELSON-STATE",
            "-b",
            "4096",
            "-T",
            "default",
        ])
        .args(["-E", "root_owner=0:0,lazy_itable_init=1"])
        .arg(image))?;
    Ok(())
}

type PartitionContent<'a> = (&'a str, uuid::Uuid, u64, Option<&'a Path>);

/// Writes a sparse disk: GPT plus each partition's content.
fn write_disk(
    image: &Path,
    partitions: &[PartitionContent<'_>],
) -> anyhow::Result<Vec<PartitionSummary>> {
    let total: u64 = partitions.iter().map(|(_, _, size, _)| size).sum::<u64>() + 2 * 1024 * 1024;
    let mut table = Gpt::new(total / gpt::SECTOR_SIZE, uuid::Uuid::new_v4())?;
    for (label, type_guid, size, _) in partitions {
        table.append(label, *type_guid, uuid::Uuid::new_v4(), *size)?;
    }
    let _ = std::fs::remove_file(image);
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(image)
        .with_context(|| format!("creating {}", image.display()))?;
    disk.set_len(total)?;
    gpt::write_table(&mut disk, &table)?;
    let mut summaries = Vec::new();
    for ((label, _, _, content), partition) in partitions.iter().zip(&table.partitions) {
        let used = match content {
            Some(path) => copy_sparse(
                path,
                &mut disk,
                partition.offset_bytes(),
                partition.size_bytes(),
            )?,
            None => 0,
        };
        summaries.push(PartitionSummary {
            label: (*label).to_owned(),
            offset: partition.offset_bytes(),
            size: partition.size_bytes(),
            used,
        });
    }
    disk.sync_all()?;
    Ok(summaries)
}

/// Copies `source` into `disk` at `offset`, seeking over all-zero chunks so that the image
/// stays sparse. Returns the bytes of data actually written (the non-zero chunks), which
/// is what the partition holds beyond empty space.
fn copy_sparse(source: &Path, disk: &mut File, offset: u64, room: u64) -> anyhow::Result<u64> {
    let length = std::fs::metadata(source)?.len();
    ensure!(
        length <= room,
        "{} ({length} bytes) does not fit its {room}-byte partition",
        source.display()
    );
    let mut input = File::open(source)?;
    let mut chunk = vec![0u8; 1 << 16];
    let mut position = 0;
    let mut written = 0;
    while position < length {
        let wanted = chunk.len().min((length - position) as usize);
        input.read_exact(&mut chunk[..wanted])?;
        if chunk[..wanted].iter().any(|&byte| byte != 0) {
            disk.seek(SeekFrom::Start(offset + position))?;
            disk.write_all(&chunk[..wanted])?;
            written += wanted as u64;
        }
        position += wanted as u64;
    }
    Ok(written)
}

/// A human summary of a build.
pub fn describe(summary: &BuildSummary) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut text = format!(
        "built {} (Keelson {}, kernel {})\n",
        summary.image.display(),
        summary.version,
        summary.kernel_release
    );
    text.push_str(&format!(
        "  {:<16} {:>10} {:>10}  {}\n",
        "partition", "size MiB", "used MiB", "offset"
    ));
    for partition in &summary.partitions {
        text.push_str(&format!(
            "  {:<16} {:>10.1} {:>10.1}  {}\n",
            partition.label,
            mib(partition.size),
            mib(partition.used),
            partition.offset
        ));
    }
    text.push_str(&format!(
        "  compressed root: {:.1} MiB (squashfs, zstd) + {:.2} MiB dm-verity hash tree\n",
        mib(summary.root_bytes),
        mib(summary.verity_tree_bytes)
    ));
    text.push_str(&format!(
        "  initramfs: {:.1} MiB, {} modules\n",
        mib(summary.initrd_bytes),
        summary.modules.0.len()
    ));
    text.push_str(&format!(
        "  root hash: {}\n  boot entry: {}\n",
        summary.root_hash, summary.boot_entry
    ));
    if summary.trusted_keys.is_empty() {
        text.push_str("  update keys: none trusted (build with --signing-key to accept updates)\n");
    } else {
        text.push_str(&format!(
            "  update keys: {}\n",
            summary.trusted_keys.join(", ")
        ));
    }
    if let Some(bundle) = &summary.bundle {
        text.push_str(&format!("  update bundle: {}\n", bundle.display()));
    }
    text
}
