//! `keelson-image`: the command line over [`keelson_image`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Builds Keelson disk images. Runs as an ordinary user: no root, mounts or loop devices.
#[derive(Debug, Parser)]
#[command(version)]
struct Arguments {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Build DIR/keelson.raw: a GPT disk with ESP, ROOT-A, ROOT-B and STATE.
    Build {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// OS version to stamp into the root (default: the workspace version).
        #[arg(long)]
        version: Option<String>,
        /// Directory with prebuilt static keelson-init and keelsond (default: build them).
        #[arg(long)]
        binaries: Option<PathBuf>,
        /// Where to cache Debian packages (default: ~/.cache/keelson).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Sign an update bundle DIR/keelson-<version>.bundle with this key (made by
        /// `keygen`), and build its public half (KEY.pub) into the image as a trusted key.
        #[arg(long, value_name = "KEY")]
        signing_key: Option<PathBuf>,
        /// Also trust this public key for updates (repeat to rotate keys).
        #[arg(long, value_name = "KEY.pub")]
        trust_key: Vec<PathBuf>,
        /// Copy this directory's files over the root before sealing it (testing only).
        #[arg(long, value_name = "DIR", hide = true)]
        root_overlay: Option<PathBuf>,
    },
    /// Write a new update signing key to PATH (mode 0600) and its public half to PATH.pub.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make DIR an update channel: sign DIR/channel.json listing every DIR/*.bundle, valid
    /// for a limited time. Serve DIR over HTTP and set nodes' update.channel to its URL.
    Publish {
        /// The channel directory (copy the bundles into it first).
        dir: PathBuf,
        /// The key that signs the metadata (bundles signed by it are accepted).
        #[arg(long, value_name = "KEY")]
        signing_key: PathBuf,
        /// Also accept bundles signed by this public key (repeat to rotate keys).
        #[arg(long, value_name = "KEY.pub")]
        trust_key: Vec<PathBuf>,
        /// The channel's name.
        #[arg(long, default_value = "stable")]
        name: String,
        /// How long nodes may believe the metadata: 30d, 12h, 90m… Re-publish before then.
        #[arg(long, default_value = "30d")]
        valid_for: String,
    },
    /// Show an image's (or a flashed disk's) partitions, slot entries, versions and root
    /// hashes. Needs no root; `--deep` (as root) also looks inside through loop devices.
    Inspect {
        /// The image file or block device.
        image: PathBuf,
        /// As root: check each slot against its verity root hash and list the root's and
        /// STATE's files (read-only loop devices and mounts).
        #[arg(long)]
        deep: bool,
        /// With --deep, list every file (default: counts and STATE's top level).
        #[arg(long, requires = "deep")]
        files: bool,
    },
    /// Write an image to a whole disk: refuses partitions, mounted disks and the disk of
    /// the running system, asks first, shows progress and reads everything back.
    Flash {
        /// The image (keelson.raw).
        image: PathBuf,
        /// The whole-disk device, e.g. /dev/sdb.
        #[arg(long)]
        device: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Build DIR/baseline.raw: the same firmware, boot loader and kernel with an initramfs
    /// that powers off at once (the boot benchmark's baseline).
    #[command(hide = true)]
    Baseline {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Directory with a prebuilt static keelson-init.
        #[arg(long)]
        binaries: Option<PathBuf>,
    },
}

fn main() {
    if let Err(error) = run(Arguments::parse()) {
        eprintln!("keelson-image: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(arguments: Arguments) -> anyhow::Result<()> {
    match arguments.command {
        Verb::Build {
            out,
            version,
            binaries,
            cache,
            signing_key,
            trust_key,
            root_overlay,
        } => {
            let mut options = keelson_image::BuildOptions::new(out);
            if let Some(version) = version {
                options.version = version;
            }
            options.binaries = binaries;
            if let Some(cache) = cache {
                options.cache_dir = cache;
            }
            options.signing_key = signing_key;
            options.trusted_keys = trust_key;
            options.root_overlay = root_overlay;
            let summary = keelson_image::build(&options)?;
            print!("{}", keelson_image::describe(&summary));
        }
        Verb::Keygen { out } => {
            let id = keelson_image::keygen(&out)?;
            println!(
                "wrote signing key {} (key id {id}) and its public key {}",
                out.display(),
                keelson_image::public_key_path(&out).display()
            );
            println!(
                "keep the private key secret; build images with --signing-key {}",
                out.display()
            );
        }
        Verb::Publish {
            dir,
            signing_key,
            trust_key,
            name,
            valid_for,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs() as i64;
            let channel =
                keelson_image::publish::publish(&keelson_image::publish::PublishOptions {
                    dir: dir.clone(),
                    signing_key,
                    trusted_keys: trust_key,
                    name,
                    valid_for_secs: keelson_image::publish::parse_validity(&valid_for)?,
                    now,
                })?;
            println!(
                "wrote {}: channel {} with {} release(s), valid until {}",
                dir.join(keelson_update::channel::CHANNEL_FILE).display(),
                channel.name,
                channel.releases.len(),
                channel.expires
            );
            for release in &channel.releases {
                println!(
                    "  {} {} {}",
                    release.version, release.architecture, release.bundle
                );
            }
        }
        Verb::Inspect {
            image, deep: false, ..
        } => print!("{}", keelson_image::inspect::inspect(&image)?),
        Verb::Inspect { image, files, .. } => {
            print!("{}", keelson_image::inspect::inspect_deep(&image, files)?)
        }
        Verb::Flash { image, device, yes } => {
            keelson_image::flash::flash(&keelson_image::flash::FlashOptions { image, device, yes })?
        }
        Verb::Baseline { out, binaries } => {
            let mut options = keelson_image::BuildOptions::new(out);
            options.binaries = binaries;
            let image = keelson_image::build_baseline(&options)?;
            println!("built {}", image.display());
        }
    }
    Ok(())
}
