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
        .exec_spec(
            namespace,
            &start.name,
            (!start.container.is_empty()).then_some(start.container.as_str()),
            start.command.clone(),
            start.tty,
        )
        .map_err(super::pods::status_of)?;
    let (command, file) = kubelet.container_exec(&spec).map_err(Status::internal)?;
    let outcome = if start.tty {
        with_terminal(command, start.size, requests, sender).await
    } else {
        with_pipes(command, start.stdin, requests, sender)
    };
    if outcome.is_err() {
        let _ = std::fs::remove_file(&file);
    }
    outcome
}

/// container-exec's status as the command's code (the same rule as a container's exit);
/// 255 when it cannot be known.
fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    use keelson_contract::exits::ExitStatus;
    use std::os::unix::process::ExitStatusExt;
    let status = status.ok().and_then(|status| {
        status
            .code()
            .map(ExitStatus::Exited)
            .or(status.signal().map(ExitStatus::Signaled))
    });
    status.map_or(255, ExitStatus::code)
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

/// The command on a terminal that container-exec opens in the container and sends back on
/// a socket (its standard input); what container-exec itself says before that (a
/// container that has stopped, say) comes through its output pipes.
async fn with_terminal(
    mut command: tokio::process::Command,
    size: Option<WindowSize>,
    mut requests: Streaming<ExecRequest>,
    sender: Sender,
) -> Result<(), Status> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|error| Status::internal(format!("cannot create a socket pair: {error}")))?;
    command
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| Status::internal(format!("cannot start container-exec: {error}")))?;
    drop(command);
    let early_output = tokio::spawn(futures::future::join(
        copy(
            child.stdout.take(),
            exec_response::Item::Stdout,
            sender.clone(),
        ),
        copy(
            child.stderr.take(),
            exec_response::Item::Stderr,
            sender.clone(),
        ),
    ));
    let master = tokio::task::spawn_blocking(move || receive_terminal(&ours))
        .await
        .ok()
        .flatten();
    let Some(master) = master else {
        // container-exec ended before it had a terminal: its message and code follow.
        tokio::spawn(finish(child, early_output, sender));
        return Ok(());
    };
    if let Some(size) = size {
        resize(&master, size);
    }
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|errno| Status::internal(errno.desc()))?;
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )
    .map_err(|errno| Status::internal(errno.desc()))?;
    // SAFETY: the AsyncFd owns the master and deregisters it before closing it.
    let master = Arc::new(
        unsafe { AsyncFd::register(master) }
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
                    Some(exec_request::Item::Resize(size)) => resize(master.get_ref(), size),
                    _ => {}
                }
            }
        });
    }
    let terminal_output = {
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
    let output = tokio::spawn(async move {
        let _ = terminal_output.await;
        let _ = early_output.await;
    });
    tokio::spawn(finish(child, output, sender));
    Ok(())
}

/// The terminal's master, as container-exec sends it; None when it ended first.
fn receive_terminal(socket: &std::os::unix::net::UnixStream) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut buffers = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut buffers,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let received = message.cmsgs().ok()?.find_map(|control| match control {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })?;
    // SAFETY: the kernel installed this descriptor for us alone.
    Some(unsafe { OwnedFd::from_raw_fd(received) })
}

fn resize(master: &impl AsRawFd, size: WindowSize) {
    let size = nix::pty::Winsize {
        ws_row: size.rows as u16,
        ws_col: size.columns as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
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
