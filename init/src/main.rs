//! `keelson-init`: Keelson's PID 1. See the library documentation for the two stages.

use keelson_init::{error, stage1, stage2};

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = argv0.rsplit('/').next().unwrap_or_default().to_owned();

    if name == "keelson-baseline" {
        // The boot benchmark's baseline: the cheapest possible userspace, which powers off.
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        return;
    }
    if std::process::id() != 1 {
        eprintln!("keelson-init: this is Keelson's PID 1; it only runs as process 1 (started as {argv0:?})");
        std::process::exit(2);
    }

    // PID 1 must never die: a panic would be a kernel panic. Clippy forbids the usual
    // sources; this is the last line of defence.
    let stage_one = argv0 == "/init";
    let outcome = std::panic::catch_unwind(move || {
        if stage_one {
            match stage1::run() {
                Ok(never) => match never {},
                Err(cause) => stage1::fail(&cause),
            }
        } else {
            stage2::run()
        }
    });
    if outcome.is_err() {
        error!("internal error in PID 1 (a bug; please report it)");
        stage1::fail("PID 1 hit an internal error");
    }
}
