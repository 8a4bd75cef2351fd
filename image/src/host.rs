//! Host tools and Debian packages the builder uses, with errors that say how to get them.
//!
//! Nothing here needs root: `apt-get download` fetches a package file into a directory the
//! user owns, and `dpkg-deb -x` unpacks it there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A host program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Program name.
    pub program: &'static str,
    /// Debian package.
    pub package: &'static str,
}

/// Every program the build runs.
pub const TOOLS: &[Tool] = &[
    Tool {
        program: "apt-get",
        package: "apt",
    },
    Tool {
        program: "apt-cache",
        package: "apt",
    },
    Tool {
        program: "dpkg-deb",
        package: "dpkg",
    },
    Tool {
        program: "mksquashfs",
        package: "squashfs-tools",
    },
    Tool {
        program: "mkfs.vfat",
        package: "dosfstools",
    },
    Tool {
        program: "mcopy",
        package: "mtools",
    },
    Tool {
        program: "mmd",
        package: "mtools",
    },
    Tool {
        program: "mkfs.ext4",
        package: "e2fsprogs",
    },
];

/// Finds a program on PATH or in the sbin directories (mkfs lives there, and an ordinary
/// user's PATH often lacks them).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}

/// Fails with one message naming every missing program and the packages to install.
pub fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&Tool> = TOOLS
        .iter()
        .filter(|tool| find_program(tool.program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|tool| tool.program).collect();
    let mut packages: Vec<&str> = missing.iter().map(|tool| tool.package).collect();
    packages.dedup();
    bail!(
        "missing host tools: {}. Install them with: sudo apt-get install {}",
        programs.join(", "),
        packages.join(" ")
    )
}

/// Runs a command and fails with its stderr if it does not succeed.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    if let Some(found) = find_program(&program) {
        let arguments: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
        let mut resolved = Command::new(found);
        resolved.args(arguments);
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                resolved.env(key, value);
            }
        }
        if let Some(directory) = command.get_current_dir() {
            resolved.current_dir(directory);
        }
        *command = resolved;
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fetches and unpacks Debian packages into a cache directory.
#[derive(Debug, Clone)]
pub struct PackageCache {
    directory: PathBuf,
}

impl PackageCache {
    /// A cache rooted at `directory`.
    pub fn new(directory: PathBuf) -> PackageCache {
        PackageCache { directory }
    }

    /// The concrete package a virtual or meta package depends on first, e.g.
    /// `linux-image-amd64` → `linux-image-6.1.0-56-amd64`.
    pub fn resolve_dependency(&self, meta: &str, prefix: &str) -> anyhow::Result<String> {
        let text = run(Command::new("apt-cache").args(["depends", meta]))
            .with_context(|| apt_hint(meta))?;
        text.lines()
            .filter_map(|line| line.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|name| name.starts_with(prefix))
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "{meta} does not depend on a {prefix}* package. {}",
                    apt_hint(meta)
                )
            })
    }

    /// The candidate version apt would download.
    fn candidate_version(&self, package: &str) -> anyhow::Result<String> {
        let text = run(Command::new("apt-cache").args(["show", "--no-all-versions", package]))
            .with_context(|| apt_hint(package))?;
        text.lines()
            .find_map(|line| line.strip_prefix("Version: "))
            .map(str::to_owned)
            .with_context(|| format!("apt knows no version of {package}. {}", apt_hint(package)))
    }

    /// Downloads `package` (unless cached) and unpacks it; returns the unpacked tree and
    /// the version.
    pub fn unpack(&self, package: &str) -> anyhow::Result<(PathBuf, String)> {
        let version = self.candidate_version(package)?;
        let debs = self.directory.join("debs");
        std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let file_version = version.replace(':', "%3a");
        let find_deb = || -> Option<PathBuf> {
            std::fs::read_dir(&debs)
                .ok()?
                .flatten()
                .map(|entry| entry.path())
                .find(|path| {
                    let name = path
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    name.starts_with(&format!("{package}_{file_version}_"))
                        && name.ends_with(".deb")
                })
        };
        let deb = match find_deb() {
            Some(deb) => deb,
            None => {
                run(Command::new("apt-get")
                    .args(["download", "-q", &format!("{package}={version}")])
                    .current_dir(&debs))
                .with_context(|| {
                    format!("downloading {package} {version}. {}", apt_hint(package))
                })?;
                find_deb().with_context(|| {
                    format!(
                        "apt-get download left no {package} package in {}",
                        debs.display()
                    )
                })?
            }
        };
        let tree = self
            .directory
            .join("unpacked")
            .join(format!("{package}_{file_version}"));
        let marker = tree.join(".keelson-unpacked");
        if !marker.exists() {
            if tree.exists() {
                std::fs::remove_dir_all(&tree)?;
            }
            std::fs::create_dir_all(&tree)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
            std::fs::write(&marker, &version)?;
        }
        Ok((tree, version))
    }
}

fn apt_hint(package: &str) -> String {
    format!(
        "Is {package} known to apt? Run `sudo apt-get update` (Debian bookworm's main repository provides it)"
    )
}

/// Every path under `directory` (recursively; links are listed, not followed), relative
/// to it, sorted, each with whether it is a directory.
pub fn paths_under(directory: &Path) -> anyhow::Result<Vec<(PathBuf, bool)>> {
    let mut found = Vec::new();
    let mut pending = vec![directory.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in
            std::fs::read_dir(&current).with_context(|| format!("reading {}", current.display()))?
        {
            let entry = entry?;
            let is_dir = entry.file_type()?.is_dir();
            let path = entry.path();
            if is_dir {
                pending.push(path.clone());
            }
            let relative = path.strip_prefix(directory).unwrap_or(&path).to_path_buf();
            found.push((relative, is_dir));
        }
    }
    found.sort();
    Ok(found)
}

/// Every file under `directory` (recursively) whose name ends in `.extension`, sorted.
pub fn files_with_extension(directory: &Path, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    Ok(paths_under(directory)?
        .into_iter()
        .filter(|(path, is_dir)| {
            !is_dir && path.extension().is_some_and(|found| found == extension)
        })
        .map(|(path, _)| directory.join(path))
        .collect())
}

/// Where downloads are cached by default: `$XDG_CACHE_HOME/keelson` or `~/.cache/keelson`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&cache).join("keelson");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache/keelson")
}
