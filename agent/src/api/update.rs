//! `keelson.update.v1.Update`: a thin layer over [`keelson_updater::UpdateEngine`].
//!
//! `Apply` receives the bundle as a stream of chunks and hands them to the engine on a
//! blocking thread through a small bounded channel, so the bundle is never held in memory
//! and a slow disk slows the upload down rather than filling memory.

use std::sync::Arc;

use keelson_api::access::Caller;
use keelson_api::roles::Role;
use keelson_api::update::update_server::Update;
use keelson_api::update::{
    apply_request, ApplyRequest, ApplyResponse, CancelRequest, CancelResponse, CheckRequest,
    CheckResponse, Progress, Release, RollbackRequest, RollbackResponse, SlotStatus, StatusRequest,
    StatusResponse,
};
use keelson_config::model::UpdatePolicy;
use keelson_update::slots::SlotState;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::machine::who;
use super::upload::read_upload;
use super::ApiContext;
use crate::system;
use keelson_updater::reboot::RebootGate;
use keelson_updater::{ApplySpec, UpdateEngine, UpdateError};

/// The update service.
#[derive(Debug, Clone)]
pub struct UpdateService {
    context: Arc<ApiContext>,
}

impl UpdateService {
    /// The service over the agent's `context`.
    pub fn new(context: Arc<ApiContext>) -> UpdateService {
        UpdateService { context }
    }

    fn engine(&self) -> Arc<UpdateEngine> {
        self.context.update.clone()
    }

    /// The `update` section of the config in force.
    async fn policy(&self) -> Option<UpdatePolicy> {
        self.context
            .in_force
            .lock()
            .await
            .as_ref()
            .and_then(|config| config.update_policy(&crate::fleet_lock::built_in_url()))
    }

    /// The channel a call names, else the configured one. Only an operator may point the
    /// node at another channel: a reader must not make the node fetch arbitrary URLs.
    async fn channel_for<T>(&self, request: &Request<T>, asked: &str) -> Result<String, Status> {
        if !asked.is_empty() {
            let role = request
                .extensions()
                .get::<Caller>()
                .and_then(|caller| caller.role);
            if role < Some(Role::Operator) {
                return Err(Status::permission_denied(
                    "naming a channel other than the configured one needs the operator role",
                ));
            }
            return Ok(asked.to_owned());
        }
        self.configured_channel().await
    }
}

impl UpdateService {
    /// Applies a bundle the node fetches: from `url`, or the channel's latest release.
    async fn apply_fetched(
        &self,
        channel: &str,
        latest: bool,
        url: &str,
        mut spec: ApplySpec,
    ) -> Result<keelson_updater::Applied, Status> {
        let url = if latest {
            // Apply is an operator's call already, so any channel may be named.
            let channel_url = if channel.is_empty() {
                self.configured_channel().await?
            } else {
                channel.to_owned()
            };
            let engine = self.engine();
            let checked = blocking(move || engine.check(&channel_url)).await?;
            let Some(release) = checked.latest.as_ref() else {
                return Err(Status::failed_precondition(format!(
                    "the node runs {}, and channel {} ({}) has nothing newer",
                    self.engine().running_version(),
                    checked.channel.name,
                    checked.url
                )));
            };
            spec.expect_version = Some(release.version.clone());
            keelson_update::channel::bundle_url(&checked.url, release)
        } else {
            url.to_owned()
        };
        let engine = self.engine();
        blocking(move || engine.apply_url(&url, &spec)).await
    }

    /// The configured channel.
    async fn configured_channel(&self) -> Result<String, Status> {
        self.policy()
            .await
            .and_then(|policy| policy.channel)
            .ok_or_else(|| {
                Status::failed_precondition(
                    "the node has no update channel: set update.channel in its config, or name one",
                )
            })
    }

    /// Applies a bundle uploaded in the call's stream.
    async fn apply_upload(
        &self,
        stream: Streaming<ApplyRequest>,
        spec: ApplySpec,
    ) -> Result<keelson_updater::Applied, Status> {
        let engine = self.engine();
        let chunk_of = |message: ApplyRequest| match message.item {
            Some(apply_request::Item::Chunk(chunk)) => Some(chunk),
            _ => None,
        };
        read_upload(stream, chunk_of, move |reader| engine.apply(reader, &spec))
            .await?
            .map_err(status_of)
    }
}

/// Runs blocking engine work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, UpdateError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(status_of)
}

/// Maps engine errors to gRPC codes an operator can act on.
fn status_of(error: UpdateError) -> Status {
    let message = error.to_string();
    match error {
        UpdateError::Bundle(_) => Status::invalid_argument(message),
        UpdateError::Policy(_) | UpdateError::Refused(_) => Status::failed_precondition(message),
        UpdateError::Channel { .. } | UpdateError::ChannelInconsistent { .. } => {
            Status::failed_precondition(message)
        }
        UpdateError::Source { .. } => Status::unavailable(message),
        UpdateError::Busy => Status::aborted(message),
        UpdateError::Unavailable(_) => Status::failed_precondition(message),
        UpdateError::Io(_) => Status::internal(message),
    }
}

#[tonic::async_trait]
impl Update for UpdateService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let engine = self.engine();
        let view = blocking(move || engine.status()).await?;
        let policy = self.policy().await;
        let reboot_policy = match RebootGate::resolve(policy.as_ref(), "") {
            (gate, None) => gate.name().to_owned(),
            (gate, Some(problem)) => format!("{} ({problem})", gate.name()),
        };
        let channel = policy.and_then(|policy| policy.channel).unwrap_or_default();
        Ok(Response::new(StatusResponse {
            slots: view
                .slots
                .iter()
                .map(|slot| SlotStatus {
                    slot: slot.slot.to_string(),
                    state: slot.state.name().to_owned(),
                    version: slot.version.clone(),
                    tries_left: match slot.state {
                        SlotState::Trial { tries_left } => tries_left,
                        _ => 0,
                    },
                    running: slot.slot == view.running,
                    is_default: slot.slot == view.default,
                    entry: slot.entry.clone(),
                })
                .collect(),
            running_slot: view.running.to_string(),
            default_slot: view.default.to_string(),
            last_error: view.last_error,
            failed_version: view.failed_version,
            progress: Some(Progress {
                phase: view.progress.phase,
                version: view.progress.version,
                done_bytes: view.progress.done,
                total_bytes: view.progress.total,
            }),
            trusted_keys: view.trusted_keys,
            reboot_policy,
            reboot_pending: view.reboot_pending.unwrap_or_default(),
            channel,
        }))
    }

    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let url = self
            .channel_for(&request, &request.get_ref().channel)
            .await?;
        let engine = self.engine();
        let checked = blocking(move || engine.check(&url)).await?;
        let release = |release: &keelson_update::channel::Release| Release {
            version: release.version.clone(),
            architecture: release.architecture.clone(),
            url: keelson_update::channel::bundle_url(&checked.url, release),
            size: release.size,
        };
        Ok(Response::new(CheckResponse {
            channel: checked.url.clone(),
            name: checked.channel.name.clone(),
            expires: checked.channel.expires.clone(),
            running_version: self.engine().running_version().to_owned(),
            releases: checked.channel.releases.iter().map(release).collect(),
            latest: checked.latest.as_ref().map(release),
        }))
    }

    async fn apply(
        &self,
        request: Request<Streaming<ApplyRequest>>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let caller = who(&request);
        let mut stream = request.into_inner();
        let options = match stream.message().await? {
            Some(ApplyRequest {
                item: Some(apply_request::Item::Options(options)),
            }) => options,
            _ => {
                return Err(Status::invalid_argument(
                    "the first Apply message must carry the options, then the bundle's bytes",
                ))
            }
        };
        info!("update requested by {caller}");
        let policy = self.policy().await;
        let spec = ApplySpec {
            allow_downgrade: options.allow_downgrade,
            health_timeout: UpdateEngine::health_timeout(policy.as_ref()),
            expect_version: None,
        };
        let applied = if options.latest || !options.url.is_empty() {
            self.apply_fetched(&options.channel, options.latest, &options.url, spec)
                .await?
        } else {
            self.apply_upload(stream, spec).await?
        };
        let (rebooting, reboot_pending) = if options.no_reboot || !self.context.manage_machine {
            (false, String::new())
        } else {
            let gate = RebootGate::of(policy.as_ref(), &system::hostname());
            match self.engine().schedule_reboot(gate) {
                None => (true, String::new()),
                Some(waiting) => (false, waiting),
            }
        };
        Ok(Response::new(ApplyResponse {
            slot: applied.slot.to_string(),
            version: applied.version,
            rebooting,
            bytes: applied.bytes,
            seconds: applied.seconds,
            verify_seconds: applied.verify_seconds,
            reboot_pending,
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        info!("rollback requested by {}", who(&request));
        let engine = self.engine();
        let (slot, version) = tokio::task::spawn_blocking(move || engine.rollback())
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(status_of)?;
        system::ask_pid1(
            keelson_contract::pid1::reboot_signal(),
            "reboot to roll back",
        );
        Ok(Response::new(RollbackResponse {
            slot: slot.to_string(),
            version,
        }))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        info!("update cancel requested by {}", who(&request));
        let engine = self.engine();
        let (slot, version) = tokio::task::spawn_blocking(move || engine.cancel())
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(status_of)?;
        Ok(Response::new(CancelResponse {
            slot: slot.to_string(),
            version,
        }))
    }
}
