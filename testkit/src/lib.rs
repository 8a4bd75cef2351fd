//! `keelson-testkit`: helpers for Keelson's tests, and only for tests (a dev-dependency).
//!
//! [`skip`] is the one way a test skips. cargo captures what a passing test prints, so a
//! skip that only prints is invisible; here each skip is also appended to the file named by
//! `KEELSON_SKIP_LOG` (which `scripts/test.sh` sets, then counts and lists at the end of
//! the suite), and under `CI=true` as root, where nothing should be missing, a skip fails
//! the test.
//!
//! [`oci`] makes real OCI images and archives with umoci and skopeo, as users make them, and
//! starts real registries; [`token`] is the bearer-token server a registry can demand.

pub mod oci;
pub mod token;

use std::io::Write;

/// Skips the calling test for `reason`: prints it, records it for the suite's count, and
/// panics instead when `CI=true` and the process runs as root. Call it, then `return`.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("KEELSON_SKIP_LOG") {
        let recorded = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(error) = recorded {
            eprintln!("cannot record the skip in {path:?}: {error}");
        }
    }
    if must_not_skip(std::env::var("CI").ok().as_deref(), running_as_root()) {
        panic!("{line}: a skip is a failure under CI=true as root");
    }
}

/// True when a skip must fail the test: in CI (`CI=true`), as root.
pub fn must_not_skip(ci: Option<&str>, root: bool) -> bool {
    ci == Some("true") && root
}

fn running_as_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ci_as_root_turns_a_skip_into_a_failure() {
        assert!(must_not_skip(Some("true"), true));
        assert!(!must_not_skip(Some("true"), false));
        assert!(!must_not_skip(Some("1"), true));
        assert!(!must_not_skip(None, true));
    }
}
