//! A tonic channel to a node over TCP and rustls, for keelctl and the tests.
//!
//! TLS is done here rather than by tonic so that the server name can differ from the
//! address dialled (nodes are verified under their cluster's name, see
//! [`crate::pki::node_server_name`]) and so that the TCP connection can come from a
//! caller-supplied dialer (tests reach guests inside network namespaces).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

/// How to authenticate the node and ourselves.
#[derive(Clone)]
pub struct ClientTls {
    /// The rustls configuration (mutual, or maintenance).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the node's certificate must carry.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// `config`, verifying the node under `server_name`.
    pub fn new(config: rustls::ClientConfig, server_name: &str) -> Result<ClientTls, String> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|error| format!("{server_name:?} is not a valid server name: {error}"))?;
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// How long connecting (TCP and the TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `address` (`host:port`).
pub async fn connect(address: &str, tls: &ClientTls) -> Result<Channel, tonic::transport::Error> {
    let target = address.to_owned();
    connect_with(address, tls, move || {
        let target = target.clone();
        async move { tokio::net::TcpStream::connect(target).await }
    })
    .await
}

/// Connects over streams that `dial` opens; `label` names the node in the URI.
pub async fn connect_with<D, F>(
    label: &str,
    tls: &ClientTls,
    dial: D,
) -> Result<Channel, tonic::transport::Error>
where
    D: Fn() -> F + Send + Sync + Clone + 'static,
    F: Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'static,
{
    // The scheme is http because TLS happens in the connector below, not in tonic.
    let endpoint = Endpoint::from_shared(format!("http://{label}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let tls = tls.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        let tls = tls.clone();
        async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dial())
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls.config)
                .connect(tls.server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector(connector).await
}

/// The most specific reason in an error chain, e.g. the TLS alert under a transport
/// error, for one-line messages.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}
