//! The human report, and the one-line form of an episode that the live recorder
//! prints as episodes close ([`episode_line`]); `analyze` prints the same line.
use std::fmt::Write as _;

use super::{culprit_phrase, human_ns, plural, sched_phrase, summary};
use crate::correlate::episode::{Episode, ProbeLine};
use crate::correlate::outcome::Unexplained;
use crate::correlate::Report;
use crate::dump::{HolderStacks, ProbeStatus, WaitKind};
use crate::stacks;

/// One line per episode, identical live and offline.
pub fn episode_line(e: &Episode) -> String {
    let mut s = format!("episode {}: CPU {}", e.id, e.cpu);
    match &e.start_wall {
        Some(w) => {
            let _ = write!(s, " at {w}");
        }
        None => {
            let _ = write!(s, " at boot+{:.3}s", e.start_ns as f64 / 1e9);
        }
    }
    let kinds: Vec<&str> = e
        .waits
        .iter()
        .map(|w| match w.kind {
            WaitKind::NetRxSoftirq => "net_rx_softirq",
            WaitKind::RxThread => "rx_thread",
        })
        .collect();
    let _ = write!(
        s,
        ", RX waited {} ({})",
        human_ns(e.wait_ns),
        kinds.join(" + ")
    );
    if e.probes_delayed + e.probes_lost > 0 {
        let _ = write!(
            s,
            ", {} delayed",
            plural(u64::from(e.probes_delayed), "probe", "probes")
        );
        if let Some(w) = e.worst_rtt_ns {
            let _ = write!(s, " up to {}", human_ns(w));
        }
        if e.probes_lost > 0 {
            let _ = write!(s, ", {} lost", e.probes_lost);
        }
        drain_phrase(&mut s, e);
    } else {
        let _ = write!(
            s,
            ", {} delayed",
            plural(u64::from(e.packets_delayed), "packet", "packets")
        );
        drain_phrase(&mut s, e);
    }
    match &e.culprit {
        Some(c) => {
            let _ = write!(s, "; culprit {} [{}]", culprit_phrase(c), sched_phrase(c));
        }
        None => s.push_str("; no holder recorded"),
    }
    let _ = write!(s, "; RX ran in {}", e.rx.comm);
    if e.truncated {
        s.push_str(" (holders may be incomplete)");
    }
    if let Some(w) = &e.why {
        let _ = write!(s, "; {w}");
    }
    s
}

/// `(31 packets in the same backlog drain, up to 24 ms after a wait ended)`.
fn drain_phrase(s: &mut String, e: &Episode) {
    if e.packets_in_drain > 0 {
        let _ = write!(
            s,
            " ({} in the same backlog drain, up to {} after a wait ended)",
            plural(u64::from(e.packets_in_drain), "packet", "packets"),
            human_ns(e.drain_ns.unwrap_or(0))
        );
    }
}

/// The culprit's sampled stacks in an episode: a heading, then per distinct stack its
/// sample count and kernel and user frames (leaf first, read "called from").
pub fn stack_lines(who: &str, st: &HolderStacks) -> Vec<String> {
    let mut out = vec![format!(
        "{who}stacks: {} in the wait, {} in user space{}{}",
        plural(u64::from(st.samples), "sample", "samples"),
        st.user_mode,
        // `distinct` is 0 in dumps written before it existed.
        match st.distinct as usize {
            0 => String::new(),
            d if d > st.top.len() => format!(", top {} of {d} code paths", st.top.len()),
            d => format!(", {}", plural(d as u64, "code path", "code paths")),
        },
        if st.missing > 0 {
            format!(", {} without a stack", st.missing)
        } else {
            String::new()
        }
    )];
    for t in &st.top {
        let mut lead = format!("{:>5}×", t.count);
        if !t.kernel.is_empty() {
            out.push(format!(
                "{lead} kernel: {}",
                stacks::short_stack(&t.kernel, STACK_FRAMES_REPORT)
            ));
            lead = " ".repeat(lead.chars().count());
        }
        if !t.user.is_empty() {
            out.push(format!(
                "{lead} user:   {}",
                stacks::short_stack(&t.user, STACK_FRAMES_REPORT)
            ));
        }
    }
    out
}

/// Frames per stack in the text report.
const STACK_FRAMES_REPORT: usize = 8;

/// `99ms`, `(49ms)` below the threshold, `0.4ms` under a millisecond.
fn rtt_cell(l: &ProbeLine) -> String {
    if l.status == Some(ProbeStatus::Lost) {
        return "lost".into();
    }
    let Some(r) = l.rtt_ns else {
        return String::new();
    };
    let v = if r < 1_000_000 {
        format!("{:.1}ms", r as f64 / 1e6)
    } else {
        format!("{}ms", r.saturating_add(500_000) / 1_000_000)
    };
    if l.over_threshold {
        v
    } else {
        format!("({v})")
    }
}

/// The 2019 GitHub incident's table: who processed each probe packet; `**` marks the delayed ones.
pub fn episode_table(e: &Episode) -> Vec<String> {
    let mut out = vec![format!(
        "{:<8}{:<8}{:<17}{:<5}{:<8}** RTT",
        "TGID", "PID", "PROCESS", "CPU", "SEQ"
    )];
    for l in &e.lines {
        let seq = l
            .seq
            .map_or_else(|| l.wire_seq.to_string(), |s| s.to_string());
        let mut row = format!(
            "{:<8}{:<8}{:<17}{:<5}{:<8}",
            l.tgid, l.pid, l.comm, l.cpu, seq
        );
        if l.delayed {
            row.push_str("** ");
            row.push_str(&rtt_cell(l));
            if let Some(a) = l.after_wait_ns {
                let _ = write!(
                    row,
                    "  {} after the wait ended, same backlog drain",
                    human_ns(a)
                );
            }
        }
        out.push(row.trim_end().to_string());
    }
    if e.lines_omitted > 0 {
        out.push(format!("… {} more delayed packets", e.lines_omitted));
    }
    out
}

/// The full name of the packet hook the dump names short.
fn hook_name(short: &str) -> &str {
    match short {
        "kprobe" => "kprobe:icmp_echo",
        "tracepoint" => "tracepoint:net:netif_receive_skb",
        other => other,
    }
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let i = &r.input;
    let _ = writeln!(
        s,
        "stalltrace report: {}",
        i.path.as_deref().unwrap_or("(live)")
    );
    let _ = writeln!(
        s,
        "  host {}, kernel {}, {} CPUs, started {}, packets via {}",
        i.host, i.kernel, i.cpus, i.started_at, i.packet_hook
    );
    if let Some(why) = &i.packet_hook_reason {
        let _ = writeln!(s, "  packets via {}: {why}", hook_name(&i.packet_hook));
    }
    if i.complete {
        // Live reports have no file lines to count.
        let lines = if i.path.is_some() {
            format!("{} lines, ", i.lines)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  complete recording: {lines}{} long, ended by {}",
            human_ns(i.duration_ns.unwrap_or(0)),
            i.end_reason.as_deref().unwrap_or("?")
        );
    } else {
        let _ = writeln!(
            s,
            "  CUT SHORT: no footer after line {}; reporting what was recorded",
            i.lines
        );
    }
    let t = &r.totals;
    let src = match i.probe_source.as_str() {
        "log" => format!("the log {}", i.probe_log.as_deref().unwrap_or("?")),
        "dump" => "the dump".into(),
        _ => "none (packet-only)".into(),
    };
    let _ = writeln!(
        s,
        "  stall threshold {}; probes from {src}: {}, {} at or above it, {} lost; {}, {}",
        human_ns(r.stall_threshold_ns),
        plural(t.probes, "probe", "probes"),
        t.probes_stalled,
        t.probes_lost,
        plural(t.packets, "packet", "packets"),
        plural(t.waits, "wait", "waits"),
    );
    if t.packets_forgotten_early > 0 {
        let _ = writeln!(
            s,
            "  {} forgotten early: the correlator holds at most 100 000 at a time (a flood); stalls among them may list fewer packets",
            plural(t.packets_forgotten_early, "packet", "packets"),
        );
    }
    if let Some(e) = &t.first_send_error {
        let _ = writeln!(
            s,
            "  {} never left: the kernel refused to send them (first: {e})",
            plural(t.probes_not_sent, "probe", "probes"),
        );
    }
    if t.probes_answered > 0 {
        let _ = writeln!(
            s,
            "  {} of {} answered probes matched to a packet the kernel saw{}",
            t.probes_matched,
            t.probes_answered,
            if t.probes_matched == 0 {
                ": the packet hook saw none of their packets, so no stall can be tied to them"
            } else {
                ""
            }
        );
    }
    for w in &i.recorder_warnings {
        let _ = writeln!(s, "  the recorder warned: {w}");
    }
    if t.probes_ignored > 0 {
        let _ = writeln!(
            s,
            "  ({} probe records in the dump ignored in favour of the log)",
            t.probes_ignored
        );
    }

    s.push_str("\nSummary\n");
    for line in summary(r) {
        let _ = writeln!(s, "  {line}");
    }

    if !r.culprits.is_empty() {
        s.push_str("\nCulprits (ranked by total delay)\n");
        let _ = writeln!(
            s,
            "  {:<4}{:<17}{:<8}{:<9}{:<9}{:<8}{:<11}{:<11}{:<10}INSIDE",
            "#", "PROCESS", "TGID", "EPISODES", "PROBES", "CPUS", "TOTAL", "WORST", "WORST RTT"
        );
        for c in &r.culprits {
            let cpus: Vec<String> = c.cpus.iter().map(u32::to_string).collect();
            let inside = inside_cell(c, r.input.exact_syscalls);
            let _ = writeln!(
                s,
                "  {:<4}{:<17}{:<8}{:<9}{:<9}{:<8}{:<11}{:<11}{:<10}{}",
                c.rank,
                c.comm,
                c.tgid,
                c.episodes,
                c.probes_delayed,
                cpus.join(","),
                human_ns(c.total_wait_ns),
                human_ns(c.worst_wait_ns),
                c.worst_rtt_ns.map(human_ns).unwrap_or_else(|| "-".into()),
                inside
            );
            if !c.threads.is_empty() || c.identity.is_some() {
                let threads = if c.threads.is_empty() {
                    String::new()
                } else {
                    format!("threads {}", c.threads.join(", "))
                };
                let _ = writeln!(
                    s,
                    "      {threads}{}",
                    super::where_words(c.identity.as_ref())
                        .trim_start_matches(' ')
                        .to_string()
                        .as_str()
                );
            }
            for st in &c.stacks {
                let _ = writeln!(
                    s,
                    "      {} stack, {} in {}: {}",
                    st.side,
                    plural(st.samples, "sample", "samples"),
                    plural(st.episodes, "episode", "episodes"),
                    st.frames.join(" ← ")
                );
            }
        }
    }

    if !r.episodes.is_empty() {
        s.push_str("\nEpisodes\n");
        for e in &r.episodes {
            let _ = writeln!(s, "{}", episode_line(e));
            let holders: Vec<String> = e
                .holders
                .iter()
                .map(|h| format!("{} (pid {}) {}", h.comm, h.pid, human_ns(h.run_ns)))
                .collect();
            let _ = writeln!(s, "  holders: {}", holders.join(", "));
            if let Some(sys) = e.culprit.as_ref().and_then(|c| c.syscall.as_ref()) {
                if let (Some(d), Some(c)) = (sys.dur_ns, sys.cpu_ns) {
                    let _ = writeln!(
                        s,
                        "  the culprit's {}() lasted {} ({} on the CPU)",
                        sys.name,
                        human_ns(d),
                        human_ns(c)
                    );
                }
            }
            if let Some(st) = e.culprit.as_ref().and_then(|c| c.stacks.as_ref()) {
                for l in stack_lines("culprit's ", st) {
                    let _ = writeln!(s, "  {l}");
                }
            }
            for row in episode_table(e) {
                let _ = writeln!(s, "  {row}");
            }
            s.push('\n');
        }
        if t.episodes_not_listed > 0 {
            let _ = writeln!(
                s,
                "… {} more episodes counted in the ranking but not listed",
                t.episodes_not_listed
            );
        }
    }

    if !r.unexplained.is_empty() {
        s.push_str("\nStalled probes not explained by a wait on this node\n");
        for u in &r.unexplained {
            let why = match u.reason {
                Unexplained::NoPacket => "no packet of it was recorded".to_string(),
                Unexplained::NoWait => match u.cpu {
                    Some(c) => format!("processed on CPU {c}, not right after a wait"),
                    None => "not processed right after a wait".into(),
                },
                Unexplained::WaitTooShort => {
                    "the wait before it was shorter than half its RTT".into()
                }
            };
            let _ = writeln!(
                s,
                "  seq {} rtt {}: {why}",
                u.seq,
                u.rtt_ns.map(human_ns).unwrap_or_default()
            );
        }
        if t.probes_unexplained > r.unexplained.len() as u64 {
            let _ = writeln!(
                s,
                "  … {} more",
                t.probes_unexplained - r.unexplained.len() as u64
            );
        }
    }
    s
}

/// The culprit table's INSIDE cell: what the samples caught it doing, else the exact
/// syscalls it sat in (and user space for the episodes without one, when syscalls were
/// traced exactly), else that nothing says.
fn inside_cell(c: &crate::correlate::rank::CulpritRank, exact_syscalls: bool) -> String {
    if let Some(cell) = c.activity.as_ref().and_then(crate::activity::cell) {
        return cell;
    }
    let mut inside: Vec<String> = c
        .syscalls
        .iter()
        .map(|x| match &x.path {
            Some(p) => format!("{}() of {p} ({})", x.name, x.episodes),
            None => format!("{}() ({})", x.name, x.episodes),
        })
        .collect();
    let in_syscalls: u64 = c.syscalls.iter().map(|x| x.episodes).sum();
    if in_syscalls < c.episodes {
        let rest = c.episodes - in_syscalls;
        inside.push(if exact_syscalls {
            format!("user space ({rest})")
        } else {
            format!("not sampled ({rest})")
        });
    }
    inside.join(", ")
}

/// The text report, written when the analysis ends.
pub struct TextSink<W: std::io::Write>(pub W);

impl<W: std::io::Write> crate::analyze::Sink for TextSink<W> {
    fn finish(&mut self, r: &Report) -> std::io::Result<()> {
        self.0.write_all(render(r).as_bytes())?;
        self.0.flush()
    }
}
