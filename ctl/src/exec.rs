//! `keelctl exec POD [-i] [-t] -- COMMAND…`: a command in a pod's running container, its
//! input and output carried over one bidirectional call. With `-t` the node gives it a
//! terminal, and this terminal (when it is one) goes raw for the duration and reports its
//! size, then and on every change.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use keelson_api::pods::pods_client::PodsClient;
use keelson_api::pods::{exec_request, exec_response, ExecRequest, ExecStart, WindowSize};
use tokio::sync::mpsc;

use crate::cli::ExecArgs;
use crate::session::{describe_status, Session};

fn request(item: exec_request::Item) -> ExecRequest {
    ExecRequest { item: Some(item) }
}

/// Runs the command; returns its exit code.
pub async fn exec(session: &Session, arguments: &ExecArgs) -> anyhow::Result<i32> {
    let [node] = session.nodes.as_slice() else {
        anyhow::bail!(
            "exec talks to one node; name it with -n (got {})",
            session.nodes.len()
        );
    };
    let raw = arguments.tty
        && arguments.stdin
        && nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
    let (sender, receiver) = mpsc::channel(16);
    sender
        .send(request(exec_request::Item::Start(ExecStart {
            namespace: arguments.namespace.clone(),
            name: arguments
                .pod
                .strip_prefix("pod/")
                .unwrap_or(&arguments.pod)
                .to_owned(),
            command: arguments.command.clone(),
            container: arguments.container.clone().unwrap_or_default(),
            tty: arguments.tty,
            stdin: arguments.stdin,
            size: if arguments.tty { window_size() } else { None },
        })))
        .await?;
    if arguments.stdin {
        forward_input(sender.clone());
    }
    if arguments.tty {
        forward_resizes(sender.clone());
    }
    drop(sender);
    let channel = session.channel(node).await.map_err(anyhow::Error::msg)?;
    let mut client = PodsClient::new(channel);
    let mut responses = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .map_err(|status| anyhow::anyhow!("{node}: {}", describe_status(&status)))?
        .into_inner();
    let _terminal = if raw { RawTerminal::enter() } else { None };
    loop {
        let message = responses
            .message()
            .await
            .map_err(|status| anyhow::anyhow!("{node}: {}", describe_status(&status)))?;
        match message.and_then(|message| message.item) {
            Some(exec_response::Item::Stdout(bytes)) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
            }
            Some(exec_response::Item::Stderr(bytes)) => {
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(&bytes).and_then(|()| stderr.flush());
            }
            Some(exec_response::Item::ExitCode(code)) => return Ok(code),
            None => anyhow::bail!("{node}: the node ended the exec without an exit code"),
        }
    }
}

/// Reads this process's input on a thread of its own (reading a terminal blocks) and
/// sends it on; the end of input is sent too.
fn forward_input(sender: mpsc::Sender<ExecRequest>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    let _ = sender.blocking_send(request(exec_request::Item::StdinEof(true)));
                    return;
                }
                Ok(count) => {
                    if sender
                        .blocking_send(request(exec_request::Item::Stdin(buffer[..count].to_vec())))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
}

fn forward_resizes(sender: mpsc::Sender<ExecRequest>) {
    tokio::spawn(async move {
        let Ok(mut changes) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while changes.recv().await.is_some() {
            if let Some(size) = window_size() {
                if sender
                    .send(request(exec_request::Item::Resize(size)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
}

/// This terminal's size, when the output is a terminal.
fn window_size() -> Option<WindowSize> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let result = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (result == 0 && size.ws_row > 0).then_some(WindowSize {
        rows: size.ws_row.into(),
        columns: size.ws_col.into(),
    })
}

/// This terminal in raw mode (keys go to the remote terminal as typed) until dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw)
            .ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}
