//! Stage 2, run as `/sbin/init` in the verified root: bring the system up, keep the agent
//! running, and take the machine down in order.
//!
//! Start-up steps, in order (each logged; none is fatal except what PID 1 cannot live
//! without):
//! 1. load the root's modules (network, ACPI button, input, EFI variables, FAT);
//! 2. mount `/run`, `/tmp`, `/dev/pts`, `/dev/shm`, cgroup2 and efivarfs, and a writable
//!    overlay on `/etc` whose upper layer lives in `/run` (so the agent can write the files a
//!    config asks for, and every boot starts again from the verified root's `/etc`);
//! 3. route ctrl-alt-del to PID 1 as SIGINT, set a default hostname;
//! 4. grow STATE to the end of the disk;
//! 5. listen for signals, sd_notify datagrams and the power button;
//! 6. supervise `keelsond` until a poweroff or reboot is asked for, keeping the descriptors
//!    it stores (its containers' log pipes, [`crate::fdstore`]) and an exit record for every
//!    orphan it reaps (its containers, [`crate::reaper`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use keelson_contract::trial::{TrialRecord, TRIAL_FILE};
use keelson_disk::layout::{Slot, STATE_LABEL};
use nix::mount::MsFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use keelson_contract::pid1::{
    action_for_signal, NotifyMessage, PowerAction, AGENT_PATH, AGENT_START_ENV, LISTEN_FDNAMES_ENV,
    LISTEN_FDS_ENV, NOTIFY_SOCKET_PATH,
};
use keelson_linux::clock::monotonic as now;
use keelson_linux::{block, mounts};
use keelson_supervise::agent::{Action, AgentState, Event, Supervisor, WATCHDOG_INTERVAL};
use keelson_supervise::trial::{Trial, TrialVerdict};

use crate::error::{io, InitError};
use crate::fdstore::FdStore;
use crate::{fdstore, grow, modules, power};

/// Runs stage 2. Never returns.
pub fn run() -> ! {
    crate::notice!("stage 2 (keelson-init {})", env!("CARGO_PKG_VERSION"));
    load_root_modules();
    fdstore::raise_open_file_limit();
    mount_runtime_filesystems();
    configure_kernel();
    grow_state();
    let signals = match SignalFd::new() {
        Ok(signals) => signals,
        Err(error) => {
            crate::error!("cannot receive signals ({error}); rebooting");
            power::shut_down(PowerAction::Reboot, None, &|| {});
        }
    };
    let notify = open_notify_socket();
    let buttons = power::open_power_buttons();
    crate::notice!(
        "listening for the power button on {} device(s)",
        buttons.len()
    );
    let (action, agent) = supervise(&signals, notify.as_ref(), buttons);
    // Read (and drop) what the agent says while it stops, so that its sends never block.
    let drain_notifications = || {
        if let Some(socket) = notify.as_ref() {
            drop(read_notifications(socket));
        }
    };
    power::shut_down(action, agent, &drain_notifications)
}

fn mount_runtime_filesystems() {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let steps: [(&str, &str, &str, MsFlags, Option<&str>); 6] = [
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777")),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid_nodev,
            Some("mode=1777"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            Some("nsdelegate"),
        ),
        (
            "efivarfs",
            "/sys/firmware/efi/efivars",
            "efivarfs",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            None,
        ),
    ];
    for (source, target, fstype, flags, data) in steps {
        if fstype == "efivarfs" && !std::path::Path::new("/sys/firmware/efi").exists() {
            continue; // not booted through UEFI
        }
        if mounts::is_mount_point(target) {
            continue;
        }
        if let Err(error) = mounts::mount_fs(source, target, fstype, flags, data) {
            crate::warning!("{error}");
        }
    }
    if let Err(error) = mount_etc_overlay() {
        crate::warning!("{error}; /etc stays read-only");
    }
}

/// Where the `/etc` overlay keeps its writable layer.
pub const ETC_UPPER: &str = "/run/keelson/etc/upper";
const ETC_WORK: &str = "/run/keelson/etc/work";

fn mount_etc_overlay() -> Result<(), InitError> {
    if mounts::is_mount_point("/etc") {
        return Ok(()); // already there (PID 1 does not restart, but be safe)
    }
    for directory in [ETC_UPPER, ETC_WORK] {
        std::fs::create_dir_all(directory).map_err(io("creating", directory))?;
    }
    let options = format!("lowerdir=/etc,upperdir={ETC_UPPER},workdir={ETC_WORK}");
    mounts::mount_fs(
        "overlay",
        "/etc",
        "overlay",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&options),
    )?;
    Ok(())
}

fn load_root_modules() {
    let Ok(release) = nix::sys::utsname::uname() else {
        return;
    };
    let directory = std::path::Path::new("/lib/modules").join(release.release());
    let loaded = modules::load_all(&directory);
    if !loaded.is_empty() {
        crate::notice!("loaded {} modules: {}", loaded.len(), loaded.join(" "));
    }
}

fn configure_kernel() {
    // With ctrl-alt-del disabled in the kernel, it sends SIGINT to PID 1 instead of
    // rebooting at once, so the reboot goes through the orderly path.
    if let Err(errno) = nix::sys::reboot::set_cad_enabled(false) {
        crate::warning!("cannot route ctrl-alt-del to PID 1: {}", errno.desc());
    }
    let current = nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    if current.is_empty() || current == "(none)" {
        let _ = nix::unistd::sethostname("keelson");
    }
}

fn grow_state() {
    let Some(state) = block::find_partition(STATE_LABEL) else {
        crate::warning!("no {STATE_LABEL} partition; not growing it");
        return;
    };
    match grow::grow_state(&state, "/var") {
        Ok(grow::GrowOutcome::AlreadyFull { bytes }) => {
            crate::notice!("{STATE_LABEL} already fills its disk ({} MiB)", bytes >> 20)
        }
        Ok(grow::GrowOutcome::Grown { from, to }) => {
            crate::notice!(
                "grew {STATE_LABEL} from {} MiB to {} MiB",
                from >> 20,
                to >> 20
            )
        }
        Err(error) => crate::warning!("growing {STATE_LABEL} failed: {error}"),
    }
}

fn open_notify_socket() -> Option<UnixDatagram> {
    let _ = std::fs::create_dir_all("/run/keelson");
    let _ = std::fs::remove_file(NOTIFY_SOCKET_PATH);
    let socket = match UnixDatagram::bind(NOTIFY_SOCKET_PATH) {
        Ok(socket) => socket,
        Err(error) => {
            crate::warning!(
                "cannot open {NOTIFY_SOCKET_PATH}: {error}; the agent cannot report readiness"
            );
            return None;
        }
    };
    let _ = socket.set_nonblocking(true);
    if let Err(errno) =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)
    {
        crate::warning!(
            "cannot ask for sender credentials on {NOTIFY_SOCKET_PATH}: {}",
            errno.desc()
        );
    }
    Some(socket)
}

/// The trial to watch this boot: armed when the trial record on STATE names the running
/// slot (see `keelson_contract::trial`).
fn arm_trial() -> Option<Trial> {
    let record = read_trial_record();
    let cmdline = keelson_linux::proc_cmdline();
    let running =
        keelson_contract::cmdline::value(&cmdline, "keelson.slot").and_then(Slot::from_letter);
    let trial = Trial::arm(record, running, now())?;
    crate::notice!(
        "slot {} is on trial: it must be blessed within {} s or PID 1 reboots",
        trial.slot,
        trial.deadline.saturating_sub(now()).as_secs()
    );
    Some(trial)
}

/// The trial record on STATE, if there is one (the agent removes it when it blesses or
/// rolls back the slot).
fn read_trial_record() -> Option<TrialRecord> {
    TrialRecord::parse(&std::fs::read_to_string(TRIAL_FILE).ok()?)
}

/// The main loop. Returns the power action that ended it, after asking the agent to stop,
/// and the agent's pid when it was running then.
fn supervise(
    signals: &SignalFd,
    notify: Option<&UnixDatagram>,
    mut buttons: Vec<std::fs::File>,
) -> (PowerAction, Option<i32>) {
    let mut supervisor = Supervisor::new(now());
    let mut store = FdStore::default();
    let mut pending = supervisor.handle(now(), Event::Tick);
    let mut trial = arm_trial();
    loop {
        let mut requested = None;
        while let Some(action) = pending.pop() {
            pending.extend(perform(&mut supervisor, &store, action));
        }

        let timeout = supervisor
            .next_deadline()
            .into_iter()
            .chain(trial.as_ref().map(|trial| trial.deadline))
            .min()
            .map(|deadline| deadline.saturating_sub(now()))
            .map(|wait| {
                PollTimeout::try_from(wait.as_millis().min(60_000) as u32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            })
            .unwrap_or(PollTimeout::from(60_000u16));
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if let Some(socket) = notify {
            fds.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
        }
        for button in &buttons {
            fds.push(PollFd::new(button.as_fd(), PollFlags::POLLIN));
        }
        if let Err(errno) = poll(&mut fds, timeout) {
            if errno != nix::errno::Errno::EINTR {
                crate::warning!("poll failed: {}", errno.desc());
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        for signal in signals.drain() {
            if signal == libc::SIGCHLD {
                continue; // reaped below in every iteration
            }
            match action_for_signal(signal) {
                Some(action) => {
                    crate::notice!("received signal {signal}: {action}");
                    requested = Some(action);
                }
                None => crate::notice!("ignoring signal {signal}"),
            }
        }
        for (pid, how) in power::reap_children() {
            pending.extend(supervisor.handle(now(), Event::Exited { pid, how }));
        }
        if let Some(socket) = notify {
            for (pid, message, fds) in read_notifications(socket) {
                store.apply(&message, fds);
                pending.extend(supervisor.handle(now(), Event::Notify { pid, message }));
            }
        }
        for button in &mut buttons {
            if power::power_button_pressed(button) {
                crate::notice!("power button pressed: poweroff");
                requested = Some(PowerAction::PowerOff);
            }
        }
        pending.extend(supervisor.handle(now(), Event::Tick));
        if let Some(watched) = &trial {
            let still_on_trial =
                read_trial_record().is_some_and(|record| record.slot == watched.slot);
            match watched.judge(now(), still_on_trial, supervisor.starts()) {
                TrialVerdict::Pending => {}
                TrialVerdict::Over => trial = None,
                TrialVerdict::Failed(failure) => {
                    crate::error!(
                        "{failure}; rebooting so that the boot counter can fall back to the other slot"
                    );
                    requested = Some(PowerAction::Reboot);
                }
            }
        }

        if let Some(action) = requested {
            let agent = match supervisor.state() {
                AgentState::Running { pid, .. } => Some(*pid),
                _ => None,
            };
            for action in supervisor.handle(now(), Event::Stop) {
                perform(&mut supervisor, &store, action);
            }
            return (action, agent);
        }
    }
}

/// Carries out one supervisor action; returns the follow-up actions.
fn perform(supervisor: &mut Supervisor, store: &FdStore, action: Action) -> Vec<Action> {
    match action {
        Action::Log(line) => {
            crate::notice!("{line}");
            Vec::new()
        }
        Action::Kill { pid, signal } => {
            if let Ok(signal) = Signal::try_from(signal) {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            Vec::new()
        }
        Action::Spawn { previous_starts } => {
            let event = match spawn_agent(previous_starts + 1, store) {
                Ok(pid) => Event::Spawned { pid },
                Err(error) => Event::SpawnFailed {
                    error: error.to_string(),
                },
            };
            supervisor.handle(now(), event)
        }
    }
}

/// Starts the agent with the descriptors it left in the store (see [`fdstore`]).
fn spawn_agent(start_number: u32, store: &FdStore) -> Result<i32, InitError> {
    let handed_over = store.hand_over();
    let parked = FdStore::raw_numbers(&handed_over);
    let names: Vec<&str> = handed_over.iter().map(|(name, _)| name.as_str()).collect();
    let mut command = std::process::Command::new(AGENT_PATH);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/usr/sbin")
        .env("NOTIFY_SOCKET", NOTIFY_SOCKET_PATH)
        .env("WATCHDOG_USEC", WATCHDOG_INTERVAL.as_micros().to_string())
        .env(AGENT_START_ENV, start_number.to_string())
        .current_dir("/");
    if !parked.is_empty() {
        command
            .env(LISTEN_FDS_ENV, parked.len().to_string())
            .env(LISTEN_FDNAMES_ENV, names.join(":"));
    }
    // SAFETY: only async-signal-safe calls between fork and exec: unblock the signals PID 1
    // blocked for its signalfd, start a new session, and move the stored descriptors to
    // 3, 4, ….
    unsafe {
        command.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::setsid();
            FdStore::install(&parked)
        });
    }
    command
        .spawn()
        .map(|child| child.id() as i32)
        .map_err(io("starting", AGENT_PATH))
}

/// Reads every pending sd_notify datagram with its sender's pid and the descriptors sent
/// with it.
fn read_notifications(socket: &UnixDatagram) -> Vec<(i32, NotifyMessage, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};
    let mut messages = Vec::new();
    loop {
        let mut buffer = [0u8; 4096];
        let mut space = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 16]);
        let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
        let received = recvmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let Ok(received) = received else {
            return messages;
        };
        let mut sender = 0;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = received.cmsgs() {
            for cmsg in cmsgs {
                match cmsg {
                    ControlMessageOwned::ScmCredentials(credentials) => sender = credentials.pid(),
                    // SAFETY: descriptors received with SCM_RIGHTS are new and ours alone.
                    ControlMessageOwned::ScmRights(received) => fds.extend(
                        received
                            .into_iter()
                            .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }),
                    ),
                    _ => {}
                }
            }
        }
        let length = received.bytes;
        let text = String::from_utf8_lossy(buffer.get(..length).unwrap_or_default()).into_owned();
        messages.push((sender, NotifyMessage::parse(&text), fds));
    }
}

/// A signalfd for the signals PID 1 acts on (which are blocked for normal delivery).
struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    fn new() -> Result<SignalFd, std::io::Error> {
        // SAFETY: plain libc calls on a local sigset_t; the returned fd is owned here.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [
                libc::SIGCHLD,
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGPWR,
                libc::SIGHUP,
                libc::SIGUSR1,
                libc::SIGUSR2,
            ] {
                libc::sigaddset(&mut set, signal);
            }
            for offset in 0..=8 {
                libc::sigaddset(&mut set, libc::SIGRTMIN() + offset);
            }
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(SignalFd {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Every pending signal number.
    fn drain(&self) -> Vec<i32> {
        let mut signals = Vec::new();
        loop {
            // SAFETY: signalfd_siginfo is plain data; read() fills at most its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if read != size as isize {
                return signals;
            }
            signals.push(info.ssi_signo as i32);
        }
    }
}
