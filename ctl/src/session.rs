//! How keelctl talks to nodes: a [`Session`] (TLS identity, nodes, output format), calls
//! made to every node at once, and the answers reported (a table or JSON/YAML on stdout,
//! one `error: NODE: reason` line per failed node on stderr).

use std::future::Future;
use std::io::Write;

use anyhow::{bail, Context as _};
use keelson_api::client::{self, ClientTls};
use keelson_api::files::files_client::FilesClient;
use keelson_api::machine::machine_client::MachineClient;
use tonic::transport::Channel;

use crate::cli::Cli;
use crate::keelconfig;
use crate::output::{self, Format};

/// A node's address and the outcome of a call to it.
pub type Answers<T> = Vec<(String, Result<T, String>)>;

/// What to do about a TLS failure, by the reason rustls gave.
fn tls_hint(cause: &str) -> Option<&'static str> {
    let refused_us = [
        "CertificateRequired",
        "UnknownCA",
        "CertificateExpired",
        "DecryptError",
        "BadCertificate",
    ];
    if cause.contains("UnknownIssuer") || cause.contains("BadSignature") {
        Some("the node's certificate is not from this cluster's CA; a node in maintenance mode serves a self-signed one (keelctl apply-config --insecure --token …)")
    } else if refused_us.iter().any(|alert| cause.contains(alert)) {
        Some("the node refused our client certificate: is the keelctl config for this cluster, and its certificate still valid?")
    } else {
        None
    }
}

/// One line saying why a call failed, with the deepest cause for transport failures
/// (e.g. the TLS alert a node sent when it refused our certificate) and what to do.
pub fn describe_status(status: &tonic::Status) -> String {
    let described = describe_status_only(status);
    match tls_hint(&described) {
        Some(hint) => format!("{described} ({hint})"),
        None => described,
    }
}

fn describe_status_only(status: &tonic::Status) -> String {
    let message = status.message().to_owned();
    let cause = std::error::Error::source(status).map(client::root_cause);
    match cause {
        Some(cause) if !message.contains(&cause) => {
            if message.is_empty() {
                cause
            } else {
                format!("{message}: {cause}")
            }
        }
        _ if message.is_empty() => format!("{:?}", status.code()),
        _ => message,
    }
}

fn describe_connect(error: &tonic::transport::Error) -> String {
    let cause = client::root_cause(error);
    match tls_hint(&cause) {
        Some(hint) => format!("cannot connect: {cause} ({hint})"),
        None => format!("cannot connect: {cause}"),
    }
}

/// How keelctl talks to the nodes of this invocation.
pub struct Session {
    tls: ClientTls,
    /// The nodes' addresses, in the order given.
    pub nodes: Vec<String>,
    token: Option<String>,
    /// How answers are printed.
    pub format: Format,
    /// The channels kept for reuse, once [`Session::keep_connections`] asked for it.
    kept: std::sync::Mutex<Option<std::collections::HashMap<String, Channel>>>,
}

impl Session {
    /// Mutual TLS with the keelctl config's identity.
    pub fn from_keelconfig(cli: &Cli) -> anyhow::Result<Session> {
        let path = cli
            .keelconfig
            .clone()
            .unwrap_or_else(keelconfig::default_path);
        let config = keelconfig::Keelconfig::load(&path)?;
        let context = config.select(cli.context.as_deref())?;
        let tls = keelson_api::tls::client_config(&context.ca, &context.cert, &context.key)
            .with_context(|| format!("the identity in {}", path.display()))?;
        let tls = ClientTls::new(tls, &context.server_name).map_err(anyhow::Error::msg)?;
        let nodes = if cli.nodes.is_empty() {
            context.endpoints.clone()
        } else {
            cli.nodes.clone()
        };
        Session::new(tls, &nodes, None, cli.output)
    }

    /// A node in maintenance mode: its self-signed certificate (optionally pinned) and
    /// the console's token.
    pub fn maintenance(
        cli: &Cli,
        token: String,
        fingerprint: Option<String>,
    ) -> anyhow::Result<Session> {
        let tls = keelson_api::tls::maintenance_client_config(fingerprint)?;
        let tls = ClientTls::new(tls, keelson_api::pki::MAINTENANCE_SERVER_NAME)
            .map_err(anyhow::Error::msg)?;
        Session::new(tls, &cli.nodes, Some(token), cli.output)
    }

    fn new(
        tls: ClientTls,
        nodes: &[String],
        token: Option<String>,
        format: Format,
    ) -> anyhow::Result<Session> {
        if nodes.is_empty() {
            bail!("no nodes: give -n/--nodes, or endpoints in the keelctl config");
        }
        let nodes = nodes
            .iter()
            .map(|node| keelconfig::node_address(node))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Session {
            tls,
            nodes,
            token,
            format,
            kept: Default::default(),
        })
    }

    /// From now on, a node's channel is made once and reused (it reconnects by itself
    /// after a failure). For commands that call the same nodes again and again, such as
    /// `get -w`, which would otherwise make a TCP connection and a TLS handshake per poll.
    pub fn keep_connections(&self) {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.get_or_insert_with(Default::default);
    }

    /// A channel to `node`, or why it cannot be had.
    pub async fn channel(&self, node: &str) -> Result<Channel, String> {
        if let Some(channel) = self.kept_channel(node, None) {
            return Ok(channel);
        }
        let channel = client::connect(node, &self.tls)
            .await
            .map_err(|error| describe_connect(&error))?;
        Ok(self
            .kept_channel(node, Some(channel.clone()))
            .unwrap_or(channel))
    }

    /// The kept channel to `node`, after keeping `new` for it when there is none yet
    /// (and connections are kept at all).
    fn kept_channel(&self, node: &str, new: Option<Channel>) -> Option<Channel> {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept = kept.as_mut()?;
        if let Some(new) = new {
            kept.entry(node.to_owned()).or_insert(new);
        }
        kept.get(node).cloned()
    }

    /// A request carrying the maintenance token, when there is one.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            if let Ok(value) = token.parse() {
                request
                    .metadata_mut()
                    .insert(keelson_api::TOKEN_METADATA_KEY, value);
            }
        }
        request
    }

    /// Calls every node at once through a Machine client.
    pub async fn each<T, F, Fut>(&self, call: F) -> Answers<T>
    where
        F: Fn(MachineClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let calls = self.nodes.iter().map(|node| {
            let call = &call;
            async move {
                let outcome = match self.channel(node).await {
                    Ok(channel) => call(MachineClient::new(channel))
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|status| describe_status(&status)),
                    Err(error) => Err(error),
                };
                (node.clone(), outcome)
            }
        });
        futures::future::join_all(calls).await
    }

    /// Calls every node at once through a Files client.
    pub async fn each_files<T, F, Fut>(&self, call: F) -> Answers<T>
    where
        F: Fn(FilesClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let calls = self.nodes.iter().map(|node| {
            let call = &call;
            async move {
                let outcome = match self.channel(node).await {
                    Ok(channel) => call(FilesClient::new(channel))
                        .await
                        .map_err(|status| describe_status(&status)),
                    Err(error) => Err(error),
                };
                (node.clone(), outcome)
            }
        });
        futures::future::join_all(calls).await
    }
}

/// Prints the answers: successes through `table` (or as JSON/YAML), failures as one line
/// each on stderr. Returns true when every node answered.
pub fn report<T: serde::Serialize>(
    format: Format,
    answers: Answers<T>,
    table: impl Fn(&[(String, T)]) -> String,
) -> anyhow::Result<bool> {
    let mut good = Vec::new();
    let mut all_good = true;
    for (node, outcome) in answers {
        match outcome {
            Ok(value) => good.push((node, value)),
            Err(error) => {
                all_good = false;
                eprintln!("error: {node}: {error}");
            }
        }
    }
    if !good.is_empty() {
        match format {
            Format::Table | Format::Wide => print!("{}", table(&good)),
            other => output::print_structured(other, &good)?,
        }
    }
    Ok(all_good)
}

/// Streams from every node at once, printing each entry as it comes (prefixed by the node
/// when there are several).
pub async fn stream_all<T, F, Fut>(
    session: &Session,
    call: F,
    line: impl Fn(&T) -> String + Copy,
) -> anyhow::Result<bool>
where
    T: serde::Serialize,
    F: Fn(MachineClient<Channel>) -> Fut + Clone,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let several = session.nodes.len() > 1;
    let streams = session.nodes.iter().map(|node| {
        let call = call.clone();
        async move {
            let channel = session.channel(node).await?;
            let mut stream = call(MachineClient::new(channel))
                .await
                .map_err(|status| describe_status(&status))?
                .into_inner();
            while let Some(entry) = stream
                .message()
                .await
                .map_err(|status| describe_status(&status))?
            {
                match session.format {
                    Format::Table | Format::Wide => {
                        let text = line(&entry);
                        let mut stdout = std::io::stdout().lock();
                        let written = if several {
                            writeln!(stdout, "{node}: {text}")
                        } else {
                            writeln!(stdout, "{text}")
                        };
                        if written.is_err() {
                            return Ok(()); // stdout closed (e.g. piped into head)
                        }
                    }
                    other => output::print_entry(other, node, &entry).map_err(|e| e.to_string())?,
                }
            }
            Ok::<(), String>(())
        }
    });
    let outcomes = futures::future::join_all(streams).await;
    let mut all_good = true;
    for (node, outcome) in session.nodes.iter().zip(outcomes) {
        if let Err(error) = outcome {
            all_good = false;
            eprintln!("error: {node}: {error}");
        }
    }
    Ok(all_good)
}

/// The size of a file to upload to every node, or why it cannot be read.
pub fn upload_size(path: &std::path::Path) -> anyhow::Result<u64> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a file", path.display());
    }
    Ok(metadata.len())
}

/// Streams `path` to a client-streaming call: `first`, then the file's bytes in chunks
/// made into messages by `chunk`, counted on `bar`. Returns the stream to hand to the call
/// and the task reading the file (abort it once the call is over).
pub fn upload_stream<M: Send + 'static>(
    path: &std::path::Path,
    first: M,
    chunk: fn(Vec<u8>) -> M,
    bar: indicatif::ProgressBar,
) -> Result<
    (
        tokio_stream::wrappers::ReceiverStream<M>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let reader = tokio::task::spawn_blocking(move || {
        if sender.blocking_send(first).is_err() {
            return;
        }
        loop {
            let mut bytes = vec![0u8; UPLOAD_CHUNK_BYTES];
            match file.read(&mut bytes) {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    bytes.truncate(read);
                    bar.inc(read as u64);
                    if sender.blocking_send(chunk(bytes)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok((
        tokio_stream::wrappers::ReceiverStream::new(receiver),
        reader,
    ))
}

/// Bytes per upload message: well under the node's message limit.
pub const UPLOAD_CHUNK_BYTES: usize = 1 << 20;
