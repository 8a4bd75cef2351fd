//! `keelson-qemu`: boot a Keelson image in QEMU from the command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keelson_qemu::{Accel, Vm, VmOptions, MAINTENANCE_PATTERN, READY_PATTERN};

/// Boot Keelson images in QEMU (UEFI, qcow2 overlay, serial console to a file). No root.
#[derive(Debug, Parser)]
#[command(version)]
struct Arguments {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Boot an image. Without --wait-ready, the console is shown until the VM powers off.
    Run {
        /// The disk image (raw); never modified.
        #[arg(long)]
        image: PathBuf,
        /// Exit 0 as soon as the agent's ready line appears (non-zero on timeout).
        #[arg(long)]
        wait_ready: bool,
        /// Seconds to wait for the ready line.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Write the serial console to this file.
        #[arg(long)]
        console: Option<PathBuf>,
        /// Forward 127.0.0.1:PORT to the guest's API port (50000).
        #[arg(long, default_value_t = 50000)]
        api_port: u16,
        /// Leave the VM running after --wait-ready succeeds.
        #[arg(long)]
        keep: bool,
        /// Size of the VM's disk (the overlay), e.g. 4G; the image's size by default.
        #[arg(long, value_parser = parse_size)]
        disk_size: Option<u64>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Use KVM instead of TCG.
        #[arg(long)]
        kvm: bool,
        /// Hand the guest this machine config by fw_cfg (Ignition JSON, a MachineConfig or a
        /// #cloud-config; the format is detected).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Attach a NoCloud seed built from this directory (meta-data, user-data,
        /// network-config).
        #[arg(long)]
        seed: Option<PathBuf>,
        /// The guest's address for the API forward, when the config makes it static.
        #[arg(long, default_value_t = keelson_qemu::DEFAULT_GUEST_ADDRESS)]
        guest_address: std::net::Ipv4Addr,
        /// Forward 127.0.0.1:HOSTPORT to the guest's GUESTPORT (repeatable), e.g. a
        /// container's port.
        #[arg(long = "forward", value_name = "HOSTPORT:GUESTPORT", value_parser = parse_forward)]
        forwards: Vec<(u16, u16)>,
        /// Let the guest reach 127.0.0.1:HOSTPORT on the host at 10.0.2.100:GUESTPORT
        /// (repeatable), e.g. a registry or file server the host runs on its loopback.
        #[arg(long = "host-service", value_name = "GUESTPORT=HOSTPORT", value_parser = parse_host_service)]
        host_services: Vec<(u16, u16)>,
    },
    /// Local clusters: several VMs on one L2 segment, with their PKI and configs.
    #[command(subcommand)]
    Cluster(ClusterVerb),
}

/// Where a local cluster lives: `--out DIR`, or `out/cluster-NAME` for `--name NAME`.
#[derive(Debug, clap::Args)]
struct ClusterPlace {
    /// The cluster's name (nodes are NAME-1 … NAME-N).
    #[arg(long, default_value = "keelson")]
    name: String,
    /// Its directory (default out/cluster-NAME).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ClusterPlace {
    fn dir(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("out/cluster-{}", self.name)))
    }
}

#[derive(Debug, Subcommand)]
enum ClusterVerb {
    /// Generate the PKI and configs, boot the VMs on one segment, and return once every
    /// node is a member and a leader exists. The VMs keep running.
    Create {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Voters wanted: 1, 3 or 5.
        #[arg(long, default_value_t = 3)]
        control_planes: u8,
        /// The disk image (default out/keelson.raw, as scripts/run.sh builds it).
        #[arg(long, default_value = "out/keelson.raw")]
        image: PathBuf,
        #[command(flatten)]
        place: ClusterPlace,
        /// Memory per VM in MiB.
        #[arg(long, default_value_t = 768)]
        memory: u32,
        /// Seconds to wait for the cluster to form.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// Each VM (running or stopped, address, API port) and the control plane's status.
    Status {
        #[command(flatten)]
        place: ClusterPlace,
    },
    /// Cut a node's power (kill its VM), as pulling the plug would.
    Stop {
        /// The node (e.g. keelson-2).
        node: String,
        #[command(flatten)]
        place: ClusterPlace,
    },
    /// Boot a stopped node again from its disk.
    Start {
        /// The node.
        node: String,
        #[command(flatten)]
        place: ClusterPlace,
    },
    /// Kill every VM and remove the cluster's directory.
    Destroy {
        #[command(flatten)]
        place: ClusterPlace,
    },
    /// The segment's relay (started by `create`; not for use by hand).
    #[command(hide = true)]
    Relay {
        #[command(flatten)]
        place: ClusterPlace,
    },
}

fn port_pair(text: &str, separator: char, form: &str) -> Result<(u16, u16), String> {
    let (left, right) = text
        .split_once(separator)
        .ok_or_else(|| format!("{text:?} is not {form}"))?;
    let port = |part: &str| {
        part.parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{part:?} in {text:?} is not a port (1 to 65535); write {form}"))
    };
    Ok((port(left)?, port(right)?))
}

/// `--forward HOSTPORT:GUESTPORT`.
fn parse_forward(text: &str) -> Result<(u16, u16), String> {
    port_pair(text, ':', "HOSTPORT:GUESTPORT")
}

/// `--host-service GUESTPORT=HOSTPORT`.
fn parse_host_service(text: &str) -> Result<(u16, u16), String> {
    port_pair(text, '=', "GUESTPORT=HOSTPORT")
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 4G or 512M"))?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("unknown size unit in {text:?} (use K, M, G or T)")),
    };
    Ok(number * scale)
}

fn main() {
    if let Err(error) = run(Arguments::parse()) {
        eprintln!("keelson-qemu: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(arguments: Arguments) -> anyhow::Result<()> {
    let command = match arguments.command {
        Verb::Cluster(verb) => return cluster(verb),
        run => run,
    };
    let Verb::Run {
        image,
        wait_ready,
        timeout,
        console,
        api_port,
        keep,
        disk_size,
        memory,
        kvm,
        config,
        seed,
        guest_address,
        forwards,
        host_services,
    } = command
    else {
        unreachable!("cluster verbs returned above")
    };
    let mut options = VmOptions::new(image);
    options.console = console;
    options.api_port = Some(api_port);
    options.disk_bytes = disk_size;
    options.memory_mib = memory;
    options.config = config;
    options.seed = seed;
    options.guest_address = guest_address;
    options.forwards = forwards;
    options.host_services = host_services;
    if kvm {
        options.accel = Accel::Kvm;
    }
    if keep {
        // A kept VM must outlive this process, so its files cannot live in a temporary
        // directory that is removed on exit.
        let dir = std::env::temp_dir().join(format!("keelson-vm-{}", std::process::id()));
        options.work_dir = Some(dir);
    }
    let mut vm = Vm::start(options)?;
    eprintln!(
        "keelson-qemu: console in {}; API at 127.0.0.1:{api_port}",
        vm.console_path().display()
    );
    if wait_ready {
        let (which, line) = vm.wait_for_any(
            &[READY_PATTERN, MAINTENANCE_PATTERN],
            Duration::from_secs(timeout),
        )?;
        if which == 1 {
            // Give the agent a moment to print every error after the maintenance line.
            std::thread::sleep(Duration::from_secs(1));
            let text = vm.console_text();
            for error in text.lines().filter(|l| l.starts_with("keelson: ")) {
                eprintln!("{error}");
            }
            anyhow::bail!("the node entered maintenance mode: {}", line.trim());
        }
        println!("{}", line.trim());
        if keep {
            vm.keep_running();
            eprintln!(
                "keelson-qemu: VM left running as pid {:?}, files in {}",
                vm.pid(),
                vm.dir().display()
            );
        }
        return Ok(());
    }
    // Follow the console until the VM powers off.
    let mut shown = 0;
    loop {
        let text = vm.console_text();
        if text.len() > shown {
            print!("{}", &text[shown..]);
            shown = text.len();
        }
        if !vm.is_running() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `keelson-qemu cluster …`.
fn cluster(verb: ClusterVerb) -> anyhow::Result<()> {
    use keelson_qemu::cluster::{ClusterSpec, LocalCluster};
    match verb {
        ClusterVerb::Create {
            nodes,
            control_planes,
            image,
            place,
            memory,
            timeout,
        } => {
            let mut spec = ClusterSpec::new(&place.name, nodes, &image, &place.dir());
            spec.control_planes = control_planes;
            spec.memory_mib = memory;
            let cluster = LocalCluster::create(&spec)?;
            eprintln!(
                "keelson-qemu: {nodes} nodes booting; consoles in {}/nodes/*/console.log",
                cluster.dir.display()
            );
            let status = cluster.wait_formed(Duration::from_secs(timeout), |line| {
                eprintln!("keelson-qemu: {line}")
            })?;
            println!(
                "cluster {} formed: leader {}, voters {}",
                place.name,
                status.leader,
                status.voters.join(", ")
            );
            println!(
                "keelctl --keelconfig {} cluster members",
                cluster.keelconfig().display()
            );
            Ok(())
        }
        ClusterVerb::Status { place } => {
            let cluster = LocalCluster::open(&place.dir())?;
            print!("{}", keelson_qemu::cluster::vm_table(&cluster));
            match cluster.control_plane_status() {
                Ok(status) => println!(
                    "leader {} (term {}), voters {}, learners {}",
                    if status.leader.is_empty() {
                        "none"
                    } else {
                        &status.leader
                    },
                    status.term,
                    status.voters.join(", "),
                    if status.learners.is_empty() {
                        "none".to_owned()
                    } else {
                        status.learners.join(", ")
                    }
                ),
                Err(error) => println!("control plane: {error:#}"),
            }
            Ok(())
        }
        ClusterVerb::Stop { node, place } => LocalCluster::open(&place.dir())?.stop(&node),
        ClusterVerb::Start { node, place } => LocalCluster::open(&place.dir())?.boot(&node),
        ClusterVerb::Destroy { place } => LocalCluster::open(&place.dir())?.destroy(),
        ClusterVerb::Relay { place } => {
            LocalCluster::open(&place.dir())?.relay()?.run()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_say_what_form_they_want() {
        assert_eq!(parse_forward("8080:80"), Ok((8080, 80)));
        assert_eq!(parse_host_service("5000=41234"), Ok((5000, 41234)));
        assert_eq!(
            parse_forward("8080=80").unwrap_err(),
            "\"8080=80\" is not HOSTPORT:GUESTPORT"
        );
        assert_eq!(
            parse_host_service("5000=0").unwrap_err(),
            "\"0\" in \"5000=0\" is not a port (1 to 65535); write GUESTPORT=HOSTPORT"
        );
    }
}
