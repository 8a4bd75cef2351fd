//! HTTP servers the end-to-end tests start on 127.0.0.1 for the guest to reach through
//! QEMU's `guestfwd`: a static directory (an update channel), a download that stops at a
//! chosen byte, and a FleetLock reboot coordinator with a one-slot semaphore the test can
//! fill and empty. Any of them can speak HTTPS with a certificate from a private CA
//! ([`TlsIdentity`]), for the node's `https://` fetches.
//!
//! HTTP/1.1, one connection per request (`connection: close`), which is all the agent's
//! client needs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A request as the handlers see it.
#[derive(Debug, Clone)]
pub struct Request {
    /// GET, POST…
    pub method: String,
    /// The path.
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What a handler answers.
pub enum Reply {
    /// Status line and body bytes.
    Bytes(u16, Vec<u8>),
    /// 200 with a file streamed from disk.
    File(PathBuf),
    /// 200 announcing the whole file, of which only the first `bytes` are sent; then the
    /// connection stays open and silent until the client goes away. A download held at an
    /// exact point, for tests that pull the plug mid-write.
    Stalled {
        /// The file.
        path: PathBuf,
        /// How much of it to send.
        bytes: u64,
    },
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running server; it stops serving when dropped (the listener thread is detached and
/// the port is left to the OS).
pub struct HttpServer {
    /// The host port on 127.0.0.1.
    pub port: u16,
}

impl HttpServer {
    /// Serves `handler` on a free port of 127.0.0.1.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> HttpServer {
        HttpServer::listen(None, Arc::new(handler))
    }

    /// Serves `handler` over HTTPS (TLS 1.2 or 1.3) with `identity`'s certificate.
    pub fn start_tls(
        identity: &TlsIdentity,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HttpServer {
        HttpServer::listen(Some(identity.server_config()), Arc::new(handler))
    }

    fn listen(tls: Option<Arc<rustls::ServerConfig>>, handler: Arc<Handler>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = handler.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let _ = match tls {
                        None => serve_one(stream, &*handler),
                        Some(config) => match rustls::ServerConnection::new(config) {
                            Ok(connection) => {
                                serve_one(rustls::StreamOwned::new(connection, stream), &*handler)
                            }
                            Err(_) => Ok(()),
                        },
                    };
                });
            }
        });
        HttpServer { port }
    }

    /// Serves the files of `dir` (GET only; 404 for anything missing).
    pub fn directory(dir: PathBuf) -> HttpServer {
        HttpServer::start(move |request| {
            let relative = request.path.trim_start_matches('/');
            if request.method != "GET" || relative.split('/').any(|part| part == "..") {
                return Reply::Bytes(400, b"bad request".to_vec());
            }
            let path = dir.join(relative);
            if path.is_file() {
                Reply::File(path)
            } else {
                Reply::Bytes(404, format!("{} not found", request.path).into_bytes())
            }
        })
    }
}

fn serve_one(mut stream: impl Read + Write, handler: &Handler) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    // The request is read whole (one request per connection), so nothing buffered is lost.
    drop(reader);
    let request = Request {
        method,
        path,
        headers,
        body,
    };
    match handler(&request) {
        Reply::Bytes(status, body) => {
            write!(
                stream,
                "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                reason(status),
                body.len()
            )?;
            stream.write_all(&body)?;
        }
        Reply::File(path) => send_file(&mut stream, &path, u64::MAX)?,
        Reply::Stalled { path, bytes } => {
            send_file(&mut stream, &path, bytes)?;
            stream.flush()?;
            // The client sends nothing more; this returns when it closes or dies.
            while stream.read(&mut [0; 64])? > 0 {}
        }
    }
    stream.flush()
}

/// A 200 announcing the whole of `path`, then at most `limit` bytes of it.
fn send_file(stream: &mut impl Write, path: &std::path::Path, limit: u64) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
    )?;
    std::io::copy(&mut file.take(limit), stream)?;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Status",
    }
}

/// A private certificate authority and a server certificate it signed, for HTTPS servers
/// on the host that the node (or a host test) reaches at the given addresses.
pub struct TlsIdentity {
    /// The CA certificate (PEM): what a client must trust.
    pub ca_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl TlsIdentity {
    /// A fresh CA and a server certificate for `addresses` (IP subject alternative names).
    pub fn new(addresses: &[IpAddr]) -> TlsIdentity {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keelson test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("server");
        params.subject_alt_names = addresses
            .iter()
            .map(|address| rcgen::SanType::IpAddress(*address))
            .collect();
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        TlsIdentity {
            ca_pem: ca.pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone().into()], key)
            .expect("server certificate and key");
        Arc::new(config)
    }
}

/// A FleetLock server with a one-slot semaphore per group.
pub struct FleetLock {
    /// The HTTP server.
    pub server: HttpServer,
    state: Arc<Mutex<LockState>>,
}

#[derive(Debug, Default)]
struct LockState {
    holder: Option<String>,
    log: Vec<String>,
}

impl FleetLock {
    /// Starts the server with the slot free.
    pub fn start() -> FleetLock {
        let state = Arc::new(Mutex::new(LockState::default()));
        let shared = state.clone();
        let server = HttpServer::start(move |request| {
            let mut state = shared.lock().expect("lock state");
            if request.method != "POST" || request.header("fleet-lock-protocol") != Some("true") {
                state
                    .log
                    .push(format!("refused {} {}", request.method, request.path));
                return Reply::Bytes(
                    400,
                    br#"{"kind":"bad_request","value":"not FleetLock"}"#.to_vec(),
                );
            }
            let params: serde_json::Value =
                serde_json::from_slice(&request.body).unwrap_or_default();
            let id = params["client_params"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match request.path.as_str() {
                "/v1/pre-reboot" => {
                    if state.holder.as_deref().is_none_or(|holder| holder == id) {
                        state.holder = Some(id.clone());
                        state.log.push(format!("pre-reboot {id} granted"));
                        Reply::Bytes(200, Vec::new())
                    } else {
                        state.log.push(format!("pre-reboot {id} refused"));
                        Reply::Bytes(
                            409,
                            br#"{"kind":"failed_lock","value":"semaphore is full"}"#.to_vec(),
                        )
                    }
                }
                "/v1/steady-state" => {
                    if state.holder.as_deref() == Some(id.as_str()) {
                        state.holder = None;
                    }
                    state.log.push(format!("steady-state {id}"));
                    Reply::Bytes(200, Vec::new())
                }
                other => Reply::Bytes(404, format!("{other} not found").into_bytes()),
            }
        });
        FleetLock { server, state }
    }

    /// Fills the slot with another node.
    pub fn hold(&self, holder: &str) {
        self.state.lock().expect("lock state").holder = Some(holder.to_owned());
    }

    /// Empties the slot.
    pub fn release(&self) {
        self.state.lock().expect("lock state").holder = None;
    }

    /// Who holds the slot.
    pub fn holder(&self) -> Option<String> {
        self.state.lock().expect("lock state").holder.clone()
    }

    /// What the server saw, in order.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().expect("lock state").log.clone()
    }
}
