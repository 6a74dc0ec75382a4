//! Reports over the correlator's output: plain-words summary, text, JSON, Perfetto.
//! The phrases here are shared by the live recorder and `analyze` so both say the
//! same thing about the same episode.
pub mod escape;
pub mod json;
pub mod live;
pub mod metrics;
pub mod perfetto;
pub mod text;

use crate::correlate::episode::{Culprit, CulpritSyscall};
use crate::correlate::rank::CpuSummary;
use crate::correlate::{Mode, Report};

pub use crate::units::human_ns;

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `read() of /sys/fs/cgroup/memory/memory.stat`, `syscall 333`.
pub fn syscall_phrase(s: &CulpritSyscall) -> String {
    let call = match s.name.strip_prefix("syscall_") {
        Some(n) => format!("syscall {n}"),
        None => format!("{}()", s.name),
    };
    match &s.path {
        Some(p) => format!("{call} of {p}"),
        None => call,
    }
}

/// `SCHED_OTHER nice 0`, `SCHED_FIFO prio 50`.
pub fn sched_phrase(c: &Culprit) -> String {
    let rt = ["FIFO", "RR", "DEADLINE"]
        .iter()
        .any(|k| c.policy.contains(k));
    format!(
        "{} {} {}",
        c.policy,
        if rt { "prio" } else { "nice" },
        c.priority
    )
}

/// A task named as people look for it: the process, and the thread when it differs:
/// `stall-hog (pid 4242)`, `qz-daemon (pid 21417), thread qz-worker (tid 21419)`; a dump
/// that does not know the process (version 1) says `cadvisor (pid 10436, tgid 10137)`.
pub fn who(comm: &str, pid: u32, tgid: u32, process: Option<&str>) -> String {
    match process {
        Some(p) if p == comm && (pid == tgid || tgid == 0) => format!("{comm} (pid {pid})"),
        Some(p) if pid == tgid || tgid == 0 => format!("{p} (pid {pid}), thread {comm}"),
        Some(p) => format!("{p} (pid {tgid}), thread {comm} (tid {pid})"),
        None if pid == tgid || tgid == 0 => format!("{comm} (pid {pid})"),
        None => format!("{comm} (pid {pid}, tgid {tgid})"),
    }
}

/// ` in kube-system/cadvisor-x7k2p/cadvisor`, ` in unit kubelet.service`, or nothing.
pub fn where_words(id: Option<&crate::identity::Identity>) -> String {
    id.and_then(crate::identity::Identity::short)
        .map(|s| format!(" in {s}"))
        .unwrap_or_default()
}

/// `cadvisor (pid 10436, tgid 10137) held the CPU for 98 ms inside read() of …`, or
/// with samples `… for 96 ms: 91% in syscalls — read() of … 63%, … (48 samples)`.
pub fn culprit_phrase(c: &Culprit) -> String {
    let mut s = format!(
        "{}{} held the CPU for {}",
        who(&c.comm, c.pid, c.tgid, c.process.as_deref()),
        where_words(c.identity.as_ref()),
        human_ns(c.run_ns)
    );
    if let Some(a) = c.activity.as_ref().and_then(crate::activity::phrase) {
        s.push_str(", ");
        s.push_str(&a);
    } else if let Some(sys) = &c.syscall {
        s.push_str(" inside ");
        s.push_str(&syscall_phrase(sys));
    }
    s
}

fn cpu_sentence(c: &CpuSummary, mode: Mode) -> String {
    let mut s = format!(
        "CPU {}: {}, ",
        c.cpu,
        plural(c.episodes, "episode", "episodes")
    );
    match (mode, c.worst_rtt_ns) {
        (Mode::Probes, Some(rtt)) => s.push_str(&format!(
            "{} delayed up to {}",
            plural(c.probes_delayed, "probe", "probes"),
            human_ns(rtt)
        )),
        _ => s.push_str(&format!(
            "{} delayed by waits up to {}",
            plural(c.packets_delayed, "packet", "packets"),
            human_ns(c.worst_wait_ns)
        )),
    }
    match &c.culprit {
        Some(cul) => {
            s.push_str(if c.culprits > 1 {
                "; worst culprit "
            } else {
                "; culprit "
            });
            s.push_str(&culprit_phrase(cul));
        }
        None => s.push_str("; no task was recorded holding the CPU"),
    }
    s.push_str(&format!("; RX ran in {}.", c.rx_comm));
    if c.culprits > 1 {
        s.push_str(&format!(
            " {} processes were culprits on this CPU.",
            c.culprits
        ));
    }
    s
}

/// The plain-words summary, first in every report.
pub fn summary(r: &Report) -> Vec<String> {
    let thr = human_ns(r.stall_threshold_ns);
    let t = &r.totals;
    let mut out = Vec::new();
    if !r.input.complete {
        out.push(format!(
            "The dump was cut short (no footer{}): this covers what was recorded up to line {}.",
            if r.input.partial_last_line {
                ", last line torn"
            } else {
                ""
            },
            r.input.lines
        ));
    }
    if let Some(lost) = &r.input.lost {
        if lost.total() > 0 {
            out.push(format!(
                "The kernel dropped {} events (ring buffer full): some episodes may be missing.",
                lost.total()
            ));
        }
    }
    if let Some(n) = r.input.lost.as_ref().map(|l| l.evicted).filter(|n| *n > 0) {
        out.push(format!(
            "The flight recorder's memory caps forgot {n} records of this dump's window before it was written: its start is missing."
        ));
    }
    if t.episodes == 0 {
        out.push(match r.mode {
            Mode::Probes => format!(
                "No stall episode: of {}, none was delayed {thr} or more by a wait on this node.",
                plural(t.probes, "probe", "probes")
            ),
            Mode::Packets => format!(
                "No stall episode: no packet (of {}) was processed after a wait of {thr} or more.",
                t.packets
            ),
        });
    }
    for c in &r.cpus {
        out.push(cpu_sentence(c, r.mode));
    }
    if let Some(top) = r.culprits.first() {
        if r.culprits.len() > 1 {
            out.push(format!(
                "Worst culprit over the recording: {} (tgid {}), {}, {} of waiting in total.",
                top.comm,
                top.tgid,
                plural(top.episodes, "episode", "episodes"),
                human_ns(top.total_wait_ns)
            ));
        }
    }
    // What the culprits' activity points at: cgroup statistics reads.
    let readers: Vec<&str> = r
        .culprits
        .iter()
        .filter(|c| {
            c.activity
                .as_ref()
                .and_then(|a| a.cgroup_stat_file())
                .is_some()
                || c.syscalls.iter().any(|x| {
                    x.path
                        .as_deref()
                        .and_then(crate::activity::cgroup_stat_file)
                        .is_some()
                })
        })
        .map(|c| c.comm.as_str())
        .collect();
    if !readers.is_empty() {
        let node = r
            .input
            .cgroups
            .as_ref()
            .and_then(|f| f.dying_phrase("when the recording started"))
            .map(|p| format!(" The node had {p}."))
            .unwrap_or_default();
        out.push(format!(
            "{} spent {} episodes reading cgroup statistics files (memory.stat and the like), which walk every memory cgroup, dying ones included, on older kernels and flush per-CPU stats on newer ones.{node} Run `stalltrace doctor` on the node for the cost of such reads and what to do.",
            readers.join(", "),
            if readers.len() == 1 { "its" } else { "their" }
        ));
    }
    if t.probes_unexplained > 0 {
        out.push(format!(
            "{} at or above {thr} {} not explained by a wait on this node: {} no packet recorded, \
             {} not processed right after a wait, {} after a wait shorter than half the RTT.",
            plural(t.probes_unexplained, "probe", "probes"),
            if t.probes_unexplained == 1 {
                "is"
            } else {
                "are"
            },
            r.unexplained_no_packet,
            r.unexplained_no_wait,
            r.unexplained_wait_too_short
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way a task is named: by its process when known, the thread apart only
    /// when it differs; tgid 0 (unknown) is no thread.
    #[test]
    fn who_names_process_and_thread() {
        let cases = [
            (("cadvisor", 7, 7, Some("cadvisor")), "cadvisor (pid 7)"),
            (("cadvisor", 7, 0, Some("cadvisor")), "cadvisor (pid 7)"),
            (
                ("worker", 7, 7, Some("daemon")),
                "daemon (pid 7), thread worker",
            ),
            (
                ("worker", 8, 0, Some("daemon")),
                "daemon (pid 8), thread worker",
            ),
            (
                ("worker", 9, 7, Some("daemon")),
                "daemon (pid 7), thread worker (tid 9)",
            ),
            (
                ("daemon", 9, 7, Some("daemon")),
                "daemon (pid 7), thread daemon (tid 9)",
            ),
            (("hog", 7, 7, None), "hog (pid 7)"),
            (("hog", 7, 0, None), "hog (pid 7)"),
            (("hog", 9, 7, None), "hog (pid 9, tgid 7)"),
        ];
        for ((comm, pid, tgid, process), want) in cases {
            assert_eq!(
                who(comm, pid, tgid, process),
                want,
                "{comm} {pid} {tgid} {process:?}"
            );
        }
    }

    #[test]
    fn where_words_say_the_most_specific_identity() {
        assert_eq!(where_words(None), "");
        let id = crate::identity::Identity {
            namespace: Some("payments".into()),
            pod: Some("ledger-1".into()),
            container: Some("indexer".into()),
            ..Default::default()
        };
        assert_eq!(where_words(Some(&id)), " in payments/ledger-1/indexer");
        assert_eq!(where_words(Some(&crate::identity::Identity::default())), "");
    }
}
