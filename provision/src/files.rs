//! Writing the directories, files and links of a config, all or nothing.
//!
//! Every file is first written in full to a temporary name beside its destination (mode
//! and owner set, data synced); only when all of them are staged are they renamed into
//! place. A failure while staging removes what was staged and changes nothing. Writing is
//! idempotent: the same plan applied again (every boot) leaves the same result, and an
//! `append` whose text is already at the end of the file is not appended twice.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use keelson_config::plan::{DirectoryPlan, FilePlan, LinkPlan};

/// Suffix of staged files.
const STAGING_SUFFIX: &str = ".keelson-new";

/// A file whose bytes are known (fetched ones already fetched).
#[derive(Debug, Clone)]
pub struct ResolvedFile<'a> {
    /// The plan entry.
    pub plan: &'a FilePlan,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Puts `root`-relative versions of the absolute paths (the root is `/` on a node and a
/// temporary directory in tests).
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(STAGING_SUFFIX);
    path.with_file_name(name)
}

fn set_owner_and_mode(path: &Path, mode: u32, owner: u32, group: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(owner), Some(group)).map_err(|error| {
        format!(
            "cannot chown {} to {owner}:{group}: {error}",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| format!("cannot chmod {} to {mode:04o}: {error}", path.display()))
}

/// Applies directories, then files, then links; returns one line per change.
pub fn write_all(
    root: &Path,
    directories: &[DirectoryPlan],
    files: &[ResolvedFile<'_>],
    links: &[LinkPlan],
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    for directory in directories {
        let path = under(root, &directory.path);
        std::fs::create_dir_all(&path)
            .map_err(|error| format!("cannot create directory {}: {error}", path.display()))?;
        set_owner_and_mode(&path, directory.mode, directory.owner, directory.group)?;
        done.push(format!("directory {}", directory.path.display()));
    }
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let staging = stage_files(root, files, &mut staged);
    if let Err(error) = staging {
        for (temporary, _) in &staged {
            let _ = std::fs::remove_file(temporary);
        }
        return Err(error);
    }
    for (temporary, destination) in &staged {
        std::fs::rename(temporary, destination).map_err(|error| {
            format!("cannot move {} into place: {error}", destination.display())
        })?;
        done.push(format!("file {}", destination.display()));
    }
    for link in links {
        if let Some(line) = make_link(root, link)? {
            done.push(line);
        }
    }
    Ok(done)
}

fn stage_files(
    root: &Path,
    files: &[ResolvedFile<'_>],
    staged: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), String> {
    for file in files {
        let destination = under(root, &file.plan.path);
        // Later entries for the same path (Ignition appends) build on the staged copy.
        let previous = staged
            .iter()
            .rev()
            .find(|(_, staged_destination)| *staged_destination == destination)
            .map(|(temporary, _)| temporary.clone());
        let bytes = if file.plan.append {
            let existing = match &previous {
                Some(temporary) => std::fs::read(temporary).unwrap_or_default(),
                None => std::fs::read(&destination).unwrap_or_default(),
            };
            if !file.bytes.is_empty() && existing.ends_with(&file.bytes) {
                existing
            } else {
                [existing, file.bytes.clone()].concat()
            }
        } else {
            file.bytes.clone()
        };
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        }
        let temporary = staging_path(&destination);
        let mut handle = std::fs::File::create(&temporary)
            .map_err(|error| format!("cannot write {}: {error}", temporary.display()))?;
        if previous.is_none() {
            staged.push((temporary.clone(), destination.clone()));
        }
        handle
            .write_all(&bytes)
            .and_then(|()| handle.sync_all())
            .map_err(|error| format!("cannot write {}: {error}", temporary.display()))?;
        set_owner_and_mode(&temporary, file.plan.mode, file.plan.owner, file.plan.group)?;
    }
    Ok(())
}

fn make_link(root: &Path, link: &LinkPlan) -> Result<Option<String>, String> {
    let path = under(root, &link.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    let temporary = staging_path(&path);
    let _ = std::fs::remove_file(&temporary);
    if link.hard {
        let target = under(root, &link.target);
        std::fs::hard_link(&target, &temporary).map_err(|error| {
            format!(
                "cannot hard-link {} to {}: {error}",
                link.path.display(),
                link.target.display()
            )
        })?;
    } else {
        if std::fs::read_link(&path).ok().as_deref() == Some(link.target.as_path()) {
            return Ok(None);
        }
        std::os::unix::fs::symlink(&link.target, &temporary)
            .map_err(|error| format!("cannot create link {}: {error}", link.path.display()))?;
    }
    std::fs::rename(&temporary, &path)
        .map_err(|error| format!("cannot move link {} into place: {error}", path.display()))?;
    Ok(Some(format!(
        "link {} -> {}",
        link.path.display(),
        link.target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_config::plan::Contents;

    fn file(path: &str, append: bool) -> FilePlan {
        FilePlan {
            config_index: 0,
            path: PathBuf::from(path),
            contents: Contents::Inline(Vec::new()),
            mode: 0o640,
            owner: nix::unistd::getuid().as_raw(),
            group: nix::unistd::getgid().as_raw(),
            append,
        }
    }

    #[test]
    fn files_are_written_with_their_mode_and_appends_are_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let motd = file("/etc/motd", false);
        let log = file("/var/log/app.log", true);
        let files = [
            ResolvedFile {
                plan: &motd,
                bytes: b"hello\n".to_vec(),
            },
            ResolvedFile {
                plan: &log,
                bytes: b"line\n".to_vec(),
            },
        ];
        for _ in 0..2 {
            write_all(root.path(), &[], &files, &[]).unwrap();
        }
        let written = root.path().join("etc/motd");
        assert_eq!(std::fs::read(&written).unwrap(), b"hello\n");
        let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read(root.path().join("var/log/app.log")).unwrap(),
            b"line\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("etc"))
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .ends_with(STAGING_SUFFIX)
            })
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_failure_while_staging_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/motd"), b"old\n").unwrap();
        // /var/blocked is a file, so nothing can be created beneath it.
        std::fs::create_dir_all(root.path().join("var")).unwrap();
        std::fs::write(root.path().join("var/blocked"), b"").unwrap();
        let motd = file("/etc/motd", false);
        let blocked = file("/var/blocked/x", false);
        let files = [
            ResolvedFile {
                plan: &motd,
                bytes: b"new\n".to_vec(),
            },
            ResolvedFile {
                plan: &blocked,
                bytes: b"x".to_vec(),
            },
        ];
        let error = write_all(root.path(), &[], &files, &[]).unwrap_err();
        assert!(error.contains("var/blocked"), "{error}");
        assert_eq!(
            std::fs::read(root.path().join("etc/motd")).unwrap(),
            b"old\n"
        );
        assert!(!root.path().join("etc/motd.keelson-new").exists());
    }

    #[test]
    fn links_are_replaced_only_when_they_differ() {
        let root = tempfile::tempdir().unwrap();
        let link = LinkPlan {
            path: PathBuf::from("/etc/app.conf"),
            target: PathBuf::from("/var/lib/app/app.conf"),
            hard: false,
        };
        let first = write_all(root.path(), &[], &[], std::slice::from_ref(&link)).unwrap();
        assert_eq!(first.len(), 1);
        let second = write_all(root.path(), &[], &[], std::slice::from_ref(&link)).unwrap();
        assert!(second.is_empty());
        assert_eq!(
            std::fs::read_link(root.path().join("etc/app.conf")).unwrap(),
            PathBuf::from("/var/lib/app/app.conf")
        );
    }
}
