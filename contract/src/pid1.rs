//! The protocol between PID 1 and the agent: where the agent lives, how it reports its
//! health (sd_notify datagrams on a socket PID 1 owns), how it asks for a power action
//! (systemd's real-time signals), and the prefix that marks PID 1's lines in the kernel log.
//!
//! Both sides build on these names, so a change here is a change to both at once.

/// Where the agent's binary lives in the root image.
pub const AGENT_PATH: &str = "/usr/bin/keelsond";

/// The datagram socket on which PID 1 receives sd_notify messages.
pub const NOTIFY_SOCKET_PATH: &str = "/run/keelson/notify";

/// The environment variable in which PID 1 tells the agent how many times it has been
/// started this boot (1 on the first start), so that `Machine.Status` can report restarts.
pub const AGENT_START_ENV: &str = "KEELSON_AGENT_START";

/// How many descriptors PID 1 keeps for the agent at most (two log pipes per container).
pub const FD_STORE_LIMIT: usize = 8192;

/// The environment variables in which PID 1 hands its kept descriptors to a (re)started
/// agent, as systemd does: `LISTEN_FDS` descriptors from fd 3 on, named in order by the
/// colon-separated `LISTEN_FDNAMES`. (No `LISTEN_PID`: the agent is PID 1's own child and
/// takes the variables out of its environment before it starts anything.)
pub const LISTEN_FDS_ENV: &str = "LISTEN_FDS";
/// See [`LISTEN_FDS_ENV`].
pub const LISTEN_FDNAMES_ENV: &str = "LISTEN_FDNAMES";

/// The prefix of every line PID 1 writes to the kernel log.
pub const LOG_PREFIX: &str = "keelson-init:";

/// The start number PID 1 reported in [`AGENT_START_ENV`]; `None` when the variable is
/// missing or not a number (the agent was not started by Keelson's PID 1).
pub fn parse_agent_start(value: Option<&str>) -> Option<u32> {
    value.and_then(|text| text.trim().parse().ok())
}

/// How the machine should go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Turn the machine off.
    PowerOff,
    /// Restart it.
    Reboot,
}

impl std::fmt::Display for PowerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerAction::PowerOff => "poweroff",
            PowerAction::Reboot => "reboot",
        })
    }
}

/// The signal the agent sends PID 1 to ask for a poweroff (systemd's convention).
pub fn poweroff_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

/// The signal the agent sends PID 1 to ask for a reboot (systemd's convention).
pub fn reboot_signal() -> i32 {
    libc::SIGRTMIN() + 5
}

/// What a signal to PID 1 asks for. SIGINT is what the kernel sends on ctrl-alt-del once
/// PID 1 has disabled the immediate reboot, and means reboot, as on other Linux systems.
pub fn action_for_signal(signal: i32) -> Option<PowerAction> {
    match signal {
        libc::SIGTERM | libc::SIGPWR => Some(PowerAction::PowerOff),
        libc::SIGINT => Some(PowerAction::Reboot),
        other if other == libc::SIGRTMIN() + 3 || other == poweroff_signal() => {
            Some(PowerAction::PowerOff)
        }
        other if other == reboot_signal() => Some(PowerAction::Reboot),
        _ => None,
    }
}

/// One sd_notify datagram, as far as PID 1 cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyMessage {
    /// `READY=1`.
    pub ready: bool,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `STATUS=…`.
    pub status: Option<String>,
    /// `FDSTORE=1`: keep the file descriptors sent with this message.
    pub fd_store: bool,
    /// `FDSTOREREMOVE=1`: drop the kept descriptors named by `fd_name`.
    pub fd_store_remove: bool,
    /// `FDNAME=…`: the name the descriptors are kept (or dropped) under.
    pub fd_name: Option<String>,
}

impl NotifyMessage {
    /// Parses newline-separated `KEY=VALUE` assignments; unknown keys are ignored.
    pub fn parse(text: &str) -> NotifyMessage {
        let mut message = NotifyMessage::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => message.ready = true,
                Some(("WATCHDOG", "1")) => message.watchdog = true,
                Some(("STATUS", status)) => message.status = Some(status.to_owned()),
                Some(("FDSTORE", "1")) => message.fd_store = true,
                Some(("FDSTOREREMOVE", "1")) => message.fd_store_remove = true,
                Some(("FDNAME", name)) => message.fd_name = Some(name.to_owned()),
                _ => {}
            }
        }
        message
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn notify_messages_take_the_keys_pid1_cares_about() {
        let message = NotifyMessage::parse("READY=1\nSTATUS=serving\nMAINPID=7\nWATCHDOG=1");
        assert_eq!(
            message,
            NotifyMessage {
                ready: true,
                watchdog: true,
                status: Some("serving".into()),
                ..NotifyMessage::default()
            }
        );
        let stored = NotifyMessage::parse("FDSTORE=1\nFDNAME=pod.app.0.stdout");
        assert!(stored.fd_store && !stored.fd_store_remove);
        assert_eq!(stored.fd_name.as_deref(), Some("pod.app.0.stdout"));
        assert!(NotifyMessage::parse("FDSTOREREMOVE=1\nFDNAME=x").fd_store_remove);
        assert_eq!(NotifyMessage::parse("READY=0"), NotifyMessage::default());
    }

    #[test]
    fn the_agents_power_signals_mean_what_systemd_says() {
        assert_eq!(
            action_for_signal(reboot_signal()),
            Some(PowerAction::Reboot)
        );
        assert_eq!(
            action_for_signal(poweroff_signal()),
            Some(PowerAction::PowerOff)
        );
        assert_eq!(action_for_signal(libc::SIGINT), Some(PowerAction::Reboot));
        assert_eq!(
            action_for_signal(libc::SIGTERM),
            Some(PowerAction::PowerOff)
        );
        assert_eq!(action_for_signal(libc::SIGUSR1), None);
    }

    #[test]
    fn agent_start_numbers_are_numbers() {
        assert_eq!(parse_agent_start(Some("3")), Some(3));
        assert_eq!(parse_agent_start(Some("x")), None);
        assert_eq!(parse_agent_start(None), None);
    }
}
