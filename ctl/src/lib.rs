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
//! - [`session`]: calls to every node at once and how answers are printed; [`machine`],
//!   [`files`], [`update`], [`images`] and [`pods`]: the verbs of each API service;
//!   [`describe`]: `describe pod`, as kubectl lays it out.
//! - [`run`] dispatches; `main` only parses arguments and sets the exit code.

pub mod cli;
pub mod cluster;
pub mod describe;
pub mod exec;
pub mod files;
pub mod generate;
pub mod images;
pub mod keelconfig;
pub mod machine;
pub mod nodes;
pub mod output;
pub mod pods;
pub mod session;
pub mod top;
pub mod update;
pub mod validate;

use cli::{Cli, Command};
pub use session::{describe_status, Session};

/// Runs a parsed command line; `Ok(false)` means some node failed (exit code 1).
///
/// Verbs that need no node run first (`gen`, `validate`, `completion`), then the one verb a
/// node in maintenance mode takes (`apply-config --insecure`); every other verb opens a
/// session from the keelctl config and goes to [`on_nodes`].
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Command::Gen(command) => generate::run(command),
        Command::Validate(arguments) => validate::run(&arguments.file, cli.output),
        Command::Completion(arguments) => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(
                arguments.shell,
                &mut command,
                "keelctl",
                &mut std::io::stdout(),
            );
            Ok(true)
        }
        Command::ApplyConfig(arguments) if arguments.insecure => {
            let token = arguments.token.clone().unwrap_or_default();
            let session = Session::maintenance(&cli, token, arguments.fingerprint.clone())?;
            machine::apply_config(&session, arguments).await
        }
        Command::Run(arguments) if arguments.dry_run => pods::print_run(arguments, cli.output),
        command => on_nodes(&Session::from_keelconfig(&cli)?, command).await,
    }
}

/// What `keelctl logs NAME` reads as a service's log rather than a pod's (a pod of one
/// of these names is `pod/NAME`).
const SERVICES: &[&str] = &["keelsond", "init"];

/// The verbs that call nodes, each to its service's module.
async fn on_nodes(session: &Session, command: &Command) -> anyhow::Result<bool> {
    match command {
        Command::Version => machine::version(session).await,
        Command::Status => machine::status(session).await,
        Command::Services(cli::ServicesArgs { action: None }) => machine::services(session).await,
        Command::Services(cli::ServicesArgs {
            action: Some(cli::ServicesAction::Restart { service }),
        }) => machine::restart_service(session, service).await,
        Command::Logs(arguments) if SERVICES.contains(&arguments.target.as_str()) => {
            machine::logs(session, arguments).await
        }
        Command::Logs(arguments) => pods::logs(session, arguments).await,
        Command::Describe(arguments) => describe::describe(session, arguments).await,
        Command::Top(arguments) => top::top(session, arguments).await,
        Command::Run(arguments) => pods::run(session, arguments).await,
        Command::Apply(arguments) => pods::apply(session, arguments).await,
        Command::Get(arguments) if nodes::is_nodes(&arguments.resource) => {
            nodes::get(session, arguments).await
        }
        Command::Get(arguments) => pods::get(session, arguments).await,
        Command::Delete(arguments) if nodes::is_nodes(&arguments.resource) => {
            nodes::delete(session, &arguments.names).await
        }
        Command::Delete(arguments) => pods::delete(session, arguments).await,
        Command::Exec(arguments) => {
            let code = exec::exec(session, arguments).await?;
            // The command's own exit code is keelctl's, as with kubectl exec.
            std::process::exit(code)
        }
        Command::Dmesg(arguments) => machine::dmesg(session, arguments).await,
        Command::Reboot(arguments) => machine::reboot(session, arguments).await,
        Command::Shutdown => machine::shutdown(session).await,
        Command::Reset(arguments) => machine::reset(session, arguments).await,
        Command::ApplyConfig(arguments) => machine::apply_config(session, arguments).await,
        Command::Upgrade(arguments) => update::upgrade(session, arguments).await,
        Command::Rollback(arguments) => update::rollback(session, arguments).await,
        Command::Update(cli::UpdateCommand::Status) => update::status(session).await,
        Command::Update(cli::UpdateCommand::Check(arguments)) => {
            update::check(session, arguments).await
        }
        Command::Update(cli::UpdateCommand::Cancel) => update::cancel(session).await,
        Command::Image(cli::ImageCommand::Import(arguments)) => {
            images::import(session, arguments).await
        }
        Command::Image(cli::ImageCommand::Pull(arguments)) => {
            images::pull(session, arguments).await
        }
        Command::Image(cli::ImageCommand::Ls) => images::list(session).await,
        Command::Image(cli::ImageCommand::Rm(arguments)) => {
            images::remove(session, arguments).await
        }
        Command::Cluster(cli::ClusterCommand::Members) => cluster::members(session).await,
        Command::Cluster(cli::ClusterCommand::Status) => cluster::status(session).await,
        Command::Cluster(cli::ClusterCommand::Lock) => cluster::lock(session).await,
        Command::Ls(arguments) => files::ls(session, arguments).await,
        Command::Read(arguments) => files::read(session, &arguments.path).await,
        // Dispatched by `run` before a session is opened.
        Command::Gen(_) | Command::Completion(_) | Command::Validate(_) => Ok(true),
    }
}
