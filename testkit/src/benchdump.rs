//! A synthetic dump of N records for `cargo xtask bench` to time `analyze` on.
//! Modelled on the 2019 GitHub incident and on what `record` writes on a busy node: an
//! external prober's echo every 10 ms (packet + probe result), three other pingers'
//! echoes (packets only), short RX waits on random CPUs, long syscalls, and every 2 s a
//! ~100 ms stall: a culprit inside `read()` of memory.stat holds the probe CPU,
//! ksoftirqd waits, ten probes form a staircase. Deterministic (fixed seed), built from
//! the dump types so it is always valid.
use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

use stalltrace_analysis::dump::*;

use crate::records::{self as b, MS, US};

const T0: u64 = 1_000_000_000_000;
const CPUS: u32 = 8;
const PROBE_CPU: u32 = 3;
const PROBE_IDENT: u16 = 7982;
const KSOFTIRQD: u32 = 30;
const MEMORY_STAT: &str = "/sys/fs/cgroup/memory/memory.stat";

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

fn packet(
    ts: u64,
    rx: u64,
    cpu: u32,
    who: b::Rx<'_>,
    ident: u16,
    seq: u16,
    src: &str,
) -> PacketRec {
    let mut p = b::echo_request(ts, rx, cpu, who, ident, seq);
    p.src = src.into();
    p
}

/// One simulated second starting at `t`: its records in arrival order.
fn second(t: u64, k: u64, seq0: u32, rng: &mut Rng, out: &mut Vec<(u64, Record)>) {
    let idle = |cpu: u32| -> b::Rx<'static> {
        let comm = if cpu == PROBE_CPU {
            "swapper/3"
        } else {
            "swapper/1"
        };
        (0, 0, comm, RxContext::Idle)
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
                (culprit.0, culprit.0, culprit.1, RxContext::ProcessSoftirq),
            ),
            40..=49 if stall => (
                entry + u64::from(i - 40) * 3 * US,
                entry,
                (KSOFTIRQD, KSOFTIRQD, "ksoftirqd/3", RxContext::Ksoftirqd),
            ),
            _ => (arr + 5 * US, arr + 2 * US, idle(PROBE_CPU)),
        };
        let p = packet(ts, rx, PROBE_CPU, who, PROBE_IDENT, seq as u16, "10.0.0.1");
        out.push((ts, Record::Packet(p)));
        let reply = 400 * US + rng.below(100 * US);
        out.push((
            ts + reply,
            Record::Probe(b::probe(seq, PROBE_IDENT, ts - arr + reply)),
        ));
        // Three other pingers: packets only.
        for (j, src) in ["10.0.0.5", "10.0.0.6", "10.0.0.7"].iter().enumerate() {
            let cpu = (j as u32 * 2 + 1) % CPUS;
            let at = arr + (j as u64 + 1) * 2 * MS + rng.below(500 * US);
            let p = packet(
                at,
                at - 3 * US,
                cpu,
                idle(cpu),
                100 + j as u16,
                seq as u16,
                src,
            );
            out.push((at, Record::Packet(p)));
        }
        // Short waits (1-4 ms) on other CPUs, one every 50 ms.
        if i % 5 == 2 {
            let cpu = (rng.below(u64::from(CPUS - 1)) as u32 + PROBE_CPU + 1) % CPUS;
            let busy = BUSY[rng.below(BUSY.len() as u64) as usize];
            let w = MS + rng.below(3 * MS);
            let s = arr + rng.below(5 * MS);
            let mut rec = b::wait(
                WaitKind::NetRxSoftirq,
                cpu,
                s,
                s + w,
                (busy.0, busy.0, busy.1, RxContext::ProcessSoftirq),
                b::task(0, 0, "swapper/1"),
                vec![b::holder(busy.0, busy.0, busy.1, w, None)],
            );
            rec.nr_switches = 1;
            rec.run_ns = 20 * US;
            out.push((s + w, Record::Wait(rec)));
        }
        // A long syscall every 200 ms.
        if i % 20 == 7 {
            let busy = BUSY[rng.below(BUSY.len() as u64) as usize];
            let d = 10 * MS + rng.below(20 * MS);
            let mut sc = b::read_syscall(
                (i / 20) % CPUS,
                (busy.0, busy.0, busy.1),
                "/var/lib/data.db",
                arr,
                arr + d,
            );
            sc.nr = 17;
            sc.name = "pread64".into();
            sc.arg0 = 5;
            sc.ret = 4096;
            sc.cgroup_id = 4001;
            out.push((arr + d, Record::Syscall(sc)));
        }
    }
    if stall {
        let read = b::inside_read(MEMORY_STAT, a - 28 * MS, 98 * MS);
        let holders = vec![
            b::holder(culprit.0, culprit.0, culprit.1, 98 * MS, Some(read)),
            b::holder(181, 181, "kworker/3:1", MS, None),
        ];
        let rx = (KSOFTIRQD, KSOFTIRQD, "ksoftirqd/3", RxContext::Ksoftirqd);
        let waker = b::task(culprit.0, culprit.0, culprit.1);
        let wait = |kind, start_ns: u64, ts_ns: u64| {
            b::wait(
                kind,
                PROBE_CPU,
                start_ns,
                ts_ns,
                rx,
                waker.clone(),
                holders.clone(),
            )
        };
        out.push((end, Record::Wait(wait(WaitKind::RxThread, a + 3 * US, end))));
        out.push((
            entry,
            Record::Wait(wait(WaitKind::NetRxSoftirq, a + US, entry)),
        ));
        let sys_end = end - 10 * US;
        let who = (culprit.0, culprit.0, culprit.1);
        out.push((
            sys_end,
            Record::Syscall(b::read_syscall(
                PROBE_CPU,
                who,
                MEMORY_STAT,
                a - 28 * MS,
                sys_end,
            )),
        ));
    }
    out.sort_by_key(|(ts, _)| *ts);
}

/// What [`write`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub records: u64,
    pub counts: Counts,
    /// Simulated seconds.
    pub seconds: u64,
}

/// Writes a dump of `events` records (plus header and footer) to `path`.
pub fn write(path: &Path, events: u64) -> io::Result<Written> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let line = |w: &mut BufWriter<File>, r: &Record| -> io::Result<()> {
        serde_json::to_writer(&mut *w, r).map_err(io::Error::other)?;
        w.write_all(b"\n")
    };
    line(
        &mut w,
        &Record::Header(b::header("bench-node", "6.18.0-bench", CPUS, T0, None)),
    )?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Written::default();
    let mut buf = Vec::with_capacity(1024);
    let mut k = 0u64;
    'outer: while out.records < events {
        buf.clear();
        second(T0 + k * 1_000 * MS, k, (k * 100) as u32, &mut rng, &mut buf);
        for (_, r) in &buf {
            if out.records >= events {
                break 'outer;
            }
            out.counts.add(r);
            line(&mut w, r)?;
            out.records += 1;
        }
        k += 1;
    }
    out.seconds = k;
    line(
        &mut w,
        &Record::Footer(b::footer(out.counts.clone(), (k + 1) * 1_000 * MS)),
    )?;
    w.flush()?;
    Ok(out)
}
