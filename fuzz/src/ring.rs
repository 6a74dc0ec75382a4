//! Ring-buffer input framing and valid records (the seeds) built from tracer-common's
//! structs with `stalltrace::events::encode`, as the kernel writes them.
use stalltrace::events::encode;
use tracer_common::{
    EventHeader, EventKind, Holder, PacketEvent, PacketHookKind, SampleEvent, SampleMode,
    SyscallEvent, WaitEvent, COMM_LEN, NET_RX_SOFTIRQ, PENDING_NET_RX, PENDING_RX_THREAD,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, SAMPLE_PATH_LEN, TCP_ACK, TCP_SYN, VEC_THREAD,
};

/// Records as the ring buffer hands them over, each behind a little-endian u16 length
/// (the ring buffer frames them the same way); a frame cut short ends the input.
pub fn frames(mut b: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = b.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len));
        let rec = rest.get(..len)?;
        b = &rest[len..];
        Some(rec)
    })
}

/// `frames`' inverse.
pub fn frame(recs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![];
    for r in recs {
        let len = u16::try_from(r.len()).unwrap_or(u16::MAX);
        out.extend(len.to_le_bytes());
        out.extend(&r[..usize::from(len)]);
    }
    out
}

fn comm(s: &str) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    let n = s.len().min(COMM_LEN - 1);
    c[..n].copy_from_slice(&s.as_bytes()[..n]);
    c
}

fn header(kind: EventKind, cpu: u32, ts_ns: u64, pid: u32, name: &str) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        cpu,
        ts_ns,
        pid,
        tgid: pid,
        comm: comm(name),
    }
}

const T0: u64 = 5_000_000_000_000;
const MS: u64 = 1_000_000;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a);
    o
}

pub fn packet_icmp() -> PacketEvent {
    PacketEvent {
        header: header(EventKind::Packet, 11, T0 + 100 * MS, 76, "ksoftirqd/11"),
        saddr: v4([10, 0, 0, 1]),
        daddr: v4([10, 0, 0, 2]),
        family: 4,
        proto: PROTO_ICMP,
        icmp_type: 8,
        tcp_flags: 0,
        in_softirq: 1,
        hook: PacketHookKind::Tracepoint as u8,
        _pad0: [0; 2],
        ident: 7982,
        seq: 1953,
        tcp_seq: 0,
        rx_start_ns: T0 + 99 * MS,
        drain_start_ns: 0,
    }
}

pub fn packet_icmpv6() -> PacketEvent {
    let mut p = packet_icmp();
    p.family = 6;
    p.proto = PROTO_ICMPV6;
    p.icmp_type = 128;
    p.saddr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    p.daddr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    p.header.pid = 0;
    p.header.comm = comm("swapper/11");
    p.hook = PacketHookKind::Kprobe as u8;
    p
}

pub fn packet_syn() -> PacketEvent {
    let mut p = packet_icmp();
    p.proto = PROTO_TCP;
    p.icmp_type = 0;
    p.tcp_flags = TCP_SYN;
    p.ident = 40000;
    p.seq = 80;
    p.tcp_seq = 12345;
    p.in_softirq = 0;
    p.header.pid = 4242;
    p.header.comm = comm("curl");
    p
}

pub fn packet_synack() -> PacketEvent {
    let mut p = packet_syn();
    p.tcp_flags = TCP_SYN | TCP_ACK;
    p.rx_start_ns = 0;
    p
}

pub fn holder(pid: u32, name: &str, run_ns: u64, sys_nr: i64, sys_start_ns: u64) -> Holder {
    Holder {
        pid,
        tgid: pid,
        run_ns,
        cgroup_id: 4242,
        prio: 120,
        policy: 0,
        sys_nr,
        sys_arg0: 3,
        sys_start_ns,
        comm: comm(name),
    }
}

pub fn wait(kind: EventKind) -> WaitEvent {
    WaitEvent {
        header: header(kind, 11, T0 + 123 * MS, 76, "ksoftirqd/11"),
        wait_start_ns: T0 + 24 * MS,
        vec: if kind == EventKind::RxThreadWait {
            VEC_THREAD
        } else {
            NET_RX_SOFTIRQ
        },
        waker_pid: 0,
        waker_comm: [0; COMM_LEN],
        nr_switches: 2,
        nr_other_runs: 1,
        truncated: 0,
        _pad0: 0,
        run_ns: 150_000,
        drain_of_ns: 0,
        holders: [
            holder(10436, "cadvisor", 98 * MS, 0, T0 + 20 * MS),
            holder(181, "kworker/11:1", MS, -1, 0),
            holder(0, "", 0, -1, 0),
        ],
    }
}

pub fn syscall() -> SyscallEvent {
    SyscallEvent {
        header: header(EventKind::Syscall, 11, T0 + 122 * MS, 10436, "cadvisor"),
        nr: 0,
        arg0: 3,
        start_ns: T0 + 20 * MS,
        ret: 577,
        cgroup_id: 4242,
        cpu_ns: 98 * MS,
    }
}

/// A sample of the culprit inside read() of memory.stat, with stack ids as
/// `record --stacks` takes them (negative: none).
pub fn sample(ts_ns: u64, kstack_id: i32, ustack_id: i32) -> SampleEvent {
    let mut path = [0u8; SAMPLE_PATH_LEN];
    let p = b"/sys/fs/cgroup/memory/memory.stat";
    path[..p.len()].copy_from_slice(p);
    SampleEvent {
        header: header(EventKind::Sample, 11, ts_ns, 10436, "cadvisor"),
        wait_start_ns: T0 + 24 * MS,
        pending: PENDING_NET_RX | PENDING_RX_THREAD,
        mode: SampleMode::Syscall as u32,
        nr: 0,
        arg0: 3,
        kstack_id,
        ustack_id,
        path,
    }
}

/// Seeds: one record of each kind alone, and a stall as the kernel reports it
/// (samples, the culprit's syscall, both waits, the packets).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let stall = frame(&[
        encode(&sample(T0 + 30 * MS, 5, 9)),
        encode(&sample(T0 + 60 * MS, 5, -14)),
        encode(&sample(T0 + 90 * MS, -17, 9)),
        encode(&syscall()),
        encode(&wait(EventKind::RxThreadWait)),
        encode(&wait(EventKind::SoftirqWait)),
        encode(&packet_icmp()),
        encode(&packet_icmpv6()),
        encode(&packet_syn()),
        encode(&packet_synack()),
    ]);
    vec![
        ("packet", encode(&packet_icmp())),
        ("wait", encode(&wait(EventKind::SoftirqWait))),
        ("syscall", encode(&syscall())),
        ("sample", encode(&sample(T0 + 30 * MS, 5, 9))),
        ("stall-framed", stall),
    ]
}
