//! The one rule about skipping: a test that needs root and a real kernel skips with a
//! message on a developer's machine, and fails under CI, so CI never passes by skipping.

/// `CI` set to anything but empty, `0` or `false` (GitHub, GitLab and `.ci/run` set
/// `CI=true`).
pub fn is_ci() -> bool {
    ci_value_set(std::env::var("CI").ok().as_deref())
}

/// Whether a value of `CI` (None: unset) counts as set.
fn ci_value_set(v: Option<&str>) -> bool {
    v.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"))
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
    require_under(is_ci(), test, ok, why)
}

fn require_under(ci: bool, test: &str, ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    assert!(!ci, "{test}: {why}, and CI is set: refusing to skip");
    eprintln!("SKIP {test}: {why}");
    false
}

#[cfg(test)]
mod tests {
    use super::{ci_value_set, require_under};

    #[test]
    fn what_counts_as_ci() {
        for v in ["true", "1", "yes", " true "] {
            assert!(ci_value_set(Some(v)), "{v:?}");
        }
        for v in [None, Some(""), Some("0"), Some("false"), Some(" ")] {
            assert!(!ci_value_set(v), "{v:?}");
        }
    }

    #[test]
    fn outside_ci_a_missing_requirement_skips() {
        assert!(!require_under(false, "t", false, "needs x"));
        assert!(require_under(true, "t", true, "needs x"));
    }

    #[test]
    #[should_panic(expected = "refusing to skip")]
    fn under_ci_a_missing_requirement_fails() {
        require_under(true, "t", false, "needs x");
    }
}
