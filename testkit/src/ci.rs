//! The one rule about skipping: a test that needs root and a real kernel skips with a
//! message on a developer's machine, and fails under CI, so CI never passes by skipping.

/// `CI` set to anything but empty, `0` or `false` (GitHub, GitLab and `.ci/run` set
/// `CI=true`).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns false (skip, with a message) when not root outside CI; panics under CI.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !is_ci(),
        "{test}: needs root and a real kernel, and CI is set: refusing to skip"
    );
    eprintln!("SKIP {test}: needs root (runs in CI, where it fails instead of skipping)");
    false
}

/// Skips (false) outside CI when `ok` is false, saying `why`; panics under CI.
pub fn require(test: &str, ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    assert!(!is_ci(), "{test}: {why}, and CI is set: refusing to skip");
    eprintln!("SKIP {test}: {why}");
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn ci_values() {
        // The parsing, not the environment: what counts as set.
        let set = |v: &str| !matches!(v.trim(), "" | "0" | "false");
        assert!(set("true") && set("1") && set("yes"));
        assert!(!set("") && !set("0") && !set("false"));
    }
}
