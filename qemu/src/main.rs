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
    },
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
    } = arguments.command;
    let mut options = VmOptions::new(image);
    options.console = console;
    options.api_port = Some(api_port);
    options.disk_bytes = disk_size;
    options.memory_mib = memory;
    options.config = config;
    options.seed = seed;
    options.guest_address = guest_address;
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
