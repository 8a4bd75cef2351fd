//! `Pods.Exec`: a command in a running container, through container-exec
//! (`keelson_runtime::shell::exec`), its input and output carried over the call's two
//! streams: pipes, or a pseudo-terminal when the client asks for one.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;

use keelson_api::pods::{
    exec_request, exec_response, ExecRequest, ExecResponse, ExecStart, WindowSize,
};
use keelson_kubelet::pods::Kubelet;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

type Sender = mpsc::Sender<Result<ExecResponse, Status>>;

fn response(item: exec_response::Item) -> Result<ExecResponse, Status> {
    Ok(ExecResponse { item: Some(item) })
}

/// Starts the command `start` asks for; its output and exit code go to `sender`, its
/// input comes from the rest of `requests`.
pub async fn start(
    kubelet: Arc<Kubelet>,
    start: ExecStart,
    requests: Streaming<ExecRequest>,
    sender: Sender,
) -> Result<(), Status> {
    let namespace = if start.namespace.is_empty() {
        "default"
    } else {
        start.namespace.as_str()
    };
    let spec = kubelet
        .exec_spec(namespace, &start.name, start.command.clone(), start.tty)
        .map_err(super::pods::status_of)?;
    let directory = std::path::Path::new("/run/keelson/exec");
    std::fs::create_dir_all(directory).map_err(|error| Status::internal(error.to_string()))?;
    let file = directory.join(format!("{}.json", uuid::Uuid::new_v4()));
    let bytes = serde_json::to_vec(&spec).map_err(|error| Status::internal(error.to_string()))?;
    std::fs::write(&file, bytes)
        .map_err(|error| Status::internal(format!("cannot write {}: {error}", file.display())))?;
    let mut command = tokio::process::Command::new(kubelet.helper_binary());
    command
        .arg(keelson_runtime::shell::launch::CONTAINER_EXEC)
        .arg(&file)
        .env_clear();
    let outcome = if start.tty {
        with_terminal(command, start.size, requests, sender)
    } else {
        with_pipes(command, start.stdin, requests, sender)
    };
    if outcome.is_err() {
        let _ = std::fs::remove_file(&file);
    }
    outcome
}

fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => status
            .code()
            .or(status.signal().map(|signal| 128 + signal))
            .unwrap_or(255),
        Err(_) => 255,
    }
}

fn with_pipes(
    mut command: tokio::process::Command,
    stdin: bool,
    mut requests: Streaming<ExecRequest>,
    sender: Sender,
) -> Result<(), Status> {
    command
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| Status::internal(format!("cannot start container-exec: {error}")))?;
    let mut input = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        while let Ok(Some(request)) = requests.message().await {
            match request.item {
                Some(exec_request::Item::Stdin(bytes)) => {
                    if let Some(writer) = input.as_mut() {
                        if writer.write_all(&bytes).await.is_err() {
                            input = None;
                        }
                    }
                }
                Some(exec_request::Item::StdinEof(true)) => input = None,
                _ => {}
            }
        }
    });
    let output = tokio::spawn(futures::future::join(
        copy(stdout, exec_response::Item::Stdout, sender.clone()),
        copy(stderr, exec_response::Item::Stderr, sender.clone()),
    ));
    tokio::spawn(finish(child, output, sender));
    Ok(())
}

/// Sends what `reader` yields, each piece wrapped by `item`, until it ends.
async fn copy(
    reader: Option<impl tokio::io::AsyncRead + Unpin>,
    item: fn(Vec<u8>) -> exec_response::Item,
    sender: Sender,
) {
    let Some(mut reader) = reader else { return };
    let mut buffer = vec![0u8; 32 * 1024];
    while let Ok(count) = reader.read(&mut buffer).await {
        if count == 0
            || sender
                .send(response(item(buffer[..count].to_vec())))
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Waits for the command (killing it when the client has gone), lets its output drain,
/// and sends its exit code last.
async fn finish<T>(
    mut child: tokio::process::Child,
    output: tokio::task::JoinHandle<T>,
    sender: Sender,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        _ = sender.closed() => {
            let _ = child.kill().await;
            return;
        }
    };
    let _ = output.await;
    let _ = sender
        .send(response(exec_response::Item::ExitCode(exit_code(status))))
        .await;
}

fn with_terminal(
    mut command: tokio::process::Command,
    size: Option<WindowSize>,
    mut requests: Streaming<ExecRequest>,
    sender: Sender,
) -> Result<(), Status> {
    let size = size.map(|size| nix::pty::Winsize {
        ws_row: size.rows as u16,
        ws_col: size.columns as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(size.as_ref(), None)
        .map_err(|errno| Status::internal(format!("cannot open a terminal: {}", errno.desc())))?;
    let slave = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|error| Status::internal(error.to_string()))
    };
    command
        .stdin(slave(&pty.slave)?)
        .stdout(slave(&pty.slave)?)
        .stderr(slave(&pty.slave)?);
    let child = command
        .spawn()
        .map_err(|error| Status::internal(format!("cannot start container-exec: {error}")))?;
    drop(command);
    drop(pty.slave);
    let flags = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|errno| Status::internal(errno.desc()))?;
    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )
    .map_err(|errno| Status::internal(errno.desc()))?;
    // SAFETY: the AsyncFd owns the master and deregisters it before closing it.
    let master = Arc::new(
        unsafe { AsyncFd::register(pty.master) }
            .map_err(|error| Status::internal(std::io::Error::from(error).to_string()))?,
    );
    {
        let master = master.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                match request.item {
                    Some(exec_request::Item::Stdin(bytes)) => write_all(&master, &bytes).await,
                    // End of input on a terminal is ^D.
                    Some(exec_request::Item::StdinEof(true)) => write_all(&master, b"\x04").await,
                    Some(exec_request::Item::Resize(size)) => {
                        let size = nix::pty::Winsize {
                            ws_row: size.rows as u16,
                            ws_col: size.columns as u16,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ reads a winsize struct.
                        unsafe {
                            libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size)
                        };
                    }
                    _ => {}
                }
            }
        });
    }
    let output = {
        let (master, sender) = (master.clone(), sender.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                let Ok(mut guard) = master.readable().await else {
                    return;
                };
                match guard.try_io(|fd| {
                    nix::unistd::read(fd.get_ref(), &mut buffer).map_err(std::io::Error::from)
                }) {
                    Err(_would_block) => continue,
                    // EIO: every process holding the terminal has gone.
                    Ok(Err(_)) | Ok(Ok(0)) => return,
                    Ok(Ok(count)) => {
                        if sender
                            .send(response(exec_response::Item::Stdout(
                                buffer[..count].to_vec(),
                            )))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        })
    };
    tokio::spawn(finish(child, output, sender));
    Ok(())
}

async fn write_all(master: &AsyncFd<OwnedFd>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let Ok(mut guard) = master.writable().await else {
            return;
        };
        match guard
            .try_io(|fd| nix::unistd::write(fd.get_ref(), bytes).map_err(std::io::Error::from))
        {
            Err(_would_block) => continue,
            Ok(Ok(written)) => bytes = &bytes[written..],
            Ok(Err(_)) => return,
        }
    }
}
