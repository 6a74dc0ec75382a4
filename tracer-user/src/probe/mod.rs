//! Probers: the built-in ICMP / TCP-SYN prober, and hping3 / ping logs as input.
//! (Placeholder interface, owned by the prober work: see issue 4.)
pub mod log;

use crate::exit::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Host to probe (IPv4 or IPv6 address, or a name).
    pub host: String,
}

pub fn run(_a: ProbeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("stalltrace probe is not built yet")
}
