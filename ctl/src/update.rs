//! `upgrade`, `rollback` and `update status|check|cancel`: the `keelson.update.v1` verbs.
//!
//! `upgrade --bundle` streams the bundle file in 1 MiB chunks with a progress bar; the node
//! checks the signature from the first bytes, so a bad bundle fails at once. Without a file
//! the node fetches the bundle itself (`--url`, or its channel's latest release) while
//! the command shows the node's own progress. With `--wait` the
//! command follows the node through its reboot until the new version is blessed, and
//! fails (naming the node's own error) when the node rolled back instead.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use keelson_api::update::update_client::UpdateClient;
use keelson_api::update::{
    apply_request, ApplyOptions, ApplyRequest, CancelRequest, CheckRequest, CheckResponse,
    RollbackRequest, StatusRequest, StatusResponse,
};

use crate::cli::{CheckArgs, UpgradeArgs, WaitArgs};
use crate::machine::current_boot;
use crate::output::{self, Table};
use crate::session::{describe_status, report, upload_stream, Answers, Session};

async fn client(
    session: &Session,
    node: &str,
) -> Result<UpdateClient<tonic::transport::Channel>, String> {
    Ok(UpdateClient::new(session.channel(node).await?)
        .max_encoding_message_size(keelson_api::MAX_REQUEST_BYTES))
}

async fn status_of(session: &Session, node: &str) -> Result<StatusResponse, String> {
    let mut request = tonic::Request::new(StatusRequest {});
    request.set_timeout(Duration::from_secs(30));
    client(session, node)
        .await?
        .status(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| describe_status(&status))
}

/// `update status`.
pub async fn status(session: &Session) -> anyhow::Result<bool> {
    let calls = session
        .nodes
        .iter()
        .map(|node| async move { (node.clone(), status_of(session, node).await) });
    let answers: Answers<StatusResponse> = futures::future::join_all(calls).await;
    report(session.format, answers, |answers| {
        let mut text = String::new();
        let mut table = Table::new(&[
            "NODE", "SLOT", "STATE", "VERSION", "TRIES", "RUNNING", "DEFAULT",
        ]);
        for (node, status) in answers {
            for slot in &status.slots {
                table.row(vec![
                    node.clone(),
                    slot.slot.clone(),
                    slot.state.clone(),
                    if slot.version.is_empty() {
                        "-".into()
                    } else {
                        slot.version.clone()
                    },
                    if slot.state == "trial" {
                        slot.tries_left.to_string()
                    } else {
                        "-".into()
                    },
                    if slot.running {
                        "yes".into()
                    } else {
                        String::new()
                    },
                    if slot.is_default {
                        "yes".into()
                    } else {
                        String::new()
                    },
                ]);
            }
        }
        text.push_str(&table.render());
        for (node, status) in answers {
            if let Some(progress) = status.progress.as_ref().filter(|p| !p.phase.is_empty()) {
                text.push_str(&format!(
                    "{node}: {} {} ({} of {})\n",
                    progress.phase,
                    progress.version,
                    output::bytes(progress.done_bytes),
                    output::bytes(progress.total_bytes)
                ));
            }
            if !status.reboot_pending.is_empty() {
                text.push_str(&format!(
                    "{node}: reboot pending: {}\n",
                    status.reboot_pending
                ));
            }
            if !status.last_error.is_empty() {
                text.push_str(&format!("{node}: last error: {}\n", status.last_error));
            }
        }
        text
    })
}

/// `update check`.
pub async fn check(session: &Session, arguments: &CheckArgs) -> anyhow::Result<bool> {
    let calls = session.nodes.iter().map(|node| async move {
        let outcome = match client(session, node).await {
            Ok(mut client) => {
                let mut request = tonic::Request::new(CheckRequest {
                    channel: arguments.channel.clone().unwrap_or_default(),
                });
                request.set_timeout(Duration::from_secs(90));
                client
                    .check(request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| describe_status(&status))
            }
            Err(error) => Err(error),
        };
        (node.clone(), outcome)
    });
    let answers: Answers<CheckResponse> = futures::future::join_all(calls).await;
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, checked)| match &checked.latest {
                Some(latest) => format!(
                    "{node}: {} offers {} (running {}; {}); install it with keelctl upgrade\n",
                    checked.name,
                    latest.version,
                    checked.running_version,
                    output::bytes(latest.size)
                ),
                None => format!(
                    "{node}: up to date: running {}, nothing newer in {} (metadata valid until {})\n",
                    checked.running_version, checked.name, checked.expires
                ),
            })
            .collect()
    })
}

/// `update cancel`.
pub async fn cancel(session: &Session) -> anyhow::Result<bool> {
    let calls = session.nodes.iter().map(|node| async move {
        let outcome = match client(session, node).await {
            Ok(mut client) => client
                .cancel(CancelRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| describe_status(&status)),
            Err(error) => Err(error),
        };
        (node.clone(), outcome)
    });
    let answers = futures::future::join_all(calls).await;
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, done)| {
                format!(
                    "{node}: cancelled {} on slot {}; the running slot stays the default\n",
                    done.version, done.slot
                )
            })
            .collect()
    })
}

/// Where a node ended up after an upgrade or rollback with `--wait`.
#[derive(Debug, serde::Serialize)]
struct Landed {
    slot: String,
    version: String,
    seconds: u64,
}

/// `upgrade`.
pub async fn upgrade(session: &Session, arguments: &UpgradeArgs) -> anyhow::Result<bool> {
    let size = match &arguments.bundle {
        Some(bundle) => std::fs::metadata(bundle)
            .with_context(|| format!("reading {}", bundle.display()))?
            .len(),
        None => 0,
    };
    let mut answers: Answers<String> = Vec::new();
    // One node at a time: each reboots, and a bad bundle should stop at the first node.
    for node in &session.nodes {
        let outcome = upgrade_one(session, node, arguments, size).await;
        let failed = outcome.is_err();
        answers.push((node.clone(), outcome));
        if failed {
            break;
        }
    }
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, line)| format!("{node}: {line}\n"))
            .collect()
    })
}

async fn upgrade_one(
    session: &Session,
    node: &str,
    arguments: &UpgradeArgs,
    size: u64,
) -> Result<String, String> {
    let before = if arguments.wait.wait {
        Some(current_boot(session, node).await?.0)
    } else {
        None
    };
    let bar = output::transfer_bar(size);
    let options = ApplyRequest {
        item: Some(apply_request::Item::Options(ApplyOptions {
            allow_downgrade: arguments.allow_downgrade,
            no_reboot: arguments.no_reboot,
            url: arguments.url.clone().unwrap_or_default(),
            latest: arguments.bundle.is_none() && arguments.url.is_none(),
            channel: arguments.channel.clone().unwrap_or_default(),
        })),
    };
    let Some(bundle) = &arguments.bundle else {
        bar.set_message(format!("{node}: fetching"));
        let mut client = client(session, node).await?;
        let apply = client.apply(futures::stream::iter([options]));
        tokio::pin!(apply);
        // The node fetches; its status says how far it got.
        let outcome = loop {
            tokio::select! {
                outcome = &mut apply => break outcome,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    show_node_progress(session, node, &bar).await;
                }
            }
        };
        let outcome = outcome
            .map(tonic::Response::into_inner)
            .map_err(|status| describe_status(&status));
        bar.finish_and_clear();
        return after_apply(session, node, arguments, before, outcome?).await;
    };
    bar.set_message(format!("{node}: uploading"));
    let chunk = |bytes| ApplyRequest {
        item: Some(apply_request::Item::Chunk(bytes)),
    };
    let (upload, reader) = upload_stream(bundle, options, chunk, bar.clone())?;
    let outcome = client(session, node)
        .await?
        .apply(upload)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| describe_status(&status));
    reader.abort();
    bar.finish_and_clear();
    after_apply(session, node, arguments, before, outcome?).await
}

/// Shows the node's own progress while it fetches a bundle.
async fn show_node_progress(session: &Session, node: &str, bar: &indicatif::ProgressBar) {
    let Ok(status) = status_of(session, node).await else {
        return;
    };
    if let Some(progress) = status.progress.filter(|p| !p.phase.is_empty()) {
        bar.set_length(progress.total_bytes);
        bar.set_position(progress.done_bytes);
        bar.set_message(format!("{node}: {} {}", progress.phase, progress.version));
    }
}

/// Reports an apply, and follows the reboot with `--wait`.
async fn after_apply(
    session: &Session,
    node: &str,
    arguments: &UpgradeArgs,
    before: Option<String>,
    applied: keelson_api::update::ApplyResponse,
) -> Result<String, String> {
    let waiting = !applied.reboot_pending.is_empty();
    let summary = format!(
        "wrote {} to slot {} ({} in {:.1} s)",
        applied.version,
        applied.slot,
        output::bytes(applied.bytes),
        applied.seconds
    );
    match before {
        Some(before) if applied.rebooting || waiting => {
            let landed = follow_reboot(session, node, &before, &arguments.wait).await?;
            if landed.version == applied.version && landed.slot == applied.slot {
                Ok(format!(
                    "{summary}; running {} on slot {}, blessed, after {}",
                    landed.version,
                    landed.slot,
                    output::duration(landed.seconds)
                ))
            } else {
                let status = status_of(session, node).await.unwrap_or_default();
                Err(format!(
                    "{summary}, but the node came back on slot {} ({}): {}",
                    landed.slot,
                    landed.version,
                    if status.last_error.is_empty() {
                        "no error recorded"
                    } else {
                        &status.last_error
                    }
                ))
            }
        }
        _ if applied.rebooting => Ok(format!("{summary}; rebooting into it")),
        _ if waiting => Ok(format!(
            "{summary}; the reboot into it is {}",
            applied.reboot_pending
        )),
        _ => Ok(format!("{summary}; it takes effect at the next reboot")),
    }
}

/// Waits for a new boot, then for its running slot to be blessed (or for the node to
/// settle on a good slot after falling back).
async fn follow_reboot(
    session: &Session,
    node: &str,
    before: &str,
    wait: &WaitArgs,
) -> Result<Landed, String> {
    let started = Instant::now();
    let timeout = Duration::from_secs(wait.timeout);
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!("{node}: rebooting"));
    let outcome = loop {
        if started.elapsed() > timeout {
            break Err(format!(
                "the node did not settle within {}",
                output::duration(wait.timeout)
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok((boot, _)) = current_boot(session, node).await else {
            continue;
        };
        if boot == before || boot.is_empty() {
            continue;
        }
        spinner.set_message(format!("{node}: back; waiting for the health checks"));
        let Ok(status) = status_of(session, node).await else {
            continue;
        };
        let running = status.slots.iter().find(|slot| slot.running);
        if let Some(slot) = running.filter(|slot| slot.state == "good") {
            break Ok(Landed {
                slot: slot.slot.clone(),
                version: slot.version.clone(),
                seconds: started.elapsed().as_secs(),
            });
        }
    };
    spinner.finish_and_clear();
    outcome
}

/// `rollback`.
pub async fn rollback(session: &Session, wait: &WaitArgs) -> anyhow::Result<bool> {
    let mut answers: Answers<String> = Vec::new();
    for node in &session.nodes {
        let outcome = async {
            let before = current_boot(session, node).await?.0;
            let done = client(session, node)
                .await?
                .rollback(RollbackRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| describe_status(&status))?;
            if !wait.wait {
                return Ok(format!(
                    "rolling back to {} on slot {}; rebooting",
                    done.version, done.slot
                ));
            }
            let landed = follow_reboot(session, node, &before, wait).await?;
            if landed.slot == done.slot {
                Ok(format!(
                    "rolled back: running {} on slot {} after {}",
                    landed.version,
                    landed.slot,
                    output::duration(landed.seconds)
                ))
            } else {
                Err(format!(
                    "the node came back on slot {} instead of {}",
                    landed.slot, done.slot
                ))
            }
        }
        .await;
        answers.push((node.clone(), outcome));
    }
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, line)| format!("{node}: {line}\n"))
            .collect()
    })
}
