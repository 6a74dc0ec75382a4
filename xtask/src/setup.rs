//! `cargo xtask setup`: scripts/setup.sh, the one place that installs what builds and
//! tests need.
use std::{env, ffi::OsString, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

/// Runs scripts/setup.sh with `args` (e.g. `--vm`) and returns PATH with bpf-linker's
/// directory in front.
pub fn run(args: &[&str]) -> anyhow::Result<OsString> {
    let out = Command::new("bash")
        .arg(crate::root().join("scripts/setup.sh"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running scripts/setup.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/setup.sh {} failed ({})",
            args.join(" "),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BPF_LINKER_DIR="))
        .context("scripts/setup.sh did not print BPF_LINKER_DIR")?;
    let mut paths = vec![PathBuf::from(dir)];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).context("building PATH")
}
