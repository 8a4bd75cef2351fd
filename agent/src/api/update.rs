//! `keelson.update.v1.Update`: a thin layer over [`crate::update::UpdateEngine`].
//!
//! `Apply` receives the bundle as a stream of chunks and hands them to the engine on a
//! blocking thread through a small bounded channel, so the bundle is never held in memory
//! and a slow disk slows the upload down rather than filling memory.

use std::sync::Arc;

use keelson_api::update::update_server::Update;
use keelson_api::update::{
    apply_request, ApplyRequest, ApplyResponse, CancelRequest, CancelResponse, Progress,
    RollbackRequest, RollbackResponse, SlotStatus, StatusRequest, StatusResponse,
};
use keelson_update::slots::SlotState;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::machine::who;
use super::ApiContext;
use crate::system;
use crate::update::{UpdateEngine, UpdateError};

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
}

/// Maps engine errors to gRPC codes an operator can act on.
fn status_of(error: UpdateError) -> Status {
    let message = error.to_string();
    match error {
        UpdateError::Bundle(_) => Status::invalid_argument(message),
        UpdateError::Policy(_) | UpdateError::Refused(_) => Status::failed_precondition(message),
        UpdateError::Busy => Status::aborted(message),
        UpdateError::Unavailable(_) => Status::failed_precondition(message),
        UpdateError::Io(_) => Status::internal(message),
    }
}

/// Reads the upload's chunks on a blocking thread.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
    current: Vec<u8>,
    offset: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Some(Err(error)) => return Err(error),
                None => return Ok(0),
            }
        }
        let count = buffer.len().min(self.current.len() - self.offset);
        buffer[..count].copy_from_slice(&self.current[self.offset..self.offset + count]);
        self.offset += count;
        Ok(count)
    }
}

#[tonic::async_trait]
impl Update for UpdateService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let engine = self.engine();
        let view = tokio::task::spawn_blocking(move || engine.status())
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(status_of)?;
        let policy = self
            .context
            .in_force
            .lock()
            .await
            .as_ref()
            .and_then(|config| config.update.as_ref())
            .map(|update| {
                if update.fleet_lock.is_some() {
                    "fleet-lock".to_owned()
                } else {
                    "immediate".to_owned()
                }
            })
            .unwrap_or_else(|| "immediate".to_owned());
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
            reboot_policy: policy,
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
        let health_timeout =
            UpdateEngine::health_timeout(self.context.in_force.lock().await.as_ref());
        let (sender, chunks) = tokio::sync::mpsc::channel(8);
        let engine = self.engine();
        let allow_downgrade = options.allow_downgrade;
        let writer = tokio::task::spawn_blocking(move || {
            let reader = ChunkReader {
                chunks,
                current: Vec::new(),
                offset: 0,
            };
            engine.apply(reader, allow_downgrade, health_timeout)
        });
        // Feed the writer until the upload ends or the writer stops listening (it failed).
        loop {
            let item = match stream.message().await {
                Ok(Some(ApplyRequest {
                    item: Some(apply_request::Item::Chunk(chunk)),
                })) => Ok(chunk),
                Ok(Some(_)) => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "Apply carries options only in its first message",
                )),
                Ok(None) => break,
                Err(status) => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("the upload broke off: {}", status.message()),
                )),
            };
            let failed = item.is_err();
            if sender.send(item).await.is_err() || failed {
                break;
            }
        }
        drop(sender);
        let applied = writer
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(status_of)?;
        let rebooting = !options.no_reboot && self.context.manage_machine;
        if rebooting {
            system::ask_pid1(
                keelson_init::power::reboot_signal(),
                "reboot into the update",
            );
        }
        Ok(Response::new(ApplyResponse {
            slot: applied.slot.to_string(),
            version: applied.version,
            rebooting,
            bytes: applied.bytes,
            seconds: applied.seconds,
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
        system::ask_pid1(keelson_init::power::reboot_signal(), "reboot to roll back");
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
