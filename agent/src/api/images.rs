//! `keelson.images.v1.Images`: a thin layer over [`keelson_images::ImageStore`] and its
//! registry client.
//!
//! Operations that change the store (import, pull, remove) run one at a time under the
//! store's operation lock: garbage collected in the middle of a pull would take blobs not
//! yet recorded. Listing needs no lock. File work runs on blocking threads; an import
//! reads its archive straight from the upload.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keelson_api::images::images_server::Images;
use keelson_api::images::{
    import_request, Image, ImportRequest, ImportResponse, Layer, ListRequest, ListResponse,
    PullRequest, PullResponse, RemoveRequest, RemoveResponse,
};
use keelson_config::MachineConfig;
use keelson_images::pull::RegistrySettings;
use keelson_images::{ImageError, ImageRecord, ImageStore};
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::machine::who;
use super::upload::read_upload;
use super::ApiContext;

/// The store and its operation lock.
#[derive(Debug)]
pub struct ImageStoreHandle {
    /// The store.
    pub store: Arc<ImageStore>,
    /// Held by every operation that changes the store.
    pub operations: tokio::sync::Mutex<()>,
}

/// The store, or why the node has none.
pub type SharedImageStore = Result<Arc<ImageStoreHandle>, String>;

/// The images service.
#[derive(Debug, Clone)]
pub struct ImagesService {
    context: Arc<ApiContext>,
}

impl ImagesService {
    /// The service over the agent's `context`.
    pub fn new(context: Arc<ApiContext>) -> ImagesService {
        ImagesService { context }
    }

    fn handle(&self) -> Result<Arc<ImageStoreHandle>, Status> {
        self.context.images.clone().map_err(|reason| {
            Status::unavailable(format!("the image store is not available: {reason}"))
        })
    }
}

/// Runs `work` on the store on a blocking thread.
async fn blocking<T: Send + 'static>(
    store: Arc<ImageStore>,
    work: impl FnOnce(&ImageStore) -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(move || work(&store).map_err(status_of))
        .await
        .map_err(|error| Status::internal(error.to_string()))?
}

/// Where and how this node pulls: its config's `registries` and `certificateAuthorities`.
pub fn registry_settings(config: Option<&MachineConfig>) -> RegistrySettings {
    let Some(config) = config else {
        return RegistrySettings::default();
    };
    let registries = &config.registries;
    RegistrySettings {
        mirrors: registries
            .mirrors
            .iter()
            .map(|(host, mirror)| (host.clone(), mirror.endpoints.clone()))
            .collect(),
        insecure: registries.insecure.iter().cloned().collect(),
        auth: registries
            .auth
            .iter()
            .map(|(host, auth)| (host.clone(), (auth.username.clone(), auth.password.clone())))
            .collect(),
        authorities: config.certificate_authorities.clone(),
        stall_timeout: std::time::Duration::ZERO,
    }
}

/// The API's form of a record.
pub fn image_message(record: &ImageRecord) -> Image {
    Image {
        name: record.name.clone(),
        id: record.manifest.to_string(),
        index: record
            .index
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        config: record.config.to_string(),
        size: record.size,
        stored_at: record.stored_at,
        source: record.source.clone(),
        layers: record
            .layers
            .iter()
            .map(|layer| Layer {
                blob: layer.blob.to_string(),
                diff_id: layer.diff_id.to_string(),
                media_type: layer.media_type.clone(),
                size: layer.size,
            })
            .collect(),
    }
}

/// Maps store errors to gRPC codes an operator can act on.
fn status_of(error: ImageError) -> Status {
    let message = error.to_string();
    match error {
        ImageError::NotFound { .. } => Status::not_found(message),
        ImageError::DiskFull { .. } => Status::resource_exhausted(message),
        ImageError::Io { .. } => Status::internal(message),
        ImageError::Source { .. } => Status::aborted(message),
        ImageError::Pull { .. } => Status::unavailable(message),
        _ => Status::invalid_argument(message),
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<PullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Images for ImagesService {
    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let records = blocking(self.handle()?.store.clone(), |store| store.list()).await?;
        Ok(Response::new(ListResponse {
            images: records.iter().map(image_message).collect(),
        }))
    }

    async fn import(
        &self,
        request: Request<Streaming<ImportRequest>>,
    ) -> Result<Response<ImportResponse>, Status> {
        let caller = who(&request);
        let mut stream = request.into_inner();
        let options = match stream.message().await? {
            Some(ImportRequest {
                item: Some(import_request::Item::Options(options)),
            }) => options,
            _ => {
                return Err(Status::invalid_argument(
                    "Import's first message carries its options",
                ))
            }
        };
        let handle = self.handle()?;
        let _operation = handle.operations.lock().await;
        let store = handle.store.clone();
        let source = if options.source.is_empty() {
            "the upload".to_owned()
        } else {
            options.source.clone()
        };
        let name = (!options.name.is_empty()).then(|| options.name.clone());
        let chunk_of = |message: ImportRequest| match message.item {
            Some(import_request::Item::Chunk(chunk)) => Some(chunk),
            _ => None,
        };
        let imported = read_upload(stream, chunk_of, move |reader| {
            store
                .import_archive(reader, &source, name.as_deref())
                .map_err(status_of)
        })
        .await??;
        for record in &imported {
            info!("{caller} imported {} ({})", record.name, record.manifest);
        }
        Ok(Response::new(ImportResponse {
            images: imported.iter().map(image_message).collect(),
        }))
    }

    type PullStream = PullStream;

    async fn pull(
        &self,
        request: Request<PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let caller = who(&request);
        let reference = request.into_inner().reference;
        let handle = self.handle()?;
        let settings = registry_settings(self.context.in_force.lock().await.as_ref());
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<PullResponse, Status>>(16);
        tokio::spawn(async move {
            let _operation = handle.operations.lock().await;
            let progress_sender = sender.clone();
            let pulled = keelson_images::pull::pull(
                handle.store.clone(),
                &reference,
                &settings,
                move |progress| {
                    // A slow client misses progress lines rather than slowing the pull.
                    let _ = progress_sender.try_send(Ok(PullResponse {
                        endpoint: progress.endpoint,
                        done_bytes: progress.done_bytes,
                        total_bytes: progress.total_bytes,
                        image: None,
                    }));
                },
            )
            .await;
            let last = match pulled {
                Ok(record) => {
                    info!("{caller} pulled {} ({})", record.name, record.manifest);
                    Ok(PullResponse {
                        endpoint: record.source.clone(),
                        done_bytes: record.size,
                        total_bytes: record.size,
                        image: Some(image_message(&record)),
                    })
                }
                Err(error) => Err(status_of(error)),
            };
            let _ = sender.send(last).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<RemoveResponse>, Status> {
        let caller = who(&request);
        let reference = request.into_inner().reference;
        let handle = self.handle()?;
        let _operation = handle.operations.lock().await;
        let (removed, freed) =
            blocking(handle.store.clone(), move |store| store.remove(&reference)).await?;
        info!("{caller} removed the image {}", removed.name);
        Ok(Response::new(RemoveResponse {
            removed: Some(image_message(&removed)),
            freed_blobs: u32::try_from(freed.blobs.len()).unwrap_or(u32::MAX),
            freed_layers: u32::try_from(freed.layers.len()).unwrap_or(u32::MAX),
        }))
    }
}

/// The kubelet's way to the image store: pulls run under the store's operation lock, like
/// the Images service's own changes, with the config in force. Holds and releases do not
/// take it (the store keeps its records consistent itself), so a container whose image is
/// present starts while another pod's pull waits for a slow registry.
pub struct KubeletImageAccess {
    /// The store.
    pub handle: Arc<ImageStoreHandle>,
    /// The agent's context, for the registries of the config in force (weak: the context
    /// owns the kubelet).
    pub context: std::sync::Weak<ApiContext>,
}

impl keelson_kubelet::engine::ImageAccess for KubeletImageAccess {
    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        policy: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<ImageRecord, String>> {
        Box::pin(async move {
            let store = self.handle.store.clone();
            let stored = {
                let reference = reference.to_owned();
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.get(&reference))
                    .await
                    .map_err(|error| error.to_string())?
            };
            match (policy, stored) {
                ("Never", Ok(image)) | ("IfNotPresent", Ok(image)) => return Ok(image),
                ("Never", Err(error)) => {
                    return Err(format!(
                        "{error}; the pod's imagePullPolicy is Never: import or pull it first (keelctl image import|pull)"
                    ))
                }
                _ => {}
            }
            let settings = match self.context.upgrade() {
                Some(context) => registry_settings(context.in_force.lock().await.as_ref()),
                None => RegistrySettings::default(),
            };
            let _operation = self.handle.operations.lock().await;
            info!(image = reference, "pulling for a pod");
            keelson_images::pull::pull(store, reference, &settings, |_| {})
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn hold<'a>(
        &'a self,
        run: &'a str,
        image: &'a ImageRecord,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (store, run, layers) =
                (self.handle.store.clone(), run.to_owned(), image.diff_ids());
            tokio::task::spawn_blocking(move || store.hold(&run, layers))
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())
        })
    }

    fn release<'a>(&'a self, run: &'a str) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let (store, run) = (self.handle.store.clone(), run.to_owned());
            let released = tokio::task::spawn_blocking(move || store.release(&run)).await;
            if let Ok(Err(error)) = released {
                tracing::warn!("cannot release a container's layers: {error}");
            }
        })
    }
}
