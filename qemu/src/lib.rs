//! `keelson-qemu`: boots Keelson disk images in QEMU, for people and for tests.
//!
//! A [`Vm`] boots under OVMF (UEFI) with its own copy of the firmware variables and a qcow2
//! overlay over the image, so the image itself is never written and a test can make the
//! overlay larger than the image (to watch STATE grow). The serial console goes to a file
//! that [`Vm::wait_for_console`] watches; QMP ([`Vm::qmp`]) presses the power button,
//! resets or quits; [`Vm::kill`] is the power cut; [`Vm::restart`] boots the same disk again.
//!
//! Networking is QEMU's user mode with `restrict=on` (the guest reaches nothing outside)
//! and one explicit forward from `127.0.0.1:<api_port>` to the guest's API port. No root is
//! needed. Acceleration is TCG unless KVM is asked for (`KEELSON_QEMU_ACCEL=kvm`), because
//! KVM hangs in early boot on some build machines.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub mod cluster;
pub mod relay;

/// The address at which a guest on user networking reaches [`VmOptions::host_services`].
pub const GUEST_SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// The console line the agent prints when it is serving.
pub const READY_PATTERN: &str = "keelson: ready ";
/// The console line of a node that rejected its config.
pub const MAINTENANCE_PATTERN: &str = "keelson: maintenance ";
/// The guest address QEMU's user network hands out first by DHCP.
pub const DEFAULT_GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slow, works everywhere.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

impl Accel {
    /// TCG, unless `KEELSON_QEMU_ACCEL=kvm`.
    pub fn from_env() -> Accel {
        match std::env::var("KEELSON_QEMU_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }
}

/// How to boot a VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The base disk image (raw); never modified.
    pub image: PathBuf,
    /// Virtual size of the overlay disk in bytes; the image's size if unset.
    pub disk_bytes: Option<u64>,
    /// Guest memory.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Host port on 127.0.0.1 forwarded to the guest's API (50000).
    pub api_port: Option<u16>,
    /// Services on the host the guest may reach (user networking only): the guest
    /// connects to `GUEST_SERVICE_ADDRESS:guest_port` and reaches `127.0.0.1:host_port`.
    /// The guest reaches nothing else.
    pub host_services: Vec<(u16, u16)>,
    /// More host ports forwarded to the guest: `(host port on 127.0.0.1, guest port)`.
    pub forwards: Vec<(u16, u16)>,
    /// Where the console log goes; inside the work directory if unset.
    pub console: Option<PathBuf>,
    /// Where the VM keeps its overlay, firmware variables and sockets; a temporary
    /// directory (removed on drop) if unset.
    pub work_dir: Option<PathBuf>,
    /// Acceleration.
    pub accel: Accel,
    /// A machine config handed over by fw_cfg: Ignition JSON as `opt/com.coreos/config`,
    /// anything else as `opt/dev.keelson/config` (the agent detects the format).
    pub config: Option<PathBuf>,
    /// A directory with `meta-data`, `user-data` and `network-config`, attached as a NoCloud
    /// seed (a FAT filesystem labelled `cidata`, built without root).
    pub seed: Option<PathBuf>,
    /// The guest address the API forward goes to; set it when the config gives the guest
    /// a static address.
    pub guest_address: Ipv4Addr,
    /// Attach the NIC to this existing tap device instead of QEMU's user network (for
    /// tests that put a real DHCP server on the other side). There is then no API forward.
    pub tap: Option<String>,
    /// Run QEMU inside this network namespace (`/run/netns/NAME`), through `nsenter`; the
    /// tap device must live there.
    pub netns: Option<PathBuf>,
    /// Boot this kernel and initramfs (QEMU's `-kernel`, loaded by the same firmware)
    /// instead of the disk's boot loader; the disk stays attached. For baselines that
    /// must run in the same VM as Keelson.
    pub kernel_boot: Option<KernelBoot>,
    /// A second NIC on a local cluster's segment (see [`relay`]).
    pub segment: Option<SegmentNic>,
    /// Boot the overlay and firmware variables already in the work directory (a node of a
    /// local cluster started again) instead of fresh ones.
    pub reuse_disk: bool,
}

/// A NIC whose Ethernet frames travel as UDP datagrams through a [`relay::Relay`].
#[derive(Debug, Clone)]
pub struct SegmentNic {
    /// The relay's address.
    pub relay: std::net::SocketAddr,
    /// The address this NIC sends from and listens on.
    pub local: std::net::SocketAddr,
    /// Its MAC address, which the node's config matches.
    pub mac: String,
}

/// A kernel booted directly by the firmware, see [`VmOptions::kernel_boot`].
#[derive(Debug, Clone)]
pub struct KernelBoot {
    /// The kernel image (bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
}

impl VmOptions {
    /// Defaults for booting `image`.
    pub fn new(image: impl Into<PathBuf>) -> VmOptions {
        VmOptions {
            image: image.into(),
            disk_bytes: None,
            memory_mib: 1024,
            cpus: 2,
            api_port: None,
            host_services: Vec::new(),
            forwards: Vec::new(),
            console: None,
            work_dir: None,
            accel: Accel::from_env(),
            config: None,
            seed: None,
            guest_address: DEFAULT_GUEST_ADDRESS,
            tap: None,
            netns: None,
            kernel_boot: None,
            segment: None,
            reuse_disk: false,
        }
    }
}

/// OVMF's code and variable-template files.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// Read-only firmware code.
    pub code: PathBuf,
    /// Template for the per-VM variable store.
    pub vars: PathBuf,
}

impl Firmware {
    /// Finds OVMF (Debian's `ovmf` package), or `KEELSON_OVMF_CODE`/`KEELSON_OVMF_VARS`.
    pub fn locate() -> anyhow::Result<Firmware> {
        if let (Some(code), Some(vars)) = (
            std::env::var_os("KEELSON_OVMF_CODE"),
            std::env::var_os("KEELSON_OVMF_VARS"),
        ) {
            return Ok(Firmware {
                code: code.into(),
                vars: vars.into(),
            });
        }
        for (code, vars) in [
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            (
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            ),
        ] {
            if Path::new(code).is_file() && Path::new(vars).is_file() {
                return Ok(Firmware {
                    code: code.into(),
                    vars: vars.into(),
                });
            }
        }
        bail!("OVMF firmware not found in /usr/share/OVMF. Install it with: sudo apt-get install ovmf")
    }
}

/// A running (or stopped) virtual machine.
pub struct Vm {
    options: VmOptions,
    firmware: Firmware,
    _temporary: Option<tempfile::TempDir>,
    dir: PathBuf,
    console: PathBuf,
    child: Option<Child>,
    qmp: Option<BufReader<UnixStream>>,
    keep: bool,
}

impl Vm {
    /// Creates the overlay and variable store, and boots.
    pub fn start(options: VmOptions) -> anyhow::Result<Vm> {
        let mut vm = Vm::prepare(options)?;
        vm.power_on()?;
        Ok(vm)
    }

    /// Creates the overlay and variable store without booting, so that a test can alter
    /// the overlay first (see [`Vm::write_disk_byte`]); then call [`Vm::power_on`].
    pub fn prepare(options: VmOptions) -> anyhow::Result<Vm> {
        let firmware = Firmware::locate()?;
        ensure_program("qemu-system-x86_64", "qemu-system-x86")?;
        ensure_program("qemu-img", "qemu-utils")?;
        let image = std::fs::canonicalize(&options.image)
            .with_context(|| format!("disk image {} not found", options.image.display()))?;
        let (temporary, dir) = match &options.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (None, dir.clone())
            }
            None => {
                let temporary = tempfile::Builder::new().prefix("keelson-vm-").tempdir()?;
                let dir = temporary.path().to_owned();
                (Some(temporary), dir)
            }
        };
        let overlay = dir.join("disk.qcow2");
        let console = options
            .console
            .clone()
            .unwrap_or_else(|| dir.join("console.log"));
        let reuse = options.reuse_disk && overlay.exists() && dir.join("vars.fd").exists();
        if !reuse {
            let mut create = Command::new("qemu-img");
            create
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&image)
                .arg(&overlay);
            if let Some(bytes) = options.disk_bytes {
                create.arg(bytes.to_string());
            }
            run_quietly(&mut create)?;
            std::fs::copy(&firmware.vars, dir.join("vars.fd"))
                .context("copying the UEFI variable store")?;
            std::fs::write(&console, b"")
                .with_context(|| format!("creating {}", console.display()))?;
        }
        if let Some(seed) = &options.seed {
            build_seed(seed, &dir.join(SEED_IMAGE))?;
        }
        Ok(Vm {
            options,
            firmware,
            _temporary: temporary,
            dir,
            console,
            child: None,
            qmp: None,
            keep: false,
        })
    }

    /// Starts QEMU on the prepared disk.
    pub fn power_on(&mut self) -> anyhow::Result<()> {
        let qmp_socket = self.dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp_socket);
        let netdev = match &self.options.tap {
            Some(tap) => format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
            None => {
                let mut netdev = "user,id=net0,restrict=on".to_owned();
                if let Some(port) = self.options.api_port {
                    netdev.push_str(&format!(
                        ",hostfwd=tcp:127.0.0.1:{port}-{}:50000",
                        self.options.guest_address
                    ));
                }
                for (host_port, guest_port) in &self.options.forwards {
                    netdev.push_str(&format!(
                        ",hostfwd=tcp:127.0.0.1:{host_port}-{}:{guest_port}",
                        self.options.guest_address
                    ));
                }
                if !self.options.host_services.is_empty() {
                    ensure_program("socat", "socat")?;
                }
                for (guest_port, host_port) in &self.options.host_services {
                    // `cmd:` starts one relay per guest connection; a chardev target would
                    // be a single stream, connected once when QEMU starts.
                    netdev.push_str(&format!(
                        ",guestfwd=tcp:{GUEST_SERVICE_ADDRESS}:{guest_port}-cmd:socat - TCP:127.0.0.1:{host_port}"
                    ));
                }
                netdev
            }
        };
        let mut command = match &self.options.netns {
            Some(netns) => {
                ensure_program("nsenter", "util-linux")?;
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg("qemu-system-x86_64");
                command
            }
            None => Command::new("qemu-system-x86_64"),
        };
        if let Some(config) = &self.options.config {
            let bytes = std::fs::read(config)
                .with_context(|| format!("reading the config {}", config.display()))?;
            let name = fw_cfg_name(&bytes);
            command
                .arg("-fw_cfg")
                .arg(format!("name={name},file={}", config.display()));
        }
        if let Some(boot) = &self.options.kernel_boot {
            command
                .arg("-kernel")
                .arg(&boot.kernel)
                .arg("-initrd")
                .arg(&boot.initrd)
                .arg("-append")
                .arg(&boot.cmdline);
        }
        command
            .args([
                "-machine",
                "q35",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .args([
                "-accel",
                if self.options.accel == Accel::Kvm {
                    "kvm"
                } else {
                    "tcg"
                },
            ])
            .args([
                "-m",
                &self.options.memory_mib.to_string(),
                "-smp",
                &self.options.cpus.to_string(),
            ])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                self.firmware.code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                self.dir.join("vars.fd").display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=virtio,format=qcow2,file={}",
                self.dir.join("disk.qcow2").display()
            ))
            .args(seed_drive(&self.dir, self.options.seed.is_some()))
            .args(["-netdev", &netdev, "-device"])
            .arg(format!(
                "virtio-net-pci,netdev=net0,mac={}",
                cluster::USER_NIC_MAC
            ))
            .args(self.options.segment.iter().flat_map(|segment| {
                [
                    "-netdev".to_owned(),
                    format!(
                        "socket,id=segment,udp={},localaddr={}",
                        segment.relay, segment.local
                    ),
                    "-device".to_owned(),
                    format!("virtio-net-pci,netdev=segment,mac={}", segment.mac),
                ]
            }))
            .args(["-device", "virtio-rng-pci"])
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={},append=on",
                self.console.display()
            ))
            .args(["-serial", "chardev:console"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("qemu.stderr"))?);
        let child = command.spawn().context("cannot start qemu-system-x86_64")?;
        // For the tools that find a kept VM again (`keelson-qemu cluster stop`).
        std::fs::write(self.dir.join("qemu.pid"), format!("{}\n", child.id()))?;
        self.child = Some(child);
        self.qmp = None;
        Ok(())
    }

    /// Keeps the VM running after this value is dropped (for `--keep`).
    pub fn keep_running(&mut self) {
        self.keep = true;
    }

    /// The VM's work directory (overlay, variables, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The qcow2 overlay that holds every write the guest made.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    /// The console log file.
    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// QEMU's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the console has printed so far (across restarts).
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Bytes of console output so far: pass it to [`Vm::wait_for_console_from`] to wait
    /// only for output that comes after this moment.
    pub fn console_mark(&self) -> usize {
        std::fs::metadata(&self.console)
            .map(|meta| meta.len() as usize)
            .unwrap_or(0)
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = self.console_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for a console line containing `pattern`, anywhere in the log.
    pub fn wait_for_console(&mut self, pattern: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for_console_from(0, pattern, timeout)
    }

    /// Waits for a console line containing `pattern` printed after byte `mark` of the log.
    /// Fails if QEMU exits first or `timeout` passes, with the console's tail in the error.
    pub fn wait_for_console_from(
        &mut self,
        mark: usize,
        pattern: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.wait_for_any_from(mark, &[pattern], timeout)
            .map(|(_, line)| line)
    }

    /// Waits for the first console line containing any of `patterns`; returns which one
    /// matched and the line.
    pub fn wait_for_any(
        &mut self,
        patterns: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<(usize, String)> {
        self.wait_for_any_from(0, patterns, timeout)
    }

    /// [`Vm::wait_for_any`], looking only after byte `mark` of the log.
    pub fn wait_for_any_from(
        &mut self,
        mark: usize,
        patterns: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut file = std::fs::File::open(&self.console)?;
        file.seek(SeekFrom::Start(mark as u64))?;
        let mut pending = String::new();
        loop {
            let mut chunk = Vec::new();
            file.read_to_end(&mut chunk)?;
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(which) = patterns.iter().position(|pattern| line.contains(pattern)) {
                    return Ok((which, line.trim_end().to_owned()));
                }
            }
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "QEMU exited ({status}) before the console showed {patterns:?}. Last console lines:\n{}",
                    self.console_tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the console did not show {patterns:?} within {} s. Last console lines:\n{}",
                    timeout.as_secs(),
                    self.console_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("the VM is not running"),
        }
    }

    /// True while QEMU runs.
    pub fn is_running(&mut self) -> bool {
        if self.child.is_none() {
            return false;
        }
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits up to `timeout` for QEMU to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU still running after {} s. Last console lines:\n{}",
                    timeout.as_secs(),
                    self.console_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a QMP command and returns its `return` value.
    pub fn qmp(&mut self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        if self.qmp.is_none() {
            let socket = self.dir.join("qmp.sock");
            let deadline = Instant::now() + Duration::from_secs(10);
            let stream = loop {
                match UnixStream::connect(&socket) {
                    Ok(stream) => break stream,
                    Err(error) if Instant::now() >= deadline => {
                        return Err(error)
                            .with_context(|| format!("connecting to QMP at {}", socket.display()))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut reader = BufReader::new(stream);
            let mut greeting = String::new();
            reader.read_line(&mut greeting)?;
            self.qmp = Some(reader);
            self.qmp("qmp_capabilities", json!({}))?;
        }
        let reader = self.qmp.as_mut().context("QMP is not connected")?;
        let mut request = json!({ "execute": command });
        if arguments
            .as_object()
            .is_some_and(|object| !object.is_empty())
        {
            request["arguments"] = arguments;
        }
        writeln!(reader.get_mut(), "{request}")?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("QMP closed the connection during {command}");
            }
            let reply: Value =
                serde_json::from_str(&line).with_context(|| format!("bad QMP reply {line:?}"))?;
            if let Some(result) = reply.get("return") {
                return Ok(result.clone());
            }
            if let Some(error) = reply.get("error") {
                bail!("QMP {command} failed: {error}");
            }
            // Asynchronous events ({"event": …}) are skipped.
        }
    }

    /// Presses the ACPI power button.
    pub fn powerdown(&mut self) -> anyhow::Result<()> {
        self.qmp("system_powerdown", json!({})).map(drop)
    }

    /// Resets the machine (like the reset button).
    pub fn reset(&mut self) -> anyhow::Result<()> {
        self.qmp("system_reset", json!({})).map(drop)
    }

    /// Asks QEMU to quit.
    pub fn quit(&mut self) -> anyhow::Result<()> {
        let _ = self.qmp("quit", json!({}));
        self.wait_exit(Duration::from_secs(10)).map(drop)
    }

    /// Kills QEMU at once: a power cut. Writes the guest had not flushed are lost.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.qmp = None;
    }

    /// Removes the NoCloud seed and the fw_cfg config from the next power-on (a machine
    /// whose seed disk was taken out).
    pub fn detach_config(&mut self) {
        self.options.seed = None;
        self.options.config = None;
    }

    /// Powers the same disk on again (killing QEMU first if it still runs).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.power_on()
    }

    /// Overwrites one byte of the VM's disk (in the overlay; the image is untouched) with
    /// `qemu-io`. Only while QEMU is not running.
    pub fn write_disk_byte(&mut self, offset: u64, value: u8) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("cannot edit the disk of a running VM");
        }
        run_quietly(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c"])
                .arg(format!("write -P {value} {offset} 1"))
                .arg(self.overlay()),
        )
    }

    /// Copies the VM's whole disk (image plus overlay) to a raw file, for inspection with
    /// host tools. Only while QEMU is not running.
    pub fn export_raw(&mut self, destination: &Path) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("cannot export the disk of a running VM");
        }
        run_quietly(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(self.overlay())
                .arg(destination),
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.keep {
            self.kill();
        }
    }
}

/// The fw_cfg entry a config goes to: Ignition's own name for Ignition JSON, Keelson's
/// for anything else.
pub fn fw_cfg_name(bytes: &[u8]) -> &'static str {
    match keelson_config::detect(bytes) {
        Ok(keelson_config::Format::Ignition) => "opt/com.coreos/config",
        _ => "opt/dev.keelson/config",
    }
}

const SEED_IMAGE: &str = "seed.img";

fn seed_drive(dir: &Path, attached: bool) -> Vec<String> {
    if !attached {
        return Vec::new();
    }
    vec![
        "-drive".into(),
        format!(
            "if=virtio,format=raw,readonly=on,file={}",
            dir.join(SEED_IMAGE).display()
        ),
    ]
}

/// Builds a NoCloud seed image from `directory` with `mkfs.vfat` and `mcopy`: a FAT
/// filesystem labelled `CIDATA` holding the directory's regular files. Needs no root.
pub fn build_seed(directory: &Path, image: &Path) -> anyhow::Result<()> {
    ensure_program("mkfs.vfat", "dosfstools")?;
    ensure_program("mcopy", "mtools")?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory)
        .with_context(|| format!("reading the seed directory {}", directory.display()))?
    {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    let known = ["meta-data", "user-data", "network-config", "vendor-data"];
    if !files.iter().any(|path| {
        path.file_name()
            .is_some_and(|name| name == "meta-data" || name == "user-data")
    }) {
        bail!(
            "{} holds neither meta-data nor user-data; a NoCloud seed needs {}",
            directory.display(),
            known.join(", ")
        );
    }
    let _ = std::fs::remove_file(image);
    // 2 MiB is plenty for configs and small enough to build in milliseconds.
    run_quietly(
        Command::new("mkfs.vfat")
            .args(["-n", "CIDATA", "-C"])
            .arg(image)
            .arg("2048"),
    )?;
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        run_quietly(
            Command::new("mcopy")
                .arg("-i")
                .arg(image)
                .arg(&file)
                .arg(format!("::{name}")),
        )?;
    }
    Ok(())
}

fn ensure_program(program: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|directory| directory.join(program).is_file());
    if !found {
        bail!("{program} not found. Install it with: sudo apt-get install {package}");
    }
    Ok(())
}

fn run_quietly(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}",
            command.get_program(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (free when asked; another process could take it after).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
