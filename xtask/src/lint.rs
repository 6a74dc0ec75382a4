//! `cargo xtask lint`: formatting and clippy with every warning an error, over every
//! crate that builds for the host (the eBPF crate builds through stalltrace's build.rs).
pub fn run() -> anyhow::Result<()> {
    let path = crate::setup::run(&[])?;
    crate::cargo(&path, &["fmt", "--all", "--", "--check"])?;
    crate::cargo(&path, &["clippy", "--all-targets", "--", "-D", "warnings"])
}
