//! The probes' and hooks' shell: one task per running container with probes, which runs
//! each check when [`ProbeSet`] says it is due (a command through container-exec, an HTTP
//! GET or a TCP connection to the pod, each within its timeout) and reports every result
//! to the pod's task; and [`run_check`], which runs a hook the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::probes::{Check, Kind, ProbeSet, Verdict};
use crate::store::RunningRecord;

/// What a probe or hook of a run reports to the pod's task.
#[derive(Debug, Clone)]
pub struct RunNews {
    /// The container, by the pod lifecycle's index.
    pub index: usize,
    /// The run it was about (a report about an earlier run is dropped).
    pub run_id: String,
    /// What happened.
    pub report: Report,
}

/// A probe's result, or a hook's failure.
#[derive(Debug, Clone)]
pub enum Report {
    /// A probe ran.
    Probe {
        /// Which probe.
        kind: Kind,
        /// Why it failed (None: it passed).
        failure: Option<String>,
        /// What the result changes.
        verdict: Option<Verdict>,
    },
    /// A hook failed.
    HookFailed {
        /// Which.
        hook: crate::hooks::Hook,
        /// Why.
        message: String,
    },
}

/// Probes run `running` of container `index` until it is aborted or a probe decides on a
/// restart. `host` is the pod's address (for HTTP and TCP checks without a host).
pub async fn probe_loop(
    engine: Arc<Engine>,
    index: usize,
    running: RunningRecord,
    mut set: ProbeSet,
    host: String,
    news: mpsc::UnboundedSender<RunNews>,
) {
    let started = Instant::now();
    loop {
        let (due, next) = set.due(started.elapsed().as_secs());
        if due.is_empty() {
            let wait = next.map_or(1, |at| at.saturating_sub(started.elapsed().as_secs()));
            tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
            continue;
        }
        for probe_index in due {
            let Some(probe) = set.probe(probe_index).cloned() else {
                continue;
            };
            let timeout = Duration::from_secs(probe.timeout);
            let outcome = run_check(&engine, &running, &probe.check, &host, timeout).await;
            let verdict = set.record(probe_index, outcome.is_ok(), started.elapsed().as_secs());
            let restart = matches!(verdict, Some(Verdict::Restart(_)));
            let sent = news.send(RunNews {
                index,
                run_id: running.run_id.clone(),
                report: Report::Probe {
                    kind: probe.kind,
                    failure: outcome.err(),
                    verdict,
                },
            });
            if sent.is_err() || restart {
                return;
            }
        }
    }
}

/// Runs one check (a probe's or a hook's) against run `running` within `timeout`; `host`
/// is the pod's address.
pub async fn run_check(
    engine: &Engine,
    running: &RunningRecord,
    check: &Check,
    host: &str,
    timeout: Duration,
) -> Result<(), String> {
    let seconds = timeout.as_secs();
    match check {
        Check::Exec(command) => engine.run_command(running, command.clone(), timeout).await,
        Check::Sleep(pause) => {
            tokio::time::sleep(Duration::from_secs(*pause).min(timeout)).await;
            Ok(())
        }
        Check::Http {
            host: own,
            port,
            path,
            headers,
        } => {
            let host = own.as_deref().unwrap_or(host);
            tokio::time::timeout(timeout, http_get(host, *port, path, headers))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "Get \"http://{host}:{port}{path}\": no answer within {seconds}s"
                    ))
                })
        }
        Check::Tcp { host: own, port } => {
            let host = own.as_deref().unwrap_or(host);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, *port))).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("dial tcp {host}:{port}: {error}")),
                Err(_) => Err(format!(
                    "dial tcp {host}:{port}: no answer within {seconds}s"
                )),
            }
        }
    }
}

/// An HTTP/1.1 GET, as the kubelet sends it; a status from 200 to 399 passes.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|error| format!("Get \"{url}\": {error}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("Get \"{url}\": {error}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 512];
    while !answer.windows(2).any(|pair| pair == b"\r\n") && answer.len() < 4096 {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|error| format!("Get \"{url}\": {error}"))?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    let status_line = String::from_utf8_lossy(&answer);
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": not an HTTP answer"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A server on 127.0.0.1 that answers every request with `status`; its port, and
    /// the first request it read.
    async fn server(status: &'static str) -> (u16, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut sender = Some(sender);
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0u8; 2048];
                let read = stream.read(&mut buffer).await.unwrap();
                if let Some(sender) = sender.take() {
                    let _ = sender.send(String::from_utf8_lossy(&buffer[..read]).into_owned());
                }
                let answer = format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (port, receiver)
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_and_3xx_and_say_why_they_fail() {
        let (port, request) = server("200 OK").await;
        let headers = [("X-Probe".to_owned(), "yes".to_owned())];
        http_get("127.0.0.1", port, "/healthz?full=1", &headers)
            .await
            .unwrap();
        let request = request.await.unwrap();
        assert!(
            request.starts_with("GET /healthz?full=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nUser-Agent: kube-probe/1.33\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nX-Probe: yes\r\n"), "{request}");
        let (port, _) = server("302 Found").await;
        http_get("127.0.0.1", port, "/", &[]).await.unwrap();
        let (port, _) = server("503 Service Unavailable").await;
        assert_eq!(
            http_get("127.0.0.1", port, "/", &[]).await.unwrap_err(),
            "HTTP probe failed with statuscode: 503"
        );
        // Nothing listens on a port just freed.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let error = http_get("127.0.0.1", closed, "/", &[]).await.unwrap_err();
        assert!(
            error.starts_with(&format!("Get \"http://127.0.0.1:{closed}/\": ")),
            "{error}"
        );
    }
}
