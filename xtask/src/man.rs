//! `cargo xtask man`: man pages generated from the command line's own definitions
//! (clap_mangen, through the built binary), so they never disagree with `--help`.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory for the pages [default: target/man].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: ManArgs) -> anyhow::Result<()> {
    let path = crate::setup::run(&[])?;
    crate::cargo(&path, &["build", "-p", "stalltrace"])?;
    let out = a.out.unwrap_or_else(|| crate::root().join("target/man"));
    let st = Command::new(crate::root().join("target/debug/stalltrace"))
        .args(["man-pages", "--out"])
        .arg(&out)
        .status()
        .context("running stalltrace man-pages")?;
    if !st.success() {
        bail!("stalltrace man-pages failed ({st})");
    }
    println!(
        "man pages in {} (man -l {}/stalltrace.1)",
        out.display(),
        out.display()
    );
    Ok(())
}
