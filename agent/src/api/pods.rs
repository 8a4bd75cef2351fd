//! `keelson.pods.v1.Pods`: a thin layer over [`keelson_kubelet::pods::Kubelet`]. Pods
//! cross the API as `v1/Pod` JSON.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keelson_api::pods::pods_server::Pods;
use keelson_api::pods::{
    exec_request, ApplyRequest, ApplyResponse, DeleteRequest, EventsResponse, ExecRequest,
    ExecResponse, GetRequest, ListRequest, ListResponse, LogsRequest, LogsResponse, PodResponse,
    TopResponse,
};
use keelson_kubelet::pods::{Kubelet, PodsError};
use tonic::{Request, Response, Status};
use tracing::info;

use super::machine::who;
use super::ApiContext;

/// The kubelet, or why the node has none.
pub type SharedKubelet = std::sync::OnceLock<Result<Arc<Kubelet>, String>>;

/// The pods service.
#[derive(Debug, Clone)]
pub struct PodsService {
    context: Arc<ApiContext>,
}

impl PodsService {
    /// The service over the agent's `context`.
    pub fn new(context: Arc<ApiContext>) -> PodsService {
        PodsService { context }
    }

    fn kubelet(&self) -> Result<Arc<Kubelet>, Status> {
        match self.context.pods.get() {
            Some(Ok(kubelet)) => Ok(kubelet.clone()),
            Some(Err(reason)) => Err(Status::unavailable(format!(
                "this node runs no pods: {reason}"
            ))),
            None => Err(Status::unavailable(
                "the pod supervisor is starting; try again",
            )),
        }
    }
}

/// The gRPC status of a refusal.
pub fn status_of(error: PodsError) -> Status {
    match error {
        PodsError::Invalid(message) => Status::invalid_argument(message),
        PodsError::Conflict(message) => Status::already_exists(message),
        PodsError::NotFound(message) => Status::not_found(message),
        PodsError::Refused(message) => Status::failed_precondition(message),
        PodsError::Storage(message) => Status::internal(message),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Status> {
    serde_json::to_string(value).map_err(|error| Status::internal(error.to_string()))
}

/// The time `--since` or `--since-time` asks for.
fn since_of(request: &LogsRequest) -> Result<Option<k8s_openapi::jiff::Timestamp>, Status> {
    if request.since_seconds > 0 && !request.since_time.is_empty() {
        return Err(Status::invalid_argument(
            "logs takes --since or --since-time, not both",
        ));
    }
    if request.since_seconds > 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = (now.as_secs() as i64).saturating_sub(request.since_seconds);
        return Ok(k8s_openapi::jiff::Timestamp::new(seconds, now.subsec_nanos() as i32).ok());
    }
    if request.since_time.is_empty() {
        return Ok(None);
    }
    request
        .since_time
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(Some)
        .map_err(|error| {
            Status::invalid_argument(format!(
                "--since-time {:?} is not an RFC 3339 time (such as 2026-12-02T10:00:00Z): {error}",
                request.since_time
            ))
        })
}

fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        keelson_kubelet::pod::DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogsResponse, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Pods for PodsService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let caller = who(&request);
        let pod = keelson_kubelet::pod::parse_strict(&request.get_ref().pod_json)
            .map_err(Status::invalid_argument)?;
        let (pod, created) = self.kubelet()?.apply(pod).map_err(status_of)?;
        if created {
            info!(caller = %caller, pod = pod.metadata.name.as_deref().unwrap_or_default(), "pod applied");
        }
        Ok(Response::new(ApplyResponse {
            pod_json: to_json(&pod)?,
            created,
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let namespace = &request.get_ref().namespace;
        let items = self
            .kubelet()?
            .list((!namespace.is_empty()).then_some(namespace.as_str()));
        let list = serde_json::json!({
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {},
            "items": items,
        });
        Ok(Response::new(ListResponse {
            pod_list_json: list.to_string(),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<PodResponse>, Status> {
        let request = request.get_ref();
        let namespace = namespace_or_default(&request.namespace);
        let pod = self
            .kubelet()?
            .get(namespace, &request.name)
            .ok_or_else(|| {
                Status::not_found(format!("pod {namespace}/{} not found", request.name))
            })?;
        Ok(Response::new(PodResponse {
            pod_json: to_json(&pod)?,
        }))
    }

    async fn events(
        &self,
        request: Request<GetRequest>,
    ) -> Result<Response<EventsResponse>, Status> {
        let request = request.get_ref();
        let namespace = namespace_or_default(&request.namespace);
        let items = self
            .kubelet()?
            .events(namespace, &request.name)
            .map_err(status_of)?;
        let list = serde_json::json!({
            "apiVersion": "v1",
            "kind": "EventList",
            "metadata": {},
            "items": items,
        });
        Ok(Response::new(EventsResponse {
            event_list_json: list.to_string(),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<PodResponse>, Status> {
        let caller = who(&request);
        let request = request.get_ref();
        let namespace = namespace_or_default(&request.namespace);
        let grace = request
            .override_grace_period
            .then_some(request.grace_period_seconds);
        let pod = self
            .kubelet()?
            .delete(namespace, &request.name, grace)
            .await
            .map_err(status_of)?;
        info!(caller = %caller, pod = %request.name, "pod deleted");
        Ok(Response::new(PodResponse {
            pod_json: to_json(&pod)?,
        }))
    }

    async fn top(&self, request: Request<ListRequest>) -> Result<Response<TopResponse>, Status> {
        let namespace = &request.get_ref().namespace;
        let usage = self
            .kubelet()?
            .top(
                (!namespace.is_empty()).then_some(namespace.as_str()),
                Duration::from_secs(1),
            )
            .await;
        let pods = usage
            .into_iter()
            .map(|pod| keelson_api::pods::PodUsage {
                namespace: pod.namespace,
                name: pod.name,
                containers: pod
                    .containers
                    .into_iter()
                    .map(|container| keelson_api::pods::ContainerUsage {
                        name: container.name,
                        cpu_millicores: container.cpu_millicores,
                        memory_bytes: container.memory_bytes,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(TopResponse { pods }))
    }

    type ExecStream = ExecStream;

    async fn exec(
        &self,
        request: Request<tonic::Streaming<ExecRequest>>,
    ) -> Result<Response<ExecStream>, Status> {
        let caller = who(&request);
        let mut requests = request.into_inner();
        let start = match requests.message().await? {
            Some(ExecRequest {
                item: Some(exec_request::Item::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "Exec's first message says what to start",
                ))
            }
        };
        info!(caller = %caller, pod = %start.name, command = ?start.command, "exec");
        let (sender, receiver) = tokio::sync::mpsc::channel(32);
        super::exec::start(self.kubelet()?, start, requests, sender).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogStream>, Status> {
        let request = request.into_inner();
        let kubelet = self.kubelet()?;
        let namespace = namespace_or_default(&request.namespace).to_owned();
        let container = (!request.container.is_empty()).then_some(request.container.clone());
        let (path, _) = kubelet
            .log_file(
                &namespace,
                &request.name,
                container.as_deref(),
                request.previous,
            )
            .map_err(status_of)?;
        let options = keelson_kubelet::logs::RenderOptions {
            tail: (request.tail > 0).then_some(request.tail as usize),
            timestamps: request.timestamps,
            since: since_of(&request)?,
        };
        let follow = request.follow && !request.previous;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        // Files are read on a blocking thread: the first answer from every file of the run,
        // then, following, the whole lines each poll finds, through rotations, until the
        // run that writes the log is over and all it wrote has been sent.
        tokio::task::spawn_blocking(move || {
            let (held, mut follower) = keelson_kubelet::logs::Follower::start(&path);
            let first = keelson_kubelet::logs::render(&held, options);
            if sender
                .blocking_send(Ok(LogsResponse { data: first }))
                .is_err()
                || !follow
            {
                return;
            }
            let options = keelson_kubelet::logs::RenderOptions {
                tail: None,
                ..options
            };
            loop {
                let still_writing = kubelet
                    .log_file(&namespace, &request.name, container.as_deref(), false)
                    .map(|(current, running)| current == path && running)
                    .unwrap_or(false);
                let fresh = follower.read();
                if !fresh.is_empty() {
                    let data = keelson_kubelet::logs::render(&fresh, options);
                    if sender.blocking_send(Ok(LogsResponse { data })).is_err() {
                        return;
                    }
                }
                if !still_writing {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
