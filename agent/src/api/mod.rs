//! The node API: gRPC over mutual TLS on TCP 50000.
//!
//! - [`security`]: mutual TLS or maintenance mode, switchable while serving.
//! - [`serve`]: accepts TCP, runs each TLS handshake in its own task (a slow or hostile
//!   client cannot hold up others), and hands finished connections to tonic.
//! - [`Authorize`]: a tower layer in front of every service. It reads the caller's
//!   certificate and the maintenance token and asks [`keelson_api::access::decide`];
//!   refusals never reach service code.
//! - [`machine`], [`files`], [`update`], [`images`], [`pods`] and [`cluster`]: the
//!   services, thin layers over the agent's state, the update engine, the image store, the
//!   kubelet and the gossip; [`upload`] reads a client stream as a file for them.
//!
//! Limits against bad requests: messages over [`keelson_api::MAX_REQUEST_BYTES`] are
//! refused, header lists are capped, a connection runs at most 32 calls at once, and every
//! unary call ends after two minutes or the client's deadline, whichever is sooner.

pub mod cluster;
pub mod exec;
pub mod files;
pub mod images;
pub mod machine;
pub mod pods;
pub mod security;
pub mod update;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use keelson_api::access::{self, Caller};
use keelson_api::cluster::cluster_server::ClusterServer;
use keelson_api::files::files_server::FilesServer;
use keelson_api::images::images_server::ImagesServer;
use keelson_api::machine::machine_server::MachineServer;
use keelson_api::pods::pods_server::PodsServer;
use keelson_api::update::update_server::UpdateServer;
use keelson_api::{pki, MAX_REQUEST_BYTES, TOKEN_METADATA_KEY};
use keelson_config::MachineConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::{info, warn};

use keelson_provision::machine_config::{Environment, SharedReport};
use security::ApiSecurity;

/// Everything the services read or change.
#[derive(Debug)]
pub struct ApiContext {
    /// The agent's directory on STATE.
    pub state_dir: PathBuf,
    /// Where config sources and files live.
    pub environment: Environment,
    /// The config report shown by `Status`.
    pub report: SharedReport,
    /// The config in force (`None` in maintenance mode). The lock also makes
    /// `ApplyConfig` calls run one at a time.
    pub in_force: tokio::sync::Mutex<Option<MachineConfig>>,
    /// How callers are authenticated.
    pub security: ApiSecurity,
    /// False when the agent runs on a development host: nothing that changes the
    /// machine (config, reset, power) may run.
    pub manage_machine: bool,
    /// The address served.
    pub listen: SocketAddr,
    /// The kernel log (`/dev/kmsg`).
    pub kmsg: PathBuf,
    /// What `Files` serves, beneath `/` (or a test directory).
    pub files_root: PathBuf,
    /// The A/B update engine.
    pub update: Arc<keelson_updater::UpdateEngine>,
    /// The image store, or why there is none.
    pub images: images::SharedImageStore,
    /// The pod supervisor, once started, or why the node has none.
    pub pods: pods::SharedKubelet,
    /// The static pods' keeper's wake-up and problems.
    pub static_pods: crate::static_pods::StaticPodsState,
    /// Membership gossip, once started, or why it is not running.
    pub gossip: crate::cluster::SharedGossip,
    /// This node's part in the control plane, once started, or why it has none.
    pub control: crate::control_plane::SharedControlPlane,
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; more wait for a slot (the kernel's backlog holds them).
const HANDSHAKES_IN_FLIGHT: usize = 64;
/// Longest call, except those in [`UNBOUNDED_CALLS`].
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Calls that run as long as their data keeps flowing: an update upload or download of a
/// few hundred megabytes can outlast any fixed limit. HTTP/2 keepalive still drops a
/// connection whose peer is gone.
const UNBOUNDED_CALLS: &[&str] = &[
    "/keelson.update.v1.Update/Apply",
    "/keelson.images.v1.Images/Import",
    "/keelson.images.v1.Images/Pull",
    "/keelson.pods.v1.Pods/Logs",
    "/keelson.pods.v1.Pods/Exec",
    // Deleting waits out the pod's grace period (30 s unless it says otherwise, and
    // Kubernetes allows far more).
    "/keelson.pods.v1.Pods/Delete",
];

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    context: Arc<ApiContext>,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    info!(%address, mode = ?context.security.mode(), "serving the API");
    let (connections, incoming) = tokio::sync::mpsc::channel::<TlsStream<TcpStream>>(16);
    let acceptor = tokio::spawn(accept(listener, context.clone(), connections));
    let incoming =
        tokio_stream::wrappers::ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
    let machine = MachineServer::new(machine::MachineService::new(context.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    let files = FilesServer::new(files::FilesService::new(context.clone()))
        .max_decoding_message_size(64 * 1024);
    let update = UpdateServer::new(update::UpdateService::new(context.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let images = ImagesServer::new(images::ImagesService::new(context.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let pods = PodsServer::new(pods::PodsService::new(context.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let cluster = ClusterServer::new(cluster::ClusterService::new(context.clone()));
    let served = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(32)
        .max_concurrent_streams(64)
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(AuthorizeLayer { context })
        .add_service(machine)
        .add_service(files)
        .add_service(update)
        .add_service(images)
        .add_service(pods)
        .add_service(cluster)
        .serve_with_incoming(incoming)
        .await;
    acceptor.abort();
    served?;
    Ok(())
}

use futures::StreamExt as _;

async fn accept(
    listener: tokio::net::TcpListener,
    context: Arc<ApiContext>,
    connections: tokio::sync::mpsc::Sender<TlsStream<TcpStream>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: wait rather than spin.
                warn!("API: cannot accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(context.security.tls());
        let connections = connections.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = connections.send(stream).await;
                }
                Ok(Err(error)) => warn!(%peer, "API: TLS handshake refused: {error}"),
                Err(_) => warn!(%peer, "API: TLS handshake timed out"),
            }
        });
    }
}

/// The caller named by a connection's client certificate.
fn caller_of<B>(request: &http::Request<B>) -> Option<Caller> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certificate = info.peer_certs()?.first()?.clone();
    let subject = pki::subject(&certificate).ok()?;
    Some(Caller {
        name: subject.common_name,
        role: subject.role,
    })
}

/// The tower layer that puts [`Authorize`] in front of the services.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    context: Arc<ApiContext>,
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            context: self.context.clone(),
        }
    }
}

/// Lets a call through to the services only if [`access::decide`] allows it; the caller
/// is then in the request's extensions for the services to log.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    context: Arc<ApiContext>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for Authorize<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let caller = caller_of(&request);
        let token = request
            .headers()
            .get(TOKEN_METADATA_KEY)
            .and_then(|value| value.to_str().ok());
        let security = &self.context.security;
        let decision = access::decide(
            security.mode(),
            &method,
            caller.as_ref(),
            security.check_token(token),
        );
        match decision {
            Ok(()) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                // The clone that was polled ready is the one to call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let call = inner.call(request);
                if UNBOUNDED_CALLS.contains(&method.as_str()) {
                    return Box::pin(call);
                }
                Box::pin(async move {
                    match tokio::time::timeout(CALL_TIMEOUT, call).await {
                        Ok(response) => response,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                            "{method} did not finish within {} s",
                            CALL_TIMEOUT.as_secs()
                        ))
                        .into_http()),
                    }
                })
            }
            Err(denial) => {
                let who = caller
                    .map(|caller| caller.name)
                    .unwrap_or_else(|| "(no certificate)".into());
                warn!(%method, caller = %who, "API: refused: {denial:?}");
                let status = denial.status(&security.context());
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
