//! Builders for dump records: the pieces every fixture and generated dump is made of,
//! so that a schema change is made once and tests, fixtures and benchmarks agree.
use stalltrace_analysis::dump::*;

pub const MS: u64 = 1_000_000;
pub const US: u64 = 1_000;

pub fn task(pid: u32, tgid: u32, comm: &str) -> TaskRef {
    TaskRef {
        pid,
        tgid,
        comm: comm.into(),
    }
}

/// A dump header; `probe` says a built-in prober ran (the correlator's probe mode).
pub fn header(host: &str, kernel: &str, cpus: u32, t0: u64, probe: Option<String>) -> Header {
    Header {
        format: DUMP_FORMAT.into(),
        version: DUMP_VERSION,
        host: host.into(),
        kernel: kernel.into(),
        cpus,
        boot_to_wall_ns: 1_700_000_000_000_000_000 - t0 as i64,
        started_at: "2023-11-14T22:13:20Z".into(),
        hooks: vec![
            "tracepoint:net:netif_receive_skb".into(),
            "tracepoint:irq:softirq_raise".into(),
            "tracepoint:sched:sched_switch".into(),
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
            probe,
            ..Options::default()
        },
        cgroups: None,
    }
}

/// A SCHED_OTHER task that held the CPU `run_ns` inside a wait window.
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
        process: None,
        identity: None,
        run_ns,
        cgroup_id: 4000 + u64::from(pid % 7),
        cgroup: Some(format!("/kubepods/burstable/pod-{comm}")),
        policy: "SCHED_OTHER".into(),
        priority: 0,
        syscall,
        stacks: None,
        activity: None,
    }
}

/// Who processed a packet: (pid, tgid, comm, context).
pub type Rx<'a> = (u32, u32, &'a str, RxContext);

/// An ICMP echo request seen on `cpu` at `ts_ns`, in the RX run that started at `rx_ns`.
pub fn echo_request(
    ts_ns: u64,
    rx_ns: u64,
    cpu: u32,
    who: Rx<'_>,
    ident: u16,
    seq: u16,
) -> PacketRec {
    PacketRec {
        ts_ns,
        cpu,
        pid: who.0,
        tgid: who.1,
        comm: who.2.into(),
        context: who.3,
        hook: "tracepoint".into(),
        proto: "icmp".into(),
        kind: PacketKind::EchoRequest,
        src: "10.0.0.1".into(),
        dst: "10.0.0.11".into(),
        ident,
        seq,
        tcp_seq: None,
        rx_start_ns: Some(rx_ns),
        drain_start_ns: None,
    }
}

/// An answered ICMP probe as hping3 logs it (no send time on this host).
pub fn probe(seq: u32, ident: u16, rtt_ns: u64) -> ProbeRec {
    ProbeRec {
        source: "hping3".into(),
        proto: ProbeProto::Icmp,
        target: "10.0.0.11".into(),
        seq,
        wire_ident: Some(ident),
        wire_seq: Some(seq as u16),
        sent_ns: None,
        rtt_ns: Some(rtt_ns),
        status: ProbeStatus::Ok,
        send_error: None,
    }
}

/// A wait on `cpu` from `start_ns` to `ts_ns`, run then by `rx`.
pub fn wait(
    kind: WaitKind,
    cpu: u32,
    start_ns: u64,
    ts_ns: u64,
    rx: Rx<'_>,
    waker: TaskRef,
    holders: Vec<HolderRec>,
) -> WaitRec {
    WaitRec {
        kind,
        cpu,
        start_ns,
        ts_ns,
        wait_ns: ts_ns.saturating_sub(start_ns),
        rx: task(rx.0, rx.1, rx.2),
        rx_context: rx.3,
        waker,
        holders,
        nr_switches: 2,
        nr_other_runs: 0,
        run_ns: 0,
        truncated: false,
        drain_of_ns: None,
    }
}

/// A `read()` of `path` on fd 7 that held the CPU from `start_ns` to `end_ns`.
pub fn read_syscall(
    cpu: u32,
    who: (u32, u32, &str),
    path: &str,
    start_ns: u64,
    end_ns: u64,
) -> SyscallRec {
    SyscallRec {
        ts_ns: end_ns,
        start_ns,
        dur_ns: end_ns - start_ns,
        cpu_ns: (end_ns - start_ns).saturating_sub(MS),
        cpu,
        pid: who.0,
        tgid: who.1,
        comm: who.2.into(),
        nr: 0,
        name: "read".into(),
        arg0: 7,
        path: Some(path.into()),
        ret: 660,
        cgroup_id: 4242,
    }
}

/// What a holder was inside: `read()` of `path` since `since_ns`.
pub fn inside_read(path: &str, since_ns: u64, in_window_ns: u64) -> SyscallRef {
    SyscallRef {
        nr: 0,
        name: "read".into(),
        arg0: 7,
        path: Some(path.into()),
        since_ns,
        calls: 1,
        in_window_ns,
    }
}

/// Counts of each record kind, as the footer carries them.
pub fn tally(recs: &[Record]) -> Counts {
    let mut c = Counts::default();
    recs.iter().for_each(|r| c.add(r));
    c
}

/// A footer for a clean end by SIGINT.
pub fn footer(counts: Counts, duration_ns: u64) -> Footer {
    Footer {
        ended_at: "2023-11-14T22:13:21Z".into(),
        duration_ns,
        counts,
        lost: Lost::default(),
        hist_net_rx: vec![],
        hist_rx_thread: vec![],
        hist_net_tx: vec![],
        hist_timer: vec![],
        reason: "sigint".into(),
        ..Footer::default()
    }
}

/// JSON Lines text of `recs`, as the recorder writes it.
pub fn jsonl(recs: &[Record]) -> String {
    let mut s = String::new();
    for r in recs {
        // Records are plain data: serializing cannot fail.
        s.push_str(&serde_json::to_string(r).unwrap_or_default());
        s.push('\n');
    }
    s
}
