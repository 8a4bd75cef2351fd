//! `keelson.cluster.v1.Cluster`: the cluster as this node's gossip sees it.

use std::sync::Arc;

use keelson_api::cluster::cluster_server::Cluster;
use keelson_api::cluster::{MembersRequest, MembersResponse};
use tonic::{Request, Response, Status};

use super::ApiContext;

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
}
