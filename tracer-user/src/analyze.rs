//! `stalltrace analyze`: the correlator over a recorded dump.
//! (Placeholder interface, owned by the correlation work: see issue 5.)
use std::path::PathBuf;

use crate::exit::ExitCode;

#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// The dump written by `stalltrace record -o`.
    pub dump: PathBuf,
}

pub fn run(_a: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("stalltrace analyze is not built yet")
}
