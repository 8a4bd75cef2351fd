//! `keelson.files.v1.Files`: read-only listing and reading under /etc and /var.
//!
//! Paths are resolved (symlinks included) before they are checked, so a link cannot lead
//! out of /etc and /var. The agent's own state, /var/lib/keelson, is never served: it holds
//! the saved config with the node's private key, which a reader must not obtain.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keelson_api::files::files_server::Files;
use keelson_api::files::{FileInfo, ListRequest, ListResponse, ReadChunk, ReadRequest};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use super::ApiContext;

/// Top directories that may be inspected.
pub const ALLOWED: &[&str] = &["/etc", "/var"];
/// Never served: the agent's state.
pub const HIDDEN: &str = "/var/lib/keelson";
/// Most entries one `List` returns.
pub const MAX_ENTRIES: usize = 10_000;
/// Size of each `Read` chunk.
const CHUNK: usize = 64 * 1024;

/// The files service.
#[derive(Debug, Clone)]
pub struct FilesService {
    context: Arc<ApiContext>,
}

impl FilesService {
    /// The service over the agent's `context`.
    pub fn new(context: Arc<ApiContext>) -> FilesService {
        FilesService { context }
    }

    /// Resolves a requested path to (its absolute node path, the real path under the
    /// root), or says why it is refused.
    fn resolve(&self, requested: &str) -> Result<(PathBuf, PathBuf), Status> {
        let requested_path = Path::new(requested);
        if !requested_path.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "{requested:?} is not an absolute path (e.g. /etc/hostname)"
            )));
        }
        let root = &self.context.files_root;
        let on_host = root.join(requested_path.strip_prefix("/").unwrap_or(requested_path));
        let real = on_host
            .canonicalize()
            .map_err(|error| Status::not_found(format!("{requested}: {error}")))?;
        let canonical_root = root
            .canonicalize()
            .map_err(|error| Status::internal(format!("{}: {error}", root.display())))?;
        let node_path = Path::new("/").join(real.strip_prefix(&canonical_root).map_err(|_| {
            Status::permission_denied(format!("{requested} leads outside the node's files"))
        })?);
        check_allowed(&node_path).map_err(Status::permission_denied)?;
        Ok((node_path, real))
    }
}

/// Whether a resolved node path may be served.
pub fn check_allowed(node_path: &Path) -> Result<(), String> {
    if node_path
        .components()
        .any(|component| matches!(component, Component::ParentDir))
    {
        return Err(format!("{} contains '..'", node_path.display()));
    }
    if node_path.starts_with(HIDDEN) {
        return Err(format!(
            "{} is the agent's own state (the saved config and its keys) and is not served",
            node_path.display()
        ));
    }
    if ALLOWED.iter().any(|allowed| node_path.starts_with(allowed)) {
        Ok(())
    } else {
        Err(format!(
            "{} is outside {}: only those can be inspected",
            node_path.display(),
            ALLOWED.join(" and ")
        ))
    }
}

fn info(node_path: &Path, metadata: &std::fs::Metadata, real: &Path) -> FileInfo {
    let kind = if metadata.file_type().is_symlink() {
        "symlink"
    } else if metadata.is_dir() {
        "directory"
    } else if metadata.is_file() {
        "file"
    } else {
        "other"
    };
    FileInfo {
        path: node_path.display().to_string(),
        kind: kind.into(),
        size: metadata.len(),
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        modified: metadata.mtime(),
        link_target: if metadata.file_type().is_symlink() {
            std::fs::read_link(real)
                .map(|target| target.display().to_string())
                .unwrap_or_default()
        } else {
            String::new()
        },
    }
}

/// Lists `real` (shown as `node_path`) into `entries`, descending when `recursive`.
fn list(
    node_path: &Path,
    real: &Path,
    recursive: bool,
    entries: &mut Vec<FileInfo>,
) -> std::io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(real)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|child| child.file_name());
    for child in children {
        if entries.len() >= MAX_ENTRIES {
            return Ok(());
        }
        let child_node = node_path.join(child.file_name());
        if check_allowed(&child_node).is_err() {
            continue;
        }
        let metadata = child.path().symlink_metadata()?;
        entries.push(info(&child_node, &metadata, &child.path()));
        if recursive && metadata.is_dir() {
            // A directory that vanished or cannot be read is listed without its contents.
            let _ = list(&child_node, &child.path(), true, entries);
        }
    }
    Ok(())
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Files for FilesService {
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        let (node_path, real) = self.resolve(&request.path)?;
        let metadata = real
            .metadata()
            .map_err(|error| Status::not_found(format!("{}: {error}", request.path)))?;
        let entries = tokio::task::spawn_blocking(move || {
            let mut entries = Vec::new();
            if metadata.is_dir() {
                list(&node_path, &real, request.recursive, &mut entries).map_err(|error| {
                    Status::internal(format!("{}: {error}", node_path.display()))
                })?;
            } else {
                entries.push(info(&node_path, &metadata, &real));
            }
            Ok::<_, Status>(entries)
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))??;
        Ok(Response::new(ListResponse { entries }))
    }

    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let request = request.into_inner();
        let (node_path, real) = self.resolve(&request.path)?;
        let mut file = tokio::fs::File::open(&real)
            .await
            .map_err(|error| Status::not_found(format!("{}: {error}", request.path)))?;
        let metadata = file
            .metadata()
            .await
            .map_err(|error| Status::internal(error.to_string()))?;
        if !metadata.is_file() {
            return Err(Status::invalid_argument(format!(
                "{} is not a regular file (keelctl ls lists directories)",
                node_path.display()
            )));
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buffer).await {
                    Ok(0) => return,
                    Ok(length) => {
                        let chunk = ReadChunk {
                            data: buffer[..length].to_vec(),
                        };
                        if sender.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let status = Status::internal(format!("{}: {error}", node_path.display()));
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_etc_and_var_without_the_agent_state_are_allowed() {
        assert!(check_allowed(Path::new("/etc/hostname")).is_ok());
        assert!(check_allowed(Path::new("/var/log")).is_ok());
        assert!(check_allowed(Path::new("/var")).is_ok());
        for refused in [
            "/",
            "/proc/1/environ",
            "/etcetera",
            "/var/lib/keelson",
            "/var/lib/keelson/config/machine.yaml",
            "/etc/../proc",
        ] {
            assert!(check_allowed(Path::new(refused)).is_err(), "{refused}");
        }
    }
}
