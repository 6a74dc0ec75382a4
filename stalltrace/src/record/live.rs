//! What `record` prints while it runs: probe packets in the seed's table layout (unless
//! `--quiet`), one sentence per RX wait and per long syscall, slow and lost probes, and
//! each episode's line as it closes (the line `analyze` prints for it too).
use std::{collections::HashMap, io};

use stalltrace_analysis::{
    analyze::Sink,
    correlate::Episode,
    dump::{ProbeStatus, Record, WaitRec},
    report::{live, text::episode_line},
    units::ms_decimal,
};

use super::terminal::Terminal;

/// Waits on one CPU whose windows overlap and that end this close together are one
/// stall (the correlator's merge gap): one sentence for them.
const SAME_STALL_NS: u64 = 1_000_000;

pub struct LivePrinter<'t> {
    out: &'t Terminal,
    quiet: bool,
    stall_ns: u64,
    /// Per CPU: the window of the last wait printed.
    last_wait: HashMap<u32, (u64, u64)>,
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
            last_wait: HashMap::new(),
        }
    }

    /// The second wait of one stall (NET_RX and its RX thread, or the request's and
    /// the reply's RX run) says nothing the first did not.
    fn same_stall(&mut self, w: &WaitRec) -> bool {
        let start = w.start_ns.min(w.ts_ns);
        let seen = self.last_wait.get(&w.cpu).is_some_and(|&(s, e)| {
            start <= e && s <= w.ts_ns && e.abs_diff(w.ts_ns) <= SAME_STALL_NS
        });
        if !seen {
            self.last_wait.insert(w.cpu, (start, w.ts_ns));
        }
        seen
    }
}

impl Sink for LivePrinter<'_> {
    fn what(&self) -> &str {
        "the terminal"
    }

    fn record(&mut self, rec: &Record) -> io::Result<()> {
        match rec {
            Record::Packet(p) if !self.quiet => self.out.line(&live::packet_line(p)),
            Record::Wait(w) if !self.same_stall(w) => self.out.line(&live::wait_sentence(w)),
            Record::Syscall(s) => self.out.line(&live::syscall_sentence(s)),
            Record::Probe(p) if !self.quiet => {
                let slow = p.rtt_ns.is_some_and(|r| r >= self.stall_ns);
                if slow || p.status != ProbeStatus::Ok {
                    let rtt = p.rtt_ns.map_or_else(
                        || "no answer".to_string(),
                        |r| format!("rtt={} ms", ms_decimal(r)),
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
