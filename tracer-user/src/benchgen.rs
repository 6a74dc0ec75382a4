//! `stalltrace bench-dump` (hidden): writes a synthetic dump of N records for
//! `cargo xtask bench` to time `analyze` on. Modelled on the seed incident and on what
//! `record` writes on a busy node: an external prober's echo every 10 ms (packet +
//! probe result), three other pingers' echoes (packets only), short RX waits on random
//! CPUs, long syscalls, and every 2 s a ~100 ms stall: a culprit inside `read()` of
//! memory.stat holds the probe CPU, ksoftirqd waits, ten probes form a staircase.
//! Deterministic (fixed seed), built from the dump types so it is always valid.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
};

use anyhow::Context as _;

use crate::dump::*;
use crate::exit::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchDumpArgs {
    /// Records to write between the header and the footer.
    #[arg(long)]
    pub events: u64,
    /// Output file (overwritten).
    #[arg(short, long)]
    pub output: PathBuf,
}

const MS: u64 = 1_000_000;
const US: u64 = 1_000;
const T0: u64 = 1_000_000_000_000;
const CPUS: u32 = 8;
const PROBE_CPU: u32 = 3;
const PROBE_IDENT: u16 = 7982;
const KSOFTIRQD: u32 = 30;

/// xorshift64*: cheap, deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn task(pid: u32, comm: &str) -> TaskRef {
    TaskRef {
        pid,
        tgid: pid,
        comm: comm.into(),
    }
}

fn holder(pid: u32, comm: &str, run_ns: u64, syscall: Option<SyscallRef>) -> HolderRec {
    HolderRec {
        pid,
        tgid: pid,
        comm: comm.into(),
        run_ns,
        cgroup_id: 4000 + u64::from(pid % 7),
        cgroup: Some(format!("/kubepods/burstable/pod-{comm}")),
        policy: "SCHED_OTHER".into(),
        priority: 0,
        syscall,
        stacks: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn packet(
    ts: u64,
    rx: u64,
    cpu: u32,
    who: (u32, &str, RxContext),
    ident: u16,
    seq: u16,
    src: &str,
) -> PacketRec {
    PacketRec {
        ts_ns: ts,
        cpu,
        pid: who.0,
        tgid: who.0,
        comm: who.1.into(),
        context: who.2,
        hook: "tracepoint".into(),
        proto: "icmp".into(),
        kind: PacketKind::EchoRequest,
        src: src.into(),
        dst: "10.0.0.11".into(),
        ident,
        seq,
        tcp_seq: None,
        rx_start_ns: Some(rx),
    }
}

fn probe(seq: u32, rtt: u64) -> ProbeRec {
    ProbeRec {
        source: "hping3".into(),
        proto: ProbeProto::Icmp,
        target: "10.0.0.11".into(),
        seq,
        wire_ident: Some(PROBE_IDENT),
        wire_seq: Some(seq as u16),
        sent_ns: None,
        rtt_ns: Some(rtt),
        status: ProbeStatus::Ok,
    }
}

const CULPRITS: [(u32, &str); 4] = [
    (10436, "cadvisor"),
    (2211, "node-exporter"),
    (3377, "kubelet"),
    (4480, "fluent-bit"),
];
const BUSY: [(u32, &str); 4] = [
    (181, "kworker/3:1"),
    (900, "containerd"),
    (1500, "java"),
    (1720, "envoy"),
];

/// One simulated second starting at `t`: its records in arrival order.
fn second(t: u64, k: u64, seq0: u32, rng: &mut Rng, out: &mut Vec<(u64, Record)>) {
    let idle = |cpu: u32| {
        (
            0u32,
            if cpu == PROBE_CPU {
                "swapper/3"
            } else {
                "swapper/1"
            },
            RxContext::Idle,
        )
    };
    let stall = k % 2 == 1;
    let culprit = CULPRITS[(k / 2 % CULPRITS.len() as u64) as usize];
    // The stall: probe 40 of this second arrives, the culprit holds the CPU 99 ms.
    let a = t + 40 * 10 * MS + 50 * US;
    let end = a + 99 * MS;
    let entry = end + 4 * US;
    for i in 0..100u32 {
        let seq = seq0 + i;
        let arr = t + u64::from(i) * 10 * MS + 50 * US;
        let (ts, rx, who) = match i {
            38 | 39 if stall => (
                arr + 5 * US,
                arr + 2 * US,
                (culprit.0, culprit.1, RxContext::ProcessSoftirq),
            ),
            40..=49 if stall => (
                entry + u64::from(i - 40) * 3 * US,
                entry,
                (KSOFTIRQD, "ksoftirqd/3", RxContext::Ksoftirqd),
            ),
            _ => (arr + 5 * US, arr + 2 * US, idle(PROBE_CPU)),
        };
        out.push((
            ts,
            Record::Packet(packet(
                ts,
                rx,
                PROBE_CPU,
                who,
                PROBE_IDENT,
                seq as u16,
                "10.0.0.1",
            )),
        ));
        let reply = 400 * US + rng.below(100 * US);
        out.push((ts + reply, Record::Probe(probe(seq, ts - arr + reply))));
        // Three other pingers: packets only.
        for (j, src) in ["10.0.0.5", "10.0.0.6", "10.0.0.7"].iter().enumerate() {
            let cpu = (j as u32 * 2 + 1) % CPUS;
            let at = arr + (j as u64 + 1) * 2 * MS + rng.below(500 * US);
            out.push((
                at,
                Record::Packet(packet(
                    at,
                    at - 3 * US,
                    cpu,
                    idle(cpu),
                    100 + j as u16,
                    seq as u16,
                    src,
                )),
            ));
        }
        // Short waits (1-4 ms) on other CPUs, one every 50 ms.
        if i % 5 == 2 {
            let cpu = (rng.below(u64::from(CPUS - 1)) as u32 + PROBE_CPU + 1) % CPUS;
            let b = BUSY[rng.below(BUSY.len() as u64) as usize];
            let w = MS + rng.below(3 * MS);
            let s = arr + rng.below(5 * MS);
            out.push((
                s + w,
                Record::Wait(WaitRec {
                    kind: WaitKind::NetRxSoftirq,
                    cpu,
                    start_ns: s,
                    ts_ns: s + w,
                    wait_ns: w,
                    rx: task(b.0, b.1),
                    rx_context: RxContext::ProcessSoftirq,
                    waker: task(0, "swapper/1"),
                    holders: vec![holder(b.0, b.1, w, None)],
                    nr_switches: 1,
                    nr_other_runs: 0,
                    run_ns: 20 * US,
                    truncated: false,
                }),
            ));
        }
        // A long syscall every 200 ms.
        if i % 20 == 7 {
            let b = BUSY[rng.below(BUSY.len() as u64) as usize];
            let d = 10 * MS + rng.below(20 * MS);
            out.push((
                arr + d,
                Record::Syscall(SyscallRec {
                    ts_ns: arr + d,
                    start_ns: arr,
                    dur_ns: d,
                    cpu_ns: d - MS,
                    cpu: (i / 20) % CPUS,
                    pid: b.0,
                    tgid: b.0,
                    comm: b.1.into(),
                    nr: 17,
                    name: "pread64".into(),
                    arg0: 5,
                    path: Some("/var/lib/data.db".into()),
                    ret: 4096,
                    cgroup_id: 4001,
                }),
            ));
        }
    }
    if stall {
        let read = SyscallRef {
            nr: 0,
            name: "read".into(),
            arg0: 7,
            path: Some("/sys/fs/cgroup/memory/memory.stat".into()),
            since_ns: a - 28 * MS,
            calls: 1,
            in_window_ns: 98 * MS,
        };
        let holders = vec![
            holder(culprit.0, culprit.1, 98 * MS, Some(read)),
            holder(181, "kworker/3:1", MS, None),
        ];
        let wait = |kind, start_ns: u64, ts_ns: u64| WaitRec {
            kind,
            cpu: PROBE_CPU,
            start_ns,
            ts_ns,
            wait_ns: ts_ns - start_ns,
            rx: task(KSOFTIRQD, "ksoftirqd/3"),
            rx_context: RxContext::Ksoftirqd,
            waker: task(culprit.0, culprit.1),
            holders: holders.clone(),
            nr_switches: 2,
            nr_other_runs: 0,
            run_ns: 0,
            truncated: false,
        };
        out.push((end, Record::Wait(wait(WaitKind::RxThread, a + 3 * US, end))));
        out.push((
            entry,
            Record::Wait(wait(WaitKind::NetRxSoftirq, a + US, entry)),
        ));
        let sys_end = end - 10 * US;
        out.push((
            sys_end,
            Record::Syscall(SyscallRec {
                ts_ns: sys_end,
                start_ns: a - 28 * MS,
                dur_ns: sys_end - (a - 28 * MS),
                cpu_ns: sys_end - (a - 28 * MS) - MS,
                cpu: PROBE_CPU,
                pid: culprit.0,
                tgid: culprit.0,
                comm: culprit.1.into(),
                nr: 0,
                name: "read".into(),
                arg0: 7,
                path: Some("/sys/fs/cgroup/memory/memory.stat".into()),
                ret: 660,
                cgroup_id: 4242,
            }),
        ));
    }
    out.sort_by_key(|(ts, _)| *ts);
}

pub fn run(a: BenchDumpArgs) -> anyhow::Result<ExitCode> {
    let f = File::create(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let header = Header {
        format: DUMP_FORMAT.into(),
        version: DUMP_VERSION,
        host: "bench-node".into(),
        kernel: "6.18.0-bench".into(),
        cpus: CPUS,
        boot_to_wall_ns: 1_700_000_000_000_000_000 - T0 as i64,
        started_at: "2023-11-14T22:13:20Z".into(),
        hooks: vec![
            "tracepoint:net:netif_receive_skb".into(),
            "irq:softirq_raise".into(),
            "sched:sched_switch".into(),
        ],
        packet_hook: "tracepoint".into(),
        options: Options {
            icmp_id: None,
            peer: None,
            tcp_port: None,
            wait_threshold_ns: MS,
            syscall_threshold_ns: 10 * MS,
            stall_threshold_ns: 50 * MS,
            ring_buffer_bytes: 1 << 22,
            probe: None,
            stacks_hz: None,
        },
    };
    let io = |e: std::io::Error| {
        anyhow::Error::new(e).context(format!("writing {}", a.output.display()))
    };
    let line = |w: &mut BufWriter<File>, r: &Record| -> anyhow::Result<()> {
        serde_json::to_writer(&mut *w, r).context("encoding a record")?;
        w.write_all(b"\n").map_err(io)
    };
    line(&mut w, &Record::Header(header))?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut counts = Counts::default();
    let mut buf = Vec::with_capacity(1024);
    let mut written = 0u64;
    let mut k = 0u64;
    'outer: while written < a.events {
        buf.clear();
        second(T0 + k * 1_000 * MS, k, (k * 100) as u32, &mut rng, &mut buf);
        for (_, r) in &buf {
            if written >= a.events {
                break 'outer;
            }
            match r {
                Record::Packet(_) => counts.packets += 1,
                Record::Wait(_) => counts.waits += 1,
                Record::Syscall(_) => counts.syscalls += 1,
                Record::Probe(_) => counts.probes += 1,
                _ => {}
            }
            line(&mut w, r)?;
            written += 1;
        }
        k += 1;
    }
    line(
        &mut w,
        &Record::Footer(Footer {
            ended_at: "2023-11-14T22:13:21Z".into(),
            duration_ns: (k + 1) * 1_000 * MS,
            counts: counts.clone(),
            lost: Lost::default(),
            hist_net_rx: vec![],
            hist_rx_thread: vec![],
            hist_net_tx: vec![],
            hist_timer: vec![],
            stacks: None,
            reason: "sigint".into(),
        }),
    )?;
    w.flush().map_err(io)?;
    crate::outln!(
        "{}: {} records ({} packets, {} probes, {} waits, {} syscalls) over {} s of simulated time",
        a.output.display(),
        written,
        counts.packets,
        counts.probes,
        counts.waits,
        counts.syscalls,
        k
    );
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_dump_reads_back_and_gives_episodes() {
        let path =
            std::env::temp_dir().join(format!("stalltrace-benchgen-{}.jsonl", std::process::id()));
        run(BenchDumpArgs {
            events: 20_000,
            output: path.clone(),
        })
        .unwrap();
        let a = crate::analyze::AnalyzeArgs {
            dump: path.clone(),
            probe_log: None,
            format: crate::analyze::Format::Text,
            perfetto: None,
            stall_threshold: None,
        };
        let r = crate::analyze::analyze(&a, |_| {}).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(r.input.complete);
        // ~38 s simulated: one stall every 2 s.
        assert!(r.totals.episodes >= 15, "{:?}", r.totals);
    }
}
