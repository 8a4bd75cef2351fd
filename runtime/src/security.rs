//! The security defaults every container gets unless its pod asks otherwise: the same
//! capability set containerd grants, the same `/proc` and `/sys` paths masked or made
//! read-only as runc and containerd do, and the only device nodes a container sees.

/// The capabilities a container keeps (containerd's default set); every other is dropped
/// from every set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from the container: a directory gets an empty read-only tmpfs over it, a
/// file `/dev/null` bound over it.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths bound read-only over themselves.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A device node a container gets in its `/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    /// Its name under `/dev`.
    pub name: &'static str,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
}

/// The device nodes of a container's `/dev` (besides `pts/`, `shm/` and the `ptmx` link
/// into `pts/`); every other device is absent and denied by its cgroup.
pub const DEVICES: &[DeviceNode] = &[
    DeviceNode {
        name: "null",
        major: 1,
        minor: 3,
        mode: 0o666,
    },
    DeviceNode {
        name: "zero",
        major: 1,
        minor: 5,
        mode: 0o666,
    },
    DeviceNode {
        name: "full",
        major: 1,
        minor: 7,
        mode: 0o666,
    },
    DeviceNode {
        name: "random",
        major: 1,
        minor: 8,
        mode: 0o666,
    },
    DeviceNode {
        name: "urandom",
        major: 1,
        minor: 9,
        mode: 0o666,
    },
    DeviceNode {
        name: "tty",
        major: 5,
        minor: 0,
        mode: 0o666,
    },
];

/// The capabilities a container keeps when its pod adds `add` and drops `drop` (names
/// as Kubernetes writes them, `NET_ADMIN` or `CAP_NET_ADMIN`, or `ALL`), as containerd
/// computes them: the defaults, less what is dropped (`ALL`: every one), plus what is
/// added (`ALL`: every capability the kernel may have). Sorted, `CAP_` names.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    use std::collections::BTreeSet;
    use std::str::FromStr;
    let name = |given: &str, field: &str| -> Result<String, String> {
        let upper = given.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        caps::Capability::from_str(&full)
            .map(|capability| capability.to_string())
            .map_err(|_| format!("capabilities.{field}: {given:?} is not a capability"))
    };
    let mut kept: BTreeSet<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for given in drop {
        if given.eq_ignore_ascii_case("ALL") {
            kept.clear();
        } else {
            kept.remove(&name(given, "drop")?);
        }
    }
    for given in add {
        if given.eq_ignore_ascii_case("ALL") {
            kept.extend(
                caps::all()
                    .into_iter()
                    .map(|capability| capability.to_string()),
            );
        } else {
            kept.insert(name(given, "add")?);
        }
    }
    Ok(kept.into_iter().collect())
}

/// The standard links in a container's `/dev`.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_and_dropped_capabilities_change_the_defaults_as_containerd_does() {
        let strings = |names: &[&str]| {
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>()
        };
        let kept = capabilities(&strings(&["NET_ADMIN"]), &strings(&["ALL"])).unwrap();
        assert_eq!(kept, ["CAP_NET_ADMIN"]);
        let kept = capabilities(&[], &strings(&["CAP_NET_RAW", "mknod"])).unwrap();
        assert_eq!(kept.len(), DEFAULT_CAPABILITIES.len() - 2);
        assert!(!kept.contains(&"CAP_NET_RAW".to_string()));
        let all = capabilities(&strings(&["ALL"]), &[]).unwrap();
        assert!(all.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(
            capabilities(&strings(&["FLY"]), &[]).unwrap_err(),
            "capabilities.add: \"FLY\" is not a capability"
        );
    }

    #[test]
    fn the_defaults_hold_no_dangerous_capability_and_only_the_harmless_devices() {
        for dangerous in [
            "CAP_SYS_ADMIN",
            "CAP_NET_ADMIN",
            "CAP_SYS_MODULE",
            "CAP_SYS_PTRACE",
            "CAP_SYS_RAWIO",
            "CAP_DAC_READ_SEARCH",
        ] {
            assert!(!DEFAULT_CAPABILITIES.contains(&dangerous), "{dangerous}");
        }
        let names: Vec<&str> = DEVICES.iter().map(|device| device.name).collect();
        assert_eq!(names, ["null", "zero", "full", "random", "urandom", "tty"]);
        assert!(MASKED_PATHS.contains(&"/proc/kcore"));
        assert!(READONLY_PATHS.contains(&"/proc/sys"));
    }
}
