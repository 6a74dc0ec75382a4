//! What `record` prints while it runs: probe packets in the seed's table layout (unless
//! `--quiet`), one sentence per RX wait and per long syscall, slow and lost probes, and
//! each episode's line as it closes (the line `analyze` prints for it too).
use std::io;

use stalltrace_analysis::{
    analyze::Sink,
    correlate::Episode,
    dump::{ProbeStatus, Record},
    report::{live, live::StallDedup, text::episode_line},
    units::ms,
};

use super::terminal::Terminal;

pub struct LivePrinter<'t> {
    out: &'t Terminal,
    quiet: bool,
    stall_ns: u64,
    stalls: StallDedup,
}

impl<'t> LivePrinter<'t> {
    pub fn new(out: &'t Terminal, quiet: bool, stall_ns: u64) -> Self {
        if !quiet {
            out.line(live::PACKET_HEADER);
        }
        Self {
            out,
            quiet,
            stall_ns,
            stalls: StallDedup::default(),
        }
    }
}

impl Sink for LivePrinter<'_> {
    fn what(&self) -> &str {
        "the terminal"
    }

    fn record(&mut self, rec: &Record) -> io::Result<()> {
        match rec {
            Record::Packet(p) if !self.quiet => self.out.line(&live::packet_line(p)),
            Record::Wait(w) if self.stalls.is_new(w) => self.out.line(&live::wait_sentence(w)),
            Record::Syscall(s) => self.out.line(&live::syscall_sentence(s)),
            Record::Probe(p) if !self.quiet => {
                let slow = p.rtt_ns.is_some_and(|r| r >= self.stall_ns);
                if slow || p.status != ProbeStatus::Ok {
                    let rtt = p.rtt_ns.map_or_else(
                        || "no answer".to_string(),
                        |r| format!("rtt={} ms", ms(r, 1)),
                    );
                    let mark = if slow { " (stalled)" } else { "" };
                    self.out
                        .line(&format!("probe {} seq={} {rtt}{mark}", p.target, p.seq));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn episode(&mut self, ep: &Episode) -> io::Result<()> {
        self.out.line(&episode_line(ep));
        Ok(())
    }
}
