//! Who the container's process is: its groups and user, the capabilities it keeps, and
//! `no_new_privs`. Run last, just before `execve`, in this order (each step needs what the
//! previous one has not yet given up):
//! 1. drop every other capability from the bounding set (needs `CAP_SETPCAP`);
//! 2. set the groups, the group and the user, keeping the permitted set across `setuid`;
//! 3. set the effective and permitted sets to what it keeps, the inheritable and ambient
//!    sets to nothing (so a non-root user gains nothing from `execve`, as containerd does);
//! 4. `no_new_privs` when asked.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

use crate::spec::Process;

/// Applies the process's identity and privileges to the calling process.
pub fn apply(spec: &Process) -> Result<(), String> {
    let keep = capabilities(&spec.capabilities)?;
    for capability in caps::all() {
        if keep.contains(&capability) {
            continue;
        }
        // A capability this kernel does not know is not in the set to begin with.
        match caps::drop(None, CapSet::Bounding, capability) {
            Ok(()) => {}
            Err(_) if !caps::has_cap(None, CapSet::Bounding, capability).unwrap_or(true) => {}
            Err(error) => {
                return Err(format!(
                    "cannot drop {capability} from the bounding set: {error}"
                ))
            }
        }
    }
    let groups: Vec<nix::unistd::Gid> = spec
        .groups
        .iter()
        .map(|gid| nix::unistd::Gid::from_raw(*gid))
        .collect();
    nix::unistd::setgroups(&groups)
        .map_err(|errno| format!("cannot set the groups {:?}: {}", spec.groups, errno.desc()))?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(spec.gid))
        .map_err(|errno| format!("cannot set group {}: {}", spec.gid, errno.desc()))?;
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "cannot keep capabilities across setuid: {}",
            std::io::Error::last_os_error()
        ));
    }
    nix::unistd::setuid(nix::unistd::Uid::from_raw(spec.uid))
        .map_err(|errno| format!("cannot set user {}: {}", spec.uid, errno.desc()))?;
    // Effective first: the kernel refuses a permitted set that leaves out an effective one.
    for (set, value) in [
        (CapSet::Inheritable, CapsHashSet::new()),
        (CapSet::Effective, keep.clone()),
        (CapSet::Permitted, keep),
    ] {
        caps::set(None, set, &value)
            .map_err(|error| format!("cannot set the {set:?} capabilities: {error}"))?;
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|error| format!("cannot clear the ambient capabilities: {error}"))?;
    if spec.no_new_privileges {
        // SAFETY: prctl with plain integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "cannot set no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The named capabilities; an unknown name is refused rather than ignored.
pub fn capabilities(names: &[String]) -> Result<CapsHashSet, String> {
    names
        .iter()
        .map(|name| {
            let full = if name.starts_with("CAP_") {
                name.clone()
            } else {
                format!("CAP_{name}")
            };
            Capability::from_str(&full.to_ascii_uppercase()).map_err(|_| {
                format!("unknown capability {name:?} (names look like CAP_NET_ADMIN or NET_ADMIN)")
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_are_taken_with_or_without_their_prefix() {
        let set = capabilities(&["CAP_CHOWN".into(), "net_admin".into()]).unwrap();
        assert!(set.contains(&Capability::CAP_CHOWN));
        assert!(set.contains(&Capability::CAP_NET_ADMIN));
        let names: Vec<String> = crate::security::DEFAULT_CAPABILITIES
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(capabilities(&names).unwrap().len(), names.len());
        assert!(capabilities(&["CAP_FLY".into()])
            .unwrap_err()
            .contains("unknown capability \"CAP_FLY\""));
    }
}
