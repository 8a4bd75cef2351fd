//! `image import|ls|rm`: the `keelson.images.v1` verbs.
//!
//! `image import` uploads the archive to every node at once, with a progress bar each; the
//! node verifies every blob as it arrives and unpacks the layers before it answers.

use keelson_api::images::images_client::ImagesClient;
use keelson_api::images::{
    import_request, Image, ImportOptions, ImportRequest, ImportResponse, ListRequest, ListResponse,
    PullRequest, RemoveRequest, RemoveResponse,
};

use crate::cli::{ImageImportArgs, ImagePullArgs, ImageRemoveArgs};
use crate::output::{self, Table};
use crate::session::{describe_status, report, upload_size, upload_stream, Answers, Session};

async fn client(
    session: &Session,
    node: &str,
) -> Result<ImagesClient<tonic::transport::Channel>, String> {
    Ok(ImagesClient::new(session.channel(node).await?)
        .max_decoding_message_size(keelson_api::MAX_REQUEST_BYTES))
}

/// A 12-digit id, as `docker images` shows it.
fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn age_of(image: &Image) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    output::age(u64::try_from(now - image.stored_at).unwrap_or(0))
}

/// `keelctl image import FILE [--name REF]`.
pub async fn import(session: &Session, arguments: &ImageImportArgs) -> anyhow::Result<bool> {
    let size = upload_size(&arguments.file)?;
    let source = arguments
        .file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let progress = indicatif::MultiProgress::new();
    let uploads = session.nodes.iter().map(|node| {
        let bar = progress.add(output::transfer_bar(size));
        bar.set_message(format!("{node}: uploading"));
        let options = ImportRequest {
            item: Some(import_request::Item::Options(ImportOptions {
                name: arguments.name.clone().unwrap_or_default(),
                source: source.clone(),
            })),
        };
        async move {
            let chunk = |bytes| ImportRequest {
                item: Some(import_request::Item::Chunk(bytes)),
            };
            let (upload, reader) = upload_stream(&arguments.file, options, chunk, bar.clone())?;
            let outcome = match client(session, node).await {
                Ok(mut client) => client
                    .import(upload)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| describe_status(&status)),
                Err(error) => Err(error),
            };
            reader.abort();
            bar.finish_and_clear();
            outcome
        }
    });
    let outcomes = futures::future::join_all(uploads).await;
    let answers: Answers<ImportResponse> = session.nodes.iter().cloned().zip(outcomes).collect();
    report(session.format, answers, |answers| {
        let mut text = String::new();
        for (node, imported) in answers {
            for image in &imported.images {
                text.push_str(&format!(
                    "{node}: imported {} ({}, {})\n",
                    image.name,
                    short_id(&image.id),
                    output::bytes(image.size)
                ));
            }
        }
        text
    })
}

/// `keelctl image pull REF`: every node at once, a progress bar each.
pub async fn pull(session: &Session, arguments: &ImagePullArgs) -> anyhow::Result<bool> {
    let progress = indicatif::MultiProgress::new();
    let pulls = session.nodes.iter().map(|node| {
        let bar = progress.add(output::transfer_bar(0));
        bar.set_message(format!("{node}: asking"));
        let request = PullRequest {
            reference: arguments.reference.clone(),
        };
        async move {
            let outcome = pull_one(session, node, request, &bar).await;
            bar.finish_and_clear();
            outcome
        }
    });
    let outcomes = futures::future::join_all(pulls).await;
    let answers: Answers<Image> = session.nodes.iter().cloned().zip(outcomes).collect();
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, image)| {
                format!(
                    "{node}: pulled {} ({}, {}) from {}\n",
                    image.name,
                    short_id(&image.id),
                    output::bytes(image.size),
                    image.source.trim_start_matches("registry ")
                )
            })
            .collect()
    })
}

async fn pull_one(
    session: &Session,
    node: &str,
    request: PullRequest,
    bar: &indicatif::ProgressBar,
) -> Result<Image, String> {
    let mut stream = client(session, node)
        .await?
        .pull(request)
        .await
        .map_err(|status| describe_status(&status))?
        .into_inner();
    while let Some(message) = stream
        .message()
        .await
        .map_err(|status| describe_status(&status))?
    {
        if let Some(image) = message.image {
            return Ok(image);
        }
        bar.set_length(message.total_bytes);
        bar.set_position(message.done_bytes);
        bar.set_message(format!("{node}: {}", message.endpoint));
    }
    Err("the node ended the pull without an answer".into())
}

/// `keelctl image ls`.
pub async fn list(session: &Session) -> anyhow::Result<bool> {
    let calls = session.nodes.iter().map(|node| async move {
        let outcome = match client(session, node).await {
            Ok(mut client) => client
                .list(ListRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| describe_status(&status)),
            Err(error) => Err(error),
        };
        (node.clone(), outcome)
    });
    let answers: Answers<ListResponse> = futures::future::join_all(calls).await;
    report(session.format, answers, |answers| {
        let mut table = Table::new(&["NODE", "IMAGE", "ID", "SIZE", "AGE"]);
        for (node, listed) in answers {
            for image in &listed.images {
                table.row(vec![
                    node.clone(),
                    image.name.clone(),
                    short_id(&image.id),
                    output::bytes(image.size),
                    age_of(image),
                ]);
            }
        }
        table.render()
    })
}

/// `keelctl image rm REF…`.
pub async fn remove(session: &Session, arguments: &ImageRemoveArgs) -> anyhow::Result<bool> {
    let calls = session.nodes.iter().map(|node| async move {
        let mut removed = Vec::new();
        let mut client = match client(session, node).await {
            Ok(client) => client,
            Err(error) => return (node.clone(), Err(error)),
        };
        for reference in &arguments.references {
            let request = RemoveRequest {
                reference: reference.clone(),
            };
            match client.remove(request).await {
                Ok(response) => removed.push(response.into_inner()),
                Err(status) => return (node.clone(), Err(describe_status(&status))),
            }
        }
        (node.clone(), Ok(Removed { removed }))
    });
    let answers = futures::future::join_all(calls).await;
    report(session.format, answers, |answers| {
        let mut text = String::new();
        for (node, removed) in answers {
            for response in &removed.removed {
                let name = response
                    .removed
                    .as_ref()
                    .map(|image| image.name.as_str())
                    .unwrap_or_default();
                text.push_str(&format!(
                    "{node}: removed {name} (freed {} blobs, {} layers)\n",
                    response.freed_blobs, response.freed_layers
                ));
            }
        }
        text
    })
}

/// What `image rm` removed on one node, for `-o json|yaml`.
#[derive(Debug, serde::Serialize)]
struct Removed {
    removed: Vec<RemoveResponse>,
}
