//! The default seccomp profile: the system calls a container has no business making
//! answer `EPERM`; everything else is allowed.
//!
//! The list follows what Docker's and containerd's default profiles refuse to a container
//! without `CAP_SYS_ADMIN` (which the default capability set does not hold): loading
//! kernel code and modules, rebooting, the kernel keyring, tracing other processes,
//! changing the clock, swap, accounting and quotas, new namespaces and mounts, BPF and
//! perf events, and the obsolete calls nobody needs. It is a deny list, not their
//! allow list of some 350 calls: a call the kernel adds later is allowed until it is
//! listed here. A pod that asks for `Unconfined` gets no filter.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The refused calls.
pub const REFUSED: &[(&str, libc::c_long)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("init_module", libc::SYS_init_module),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("sysfs", libc::SYS_sysfs),
    ("_sysctl", libc::SYS__sysctl),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("uselib", libc::SYS_uselib),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ustat", libc::SYS_ustat),
];

/// The default profile as a BPF program for this machine's architecture.
pub fn default_program() -> Result<BpfProgram, String> {
    let rules = REFUSED
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|error| format!("cannot build the default seccomp profile: {error}"))?;
    filter
        .try_into()
        .map_err(|error: seccompiler::BackendError| {
            format!("cannot compile the default seccomp profile: {error}")
        })
}

/// Installs `program` on the calling thread. Unlike `seccompiler::apply_filter` this does
/// not set `no_new_privs` itself: that is the pod's choice (`allowPrivilegeEscalation`),
/// and the caller still holds `CAP_SYS_ADMIN`, which the kernel accepts instead.
pub fn install(program: &BpfProgram) -> Result<(), String> {
    let length =
        u16::try_from(program.len()).map_err(|_| "the seccomp program is too long".to_owned())?;
    let fprog = libc::sock_fprog {
        len: length,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccompiler's sock_filter has libc's layout; the program outlives the call,
    // and the kernel copies it.
    let result = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if result != 0 {
        return Err(format!(
            "cannot install the seccomp profile: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_and_refuses_what_it_names() {
        let program = default_program().unwrap();
        assert!(program.len() > REFUSED.len());
        let names: Vec<&str> = REFUSED.iter().map(|(name, _)| *name).collect();
        for dangerous in [
            "kexec_load",
            "init_module",
            "mount",
            "bpf",
            "ptrace",
            "reboot",
            "unshare",
        ] {
            assert!(names.contains(&dangerous), "{dangerous}");
        }
        // What container-init itself calls after installing the filter must stay allowed.
        for needed in [
            libc::SYS_execve,
            libc::SYS_setuid,
            libc::SYS_capset,
            libc::SYS_prctl,
        ] {
            assert!(REFUSED.iter().all(|(_, number)| *number != needed));
        }
    }

    /// In a forked child (the filter stays with it): a refused call answers EPERM, an
    /// allowed one works.
    #[test]
    fn a_filtered_process_is_refused_the_listed_calls_and_nothing_else() {
        let program = default_program().unwrap();
        // SAFETY: the child only makes raw system calls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl and raw syscalls with plain arguments.
                let code = unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    if install(&program).is_err() {
                        10
                    } else if libc::syscall(libc::SYS_acct, std::ptr::null::<libc::c_char>()) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        11
                    } else if libc::syscall(libc::SYS_getpid) <= 0 {
                        12
                    } else {
                        0
                    }
                };
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
