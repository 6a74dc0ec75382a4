//! A recording modelled on the 2019 GitHub incident:
//! hping3 pings every 10 ms, ICMP hashed to CPU 11; cadvisor (tgid 10137, pid 10436)
//! sits ~100 ms inside `read()` of memory.stat, processing 1951–1952 in its own
//! softirq, then ksoftirqd/11 waits ~99 ms for the CPU and processes 1953–1962 in one
//! go: RTTs 99, 89, … 9 ms. `tests/fixtures/seed.jsonl` is this recording, written once
//! by `cargo xtask fixtures` and checked (never rewritten) by the tests.
use stalltrace_analysis::dump::*;

use crate::records::{self as b, Rx};
pub use crate::records::{jsonl, MS, US};

pub const T0: u64 = 5_000_000_000_000;
pub const CPU: u32 = 11;
pub const IDENT: u16 = 7982;
pub const CADVISOR_PID: u32 = 10436;
pub const CADVISOR_TGID: u32 = 10137;
pub const KSOFTIRQD_PID: u32 = 76;
pub const MEMORY_STAT: &str = "/sys/fs/cgroup/memory/memory.stat";

/// Where the golden file lives, relative to the workspace root.
pub const FIXTURE: &str = "tests/fixtures/seed.jsonl";

#[derive(Debug, Clone, Copy)]
pub struct Seed {
    /// cadvisor holds CPU 11 for ~99 ms (else: a harmless 3 ms kworker wait).
    pub stall: bool,
    /// Probe results inline in the dump (else a packet-only recording).
    pub probes: bool,
    pub footer: bool,
}

impl Default for Seed {
    fn default() -> Self {
        Self {
            stall: true,
            probes: true,
            footer: true,
        }
    }
}

/// The 2019 GitHub incident node's header: a 4.9 kernel with kprobes, 24 CPUs.
pub fn header(probe: Option<String>) -> Header {
    let mut h = b::header("kube-node-bad", "4.9.0-8-amd64", 24, T0, probe);
    // A version 1 dump (exact syscalls, no samples): the golden file also proves old
    // dumps still read as they did.
    h.version = 1;
    h.hooks = vec![
        "kprobe:icmp_echo".into(),
        "irq:softirq_raise".into(),
        "sched:sched_switch".into(),
    ];
    h.packet_hook = "kprobe".into();
    h.options.icmp_id = Some(IDENT);
    h
}

/// When probe `seq` reached the node (sent every 10 ms, 50 µs on the wire).
pub fn arrival(seq: u32) -> u64 {
    T0 + u64::from(seq.saturating_sub(1940)) * 10 * MS + 50 * US
}

/// A holder as the 2019 GitHub incident's node reports it (one cgroup id for all).
pub fn holder(
    pid: u32,
    tgid: u32,
    comm: &str,
    run_ns: u64,
    syscall: Option<SyscallRef>,
) -> HolderRec {
    let mut h = b::holder(pid, tgid, comm, run_ns, syscall);
    h.cgroup_id = 4242;
    h
}

/// Probe `seq`'s echo request on CPU 11, seen by the kprobe.
pub fn packet(seq: u32, ts_ns: u64, rx_start_ns: u64, who: Rx<'_>) -> PacketRec {
    let mut p = b::echo_request(ts_ns, rx_start_ns, CPU, who, IDENT, seq as u16);
    p.hook = "kprobe".into();
    p
}

pub fn probe(seq: u32, rtt_ns: u64) -> ProbeRec {
    b::probe(seq, IDENT, rtt_ns)
}

/// The records in arrival order (header first, footer last when asked).
pub fn records(s: Seed) -> Vec<Record> {
    let idle: Rx<'_> = (0, 0, "swapper/11", RxContext::Idle);
    let cadvisor: Rx<'_> = (
        CADVISOR_PID,
        CADVISOR_TGID,
        "cadvisor",
        RxContext::ProcessSoftirq,
    );
    let ksoftirqd: Rx<'_> = (
        KSOFTIRQD_PID,
        KSOFTIRQD_PID,
        "ksoftirqd/11",
        RxContext::Ksoftirqd,
    );
    // (arrival order key, record)
    let mut ev: Vec<(u64, Record)> = Vec::new();
    let reply = 400 * US; // the rest of the round trip when nothing waits
    let a = arrival(1953);
    let end = a + 99 * MS; // cadvisor leaves the CPU
    let entry = end + 4 * US; // NET_RX softirq entry inside ksoftirqd
    for seq in 1940u32..=2000 {
        let arr = arrival(seq);
        let (ts, rx, who) = match seq {
            1951 | 1952 if s.stall => (arr + 5 * US, arr + 2 * US, cadvisor),
            1953..=1962 if s.stall => {
                let ts = entry + u64::from(seq - 1953) * 3 * US;
                (ts, entry, ksoftirqd)
            }
            // The quiet recording's 3 ms wait ends 1 ms after 1960 arrived.
            1960 if !s.stall => (arr + MS + 5 * US, arr + MS, idle),
            _ => (arr + 5 * US, arr + 2 * US, idle),
        };
        ev.push((ts, Record::Packet(packet(seq, ts, rx, who))));
        if s.probes {
            let rtt = ts - arr + reply;
            ev.push((ts + reply, Record::Probe(probe(seq, rtt))));
        }
    }
    if s.stall {
        let read = b::inside_read(MEMORY_STAT, a - 128 * MS, 98 * MS);
        let holders = vec![
            holder(CADVISOR_PID, CADVISOR_TGID, "cadvisor", 98 * MS, Some(read)),
            holder(181, 181, "kworker/11:1", MS, None),
        ];
        let waker = b::task(CADVISOR_PID, CADVISOR_TGID, "cadvisor");
        let wait = |kind, start_ns: u64, ts_ns: u64| {
            b::wait(
                kind,
                CPU,
                start_ns,
                ts_ns,
                ksoftirqd,
                waker.clone(),
                holders.clone(),
            )
        };
        ev.push((end, Record::Wait(wait(WaitKind::RxThread, a + 3 * US, end))));
        ev.push((
            entry,
            Record::Wait(wait(WaitKind::NetRxSoftirq, a + US, entry)),
        ));
        let sys_end = end - 10 * US;
        let who = (CADVISOR_PID, CADVISOR_TGID, "cadvisor");
        ev.push((
            sys_end,
            Record::Syscall(b::read_syscall(
                CPU,
                who,
                MEMORY_STAT,
                a - 128 * MS,
                sys_end,
            )),
        ));
    } else {
        // A short wait well under the threshold: no episode.
        let start = arrival(1960) - 2 * MS;
        let mut w = b::wait(
            WaitKind::NetRxSoftirq,
            CPU,
            start,
            start + 3 * MS,
            idle,
            b::task(0, 0, "swapper/11"),
            vec![holder(181, 181, "kworker/11:1", 3 * MS, None)],
        );
        w.nr_switches = 1;
        ev.push((start + 3 * MS, Record::Wait(w)));
    }
    ev.sort_by_key(|(t, _)| *t);
    let mut out = vec![Record::Header(header(None))];
    out.extend(ev.into_iter().map(|(_, r)| r));
    if s.footer {
        let counts = b::tally(&out);
        out.push(Record::Footer(b::footer(counts, 700 * MS)));
    }
    out
}

/// The 2019 GitHub incident's variants whose reports are golden files: (name, recording).
pub fn report_variants() -> Vec<(&'static str, Seed)> {
    vec![
        ("seed", Seed::default()),
        (
            "seed-packets",
            Seed {
                probes: false,
                ..Seed::default()
            },
        ),
        (
            "seed-quiet",
            Seed {
                stall: false,
                ..Seed::default()
            },
        ),
        (
            "seed-cut",
            Seed {
                footer: false,
                ..Seed::default()
            },
        ),
    ]
}

/// The text and JSON reports of every variant, as `(file name, content)` for
/// `tests/fixtures/`: each recording is written to `dir` and analyzed as a user would;
/// the dump's path reads `<name>.jsonl` so the files do not depend on `dir`.
pub fn golden_reports(dir: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    use stalltrace_analysis::analyze::{analyze, AnalyzeOptions};
    use stalltrace_analysis::report::{json, text};
    let mut out = vec![];
    for (name, s) in report_variants() {
        let dump = dir.join(format!("{name}.jsonl"));
        std::fs::write(&dump, jsonl(&records(s)))
            .map_err(|e| format!("{}: {e}", dump.display()))?;
        let r =
            analyze(&AnalyzeOptions::dump(&dump), &mut []).map_err(|e| format!("{name}: {e}"))?;
        let real = dump.display().to_string();
        let shown = format!("{name}.jsonl");
        out.push((
            format!("{name}.report.txt"),
            text::render(&r).replace(&real, &shown),
        ));
        let j = json::render(&r).map_err(|e| format!("{name}: {e}"))?;
        out.push((format!("{name}.report.json"), j.replace(&real, &shown)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_models_the_staircase() {
        let recs = records(Seed::default());
        let rtts: Vec<u64> = recs
            .iter()
            .filter_map(|r| match r {
                Record::Probe(p) if (1953..=1962).contains(&p.seq) => p.rtt_ns.map(|r| r / MS),
                _ => None,
            })
            .collect();
        assert_eq!(rtts, vec![99, 89, 79, 69, 59, 49, 39, 29, 19, 9]);
    }
}
