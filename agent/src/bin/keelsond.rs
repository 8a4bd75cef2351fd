//! `keelsond`: the Keelson node agent. A thin shell over [`keelson_agent::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Keelson's node agent. PID 1 starts it; it is not meant to be run by hand on a node.
#[derive(Debug, Parser)]
#[command(version)]
struct Arguments {
    /// Address to serve the API on.
    #[arg(long, default_value = "0.0.0.0:50000")]
    listen: SocketAddr,
    /// Directory for the agent's state on STATE.
    #[arg(long, default_value = "/var/lib/keelson")]
    state_dir: PathBuf,
    /// Leave the machine alone: no machine config, no network changes (for running the
    /// agent on a development host).
    #[arg(long)]
    unmanaged: bool,
}

fn main() {
    // Container-init and container-exec must start before anything starts a thread (see
    // keelson_runtime::shell).
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mode = raw.get(1).and_then(|mode| mode.to_str());
    if mode == Some(keelson_runtime::shell::launch::CONTAINER_INIT) {
        std::process::exit(container_init(&raw));
    }
    if mode == Some(keelson_runtime::shell::launch::CONTAINER_EXEC) {
        let Some(spec) = raw.get(2) else {
            eprintln!("usage: keelsond container-exec SPEC (started by the agent)");
            std::process::exit(2);
        };
        std::process::exit(keelson_runtime::shell::exec::run(std::path::Path::new(
            spec,
        )));
    }
    let arguments = Arguments::parse();
    // SAFETY: no other thread exists yet.
    let inherited_pipes =
        unsafe { keelson_kubelet::handoff::InheritedPipes::take_from_environment() };
    keelson_log::install();
    let options = keelson_agent::AgentOptions {
        listen: arguments.listen,
        state_dir: arguments.state_dir,
        manage_machine: !arguments.unmanaged,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keelsond: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(keelson_agent::run(options, inherited_pipes));
    // A blocking task still at work (an image pull on a dead network, say) must not hold
    // the node's shutdown up: PID 1 waits for this process before it ends the rest.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(error) = outcome {
        eprintln!("keelsond: {error:#}");
        std::process::exit(1);
    }
}

/// `keelsond container-init BUNDLE --report-fd N`.
fn container_init(raw: &[std::ffi::OsString]) -> i32 {
    let (Some(bundle), Some(flag), Some(fd)) = (raw.get(2), raw.get(3), raw.get(4)) else {
        eprintln!("usage: keelsond container-init BUNDLE --report-fd N (started by the agent)");
        return 2;
    };
    let Some(fd) = fd
        .to_str()
        .and_then(|fd| fd.parse().ok())
        .filter(|_| flag == "--report-fd")
    else {
        eprintln!("keelsond container-init: --report-fd takes a descriptor number");
        return 2;
    };
    keelson_runtime::shell::init::run(std::path::Path::new(bundle), fd)
}
