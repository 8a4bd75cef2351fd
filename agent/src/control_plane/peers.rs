//! Calls to the other nodes' APIs (openraft's calls among them), over mutual TLS with
//! this node's certificate, connections kept between calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keelson_api::client::ClientTls;
use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::RaftRequest;
use keelson_raft::network::{Call, Transport, TransportError};
use keelson_raft::NodeAddr;
use tonic::transport::Channel;

/// A Raft call (votes, heartbeats, appends) that takes longer than this failed.
pub(super) const RAFT_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A snapshot may be large.
pub(super) const SNAPSHOT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Connecting to a peer: its address is on the local segment, so this is generous.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections to the other nodes' APIs, kept between calls.
#[derive(Clone)]
pub struct Peers {
    tls: ClientTls,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    /// No connections yet; `tls` is this node's identity and how peers are verified.
    pub(super) fn new(tls: ClientTls) -> Peers {
        Peers {
            tls,
            channels: Arc::default(),
        }
    }

    /// A client for the node at `endpoint` (host:port), connecting if need be.
    pub(super) async fn client(
        &self,
        endpoint: &str,
    ) -> Result<ClusterClient<Channel>, TransportError> {
        if let Some(channel) = self.channels.lock().unwrap().get(endpoint) {
            return Ok(ClusterClient::new(channel.clone()));
        }
        let connecting = keelson_api::client::connect(endpoint, &self.tls);
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                return Err(TransportError::Unreachable(format!(
                    "cannot connect to {endpoint}: {error}"
                )))
            }
            Err(_) => {
                return Err(TransportError::Unreachable(format!(
                    "no connection to {endpoint} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        self.channels
            .lock()
            .unwrap()
            .insert(endpoint.to_owned(), channel.clone());
        Ok(ClusterClient::new(channel))
    }

    /// Drops a connection that failed, so that the next call connects again.
    pub(super) fn forget(&self, endpoint: &str) {
        self.channels.lock().unwrap().remove(endpoint);
    }
}

impl Transport for Peers {
    async fn call(
        &self,
        target: &NodeAddr,
        call: Call,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let mut client = self.client(&target.api).await?;
        let mut request = tonic::Request::new(RaftRequest {
            call: call.name().to_owned(),
            body,
        });
        request.set_timeout(match call {
            Call::InstallSnapshot => SNAPSHOT_CALL_TIMEOUT,
            Call::AppendEntries | Call::Vote => RAFT_CALL_TIMEOUT,
        });
        match client.raft(request).await {
            Ok(reply) => Ok(reply.into_inner().body),
            Err(status) => {
                self.forget(&target.api);
                let why = format!("{}: {}", target.name, status.message());
                Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                        TransportError::Unreachable(why)
                    }
                    _ => TransportError::Failed(why),
                })
            }
        }
    }
}
