//! A dump described by `arbitrary`: a few bytes become a header, a stream of packets,
//! probes, waits and syscalls on a handful of CPUs and tasks, a footer and maybe a
//! prober's log. Values are drawn from small sets most of the time (one probe ident,
//! close timestamps, few CPUs and tasks) so records meet in the correlator, and
//! anywhere in their range some of the time (extremes, clocks going back, odd text).
//! The dump is written as JSON Lines and read back through [`crate::run_dump`].
use arbitrary::Arbitrary;
use stalltrace_analysis::dump::*;

const T0: u64 = 5_000_000_000_000;
const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const IDENT: u16 = 7982;

#[derive(Arbitrary, Debug)]
pub struct Scenario {
    cpus: u8,
    /// Header stall threshold in ms; 0: unset (the correlator's default).
    stall_threshold_ms: u8,
    /// The built-in prober ran (the correlator's probe mode).
    probe_mode: bool,
    icmp_id: Option<Ident>,
    boot_to_wall: Num,
    stacks_hz: Option<u8>,
    events: Vec<Event>,
    footer: Option<FooterIn>,
    /// A prober's log next to the dump.
    log: Option<Vec<ProbeIn>>,
    /// Cut the text at this byte (a recorder killed mid-line).
    cut: Option<u16>,
}

/// A number: mostly small, sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Small(u8),
    Any(u64),
}

impl Num {
    fn get(self, unit: u64) -> u64 {
        match self {
            Num::Small(v) => u64::from(v).saturating_mul(unit),
            Num::Any(v) => v,
        }
    }
}

/// The clock of the next record: forward a little, the same, back, or anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Step {
    Us(u16),
    Ms(u8),
    Same,
    BackUs(u16),
    Abs(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ident {
    Probe,
    Other(u8),
    Any(u16),
}

impl Ident {
    fn get(self) -> u16 {
        match self {
            Ident::Probe => IDENT,
            Ident::Other(v) => 100 + u16::from(v % 4),
            Ident::Any(v) => v,
        }
    }
}

/// Who: the idle task, an RX thread, one of a few tasks, or anyone.
#[derive(Arbitrary, Debug, Clone)]
enum Who {
    Idle,
    Ksoftirqd,
    Napi,
    BacklogNapi,
    Task(u8),
    Any { pid: u32, tgid: u32, comm: String },
}

const TASKS: [(u32, &str); 4] = [
    (10436, "cadvisor"),
    (181, "kworker/11:1"),
    (3377, "kubelet"),
    (1500, "java"),
];

impl Who {
    /// pid, tgid, comm on `cpu`.
    fn task(&self, cpu: u32) -> (u32, u32, String) {
        match self {
            Who::Idle => (0, 0, format!("swapper/{cpu}")),
            Who::Ksoftirqd => (76, 76, format!("ksoftirqd/{cpu}")),
            Who::Napi => (900, 900, "napi/eth0-8193".into()),
            Who::BacklogNapi => (901, 901, format!("backlog_napi/{cpu}")),
            Who::Task(i) => {
                let (pid, comm) = TASKS[usize::from(*i) % TASKS.len()];
                (pid, pid, comm.into())
            }
            Who::Any { pid, tgid, comm } => (*pid, *tgid, comm.clone()),
        }
    }

    fn task_ref(&self, cpu: u32) -> TaskRef {
        let (pid, tgid, comm) = self.task(cpu);
        TaskRef { pid, tgid, comm }
    }
}

/// Text: one of the usual values, or anything (escaping, odd names).
#[derive(Arbitrary, Debug, Clone)]
enum Text {
    Usual,
    Any(String),
}

impl Text {
    fn or(&self, usual: &str) -> String {
        match self {
            Text::Usual => usual.into(),
            Text::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Event {
    Packet {
        at: Step,
        cpu: u8,
        who: Who,
        in_softirq: bool,
        kind: u8,
        proto: u8,
        ident: Ident,
        seq: u16,
        /// The RX run started this long before the packet (µs); none: unknown.
        rx_back_us: Option<u16>,
        tcp_seq: Option<u32>,
        src: Text,
        dst: Text,
    },
    Probe(ProbeIn),
    Wait {
        at: Step,
        rx_thread: bool,
        cpu: u8,
        wait: Num,
        rx: Who,
        waker: Who,
        holders: Vec<HolderIn>,
        nr_switches: u8,
        nr_other_runs: u8,
        run: Num,
        truncated: bool,
    },
    Syscall {
        at: Step,
        cpu: u8,
        who: Who,
        dur: Num,
        cpu_time: Num,
        nr: i16,
        path: Option<Text>,
        ret: i32,
    },
}

#[derive(Arbitrary, Debug)]
pub struct ProbeIn {
    source: u8,
    proto: u8,
    target: Text,
    seq: u16,
    wire_ident: Option<Ident>,
    wire_seq: Option<u16>,
    /// Sent this long before the clock (µs).
    sent_back_us: Option<u16>,
    rtt: Option<Num>,
    status: u8,
}

#[derive(Arbitrary, Debug)]
struct HolderIn {
    who: Who,
    run: Num,
    policy: Text,
    priority: i8,
    cgroup: Option<Text>,
    syscall: Option<SyscallRefIn>,
    stacks: Option<StacksIn>,
}

#[derive(Arbitrary, Debug)]
struct SyscallRefIn {
    nr: i16,
    name: Text,
    path: Option<Text>,
    /// Entered this long before the wait started (µs).
    before_us: u16,
    calls: u8,
    in_window: Num,
}

#[derive(Arbitrary, Debug)]
struct StacksIn {
    samples: u8,
    user_mode: u8,
    missing: u8,
    distinct: u8,
    top: Vec<(u8, Vec<Text>, Vec<Text>)>,
}

#[derive(Arbitrary, Debug)]
struct FooterIn {
    duration: Num,
    counts: [Num; 4],
    lost: [Num; 4],
    hists: Vec<(u8, Vec<Num>)>,
    reason: Text,
    stacks: Option<[Num; 6]>,
}

struct Clock(u64);

impl Clock {
    fn step(&mut self, s: Step) -> u64 {
        self.0 = match s {
            Step::Us(v) => self.0.saturating_add(u64::from(v) * US),
            Step::Ms(v) => self.0.saturating_add(u64::from(v) * MS),
            Step::Same => self.0,
            Step::BackUs(v) => self.0.saturating_sub(u64::from(v) * US),
            Step::Abs(v) => v,
        };
        self.0
    }
}

fn probe(p: &ProbeIn, now: u64) -> ProbeRec {
    ProbeRec {
        source: ["builtin", "hping3", "ping"][usize::from(p.source % 3)].into(),
        proto: [ProbeProto::Icmp, ProbeProto::Icmpv6, ProbeProto::Tcp][usize::from(p.proto % 3)],
        target: p.target.or("10.0.0.11"),
        seq: 1940 + u32::from(p.seq),
        wire_ident: p.wire_ident.map(Ident::get),
        wire_seq: p.wire_seq.map(|s| 1940u16.wrapping_add(s)),
        sent_ns: p
            .sent_back_us
            .map(|b| now.saturating_sub(u64::from(b) * US)),
        rtt_ns: p.rtt.map(|r| r.get(MS)),
        status: [ProbeStatus::Ok, ProbeStatus::Lost, ProbeStatus::Dup][usize::from(p.status % 3)],
        send_error: None,
    }
}

fn hist(h: &[(u8, Vec<Num>)]) -> Vec<CpuHist> {
    h.iter()
        .map(|(cpu, b)| CpuHist {
            cpu: u32::from(*cpu),
            buckets: b.iter().map(|n| n.get(1)).collect(),
        })
        .collect()
}

impl Scenario {
    /// The records of the dump (header first, footer last if any) and the log.
    pub fn records(&self) -> (Vec<Record>, Option<Vec<ProbeRec>>) {
        let cpus = u32::from(self.cpus.max(1));
        let cpu_of = |c: u8| u32::from(c) % (cpus + 1); // one past the last now and then
        let mut header = stalltrace_testkit::records::header(
            "fuzz-node",
            "6.1.0",
            cpus,
            T0,
            self.probe_mode.then(|| "10.0.0.11".to_string()),
        );
        header.boot_to_wall_ns = self.boot_to_wall.get(MS) as i64;
        header.options.stall_threshold_ns = u64::from(self.stall_threshold_ms) * MS;
        header.options.icmp_id = self.icmp_id.map(Ident::get);
        header.options.stacks_hz = self.stacks_hz.map(u64::from);
        let mut recs = vec![Record::Header(header)];
        let mut clock = Clock(T0);
        let mut counts = Counts::default();
        for e in &self.events {
            let rec = match e {
                Event::Packet {
                    at,
                    cpu,
                    who,
                    in_softirq,
                    kind,
                    proto,
                    ident,
                    seq,
                    rx_back_us,
                    tcp_seq,
                    src,
                    dst,
                } => {
                    let ts = clock.step(*at);
                    let cpu = cpu_of(*cpu);
                    let (pid, tgid, comm) = who.task(cpu);
                    Record::Packet(PacketRec {
                        ts_ns: ts,
                        cpu,
                        pid,
                        tgid,
                        context: RxContext::classify(&comm, pid, *in_softirq),
                        comm,
                        hook: "tracepoint".into(),
                        proto: ["icmp", "icmpv6", "tcp"][usize::from(proto % 3)].into(),
                        kind: [
                            PacketKind::EchoRequest,
                            PacketKind::EchoReply,
                            PacketKind::Syn,
                            PacketKind::SynAck,
                            PacketKind::Rst,
                            PacketKind::OtherTcp,
                        ][usize::from(kind % 6)],
                        src: src.or("10.0.0.1"),
                        dst: dst.or("10.0.0.11"),
                        ident: ident.get(),
                        seq: 1940u16.wrapping_add(*seq),
                        tcp_seq: *tcp_seq,
                        rx_start_ns: rx_back_us.map(|b| ts.saturating_sub(u64::from(b) * US)),
                        drain_start_ns: None,
                    })
                }
                Event::Probe(p) => Record::Probe(probe(p, clock.0)),
                Event::Wait {
                    at,
                    rx_thread,
                    cpu,
                    wait,
                    rx,
                    waker,
                    holders,
                    nr_switches,
                    nr_other_runs,
                    run,
                    truncated,
                } => {
                    let ts = clock.step(*at);
                    let cpu = cpu_of(*cpu);
                    let wait_ns = wait.get(MS);
                    let start = ts.saturating_sub(wait_ns);
                    let rx = rx.task_ref(cpu);
                    let rx_context = RxContext::classify(&rx.comm, rx.pid, !*rx_thread);
                    Record::Wait(WaitRec {
                        kind: if *rx_thread {
                            WaitKind::RxThread
                        } else {
                            WaitKind::NetRxSoftirq
                        },
                        cpu,
                        start_ns: start,
                        ts_ns: ts,
                        wait_ns,
                        rx,
                        rx_context,
                        waker: waker.task_ref(cpu),
                        holders: holders.iter().map(|h| holder(h, cpu, start)).collect(),
                        nr_switches: u32::from(*nr_switches),
                        nr_other_runs: u32::from(*nr_other_runs),
                        run_ns: run.get(US),
                        truncated: *truncated,
                        drain_of_ns: None,
                    })
                }
                Event::Syscall {
                    at,
                    cpu,
                    who,
                    dur,
                    cpu_time,
                    nr,
                    path,
                    ret,
                } => {
                    let ts = clock.step(*at);
                    let cpu = cpu_of(*cpu);
                    let (pid, tgid, comm) = who.task(cpu);
                    let dur_ns = dur.get(MS);
                    Record::Syscall(SyscallRec {
                        ts_ns: ts,
                        start_ns: ts.saturating_sub(dur_ns),
                        dur_ns,
                        cpu_ns: cpu_time.get(MS),
                        cpu,
                        pid,
                        tgid,
                        comm,
                        nr: i64::from(*nr),
                        name: if *nr == 0 { "read" } else { "pread64" }.into(),
                        arg0: 3,
                        path: path
                            .as_ref()
                            .map(|p| p.or("/sys/fs/cgroup/memory/memory.stat")),
                        ret: i64::from(*ret),
                        cgroup_id: 4242,
                    })
                }
            };
            counts.add(&rec);
            recs.push(rec);
        }
        if let Some(f) = &self.footer {
            let [p, w, s, pr] = f.counts;
            let [lp, lw, ls, lst] = f.lost;
            recs.push(Record::Footer(Footer {
                ended_at: "2023-11-14T22:14:20Z".into(),
                duration_ns: f.duration.get(MS),
                counts: Counts {
                    packets: p.get(1).saturating_add(counts.packets),
                    waits: w.get(1).saturating_add(counts.waits),
                    syscalls: s.get(1).saturating_add(counts.syscalls),
                    probes: pr.get(1).saturating_add(counts.probes),
                },
                lost: Lost {
                    packets: lp.get(1),
                    waits: lw.get(1),
                    syscalls: ls.get(1),
                    stack_samples: lst.get(1),
                    ..Default::default()
                },
                hist_net_rx: hist(&f.hists),
                hist_rx_thread: hist(&f.hists[..f.hists.len() / 2]),
                hist_net_tx: vec![],
                hist_timer: vec![],
                reason: f.reason.or("duration"),
                stacks: f.stacks.map(|s| StackStats {
                    hz: s[0].get(1),
                    samples: s[1].get(1),
                    attributed: s[2].get(1),
                    kernel_misses: s[3].get(1),
                    user_misses: s[4].get(1),
                    distinct_stacks: s[5].get(1),
                }),
                sampler: None,
                warnings: vec![],
            }));
        }
        let log = self
            .log
            .as_ref()
            .map(|l| l.iter().map(|p| probe(p, T0)).collect());
        (recs, log)
    }

    /// The dump as JSON Lines, maybe cut short.
    pub fn jsonl(&self, recs: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in recs {
            match serde_json::to_writer(&mut out, r) {
                Ok(()) => out.push(b'\n'),
                Err(e) => panic!("a dump record does not serialize: {e}"),
            }
        }
        if let Some(c) = self.cut {
            out.truncate(usize::from(c).max(1) * 16);
        }
        out
    }
}

fn holder(h: &HolderIn, cpu: u32, start: u64) -> HolderRec {
    let (pid, tgid, comm) = h.who.task(cpu);
    HolderRec {
        pid,
        tgid,
        comm,
        process: None,
        identity: None,
        activity: None,
        run_ns: h.run.get(MS),
        cgroup_id: 4242,
        cgroup: h.cgroup.as_ref().map(|c| c.or("/kubepods/burstable/pod1")),
        policy: h.policy.or("SCHED_OTHER"),
        priority: i32::from(h.priority),
        syscall: h.syscall.as_ref().map(|s| SyscallRef {
            nr: i64::from(s.nr),
            name: s.name.or("read"),
            arg0: 3,
            path: s
                .path
                .as_ref()
                .map(|p| p.or("/sys/fs/cgroup/memory/memory.stat")),
            since_ns: start.saturating_sub(u64::from(s.before_us) * US),
            calls: u32::from(s.calls),
            in_window_ns: s.in_window.get(MS),
        }),
        stacks: h.stacks.as_ref().map(|s| HolderStacks {
            samples: u32::from(s.samples),
            user_mode: u32::from(s.user_mode),
            missing: u32::from(s.missing),
            distinct: u32::from(s.distinct),
            top: s
                .top
                .iter()
                .map(|(count, k, u)| StackRec {
                    count: u32::from(*count),
                    kernel: k.iter().map(|f| f.or("vfs_read+0x10")).collect(),
                    user: u.iter().map(|f| f.or("read+0x4 [libc.so.6]")).collect(),
                })
                .collect(),
        }),
    }
}
