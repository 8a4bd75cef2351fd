//! The command line, as clap types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keelson_api::roles::Role;

use crate::output::Format;

/// keelctl: manage Keelson nodes through their API.
#[derive(Debug, Parser)]
#[command(name = "keelctl", version, propagate_version = true)]
pub struct Cli {
    /// The keelctl config (default: $XDG_CONFIG_HOME/keelson/keelctl.yaml).
    #[arg(long, env = "KEELCONFIG", global = true)]
    pub keelconfig: Option<PathBuf>,
    /// The context in the keelctl config (default: its current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Nodes to talk to, `host` or `host:port`, comma-separated or repeated (default: the
    /// context's endpoints).
    #[arg(short = 'n', long = "nodes", value_delimiter = ',', global = true)]
    pub nodes: Vec<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Client and node versions.
    Version,
    /// What each node is: hostname, slot, versions, config, network.
    Status,
    /// The node's services and their state; `services restart keelsond` restarts the agent
    /// (containers keep running).
    Services(ServicesArgs),
    /// A service's log (keelsond or init).
    Logs(LogsArgs),
    /// The kernel log.
    Dmesg(FollowArgs),
    /// Reboot in order.
    Reboot(RebootArgs),
    /// Power off in order.
    Shutdown,
    /// Replace the machine config (native YAML, Ignition JSON or #cloud-config).
    ApplyConfig(ApplyConfigArgs),
    /// Wipe STATE and reboot into the first-boot state (maintenance mode).
    Reset(ResetArgs),
    /// List a directory under /etc or /var.
    Ls(LsArgs),
    /// Print a file under /etc or /var.
    Read(ReadArgs),
    /// Install a signed update (the channel's latest release, a bundle file or a bundle
    /// URL) into the inactive slot and reboot into it as the reboot policy allows.
    Upgrade(UpgradeArgs),
    /// Go back to the other slot (it must be good) and reboot.
    Rollback(WaitArgs),
    /// A/B slot status, check the channel, or cancel an activated update.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Container images on the nodes: import an archive, list, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create and start a pod of one container, as `kubectl run` does.
    Run(RunArgs),
    /// Create pods from a v1/Pod manifest (YAML or JSON; `-` reads stdin).
    Apply(ApplyArgs),
    /// List pods (`get pods`) or show one (`get pod NAME`), as kubectl prints them.
    Get(GetArgs),
    /// Describe a pod: its container's state, its conditions and its events.
    Describe(DescribeArgs),
    /// Show the CPU and memory of pods (`top pods`), from their containers' cgroups.
    Top(TopArgs),
    /// Delete pods: SIGTERM, then SIGKILL after the grace period.
    Delete(DeleteArgs),
    /// Run a command in a running container of a pod; exits with the command's exit code.
    Exec(ExecArgs),
    /// The cluster as a node sees it: `cluster members`, `cluster status`, `cluster lock`.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Check a machine config offline (native YAML, Ignition JSON or #cloud-config) with
    /// the node's own parser and validation; exits 1 when a node would refuse it.
    Validate(ValidateArgs),
    /// Generate PKI, machine configs and keelctl configs.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Print a shell completion script.
    Completion(CompletionArgs),
}

/// `services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Without one, list the services.
    #[command(subcommand)]
    pub action: Option<ServicesAction>,
}

/// What to do to a service.
#[derive(Debug, Subcommand)]
pub enum ServicesAction {
    /// Restart a service: keelsond (the agent; PID 1 starts it again at once).
    Restart {
        /// The service.
        service: String,
    },
}

/// `--follow` and `--tail`.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// Keep printing new entries.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N entries (0: all).
    #[arg(long, default_value_t = 0)]
    pub tail: u32,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A service, keelsond (the agent) or init (PID 1), or a pod (NAME or pod/NAME).
    #[arg(default_value = "keelsond")]
    pub target: String,
    /// Follow and tail.
    #[command(flatten)]
    pub follow: FollowArgs,
    /// A pod's previous run (after a restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Prefix a pod's lines with their times (RFC 3339).
    #[arg(long)]
    pub timestamps: bool,
    /// The container (default: the pod's first app container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Only a pod's lines of this last while (5s, 2m, 1h30m).
    #[arg(long, value_parser = parse_since, conflicts_with = "since_time")]
    pub since: Option<i64>,
    /// Only a pod's lines written at or after this RFC 3339 time.
    #[arg(long)]
    pub since_time: Option<String>,
    /// The pod's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// A duration as kubectl's `--since` takes it (`90s`, `5m`, `1h30m`), in seconds.
pub fn parse_since(text: &str) -> Result<i64, String> {
    let refused = || {
        format!("{text:?} is not a duration: write a number and a unit, s, m or h (5s, 2m, 1h30m)")
    };
    let mut seconds: i64 = 0;
    let mut number = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            number.push(character);
            continue;
        }
        let unit = match character {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(refused()),
        };
        let value: i64 = number.parse().map_err(|_| refused())?;
        seconds = value
            .checked_mul(unit)
            .and_then(|part| seconds.checked_add(part))
            .ok_or_else(refused)?;
        number.clear();
    }
    if !number.is_empty() || seconds == 0 {
        return Err(refused());
    }
    Ok(seconds)
}

#[cfg(test)]
mod command_line_tests {
    /// clap's own checks of every subcommand (unique flags and the like), which it
    /// otherwise makes only when that subcommand is first used.
    #[test]
    fn every_command_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}

#[cfg(test)]
mod since_tests {
    #[test]
    fn since_takes_kubectls_durations() {
        assert_eq!(super::parse_since("90s"), Ok(90));
        assert_eq!(super::parse_since("1h30m"), Ok(5400));
        for bad in ["5", "5d", "m", "", "0s"] {
            let error = super::parse_since(bad).unwrap_err();
            assert!(error.contains("is not a duration"), "{bad}: {error}");
        }
    }
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pod's name (also its container's).
    pub name: String,
    /// The image.
    #[arg(long)]
    pub image: String,
    /// The pod's restart policy.
    #[arg(long, default_value = "Always", value_parser = ["Always", "OnFailure", "Never"])]
    pub restart: String,
    /// Memory limit (64Mi, 1Gi, …).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit (500m, 2, …).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Environment variables, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Use the node's network namespace.
    #[arg(long)]
    pub host_network: bool,
    /// The pod's labels, K=V (repeatable; default run=NAME).
    #[arg(
        short = 'l',
        long = "labels",
        value_name = "K=V",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// The trailing words replace the image's entrypoint (`command`) instead of its cmd
    /// (`args`).
    #[arg(long)]
    pub command: bool,
    /// The namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Print the pod instead of creating it (client: as kubectl's --dry-run=client).
    #[arg(long)]
    pub dry_run: bool,
    /// After `--`: the arguments (or, with `--command`, the command).
    #[arg(last = true)]
    pub words: Vec<String>,
}

/// `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The manifest (YAML, several documents allowed, or JSON), a directory of them
    /// (`.yaml`, `.yml`, `.json`), or `-` for stdin.
    #[arg(short, long)]
    pub file: PathBuf,
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to get: pods (also pod, po), or the cluster's nodes (nodes, node, no).
    #[arg(value_parser = ["pods", "pod", "po", "nodes", "node", "no"])]
    pub resource: String,
    /// One pod's (or node's) name.
    pub name: Option<String>,
    /// The namespace (default: default).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// After the table, print a pod's row each time it changes, until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// What to show: pods (also pod, po).
    #[arg(value_parser = ["pods", "pod", "po"])]
    pub resource: String,
    /// One pod's name.
    pub name: Option<String>,
    /// The namespace (default: default).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// A row per container.
    #[arg(long)]
    pub containers: bool,
}

/// `describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// What to describe: pod (also pods, po).
    #[arg(value_parser = ["pods", "pod", "po"])]
    pub resource: String,
    /// The pod's name.
    pub name: String,
    /// The namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// What to delete: pods (also pod, po), or nodes that are gone for good (nodes, node,
    /// no: their object and pod CIDR lease).
    #[arg(value_parser = ["pods", "pod", "po", "nodes", "node", "no"])]
    pub resource: String,
    /// The pods' (or nodes') names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// The namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Seconds between SIGTERM and SIGKILL, in place of the pod's own
    /// terminationGracePeriodSeconds; 0 (with --force) kills at once.
    #[arg(long)]
    pub grace_period: Option<u64>,
    /// With --grace-period 0: kill at once, without waiting for the program to stop.
    #[arg(long)]
    pub force: bool,
    /// The same as --grace-period 1.
    #[arg(long, conflicts_with = "grace_period")]
    pub now: bool,
}

/// `reboot`.
#[derive(Debug, Args)]
pub struct RebootArgs {
    /// Follow the node down and back up; fail if it does not return.
    #[arg(long)]
    pub wait: bool,
    /// How long to wait for the node to return, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// How `apply-config` puts the config in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApplyModeArg {
    /// Live when possible, else save and reboot.
    Auto,
    /// Live, or refuse.
    NoReboot,
    /// Save for the next boot.
    Staged,
}

/// `apply-config`.
#[derive(Debug, Args)]
pub struct ApplyConfigArgs {
    /// The config file.
    #[arg(short, long)]
    pub file: PathBuf,
    /// How to put it in force.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ApplyModeArg,
    /// Validate and show the diff; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Talk to a node in maintenance mode: no keelctl config, its self-signed
    /// certificate accepted (pin it with --fingerprint).
    #[arg(long, requires = "token")]
    pub insecure: bool,
    /// The maintenance token printed on the node's console.
    #[arg(long)]
    pub token: Option<String>,
    /// The certificate fingerprint printed on the node's console.
    #[arg(long, requires = "insecure")]
    pub fingerprint: Option<String>,
}

/// `upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Upload this bundle file (`keelson-image build --signing-key` writes one). Without
    /// `--bundle` or `--url`, the node installs its channel's latest release.
    #[arg(long, conflicts_with_all = ["url", "channel"])]
    pub bundle: Option<PathBuf>,
    /// Have the node fetch the bundle from this URL.
    #[arg(long, conflicts_with = "channel")]
    pub url: Option<String>,
    /// The channel to take the latest release from, instead of the configured one.
    #[arg(long)]
    pub channel: Option<String>,
    /// Install a version older than the running one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Activate the update but do not reboot; it takes effect at the next reboot.
    #[arg(long, conflicts_with = "wait")]
    pub no_reboot: bool,
    /// Follow the node through the reboot until the new version is blessed (or rolled
    /// back, which fails the command).
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `--wait` and `--timeout` of the verbs that reboot.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Follow the node down and back up, and report where it landed.
    #[arg(long)]
    pub wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// `update …`.
#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Each slot's state and version, the default, the last error and any progress.
    Status,
    /// Ask the node which release its channel offers (the metadata must be signed by a
    /// trusted key and not expired).
    Check(CheckArgs),
    /// Take back an activated update before the node reboots into it.
    Cancel,
}

/// `update check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The channel directory's URL, instead of the configured one (needs the operator
    /// role).
    #[arg(long)]
    pub channel: Option<String>,
}

/// `reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Do not ask: everything on STATE will be erased.
    #[arg(long, short)]
    pub yes: bool,
}

/// `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The config file (`-` for standard input).
    #[arg(short, long)]
    pub file: PathBuf,
}

/// `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The directory (or file).
    #[arg(default_value = "/var")]
    pub path: String,
    /// Descend into subdirectories.
    #[arg(short, long)]
    pub recursive: bool,
}

/// `read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The file.
    pub path: String,
}

/// `gen …`.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// A cluster CA, a machine config for its nodes, and an admin keelctl config.
    Config(GenConfigArgs),
    /// A keelctl config for another identity, signed by a `gen config` CA.
    Client(GenClientArgs),
}

/// `gen config`.
#[derive(Debug, Args)]
pub struct GenConfigArgs {
    /// Cluster name (a DNS label).
    #[arg(long)]
    pub cluster: String,
    /// Directory to write into.
    #[arg(long)]
    pub out: PathBuf,
    /// Node addresses keelctl will use, `host` or `host:port` (repeatable).
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
    /// The node config's format: native (node.yaml), ignition (node.ign) or cloud-config
    /// (user-data), with the API credentials as the files those formats carry.
    #[arg(long, value_enum, default_value = "native")]
    pub format: crate::generate::NodeFormat,
}

/// `gen client`.
#[derive(Debug, Args)]
pub struct GenClientArgs {
    /// The directory `gen config` wrote (its ca.crt, ca.key and keelctl.yaml).
    #[arg(long)]
    pub pki: PathBuf,
    /// Common name of the new identity.
    #[arg(long)]
    pub name: String,
    /// reader, operator or admin.
    #[arg(long)]
    pub role: Role,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// The keelctl config to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// `cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The members the node's gossip knows: name, address, state (alive, suspect or
    /// down), role, version and slot; `-o wide` adds the generation, pod CIDR and API.
    Members,
    /// The control plane: leader, term, voters, learners, and the commit and applied
    /// indexes (the leader's answer, whichever node is asked).
    Status,
    /// The built-in FleetLock server's reboot lock: each group's slots and holders.
    Lock,
}

/// `image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload an OCI archive (skopeo copy … oci-archive:FILE:NAME) or a Docker archive
    /// (docker save), gzip-compressed or not, into each node's image store.
    Import(ImageImportArgs),
    /// Have each node pull an image from its registry (or the mirrors its config names),
    /// with a progress bar.
    Pull(ImagePullArgs),
    /// The images on each node.
    Ls,
    /// Remove an image (by name or id); layers that containers run from stay until they
    /// are gone.
    Rm(ImageRemoveArgs),
}

/// `image import`.
#[derive(Debug, Args)]
pub struct ImageImportArgs {
    /// The archive.
    pub file: PathBuf,
    /// Name the image REF, replacing the names the archive gives it.
    #[arg(long, value_name = "REF")]
    pub name: Option<String>,
}

/// `image pull`.
#[derive(Debug, Args)]
pub struct ImagePullArgs {
    /// The image: busybox:1.36, ghcr.io/org/app:2, registry.local:5000/app@sha256:…
    pub reference: String,
}

/// `image rm`.
#[derive(Debug, Args)]
pub struct ImageRemoveArgs {
    /// Image names (short names as Docker's: busybox is docker.io/library/busybox:latest)
    /// or ids (12 or more hex digits).
    #[arg(required = true)]
    pub references: Vec<String>,
}

/// `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The pod (NAME or pod/NAME).
    pub pod: String,
    /// Pass this terminal's input to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal (with -i: an interactive shell).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The container (default: the pod's first app container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// After `--`: the command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}
