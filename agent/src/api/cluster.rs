//! `keelson.cluster.v1.Cluster`: the cluster as this node's gossip sees it, the control
//! plane's status, and the calls nodes make to each other (Raft, formation).

use std::sync::Arc;

use keelson_api::cluster::cluster_server::Cluster;
use keelson_api::cluster::{
    DeleteNodeRequest, DeleteNodeResponse, FormationReply, FormationRequest, LockReply,
    LockRequest, LockStatusRequest, LockStatusResponse, MembersRequest, MembersResponse,
    NodesRequest, NodesResponse, RaftReply, RaftRequest, RegisterReply, RegisterRequest,
    StatusRequest, StatusResponse, WriteReply, WriteRequest,
};
use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::control_plane::ControlPlane;

/// The cluster service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    context: Arc<ApiContext>,
}

impl ClusterService {
    /// A service over the agent's shared context.
    pub fn new(context: Arc<ApiContext>) -> ClusterService {
        ClusterService { context }
    }

    /// The control plane, or the status that says why there is none.
    async fn control(&self) -> Result<&Arc<ControlPlane>, Status> {
        let in_cluster = self
            .context
            .in_force
            .lock()
            .await
            .as_ref()
            .is_some_and(|config| config.cluster.is_some());
        if !in_cluster {
            return Err(Status::failed_precondition(
                "this node is in no cluster: its config has no cluster section",
            ));
        }
        match self.context.control.get() {
            Some(Ok(control)) => Ok(control),
            Some(Err(problem)) => Err(Status::failed_precondition(format!(
                "no control plane on this node: {problem}"
            ))),
            None => Err(Status::unavailable(
                "the control plane is not running yet (it starts once gossip runs)",
            )),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let config = self.context.in_force.lock().await;
        Ok(Response::new(crate::cluster::members_response(
            config.as_ref(),
            &self.context.gossip,
        )))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let cluster = {
            let config = self.context.in_force.lock().await;
            config
                .as_ref()
                .and_then(|config| config.cluster.as_ref())
                .map(|cluster| cluster.name.clone())
        };
        let Some(cluster) = cluster else {
            return Ok(Response::new(StatusResponse::default()));
        };
        let forwarded = request.metadata().contains_key("keelson-forwarded");
        let answer = match self.context.control.get() {
            Some(Ok(control)) => control.status(forwarded).await,
            Some(Err(problem)) => StatusResponse {
                enabled: true,
                cluster,
                problem: problem.clone(),
                ..StatusResponse::default()
            },
            None => StatusResponse {
                enabled: true,
                cluster,
                problem: match self.context.gossip.get() {
                    Some(Err(problem)) => format!("not gossiping: {problem}"),
                    _ => "starting: the control plane starts once gossip runs".into(),
                },
                ..StatusResponse::default()
            },
        };
        Ok(Response::new(answer))
    }

    async fn raft(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let body = self
            .control()
            .await?
            .raft_call(&request.call, &request.body)
            .await?;
        Ok(Response::new(RaftReply { body }))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let node = self
            .control()
            .await?
            .register(&request.into_inner().node)
            .await?;
        Ok(Response::new(RegisterReply { node }))
    }

    async fn nodes(
        &self,
        _request: Request<NodesRequest>,
    ) -> Result<Response<NodesResponse>, Status> {
        Ok(Response::new(self.control().await?.nodes().await?))
    }

    async fn delete_node(
        &self,
        request: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(
            self.control().await?.delete_node(&name).await?,
        ))
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let object = self
            .control()
            .await?
            .write_here(&request.into_inner().op)
            .await?;
        Ok(Response::new(WriteReply { object }))
    }

    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockReply>, Status> {
        Ok(Response::new(
            self.control().await?.lock(request.into_inner()).await?,
        ))
    }

    async fn lock_status(
        &self,
        _request: Request<LockStatusRequest>,
    ) -> Result<Response<LockStatusResponse>, Status> {
        Ok(Response::new(self.control().await?.lock_status().await?))
    }

    async fn formation(
        &self,
        request: Request<FormationRequest>,
    ) -> Result<Response<FormationReply>, Status> {
        let request = request.into_inner();
        self.control()
            .await?
            .formation_message(request.from, &request.message)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(FormationReply {}))
    }
}
