//! The Machine service's verbs: version, status, services, logs, dmesg, reboot (and
//! waiting for the node to come back), shutdown, reset and apply-config.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use keelson_api::machine as api;
use keelson_api::machine::machine_client::MachineClient;

use crate::cli;
use crate::output::{self, Table};
use crate::session::{describe_status, report, stream_all, Answers, Session};

/// `keelctl version`: the client's version, then each node's.
pub async fn version(session: &Session) -> anyhow::Result<bool> {
    if session.format.is_table() {
        println!("Client: keelctl {}", env!("CARGO_PKG_VERSION"));
    }
    let answers = session
        .each(|mut client| async move { client.version(api::VersionRequest {}).await })
        .await;
    report(session.format, answers, |answers| {
        let mut table = Table::new(&["NODE", "OS", "AGENT", "SLOT", "KERNEL", "HOSTNAME"]);
        for (node, version) in answers {
            table.row(vec![
                node.clone(),
                version.os_version.clone(),
                version.agent_version.clone(),
                version.slot.clone(),
                version.kernel_release.clone(),
                version.hostname.clone(),
            ]);
        }
        table.render()
    })
}

/// `keelctl status`: one block per node.
pub async fn status(session: &Session) -> anyhow::Result<bool> {
    let answers = session
        .each(|mut client| async move { client.status(api::StatusRequest {}).await })
        .await;
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, status)| status_block(node, status))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// `keelctl services`: what PID 1 supervises.
pub async fn services(session: &Session) -> anyhow::Result<bool> {
    let answers = session
        .each(|mut client| async move { client.services(api::ServicesRequest {}).await })
        .await;
    report(session.format, answers, |answers| {
        let mut table = Table::new(&["NODE", "SERVICE", "STATE", "PID", "STARTS", "DETAIL"]);
        for (node, services) in answers {
            for service in &services.services {
                table.row(vec![
                    node.clone(),
                    service.name.clone(),
                    service.state.clone(),
                    service.pid.to_string(),
                    service.starts.to_string(),
                    service.detail.clone(),
                ]);
            }
        }
        table.render()
    })
}

/// `keelctl services restart SERVICE`: only the agent can be restarted (PID 1 is the
/// machine itself: reboot it).
pub async fn restart_service(session: &Session, service: &str) -> anyhow::Result<bool> {
    if service != "keelsond" {
        bail!(
            "{service:?} cannot be restarted: only keelsond can (init is PID 1: keelctl reboot \
             restarts everything)"
        );
    }
    let answers = session
        .each(|mut client| async move { client.restart_agent(api::RestartAgentRequest {}).await })
        .await;
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, restarted)| {
                format!(
                    "{node}: keelsond (pid {}) is restarting; PID 1 starts it again at once\n",
                    restarted.pid
                )
            })
            .collect()
    })
}

/// `keelctl logs [SERVICE]`: the agent's or PID 1's log, followed with `-f`.
pub async fn logs(session: &Session, arguments: &cli::LogsArgs) -> anyhow::Result<bool> {
    let request = api::LogsRequest {
        service: arguments.target.clone(),
        follow: arguments.follow.follow,
        tail: arguments.follow.tail,
    };
    stream_all(
        session,
        move |mut client| {
            let request = request.clone();
            async move { client.logs(request).await }
        },
        |entry: &api::LogEntry| {
            format!(
                "{} {:<7} {}",
                output::uptime_stamp(entry.uptime_micros),
                entry.level,
                entry.message
            )
        },
    )
    .await
}

/// `keelctl dmesg`: the kernel's ring buffer.
pub async fn dmesg(session: &Session, arguments: &cli::FollowArgs) -> anyhow::Result<bool> {
    let request = api::DmesgRequest {
        follow: arguments.follow,
        tail: arguments.tail,
    };
    stream_all(
        session,
        move |mut client| {
            let request = request;
            async move { client.dmesg(request).await }
        },
        |message: &api::KernelMessage| {
            format!(
                "{} {:<7} {}",
                output::uptime_stamp(message.uptime_micros),
                message.level,
                message.message
            )
        },
    )
    .await
}

/// `keelctl shutdown`.
pub async fn shutdown(session: &Session) -> anyhow::Result<bool> {
    let answers = session
        .each(|mut client| async move { client.shutdown(api::ShutdownRequest {}).await })
        .await;
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, _)| format!("{node}: powering off\n"))
            .collect()
    })
}

/// `keelctl reset`: wipes STATE after confirmation.
pub async fn reset(session: &Session, arguments: &cli::ResetArgs) -> anyhow::Result<bool> {
    confirm_reset(session, arguments.yes)?;
    let answers = session
        .each(|mut client| async move { client.reset(api::ResetRequest { confirm: true }).await })
        .await;
    report(session.format, answers, |answers| {
        answers
            .iter()
            .map(|(node, _)| format!("{node}: STATE wiped; rebooting into maintenance mode\n"))
            .collect()
    })
}

fn status_block(node: &str, status: &api::StatusResponse) -> String {
    let mut table = Table::new(&["NODE", node]);
    let mut row = |key: &str, value: String| table.row(vec![key.to_owned(), value]);
    row("HOSTNAME", status.hostname.clone());
    row("SLOT", format!("{} ({})", status.slot, status.boot_entry));
    row("VERSION", status.os_version.clone());
    row("KERNEL", status.kernel_release.clone());
    row("UPTIME", output::duration(status.uptime_seconds));
    row(
        "ROOT",
        format!("{} {}", status.root_verity, status.root_hash),
    );
    if let Some(config) = &status.config {
        let state = if config.maintenance {
            format!("maintenance ({})", config.maintenance_reason)
        } else {
            format!("{} {} ({})", config.source, config.location, config.format)
        };
        row("CONFIG", state);
    }
    for address in &status.addresses {
        row(
            "ADDRESS",
            format!("{} {}", address.interface, address.address),
        );
    }
    for route in &status.routes {
        let via = if route.gateway.is_empty() {
            String::new()
        } else {
            format!(" via {}", route.gateway)
        };
        row(
            "ROUTE",
            format!("{}{via} dev {}", route.destination, route.interface),
        );
    }
    if !status.dns_servers.is_empty() {
        row("DNS", status.dns_servers.join(", "));
    }
    row("BOOTS", status.boots.len().to_string());
    table.render()
}

/// `keelctl apply-config`: checked here first, then sent to every node.
pub async fn apply_config(
    session: &Session,
    arguments: &cli::ApplyConfigArgs,
) -> anyhow::Result<bool> {
    let config = std::fs::read(&arguments.file)
        .with_context(|| format!("cannot read {}", arguments.file.display()))?;
    // Check it here first, so that a typo is reported once, with its field, before any
    // node is contacted.
    if let Err(rejected) = keelson_config::load(&arguments.file.display().to_string(), &config) {
        for error in rejected.errors() {
            eprintln!("error: {error}");
        }
        bail!(
            "{} is not a valid config; no node was contacted",
            arguments.file.display()
        );
    }
    let mode = match arguments.mode {
        cli::ApplyModeArg::Auto => api::ApplyMode::Auto,
        cli::ApplyModeArg::NoReboot => api::ApplyMode::NoReboot,
        cli::ApplyModeArg::Staged => api::ApplyMode::Staged,
    };
    let request = api::ApplyConfigRequest {
        config,
        mode: mode as i32,
        dry_run: arguments.dry_run,
    };
    let answers = session
        .each(|mut client| {
            let request = session.request(request.clone());
            async move { client.apply_config(request).await }
        })
        .await;
    let dry_run = arguments.dry_run;
    report(session.format, answers, |answers| {
        let mut text = String::new();
        for (node, response) in answers {
            if dry_run {
                if response.diff.is_empty() {
                    text.push_str(&format!("{node}: no change\n"));
                } else {
                    text.push_str(&format!("{node}:\n{}", response.diff));
                }
            }
            for warning in &response.warnings {
                text.push_str(&format!(
                    "{node}: warning: {}: {}: {}\n",
                    warning.source, warning.field, warning.reason
                ));
            }
            for action in &response.actions {
                text.push_str(&format!("{node}: {action}\n"));
            }
        }
        text
    })
}

fn confirm_reset(session: &Session, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "reset erases everything on STATE of {}; pass --yes to confirm",
            session.nodes.join(", ")
        );
    }
    eprint!(
        "reset erases everything on STATE of {} and reboots into maintenance mode. Type 'yes': ",
        session.nodes.join(", ")
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing was done");
    }
    Ok(())
}

/// The current boot of a node, or why it cannot be read.
pub async fn current_boot(session: &Session, node: &str) -> Result<(String, String), String> {
    let channel = session.channel(node).await?;
    let mut client = MachineClient::new(channel);
    let mut request = tonic::Request::new(api::StatusRequest {});
    request.set_timeout(Duration::from_secs(10));
    let status = client
        .status(request)
        .await
        .map_err(|status| describe_status(&status))?
        .into_inner();
    let boot = status
        .boots
        .last()
        .map(|boot| boot.boot_id.clone())
        .unwrap_or_default();
    Ok((boot, status.slot))
}

/// `keelctl reboot [--wait]`.
pub async fn reboot(session: &Session, arguments: &cli::RebootArgs) -> anyhow::Result<bool> {
    let format = session.format;
    if !arguments.wait {
        let answers = session
            .each(|mut client| async move { client.reboot(api::RebootRequest {}).await })
            .await;
        return report(format, answers, |answers| {
            answers
                .iter()
                .map(|(node, _)| format!("{node}: rebooting\n"))
                .collect()
        });
    }
    let progress = indicatif::MultiProgress::new();
    let waits = session.nodes.iter().map(|node| {
        let spinner = progress.add(indicatif::ProgressBar::new_spinner());
        spinner.enable_steady_tick(Duration::from_millis(120));
        async move {
            let outcome = reboot_and_wait(
                session,
                node,
                &spinner,
                Duration::from_secs(arguments.timeout),
            )
            .await;
            spinner.finish_and_clear();
            outcome
        }
    });
    let outcomes = futures::future::join_all(waits).await;
    let answers: Answers<RebootOutcome> = session.nodes.iter().cloned().zip(outcomes).collect();
    report(format, answers, |answers| {
        answers
            .iter()
            .map(|(node, outcome)| {
                format!(
                    "{node}: back after {} on slot {} (boot {})\n",
                    output::duration(outcome.seconds),
                    outcome.slot,
                    outcome.boot_id
                )
            })
            .collect()
    })
}

/// How a waited-for reboot went.
#[derive(Debug, serde::Serialize)]
struct RebootOutcome {
    seconds: u64,
    slot: String,
    boot_id: String,
}

async fn reboot_and_wait(
    session: &Session,
    node: &str,
    spinner: &indicatif::ProgressBar,
    timeout: Duration,
) -> Result<RebootOutcome, String> {
    let started = Instant::now();
    spinner.set_message(format!("{node}: asking to reboot"));
    let (before, _) = current_boot(session, node).await?;
    let mut client = MachineClient::new(session.channel(node).await?);
    client
        .reboot(api::RebootRequest {})
        .await
        .map_err(|status| describe_status(&status))?;
    spinner.set_message(format!("{node}: going down"));
    let mut went_down = false;
    loop {
        if started.elapsed() > timeout {
            return Err(format!(
                "did not come back within {} ({})",
                output::duration(timeout.as_secs()),
                if went_down {
                    "it went down"
                } else {
                    "it never went down"
                }
            ));
        }
        match current_boot(session, node).await {
            Ok((boot, slot)) if boot != before && !boot.is_empty() => {
                return Ok(RebootOutcome {
                    seconds: started.elapsed().as_secs(),
                    slot,
                    boot_id: boot,
                });
            }
            Ok(_) => {}
            Err(_) if !went_down => {
                went_down = true;
                spinner.set_message(format!("{node}: down, waiting for it to come back"));
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
