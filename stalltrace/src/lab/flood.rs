//! `stalltrace flood` (hidden): the ksoftirqd scenario's load. UDP datagrams to the
//! discard port of the lab namespace's own address, as fast as one CPU sends them, for a
//! bounded time; dies with its parent. A plain UDP socket, so it needs nothing but the
//! lab (hping3 in a minimal guest sometimes sent nothing, silently).
use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use stalltrace_analysis::units::{duration_in, MS, SEC};

use crate::exit::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct FloodArgs {
    /// Destination (the lab namespace's address and the discard port).
    #[arg(long)]
    pub to: SocketAddr,
    /// How long to send (1ms to 10m).
    #[arg(long, value_parser = duration_in::<MS, { 600 * SEC }>)]
    pub duration: Duration,
}

pub fn run(a: FloodArgs) -> anyhow::Result<ExitCode> {
    let bind: SocketAddr = if a.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .context("bind address")?;
    let sock = UdpSocket::bind(bind).context("opening the flood's UDP socket")?;
    // Stopped early by the lab (SIGTERM/SIGINT): still report what was sent.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))
            .context("signal handlers")?;
    }
    let payload = [0u8; 64];
    let end = Instant::now() + a.duration;
    let (mut sent, mut errors) = (0u64, 0u64);
    while Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for _ in 0..64 {
            match sock.send_to(&payload, a.to) {
                Ok(_) => sent += 1,
                // ENOBUFS and friends under load: keep going, count them.
                Err(_) => errors += 1,
            }
        }
    }
    crate::errln!(
        "flood: {sent} datagrams sent to {} ({errors} send errors)",
        a.to
    );
    Ok(ExitCode::Ok)
}
