//! Raft's messages between nodes, over any transport that carries bytes to a named node.
//!
//! Each of openraft's three calls (append entries, vote, install snapshot) travels as JSON:
//! the request one way, `Result<response, RaftError>` back. [`serve`] answers a call on the
//! receiving side. The agent's transport is its mutual-TLS API (nodes authenticate each
//! other with the cluster's certificates); tests use an in-process one that can also cut
//! links, to partition a cluster.

use std::fmt;
use std::future::Future;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{ControlPlane, NodeAddr};

type NodeId = u64;

/// Which Raft call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// Replication and heartbeats.
    AppendEntries,
    /// Elections.
    Vote,
    /// A snapshot, for a follower too far behind.
    InstallSnapshot,
}

impl Call {
    /// The call's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Call::AppendEntries => "append-entries",
            Call::Vote => "vote",
            Call::InstallSnapshot => "install-snapshot",
        }
    }

    /// The call a wire name gives.
    pub fn from_name(name: &str) -> Option<Call> {
        [Call::AppendEntries, Call::Vote, Call::InstallSnapshot]
            .into_iter()
            .find(|call| call.name() == name)
    }
}

/// Why a call did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The node could not be reached (no route, refused, link cut): openraft backs off.
    Unreachable(String),
    /// The call failed on the way (timeout, broken connection, a bad answer).
    Failed(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Unreachable(why) => write!(f, "unreachable: {why}"),
            TransportError::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// Carries one call's bytes to a node and its answer back.
pub trait Transport: Clone + Send + Sync + 'static {
    /// Sends `body` as `call` to `target`; returns the answer's bytes.
    fn call(
        &self,
        target: &NodeAddr,
        call: Call,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// openraft's network factory over a transport.
#[derive(Clone)]
pub struct Network<T: Transport> {
    transport: T,
}

impl<T: Transport> Network<T> {
    /// The network over `transport`.
    pub fn new(transport: T) -> Network<T> {
        Network { transport }
    }
}

/// A connection to one node.
pub struct Connection<T: Transport> {
    transport: T,
    target: NodeId,
    node: NodeAddr,
}

impl<T: Transport> RaftNetworkFactory<ControlPlane> for Network<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Connection<T> {
        Connection {
            transport: self.transport.clone(),
            target,
            node: node.clone(),
        }
    }
}

impl<T: Transport> Connection<T> {
    async fn send<Q, A, E>(
        &self,
        call: Call,
        request: &Q,
    ) -> Result<A, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(request).expect("Raft requests serialise");
        let answer =
            self.transport
                .call(&self.node, call, body)
                .await
                .map_err(|error| match error {
                    TransportError::Unreachable(_) => {
                        RPCError::Unreachable(Unreachable::new(&error))
                    }
                    TransportError::Failed(_) => RPCError::Network(NetworkError::new(&error)),
                })?;
        let answer: Result<A, RaftError<NodeId, E>> = serde_json::from_slice(&answer)
            .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        answer.map_err(|error| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                error,
            ))
        })
    }
}

impl<T: Transport> RaftNetwork<ControlPlane> for Connection<T> {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<ControlPlane>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.send(Call::AppendEntries, &request).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<ControlPlane>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Call::InstallSnapshot, &request).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.send(Call::Vote, &request).await
    }
}

/// Answers a call that arrived for `raft`: the bytes to send back, or why the request
/// could not be read.
pub async fn serve(raft: &Raft<ControlPlane>, call: Call, body: &[u8]) -> Result<Vec<u8>, String> {
    fn read<Q: DeserializeOwned>(call: Call, body: &[u8]) -> Result<Q, String> {
        serde_json::from_slice(body)
            .map_err(|e| format!("a {} request that is not valid: {e}", call.name()))
    }
    fn answer<A: Serialize, E: Serialize>(result: Result<A, E>) -> Vec<u8> {
        serde_json::to_vec(&result).expect("Raft answers serialise")
    }
    Ok(match call {
        Call::AppendEntries => answer(raft.append_entries(read(call, body)?).await),
        Call::Vote => answer(raft.vote(read(call, body)?).await),
        Call::InstallSnapshot => answer(raft.install_snapshot(read(call, body)?).await),
    })
}
