//! A recording modelled on the seed incident (`network-stalls-on-kubernetes.txt`):
//! hping3 pings every 10 ms, ICMP hashed to CPU 11; cadvisor (tgid 10137, pid 10436)
//! sits ~100 ms inside `read()` of memory.stat, processing 1951–1952 in its own
//! softirq, then ksoftirqd/11 waits ~99 ms for the CPU and processes 1953–1962 in one
//! go: RTTs 99, 89, … 9 ms. `tests/fixtures/seed.jsonl` is this, written by
//! `seed_fixture_file_is_current` (set `STALLTRACE_REGEN_FIXTURES=1` to rewrite it).
use crate::dump::*;

pub const T0: u64 = 5_000_000_000_000;
pub const MS: u64 = 1_000_000;
pub const US: u64 = 1_000;
pub const CPU: u32 = 11;
pub const IDENT: u16 = 7982;
pub const CADVISOR_PID: u32 = 10436;
pub const CADVISOR_TGID: u32 = 10137;
pub const KSOFTIRQD_PID: u32 = 76;
pub const MEMORY_STAT: &str = "/sys/fs/cgroup/memory/memory.stat";

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

pub fn header(probe: Option<String>) -> Header {
    Header {
        format: DUMP_FORMAT.into(),
        version: DUMP_VERSION,
        host: "kube-node-bad".into(),
        kernel: "4.9.0-8-amd64".into(),
        cpus: 24,
        boot_to_wall_ns: 1_700_000_000_000_000_000 - T0 as i64,
        started_at: "2023-11-14T22:13:20Z".into(),
        hooks: vec![
            "kprobe:icmp_echo".into(),
            "irq:softirq_raise".into(),
            "sched:sched_switch".into(),
        ],
        packet_hook: "kprobe".into(),
        options: Options {
            icmp_id: Some(IDENT),
            peer: None,
            tcp_port: None,
            wait_threshold_ns: MS,
            syscall_threshold_ns: 10 * MS,
            stall_threshold_ns: 50 * MS,
            ring_buffer_bytes: 1 << 22,
            probe,
            stacks_hz: None,
        },
    }
}

/// When probe `seq` reached the node (sent every 10 ms, 50 µs on the wire).
pub fn arrival(seq: u32) -> u64 {
    T0 + u64::from(seq - 1940) * 10 * MS + 50 * US
}

fn task(pid: u32, tgid: u32, comm: &str) -> TaskRef {
    TaskRef {
        pid,
        tgid,
        comm: comm.into(),
    }
}

pub fn holder(
    pid: u32,
    tgid: u32,
    comm: &str,
    run_ns: u64,
    syscall: Option<SyscallRef>,
) -> HolderRec {
    HolderRec {
        pid,
        tgid,
        comm: comm.into(),
        run_ns,
        cgroup_id: 4242,
        cgroup: Some(format!("/kubepods/burstable/pod-{comm}")),
        policy: "SCHED_OTHER".into(),
        priority: 0,
        syscall,
        stacks: None,
    }
}

pub fn packet(
    seq: u32,
    ts_ns: u64,
    rx_start_ns: u64,
    who: (u32, u32, &str, RxContext),
) -> PacketRec {
    PacketRec {
        ts_ns,
        cpu: CPU,
        pid: who.0,
        tgid: who.1,
        comm: who.2.into(),
        context: who.3,
        hook: "kprobe".into(),
        proto: "icmp".into(),
        kind: PacketKind::EchoRequest,
        src: "10.0.0.1".into(),
        dst: "10.0.0.11".into(),
        ident: IDENT,
        seq: seq as u16,
        tcp_seq: None,
        rx_start_ns: Some(rx_start_ns),
    }
}

pub fn probe(seq: u32, rtt_ns: u64) -> ProbeRec {
    ProbeRec {
        source: "hping3".into(),
        proto: ProbeProto::Icmp,
        target: "10.0.0.11".into(),
        seq,
        wire_ident: Some(IDENT),
        wire_seq: Some(seq as u16),
        sent_ns: None,
        rtt_ns: Some(rtt_ns),
        status: ProbeStatus::Ok,
    }
}

/// The records in arrival order (header first, footer last when asked).
pub fn records(s: Seed) -> Vec<Record> {
    let idle = (0, 0, "swapper/11", RxContext::Idle);
    let cadvisor = (
        CADVISOR_PID,
        CADVISOR_TGID,
        "cadvisor",
        RxContext::ProcessSoftirq,
    );
    let ksoftirqd = (
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
        let read = SyscallRef {
            nr: 0,
            name: "read".into(),
            arg0: 7,
            path: Some(MEMORY_STAT.into()),
            since_ns: a - 128 * MS,
            calls: 1,
            in_window_ns: 98 * MS,
        };
        let holders = vec![
            holder(CADVISOR_PID, CADVISOR_TGID, "cadvisor", 98 * MS, Some(read)),
            holder(181, 181, "kworker/11:1", MS, None),
        ];
        let wait = |kind, start_ns: u64, ts_ns: u64| WaitRec {
            kind,
            cpu: CPU,
            start_ns,
            ts_ns,
            wait_ns: ts_ns - start_ns,
            rx: task(KSOFTIRQD_PID, KSOFTIRQD_PID, "ksoftirqd/11"),
            rx_context: RxContext::Ksoftirqd,
            waker: task(CADVISOR_PID, CADVISOR_TGID, "cadvisor"),
            holders: holders.clone(),
            nr_switches: 2,
            nr_other_runs: 0,
            run_ns: 0,
            truncated: false,
        };
        ev.push((end, Record::Wait(wait(WaitKind::RxThread, a + 3 * US, end))));
        ev.push((
            entry,
            Record::Wait(wait(WaitKind::NetRxSoftirq, a + US, entry)),
        ));
        let sys_end = end - 10 * US;
        ev.push((
            sys_end,
            Record::Syscall(SyscallRec {
                ts_ns: sys_end,
                start_ns: a - 128 * MS,
                dur_ns: sys_end - (a - 128 * MS),
                cpu_ns: sys_end - (a - 128 * MS) - MS,
                cpu: CPU,
                pid: CADVISOR_PID,
                tgid: CADVISOR_TGID,
                comm: "cadvisor".into(),
                nr: 0,
                name: "read".into(),
                arg0: 7,
                path: Some(MEMORY_STAT.into()),
                ret: 660,
                cgroup_id: 4242,
            }),
        ));
    } else {
        // A short wait well under the threshold: no episode.
        let b = arrival(1960) - 2 * MS;
        ev.push((
            b + 3 * MS,
            Record::Wait(WaitRec {
                kind: WaitKind::NetRxSoftirq,
                cpu: CPU,
                start_ns: b,
                ts_ns: b + 3 * MS,
                wait_ns: 3 * MS,
                rx: task(0, 0, "swapper/11"),
                rx_context: RxContext::Idle,
                waker: task(0, 0, "swapper/11"),
                holders: vec![holder(181, 181, "kworker/11:1", 3 * MS, None)],
                nr_switches: 1,
                nr_other_runs: 0,
                run_ns: 0,
                truncated: false,
            }),
        ));
    }
    ev.sort_by_key(|(t, _)| *t);
    let mut out = vec![Record::Header(header(None))];
    let mut counts = Counts::default();
    for (_, r) in ev {
        match &r {
            Record::Packet(_) => counts.packets += 1,
            Record::Wait(_) => counts.waits += 1,
            Record::Syscall(_) => counts.syscalls += 1,
            Record::Probe(_) => counts.probes += 1,
            _ => {}
        }
        out.push(r);
    }
    if s.footer {
        out.push(Record::Footer(Footer {
            ended_at: "2023-11-14T22:13:21Z".into(),
            duration_ns: 700 * MS,
            counts,
            lost: Lost::default(),
            hist_net_rx: vec![],
            hist_rx_thread: vec![],
            hist_net_tx: vec![],
            hist_timer: vec![],
            reason: "sigint".into(),
            stacks: None,
        }));
    }
    out
}

/// JSON Lines text of `records`.
pub fn jsonl(recs: &[Record]) -> String {
    let mut s = String::new();
    for r in recs {
        s.push_str(&serde_json::to_string(r).expect("records serialize"));
        s.push('\n');
    }
    s
}

/// A unique scratch path under the system temp dir.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "stalltrace-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_fixture_file_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seed.jsonl");
        let want = jsonl(&records(Seed::default()));
        if std::env::var_os("STALLTRACE_REGEN_FIXTURES").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: rerun with STALLTRACE_REGEN_FIXTURES=1",
            path.display()
        );
    }

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
