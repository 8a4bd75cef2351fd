//! `keelctl`, the operator CLI for Keelson nodes.
//!
//! Every verb is one API call (or a short sequence, for `reboot --wait`) made to each node
//! named by `-n` (default: the context's endpoints), concurrently; answers are labelled by
//! node and printed as a table, JSON or YAML. A node that fails gets one line on stderr,
//! `error: NODE: reason`, and makes the exit code non-zero.
//!
//! - [`cli`]: the command line (clap). [`keelconfig`]: `keelctl.yaml`, its contexts and
//!   identities. [`generate`]: `gen config` and `gen client` (PKI through
//!   `keelson_api::pki`). [`output`]: tables and machine formats. [`update`]: `upgrade`,
//!   `rollback` and `update status|check|cancel`.
//! - [`run`] dispatches; `main` only parses arguments and sets the exit code.

pub mod cli;
pub mod generate;
pub mod keelconfig;
pub mod output;
pub mod update;
pub mod validate;

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use keelson_api::client::{self, ClientTls};
use keelson_api::files::files_client::FilesClient;
use keelson_api::machine as api;
use keelson_api::machine::machine_client::MachineClient;
use tonic::transport::Channel;

use cli::{Cli, Command, GenCommand};
use output::{Format, Table};

/// A node's address and the outcome of a call to it.
type Answers<T> = Vec<(String, Result<T, String>)>;

/// What to do about a TLS failure, by the reason rustls gave.
fn tls_hint(cause: &str) -> Option<&'static str> {
    let refused_us = [
        "CertificateRequired",
        "UnknownCA",
        "CertificateExpired",
        "DecryptError",
        "BadCertificate",
    ];
    if cause.contains("UnknownIssuer") || cause.contains("BadSignature") {
        Some("the node's certificate is not from this cluster's CA; a node in maintenance mode serves a self-signed one (keelctl apply-config --insecure --token …)")
    } else if refused_us.iter().any(|alert| cause.contains(alert)) {
        Some("the node refused our client certificate: is the keelctl config for this cluster, and its certificate still valid?")
    } else {
        None
    }
}

/// One line saying why a call failed, with the deepest cause for transport failures
/// (e.g. the TLS alert a node sent when it refused our certificate) and what to do.
pub fn describe_status(status: &tonic::Status) -> String {
    let described = describe_status_only(status);
    match tls_hint(&described) {
        Some(hint) => format!("{described} ({hint})"),
        None => described,
    }
}

fn describe_status_only(status: &tonic::Status) -> String {
    let message = status.message().to_owned();
    let cause = std::error::Error::source(status).map(client::root_cause);
    match cause {
        Some(cause) if !message.contains(&cause) => {
            if message.is_empty() {
                cause
            } else {
                format!("{message}: {cause}")
            }
        }
        _ if message.is_empty() => format!("{:?}", status.code()),
        _ => message,
    }
}

fn describe_connect(error: &tonic::transport::Error) -> String {
    let cause = client::root_cause(error);
    match tls_hint(&cause) {
        Some(hint) => format!("cannot connect: {cause} ({hint})"),
        None => format!("cannot connect: {cause}"),
    }
}

/// How keelctl talks to the nodes of this invocation.
pub struct Session {
    tls: ClientTls,
    nodes: Vec<String>,
    token: Option<String>,
    format: Format,
}

impl Session {
    /// Mutual TLS with the keelctl config's identity.
    pub fn from_keelconfig(cli: &Cli) -> anyhow::Result<Session> {
        let path = cli
            .keelconfig
            .clone()
            .unwrap_or_else(keelconfig::default_path);
        let config = keelconfig::Keelconfig::load(&path)?;
        let context = config.select(cli.context.as_deref())?;
        let tls = keelson_api::tls::client_config(&context.ca, &context.cert, &context.key)
            .with_context(|| format!("the identity in {}", path.display()))?;
        let tls = ClientTls::new(tls, &context.server_name).map_err(anyhow::Error::msg)?;
        let nodes = if cli.nodes.is_empty() {
            context.endpoints.clone()
        } else {
            cli.nodes.clone()
        };
        Session::new(tls, &nodes, None, cli.output)
    }

    /// A node in maintenance mode: its self-signed certificate (optionally pinned) and
    /// the console's token.
    pub fn maintenance(
        cli: &Cli,
        token: String,
        fingerprint: Option<String>,
    ) -> anyhow::Result<Session> {
        let tls = keelson_api::tls::maintenance_client_config(fingerprint)?;
        let tls = ClientTls::new(tls, keelson_api::pki::MAINTENANCE_SERVER_NAME)
            .map_err(anyhow::Error::msg)?;
        Session::new(tls, &cli.nodes, Some(token), cli.output)
    }

    fn new(
        tls: ClientTls,
        nodes: &[String],
        token: Option<String>,
        format: Format,
    ) -> anyhow::Result<Session> {
        if nodes.is_empty() {
            bail!("no nodes: give -n/--nodes, or endpoints in the keelctl config");
        }
        let nodes = nodes
            .iter()
            .map(|node| keelconfig::node_address(node))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Session {
            tls,
            nodes,
            token,
            format,
        })
    }

    async fn channel(&self, node: &str) -> Result<Channel, String> {
        client::connect(node, &self.tls)
            .await
            .map_err(|error| describe_connect(&error))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            if let Ok(value) = token.parse() {
                request
                    .metadata_mut()
                    .insert(keelson_api::TOKEN_METADATA_KEY, value);
            }
        }
        request
    }

    /// Calls every node at once through a Machine client.
    async fn each<T, F, Fut>(&self, call: F) -> Answers<T>
    where
        F: Fn(MachineClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let calls = self.nodes.iter().map(|node| {
            let call = &call;
            async move {
                let outcome = match self.channel(node).await {
                    Ok(channel) => call(MachineClient::new(channel))
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|status| describe_status(&status)),
                    Err(error) => Err(error),
                };
                (node.clone(), outcome)
            }
        });
        futures::future::join_all(calls).await
    }

    /// Calls every node at once through a Files client.
    async fn each_files<T, F, Fut>(&self, call: F) -> Answers<T>
    where
        F: Fn(FilesClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let calls = self.nodes.iter().map(|node| {
            let call = &call;
            async move {
                let outcome = match self.channel(node).await {
                    Ok(channel) => call(FilesClient::new(channel))
                        .await
                        .map_err(|status| describe_status(&status)),
                    Err(error) => Err(error),
                };
                (node.clone(), outcome)
            }
        });
        futures::future::join_all(calls).await
    }
}

/// Prints the answers: successes through `table` (or as JSON/YAML), failures as one line
/// each on stderr. Returns true when every node answered.
fn report<T: serde::Serialize>(
    format: Format,
    answers: Answers<T>,
    table: impl Fn(&[(String, T)]) -> String,
) -> anyhow::Result<bool> {
    let mut good = Vec::new();
    let mut all_good = true;
    for (node, outcome) in answers {
        match outcome {
            Ok(value) => good.push((node, value)),
            Err(error) => {
                all_good = false;
                eprintln!("error: {node}: {error}");
            }
        }
    }
    if !good.is_empty() {
        match format {
            Format::Table => print!("{}", table(&good)),
            other => output::print_structured(other, &good)?,
        }
    }
    Ok(all_good)
}

/// Runs a parsed command line; `Ok(false)` means some node failed (exit code 1).
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Command::Gen(command) => return generate(command),
        Command::Validate(arguments) => return validate::run(&arguments.file, cli.output),
        Command::Completion(arguments) => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(
                arguments.shell,
                &mut command,
                "keelctl",
                &mut std::io::stdout(),
            );
            return Ok(true);
        }
        Command::ApplyConfig(arguments) if arguments.insecure => {
            let token = arguments.token.clone().unwrap_or_default();
            let session = Session::maintenance(&cli, token, arguments.fingerprint.clone())?;
            return apply_config(&session, arguments).await;
        }
        _ => {}
    }
    let session = Session::from_keelconfig(&cli)?;
    let format = session.format;
    match &cli.command {
        Command::Version => {
            if format == Format::Table {
                println!("Client: keelctl {}", env!("CARGO_PKG_VERSION"));
            }
            let answers = session
                .each(|mut client| async move { client.version(api::VersionRequest {}).await })
                .await;
            report(format, answers, |answers| {
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
        Command::Status => {
            let answers = session
                .each(|mut client| async move { client.status(api::StatusRequest {}).await })
                .await;
            report(format, answers, |answers| {
                answers
                    .iter()
                    .map(|(node, status)| status_block(node, status))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::Services => {
            let answers = session
                .each(|mut client| async move { client.services(api::ServicesRequest {}).await })
                .await;
            report(format, answers, |answers| {
                let mut table =
                    Table::new(&["NODE", "SERVICE", "STATE", "PID", "STARTS", "DETAIL"]);
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
        Command::Logs(arguments) => {
            let request = api::LogsRequest {
                service: arguments.service.clone(),
                follow: arguments.follow.follow,
                tail: arguments.follow.tail,
            };
            stream_all(
                &session,
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
        Command::Dmesg(arguments) => {
            let request = api::DmesgRequest {
                follow: arguments.follow,
                tail: arguments.tail,
            };
            stream_all(
                &session,
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
        Command::Reboot(arguments) => reboot(&session, arguments).await,
        Command::Upgrade(arguments) => update::upgrade(&session, arguments).await,
        Command::Rollback(arguments) => update::rollback(&session, arguments).await,
        Command::Update(cli::UpdateCommand::Status) => update::status(&session).await,
        Command::Update(cli::UpdateCommand::Check(arguments)) => {
            update::check(&session, arguments).await
        }
        Command::Update(cli::UpdateCommand::Cancel) => update::cancel(&session).await,
        Command::Shutdown => {
            let answers = session
                .each(|mut client| async move { client.shutdown(api::ShutdownRequest {}).await })
                .await;
            report(format, answers, |answers| {
                answers
                    .iter()
                    .map(|(node, _)| format!("{node}: powering off\n"))
                    .collect()
            })
        }
        Command::ApplyConfig(arguments) => apply_config(&session, arguments).await,
        Command::Reset(arguments) => {
            confirm_reset(&session, arguments.yes)?;
            let answers = session
                .each(|mut client| async move {
                    client.reset(api::ResetRequest { confirm: true }).await
                })
                .await;
            report(format, answers, |answers| {
                answers
                    .iter()
                    .map(|(node, _)| {
                        format!("{node}: STATE wiped; rebooting into maintenance mode\n")
                    })
                    .collect()
            })
        }
        Command::Ls(arguments) => {
            let request = keelson_api::files::ListRequest {
                path: arguments.path.clone(),
                recursive: arguments.recursive,
            };
            let answers = session
                .each_files(|mut client| {
                    let request = request.clone();
                    async move { Ok(client.list(request).await?.into_inner()) }
                })
                .await;
            report(format, answers, |answers| {
                let mut table =
                    Table::new(&["NODE", "MODE", "UID", "GID", "SIZE", "MODIFIED", "PATH"]);
                for (node, listing) in answers {
                    for entry in &listing.entries {
                        let path = if entry.link_target.is_empty() {
                            entry.path.clone()
                        } else {
                            format!("{} -> {}", entry.path, entry.link_target)
                        };
                        table.row(vec![
                            node.clone(),
                            output::permissions(&entry.kind, entry.mode),
                            entry.uid.to_string(),
                            entry.gid.to_string(),
                            entry.size.to_string(),
                            modified(entry.modified),
                            path,
                        ]);
                    }
                }
                table.render()
            })
        }
        Command::Read(arguments) => read_file(&session, &arguments.path).await,
        Command::Gen(_) | Command::Completion(_) | Command::Validate(_) => Ok(true),
    }
}

fn modified(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| seconds.to_string())
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

/// Streams from every node at once, printing each entry as it comes (prefixed by the node
/// when there are several).
async fn stream_all<T, F, Fut>(
    session: &Session,
    call: F,
    line: impl Fn(&T) -> String + Copy,
) -> anyhow::Result<bool>
where
    T: serde::Serialize,
    F: Fn(MachineClient<Channel>) -> Fut + Clone,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
{
    let several = session.nodes.len() > 1;
    let streams = session.nodes.iter().map(|node| {
        let call = call.clone();
        async move {
            let channel = session.channel(node).await?;
            let mut stream = call(MachineClient::new(channel))
                .await
                .map_err(|status| describe_status(&status))?
                .into_inner();
            while let Some(entry) = stream
                .message()
                .await
                .map_err(|status| describe_status(&status))?
            {
                match session.format {
                    Format::Table => {
                        let text = line(&entry);
                        let mut stdout = std::io::stdout().lock();
                        let written = if several {
                            writeln!(stdout, "{node}: {text}")
                        } else {
                            writeln!(stdout, "{text}")
                        };
                        if written.is_err() {
                            return Ok(()); // stdout closed (e.g. piped into head)
                        }
                    }
                    other => output::print_entry(other, node, &entry).map_err(|e| e.to_string())?,
                }
            }
            Ok::<(), String>(())
        }
    });
    let outcomes = futures::future::join_all(streams).await;
    let mut all_good = true;
    for (node, outcome) in session.nodes.iter().zip(outcomes) {
        if let Err(error) = outcome {
            all_good = false;
            eprintln!("error: {node}: {error}");
        }
    }
    Ok(all_good)
}

async fn read_file(session: &Session, path: &str) -> anyhow::Result<bool> {
    let request = keelson_api::files::ReadRequest {
        path: path.to_owned(),
    };
    let answers = session
        .each_files(|mut client| {
            let request = request.clone();
            async move {
                let mut stream = client.read(request).await?.into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    bytes.extend_from_slice(&chunk.data);
                }
                Ok(bytes)
            }
        })
        .await;
    let several = answers.len() > 1;
    let mut all_good = true;
    let mut stdout = std::io::stdout().lock();
    for (node, outcome) in answers {
        match outcome {
            Ok(bytes) => {
                if several {
                    writeln!(stdout, "==> {node}:{path} <==")?;
                }
                stdout.write_all(&bytes)?;
            }
            Err(error) => {
                all_good = false;
                eprintln!("error: {node}: {error}");
            }
        }
    }
    Ok(all_good)
}

async fn apply_config(session: &Session, arguments: &cli::ApplyConfigArgs) -> anyhow::Result<bool> {
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
async fn current_boot(session: &Session, node: &str) -> Result<(String, String), String> {
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

async fn reboot(session: &Session, arguments: &cli::RebootArgs) -> anyhow::Result<bool> {
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

fn generate(command: &GenCommand) -> anyhow::Result<bool> {
    let now = time::OffsetDateTime::now_utc();
    match command {
        GenCommand::Config(arguments) => {
            let written = generate::gen_config(
                &generate::GenConfig {
                    cluster: arguments.cluster.clone(),
                    out: arguments.out.clone(),
                    endpoints: arguments.endpoints.clone(),
                    force: arguments.force,
                    format: arguments.format,
                },
                now,
            )?;
            for path in &written {
                println!("wrote {}", path.display());
            }
            println!(
                "next: boot nodes with {} (e.g. keelson-qemu --config), then \
                 export KEELCONFIG={} and run keelctl status",
                arguments.out.join(arguments.format.file_name()).display(),
                arguments.out.join(generate::KEELCTL_CONFIG).display()
            );
        }
        GenCommand::Client(arguments) => {
            let written = generate::gen_client(
                &generate::GenClient {
                    pki: arguments.pki.clone(),
                    name: arguments.name.clone(),
                    role: arguments.role,
                    days: arguments.days,
                    out: arguments.out.clone(),
                    force: arguments.force,
                },
                now,
            )?;
            println!(
                "wrote {} ({} {})",
                written.display(),
                arguments.role,
                arguments.name
            );
        }
    }
    Ok(true)
}
