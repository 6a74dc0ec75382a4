//! `cargo xtask lint`: formatting and clippy with every warning an error, over every
//! crate that builds for the host, then clippy over the eBPF crate for its own target
//! (bpfel-unknown-none: nightly with `-Z build-std=core`, as aya-build builds it), then
//! the import-circle check ([`crate::imports`]).
use std::process::Command;

use anyhow::{bail, Context as _};

pub fn run() -> anyhow::Result<()> {
    let path = crate::setup::run(&[])?;
    crate::cargo(&path, &["fmt", "--all", "--", "--check"])?;
    crate::cargo(&path, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
    clippy_ebpf(&path)?;
    for src in IMPORT_CHECKED {
        crate::imports::check(&crate::root().join(src))?;
    }
    Ok(())
}

/// The crates whose modules must import each other without circles (the analysis
/// crate's modules still form one circle: not yet checked).
const IMPORT_CHECKED: [&str; 1] = ["stalltrace/src"];

/// Clippy over tracer-ebpf. Through `rustup run nightly` (the `CARGO` that runs xtask is
/// stable's), with RUSTC and RUSTC_WORKSPACE_WRAPPER removed for the same reason, and a
/// target directory of its own so that it does not rebuild `core` over the host's.
fn clippy_ebpf(path: &std::ffi::OsString) -> anyhow::Result<()> {
    let args = [
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "tracer-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ];
    let status = Command::new("rustup")
        .args(args)
        .env("PATH", path)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO")
        .current_dir(crate::root())
        .status()
        .context("running rustup run nightly cargo clippy (tracer-ebpf)")?;
    if !status.success() {
        bail!("clippy over tracer-ebpf failed ({status})");
    }
    Ok(())
}
