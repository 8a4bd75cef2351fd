//! Poweroff and reboot: what asks for them, and the orderly way down.

use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use keelson_contract::pid1::PowerAction;

/// Opens every input device named "Power Button" (the ACPI button driver creates one per
/// button; QEMU's `system_powerdown` presses it).
pub fn open_power_buttons() -> Vec<File> {
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    let mut buttons = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let label = std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if label.trim() != "Power Button" {
            continue;
        }
        match nix::fcntl::open(
            format!("/dev/input/{name}").as_str(),
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => buttons.push(File::from(fd)),
            Err(errno) => crate::warning!(
                "cannot open power button /dev/input/{name}: {}",
                errno.desc()
            ),
        }
    }
    buttons
}

/// Drains pending input events; true if one was a press of KEY_POWER.
pub fn power_button_pressed(button: &mut File) -> bool {
    // struct input_event on 64-bit: timeval (16), type u16, code u16, value i32.
    const EVENT_SIZE: usize = 24;
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let mut pressed = false;
    let mut buffer = [0u8; EVENT_SIZE * 16];
    while let Ok(read) = button.read(&mut buffer) {
        if read == 0 {
            break;
        }
        for event in buffer
            .get(..read)
            .unwrap_or_default()
            .chunks_exact(EVENT_SIZE)
        {
            let field = |at: usize| {
                event
                    .get(at..at + 2)
                    .and_then(|b| b.try_into().ok())
                    .map(u16::from_le_bytes)
                    .unwrap_or(0)
            };
            let value = event
                .get(20..24)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_le_bytes)
                .unwrap_or(0);
            if field(16) == EV_KEY && field(18) == KEY_POWER && value == 1 {
                pressed = true;
            }
        }
    }
    pressed
}

pub use crate::reaper::reap_children;

/// True while PID 1 still has children. It only looks (`WNOWAIT`): a child that has
/// exited is left for [`reap_children`], which records how it ended and says who it was.
/// (Reaping here once swallowed the agent's exit, and a shutdown then waited out the
/// agent's whole limit for a process long gone.)
fn has_children() -> bool {
    !matches!(
        waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
        ),
        Err(nix::errno::Errno::ECHILD)
    )
}

/// Waits up to `limit` for every child to exit, reaping as they go.
fn wait_for_children(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        reap_children();
        if !has_children() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits up to `limit` for the agent `pid` to exit, reaping every child that does
/// meanwhile (the pods' processes among them, whose exits are recorded for the next boot)
/// and calling `between` every round: the agent keeps sending sd_notify datagrams while
/// it stops the pods, and a socket left unread would block its sends once its queue fills.
fn wait_for_agent(pid: i32, limit: Duration, between: &dyn Fn()) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        between();
        if reap_children().iter().any(|(reaped, _)| *reaped == pid) || !has_children() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// How long a shutdown waits for the agent, which stops the pods first (within the
/// config's `kubelet.shutdownGracePeriod`, at most 60 s) and then exits.
const AGENT_STOP_LIMIT: Duration = Duration::from_secs(75);

/// The way down, once the agent has been asked to stop: wait for it, TERM then KILL
/// everything else, sync, unmount (STATE above all, so its ext4 is marked clean), and
/// `reboot(2)`. Never returns.
pub fn shut_down(action: PowerAction, agent: Option<i32>, between: &dyn Fn()) -> ! {
    crate::notice!("{action}: waiting for keelsond to stop its pods and itself");
    if let Some(pid) = agent {
        if !wait_for_agent(pid, AGENT_STOP_LIMIT, between) {
            crate::warning!(
                "{action}: keelsond still running after {} s",
                AGENT_STOP_LIMIT.as_secs()
            );
        }
    }
    if !wait_for_children(Duration::from_secs(5)) {
        crate::warning!("{action}: processes still running; sending SIGTERM to all");
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !wait_for_children(Duration::from_secs(5)) {
        crate::warning!("{action}: processes still running after SIGTERM; sending SIGKILL to all");
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        wait_for_children(Duration::from_secs(2));
    }
    nix::unistd::sync();
    unmount_all();
    nix::unistd::sync();
    crate::notice!("{action}: now");
    let mode = match action {
        PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let _ = reboot(mode);
    // reboot(2) only returns on error; PID 1 must not exit, so wait for the end.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Unmounts everything but the root and the kernel filesystems, deepest first. A mount
/// that refuses is remounted read-only so that its filesystem is still left consistent.
pub fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let keep = ["/", "/dev", "/proc", "/sys"];
    let points: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split_ascii_whitespace().nth(1))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| !keep.contains(&point.as_str()))
        .collect();
    for point in points.iter().rev() {
        if let Err(errno) = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::empty()) {
            let remounted = nix::mount::mount(
                None::<&str>,
                point.as_str(),
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            );
            if point == "/var" || remounted.is_err() {
                crate::warning!(
                    "unmounting {point} failed ({}); remounted read-only: {}",
                    errno.desc(),
                    remounted.is_ok()
                );
            }
        }
    }
}
