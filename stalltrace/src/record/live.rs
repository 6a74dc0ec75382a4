//! What `record` prints while it runs: probe packets in the 2019 GitHub incident's table layout (unless
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
    refusals: Refusals,
}

/// Probes the kernel refused to send, said at once but at most once a second (a
/// firewall refusing every 10 ms probe would otherwise flood the terminal).
#[derive(Default)]
struct Refusals {
    last_said_ns: Option<u64>,
    unsaid: u64,
}

impl Refusals {
    const EVERY_NS: u64 = 1_000_000_000;

    /// The line to print for a refusal at `at_ns`, if one is due.
    fn line(
        &mut self,
        at_ns: u64,
        p: &stalltrace_analysis::dump::ProbeRec,
        why: &str,
    ) -> Option<String> {
        if self
            .last_said_ns
            .is_some_and(|t| at_ns.saturating_sub(t) < Self::EVERY_NS)
        {
            self.unsaid += 1;
            return None;
        }
        let more = match std::mem::take(&mut self.unsaid) {
            0 => String::new(),
            n => format!(" ({n} more refused since the last line)"),
        };
        self.last_said_ns = Some(at_ns);
        Some(format!(
            "probe {} seq={} not sent: {why}{more}",
            p.target, p.seq
        ))
    }
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
            refusals: Refusals::default(),
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
            // Said even with --quiet: the measurement is broken while it lasts.
            Record::Probe(p) if p.send_error.is_some() => {
                let why = p.send_error.as_deref().unwrap_or_default();
                if let Some(l) = self.refusals.line(p.sent_ns.unwrap_or(0), p, why) {
                    self.out.line(&l);
                }
            }
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
