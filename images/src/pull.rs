//! Pulling images from registries (distribution API v2) through `oci-client`: mirrors
//! first, then the registry; HTTPS with the root's CA bundle plus the config's authorities;
//! plain HTTP only for hosts listed as insecure; basic credentials, and bearer tokens where
//! a registry's challenge asks for them. Layers download concurrently, each streamed into
//! the store through the verifying write; a stalled endpoint times out within seconds and
//! the pull moves on to the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::digest::Digest;
use crate::error::{error_chain, ImageError};
use crate::manifest::{self, Document};
use crate::reference::{Reference, DEFAULT_REGISTRY};
use crate::{ImageRecord, ImageStore};

/// How long a connection or a read may stall before the endpoint is given up.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Blobs downloaded at once.
pub const CONCURRENT_DOWNLOADS: usize = 3;

/// Where and how to pull: the machine config's `registries` and `certificateAuthorities`.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Mirror base URLs per registry host, tried in order before the registry.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (`host[:port]`) reached over plain HTTP.
    pub insecure: BTreeSet<String>,
    /// Credentials per host: user name and password.
    pub auth: BTreeMap<String, (String, String)>,
    /// Extra certificate authorities (PEM).
    pub authorities: Vec<String>,
    /// Stall timeout (connect and each read); [`DEFAULT_STALL_TIMEOUT`] when zero.
    pub stall_timeout: Duration,
}

/// How far a pull got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// The endpoint being pulled from (`https://ghcr.io`).
    pub endpoint: String,
    /// Bytes of blobs received.
    pub done_bytes: u64,
    /// Bytes of blobs to receive (known once the manifest is read).
    pub total_bytes: u64,
}

/// One place to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP (listed as insecure).
    pub plain_http: bool,
}

impl Endpoint {
    /// `https://host` or `http://host`.
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// The endpoints for `registry`, in the order they are tried: its mirrors, then itself
/// (Docker Hub's API lives at `registry-1.docker.io`). Pure.
pub fn endpoints(registry: &str, settings: &RegistrySettings) -> Vec<Endpoint> {
    let mut list: Vec<Endpoint> = settings
        .mirrors
        .get(registry)
        .into_iter()
        .flatten()
        .filter_map(|url| {
            let (scheme, rest) = url.split_once("://")?;
            let host = rest.split('/').next()?.to_owned();
            Some(Endpoint {
                plain_http: scheme == "http",
                host,
            })
        })
        .collect();
    let host = if registry == DEFAULT_REGISTRY {
        "registry-1.docker.io".to_owned()
    } else {
        registry.to_owned()
    };
    list.push(Endpoint {
        plain_http: settings.insecure.contains(registry),
        host,
    });
    list
}

/// Pulls `reference` into `store` and records it. `progress` hears how far it got. The
/// caller holds the store's operation lock: garbage collected during a pull would take
/// blobs not yet recorded.
pub async fn pull(
    store: Arc<ImageStore>,
    reference: &str,
    settings: &RegistrySettings,
    progress: impl Fn(PullProgress) + Send + Sync,
) -> Result<ImageRecord, ImageError> {
    let reference = Reference::parse(reference)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut attempts = Vec::new();
    for endpoint in endpoints(&reference.registry, settings) {
        let outcome = pull_from(&store, &reference, &endpoint, settings, &progress).await;
        match outcome {
            Ok((index, manifest)) => {
                let source = format!("registry {}", endpoint.host);
                let name = reference_without_digest(&reference);
                let blocking_store = store.clone();
                let record = tokio::task::spawn_blocking(move || {
                    let record = blocking_store.describe(&name, index, &manifest, &source)?;
                    blocking_store.record(std::slice::from_ref(&record))?;
                    Ok::<_, ImageError>(record)
                })
                .await
                .map_err(|error| ImageError::Pull {
                    reference: reference.to_string(),
                    attempts: vec![error.to_string()],
                });
                return keep_nothing_on_failure(&store, record.and_then(|record| record)).await;
            }
            Err(attempt) => attempts.push(attempt),
        }
    }
    let error = ImageError::Pull {
        reference: reference.to_string(),
        attempts,
    };
    keep_nothing_on_failure(&store, Err(error)).await
}

async fn keep_nothing_on_failure<T>(
    store: &Arc<ImageStore>,
    outcome: Result<T, ImageError>,
) -> Result<T, ImageError> {
    if outcome.is_err() {
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || store.collect_garbage()).await;
    }
    outcome
}

/// The name a pulled image is recorded under: with its tag (a digest-only reference keeps
/// its digest as the name).
fn reference_without_digest(reference: &Reference) -> Reference {
    match &reference.tag {
        Some(_) => Reference {
            digest: None,
            ..reference.clone()
        },
        None => reference.clone(),
    }
}

fn client_for(endpoint: &Endpoint, settings: &RegistrySettings) -> Client {
    let timeout = if settings.stall_timeout.is_zero() {
        DEFAULT_STALL_TIMEOUT
    } else {
        settings.stall_timeout
    };
    Client::new(ClientConfig {
        protocol: if endpoint.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: settings
            .authorities
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            })
            .collect(),
        read_timeout: Some(timeout),
        connect_timeout: Some(timeout),
        max_concurrent_download: CONCURRENT_DOWNLOADS,
        platform_resolver: None,
        user_agent: concat!("keelson/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    })
}

/// One endpoint's attempt; the error is a line naming the endpoint and what to do.
async fn pull_from(
    store: &Arc<ImageStore>,
    reference: &Reference,
    endpoint: &Endpoint,
    settings: &RegistrySettings,
    progress: &(impl Fn(PullProgress) + Send + Sync),
) -> Result<(Option<Digest>, Digest), String> {
    let client = client_for(endpoint, settings);
    let auth = match settings
        .auth
        .get(&endpoint.host)
        .or_else(|| settings.auth.get(&reference.registry))
    {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let at = |digest_or_tag: &str| {
        if digest_or_tag.contains(':') {
            oci_client::Reference::with_digest(
                endpoint.host.clone(),
                reference.repository.clone(),
                digest_or_tag.to_owned(),
            )
        } else {
            oci_client::Reference::with_tag(
                endpoint.host.clone(),
                reference.repository.clone(),
                digest_or_tag.to_owned(),
            )
        }
    };
    let describe = |error: OciDistributionError| describe_error(endpoint, reference, error);
    let mut report = PullProgress {
        endpoint: endpoint.url(),
        ..PullProgress::default()
    };
    progress(report.clone());

    let wanted = reference.manifest_tag_or_digest();
    let (bytes, _) = client
        .pull_manifest_raw(&at(&wanted), &auth, manifest::ACCEPTED)
        .await
        .map_err(describe)?;
    let first = store_document(store, &bytes, reference.digest.as_ref(), &wanted).await?;
    let what = reference.to_string();
    let (index, manifest_digest, manifest) = match manifest::parse_document(&what, &bytes, None)
        .map_err(|error| error.to_string())?
    {
        Document::Manifest(manifest) => (None, first, manifest),
        Document::Index(index) => {
            let (os, architecture) = manifest::node_platform();
            let chosen = manifest::select_platform(&what, &index, os, architecture)
                .map_err(|error| error.to_string())?;
            let digest: Digest = chosen
                .digest()
                .to_string()
                .parse()
                .map_err(|error: crate::digest::DigestError| error.to_string())?;
            let (bytes, _) = client
                .pull_manifest_raw(&at(&digest.to_string()), &auth, manifest::ACCEPTED)
                .await
                .map_err(describe)?;
            let stored = store_document(store, &bytes, Some(&digest), &digest.to_string()).await?;
            match manifest::parse_document(&what, &bytes, None)
                .map_err(|error| error.to_string())?
            {
                Document::Manifest(manifest) => (Some(first), stored, manifest),
                Document::Index(_) => {
                    return Err(format!(
                        "{what}: an index names another index for {os}/{architecture}"
                    ))
                }
            }
        }
    };

    let mut blobs = vec![(manifest.config().clone(), "the config".to_owned())];
    for (number, layer) in manifest.layers().iter().enumerate() {
        blobs.push((layer.clone(), format!("layer {} of {what}", number + 1)));
    }
    report.total_bytes = blobs.iter().map(|(descriptor, _)| descriptor.size()).sum();
    let done = Arc::new(AtomicU64::new(0));
    progress(report.clone());
    let downloads = blobs.into_iter().map(|(descriptor, label)| {
        let client = &client;
        let at = &at;
        let done = done.clone();
        let describe = &describe;
        async move {
            let digest: Digest = descriptor
                .digest()
                .to_string()
                .parse()
                .map_err(|error: crate::digest::DigestError| error.to_string())?;
            if store.store().has_blob(&digest) {
                done.fetch_add(descriptor.size(), Ordering::Relaxed);
                return Ok(());
            }
            let stream = client
                .pull_blob_stream(&at(&digest.to_string()), digest.to_string().as_str())
                .await
                .map_err(describe)?;
            let counted = {
                let done = done.clone();
                stream.stream.inspect_ok(move |chunk| {
                    done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                })
            };
            write_stream(store, counted, digest, descriptor.size(), label).await
        }
    });
    let mut downloads = futures::stream::iter(downloads).buffer_unordered(CONCURRENT_DOWNLOADS);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            next = downloads.next() => match next {
                Some(Ok(())) => {}
                Some(Err(error)) => return Err(format!("{}: {error}", endpoint.url())),
                None => break,
            },
            _ = ticker.tick() => {
                report.done_bytes = done.load(Ordering::Relaxed);
                progress(report.clone());
            }
        }
    }
    report.done_bytes = report.total_bytes;
    progress(report);
    Ok((index, manifest_digest))
}

/// Stores a manifest or index, checking it against the digest that named it.
async fn store_document(
    store: &Arc<ImageStore>,
    bytes: &[u8],
    expected: Option<&Digest>,
    what: &str,
) -> Result<Digest, String> {
    let store = store.clone();
    let bytes = bytes.to_vec();
    let expected = expected.cloned();
    let what = format!("the manifest {what}");
    tokio::task::spawn_blocking(move || {
        store
            .store()
            .write_blob(&bytes[..], expected.as_ref(), None, &what)
            .map(|(digest, _)| digest)
            .map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| error.to_string())?
}

/// Streams a blob into the store on a blocking thread, verified against `digest` and
/// `size`.
async fn write_stream(
    store: &Arc<ImageStore>,
    stream: impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin + 'static,
    digest: Digest,
    size: u64,
    what: String,
) -> Result<(), String> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    let store = store.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let reader = StreamReader {
            chunks: receiver,
            current: bytes::Bytes::new(),
        };
        store
            .store()
            .write_blob(reader, Some(&digest), Some(size), &what)
            .map(|_| ())
            .map_err(|error| error.to_string())
    });
    let mut stream = stream;
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        if sender.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(sender);
    writer.await.map_err(|error| error.to_string())?
}

struct StreamReader {
    chunks: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    current: bytes::Bytes,
}

impl std::io::Read for StreamReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => return Err(error),
                None => return Ok(0),
            }
        }
        let count = buffer.len().min(self.current.len());
        buffer[..count].copy_from_slice(&self.current[..count]);
        self.current = self.current.slice(count..);
        Ok(count)
    }
}

/// What a registry's refusal means, and what to do about it.
fn describe_error(
    endpoint: &Endpoint,
    reference: &Reference,
    error: OciDistributionError,
) -> String {
    let url = endpoint.url();
    let image = format!(
        "{}:{}",
        reference.repository,
        reference.manifest_tag_or_digest()
    );
    match &error {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => format!(
            "{url} refused access to {image} ({error}): give credentials for {} under \
             registries.auth in the machine config",
            endpoint.host
        ),
        OciDistributionError::ImageManifestNotFoundError(_) => {
            format!("{url} has no {image}: check the name and tag")
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            format!("{url} has no {image}: check the name and tag")
        }
        OciDistributionError::ServerError { code, .. } if *code >= 500 => format!(
            "{url} answered {code} for {image}: the registry is failing; try again later or \
             configure a mirror under registries.mirrors"
        ),
        OciDistributionError::ServerError { code: 404, .. } => {
            format!("{url} has no {image}: check the name and tag")
        }
        OciDistributionError::RequestError(request) if request.is_timeout() => {
            format!("{url} stalled (no answer within the stall timeout); moved on")
        }
        _ => format!("{url}: {}", error_chain(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_and_docker_hub_is_its_api_host() {
        let mut settings = RegistrySettings::default();
        settings.mirrors.insert(
            "docker.io".into(),
            vec![
                "http://10.0.2.100:5000".into(),
                "https://mirror.example/v2".into(),
            ],
        );
        settings.insecure.insert("10.0.2.100:5000".into());
        let list = endpoints("docker.io", &settings);
        let urls: Vec<String> = list.iter().map(Endpoint::url).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.2.100:5000",
                "https://mirror.example",
                "https://registry-1.docker.io"
            ]
        );
        settings.insecure.insert("registry.local:5000".into());
        let urls: Vec<String> = endpoints("registry.local:5000", &settings)
            .iter()
            .map(Endpoint::url)
            .collect();
        assert_eq!(urls, ["http://registry.local:5000"]);
    }
}
