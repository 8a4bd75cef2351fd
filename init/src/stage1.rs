//! Stage 1, run as `/init` from the initramfs: find, verify and enter the root.
//!
//! The steps, in order:
//! 1. mount devtmpfs, proc and sysfs;
//! 2. read the slot and its verity parameters from the kernel command line;
//! 3. load the modules shipped in the initramfs (disk drivers, dm-verity, squashfs, ext4);
//! 4. wait for `KEELSON-ROOT-<slot>` and map it through dm-verity;
//! 5. mount the verified root read-only on `/sysroot`;
//! 6. wait for `KEELSON-STATE` and mount it read-write on `/sysroot/var`;
//! 7. move the kernel filesystems across and switch into the root, running `/sbin/init`.
//!
//! Any failure is fatal for this boot: [`fail`] prints one line naming the cause and reboots
//! after a short delay so that systemd-boot's counter can move on to the other slot.

use std::convert::Infallible;
use std::ffi::CString;
use std::time::{Duration, Instant};

use keelson_disk::layout::STATE_LABEL;
use nix::mount::MsFlags;

use keelson_contract::cmdline::parse_boot_params;
use keelson_contract::devices::{root_dm_uuid, ROOT_DM_NAME};
use keelson_linux::{block, devmapper, mounts};

use crate::error::{io, syscall, InitError};
use crate::modules;

/// Where the new root is assembled.
pub const NEW_ROOT: &str = "/sysroot";
/// How long to wait for a partition to appear.
pub const PARTITION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to show a fatal error before rebooting.
pub const FAILURE_REBOOT_DELAY: Duration = Duration::from_secs(10);

/// Runs stage 1. Only returns on failure.
pub fn run() -> Result<Infallible, InitError> {
    mounts::mount_kernel_filesystems()?;
    crate::notice!("stage 1 (keelson-init {})", env!("CARGO_PKG_VERSION"));

    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(io("reading", "/proc/cmdline"))?;
    let params = parse_boot_params(&cmdline)?;
    let release = nix::sys::utsname::uname().map_err(syscall("uname"))?;
    let release = release.release().to_string_lossy().into_owned();

    let loaded = modules::load_all(&std::path::Path::new("/lib/modules").join(&release));
    crate::notice!("loaded {} modules: {}", loaded.len(), loaded.join(" "));

    let root_label = params.slot.root_label();
    let root = wait_for_partition(root_label, PARTITION_TIMEOUT)?;
    crate::notice!(
        "slot {}: {root_label} is {} ({})",
        params.slot,
        root.path().display(),
        root.dev_t_text()
    );
    let uuid = root_dm_uuid(params.slot);
    let mapped = devmapper::create_verity(ROOT_DM_NAME, &uuid, &root.dev_t_text(), &params.verity)
        .map_err(|source| InitError::DeviceMapper {
            label: root_label,
            source,
        })?;
    wait_for_node(&mapped.path())?;
    crate::notice!(
        "dm-verity: {} verifies {root_label} against root hash {}",
        mapped.path(),
        params.verity.root_hash_hex()
    );

    mounts::mount_fs(
        &mapped.path(),
        NEW_ROOT,
        "squashfs",
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )
    .map_err(|error| explain_verity(error.into(), root_label))?;

    let state = wait_for_partition(STATE_LABEL, PARTITION_TIMEOUT)?;
    let var = format!("{NEW_ROOT}/var");
    mounts::mount_fs(
        &state.path().to_string_lossy(),
        &var,
        "ext4",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
    crate::notice!(
        "mounted {root_label} read-only at / and {STATE_LABEL} ({}) at /var",
        state.path().display()
    );

    switch_root(NEW_ROOT, "/sbin/init").map_err(|error| explain_verity(error, root_label))
}

/// Adds dm-verity's verdict to an error, so that a corrupted root is named as such.
fn explain_verity(error: InitError, label: &'static str) -> InitError {
    match devmapper::verity_status(ROOT_DM_NAME) {
        Ok(status) if status.split_ascii_whitespace().nth(1) == Some("C") => {
            InitError::CorruptRoot {
                label,
                cause: Box::new(error),
            }
        }
        _ => error,
    }
}

fn wait_for_node(path: &str) -> Result<(), InitError> {
    for _ in 0..200 {
        if std::path::Path::new(path).exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(InitError::Timeout {
        what: path.to_owned(),
        seconds: 5,
    })
}

/// Moves the kernel filesystems into `new_root`, makes it `/`, and executes `init` there.
fn switch_root(new_root: &str, init: &str) -> Result<Infallible, InitError> {
    for point in ["/dev", "/proc", "/sys"] {
        mounts::move_mount(point, &format!("{new_root}{point}"))?;
    }
    nix::unistd::chdir(new_root).map_err(syscall(format!("chdir {new_root}")))?;
    // Free the initramfs: its modules are loaded and nothing will read them again.
    for leftover in ["/lib", "/init"] {
        let _ = std::fs::remove_dir_all(leftover).or_else(|_| std::fs::remove_file(leftover));
    }
    mounts::move_mount(".", "/")?;
    nix::unistd::chroot(".").map_err(syscall(format!("chroot {new_root}")))?;
    nix::unistd::chdir("/").map_err(syscall("chdir /"))?;
    let program = CString::new(init)
        .map_err(|_| InitError::Layout(format!("the init path {init:?} holds a NUL byte")))?;
    nix::unistd::execv(&program, &[&program])
        .map_err(syscall(format!("executing {init} in the new root")))
}

/// Waits up to `timeout` for a partition named `label` and for its device node.
fn wait_for_partition(label: &str, timeout: Duration) -> Result<block::PartitionDevice, InitError> {
    let deadline = Instant::now() + timeout;
    let mut announced = false;
    loop {
        if let Some(partition) = block::find_partition(label) {
            if partition.path().exists() {
                return Ok(partition);
            }
        }
        if Instant::now() >= deadline {
            return Err(InitError::Timeout {
                what: format!(
                    "a partition labelled {label} (is the disk attached, and is its driver in \
                     the initramfs?)"
                ),
                seconds: timeout.as_secs(),
            });
        }
        if !announced && Instant::now() + timeout - Duration::from_secs(2) > deadline {
            crate::notice!(
                "waiting up to {} s for partition {label}",
                timeout.as_secs()
            );
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prints the cause of a failed boot and reboots after [`FAILURE_REBOOT_DELAY`].
pub fn fail(cause: &str) -> ! {
    crate::error!(
        "FATAL: {cause}; rebooting in {} s so that the boot loader can try another entry",
        FAILURE_REBOOT_DELAY.as_secs()
    );
    std::thread::sleep(FAILURE_REBOOT_DELAY);
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
