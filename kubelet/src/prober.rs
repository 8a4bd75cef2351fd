//! The probes' and hooks' shell: one task per running container with probes, which runs
//! each check when [`ProbeSet`] says it is due (a command through container-exec, an HTTP
//! or HTTPS GET, a TCP connection or a gRPC health check to the pod, each within its
//! timeout) and reports every result
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
    // Delays count from the container's start, as the kubelet's do: after an agent
    // restart, a container that has run for a while is probed at once.
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let running_for = Duration::from_secs(unix_now.saturating_sub(running.started_at));
    let now = Instant::now();
    let started = now.checked_sub(running_for).unwrap_or(now);
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
            https,
            host: own,
            port,
            path,
            headers,
        } => {
            let host = own.as_deref().unwrap_or(host);
            let scheme = if *https { "https" } else { "http" };
            tokio::time::timeout(timeout, http_get(*https, host, *port, path, headers))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "Get \"{scheme}://{host}:{port}{path}\": no answer within {seconds}s"
                    ))
                })
        }
        Check::Grpc { port, service } => {
            tokio::time::timeout(timeout, grpc_check(host, *port, service.as_deref()))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "timeout: health rpc to {host}:{port} did not complete within {seconds}s"
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

/// An HTTP/1.1 GET, as the kubelet sends it, over TLS when `https` (the server's
/// certificate is not verified, as the kubelet does not); a status from 200 to 399 passes.
async fn http_get(
    https: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!(
        "{}://{host}:{port}{path}",
        if https { "https" } else { "http" }
    );
    let fail = |error: &dyn std::fmt::Display| format!("Get \"{url}\": {error}");
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|error| fail(&error))?;
    if !https {
        return http_exchange(stream, host, port, path, headers, &url).await;
    }
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|error| fail(&error))?;
    let stream = tokio_rustls::TlsConnector::from(unverified_tls()?)
        .connect(name, stream)
        .await
        .map_err(|error| fail(&error))?;
    http_exchange(stream, host, port, path, headers, &url).await
}

/// Sends the GET on `stream` and reads the status line.
async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    url: &str,
) -> Result<(), String> {
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

/// A TLS client that takes any certificate: a probe asks whether the program answers,
/// not who it is (the kubelet sets `InsecureSkipVerify` the same way).
fn unverified_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            certificate: &CertificateDer<'_>,
            signature: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                certificate,
                signature,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            certificate: &CertificateDer<'_>,
            signature: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                certificate,
                signature,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One call of the gRPC Health Checking Protocol, in plain text as the kubelet makes it;
/// `SERVING` passes, and the kubelet's words say why anything else fails.
async fn grpc_check(host: &str, port: u16, service: Option<&str>) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let address = format!("{host}:{port}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| format!("{address:?} is not an address: {error}"))?
        .connect()
        .await
        .map_err(|error| format!("failed to connect service {address:?}: {error}"))?;
    let request = HealthCheckRequest {
        service: service.unwrap_or_default().to_owned(),
    };
    let answer = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|status| {
            format!(
                "health rpc probe failed: code = {:?}, desc = {}",
                status.code(),
                status.message()
            )
        })?
        .into_inner();
    if answer.status == ServingStatus::Serving as i32 {
        return Ok(());
    }
    let said =
        ServingStatus::try_from(answer.status).map_or("UNKNOWN", |status| status.as_str_name());
    Err(format!("service unhealthy (responded with {said:?})"))
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
        http_get(false, "127.0.0.1", port, "/healthz?full=1", &headers)
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
        http_get(false, "127.0.0.1", port, "/", &[]).await.unwrap();
        let (port, _) = server("503 Service Unavailable").await;
        assert_eq!(
            http_get(false, "127.0.0.1", port, "/", &[])
                .await
                .unwrap_err(),
            "HTTP probe failed with statuscode: 503"
        );
        // Nothing listens on a port just freed.
        let closed = closed_port();
        let error = http_get(false, "127.0.0.1", closed, "/", &[])
            .await
            .unwrap_err();
        assert!(
            error.starts_with(&format!("Get \"http://127.0.0.1:{closed}/\": ")),
            "{error}"
        );
    }

    /// A port on 127.0.0.1 that nothing listens on: one just bound and freed.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// An HTTPS server on 127.0.0.1 with a self-signed certificate for another name,
    /// answering `status`: the probe passes on the status alone.
    #[tokio::test]
    async fn https_checks_take_any_certificate() {
        let certified =
            rcgen::generate_simple_self_signed(vec!["somewhere.else".to_owned()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["204 No Content", "500 Internal Server Error"] {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = acceptor.accept(stream).await.unwrap();
                let mut buffer = vec![0u8; 2048];
                let _ = stream.read(&mut buffer).await.unwrap();
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                stream.write_all(answer.as_bytes()).await.unwrap();
                let _ = stream.shutdown().await;
            }
        });
        http_get(true, "127.0.0.1", port, "/healthz", &[])
            .await
            .unwrap();
        assert_eq!(
            http_get(true, "127.0.0.1", port, "/healthz", &[])
                .await
                .unwrap_err(),
            "HTTP probe failed with statuscode: 500"
        );
        // Plain HTTP is not an HTTPS server.
        let (plain, _) = server("200 OK").await;
        let error = http_get(true, "127.0.0.1", plain, "/", &[])
            .await
            .unwrap_err();
        assert!(
            error.starts_with(&format!("Get \"https://127.0.0.1:{plain}/\": ")),
            "{error}"
        );
    }

    /// A real gRPC health server (tonic-health): SERVING passes, NOT_SERVING and an
    /// unknown service fail saying so, and so does a port with nothing on it.
    #[tokio::test]
    async fn grpc_checks_ask_the_health_service() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("orders", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        grpc_check("127.0.0.1", port, None).await.unwrap();
        assert_eq!(
            grpc_check("127.0.0.1", port, Some("orders"))
                .await
                .unwrap_err(),
            "service unhealthy (responded with \"NOT_SERVING\")"
        );
        reporter
            .set_service_status("orders", tonic_health::ServingStatus::Serving)
            .await;
        grpc_check("127.0.0.1", port, Some("orders")).await.unwrap();
        let unknown = grpc_check("127.0.0.1", port, Some("billing"))
            .await
            .unwrap_err();
        assert!(
            unknown.starts_with("health rpc probe failed: code = NotFound"),
            "{unknown}"
        );
        let closed = closed_port();
        let error = grpc_check("127.0.0.1", closed, None).await.unwrap_err();
        assert!(
            error.starts_with(&format!("failed to connect service \"127.0.0.1:{closed}\"")),
            "{error}"
        );
    }
}
