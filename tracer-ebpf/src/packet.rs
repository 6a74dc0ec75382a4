//! Probe packets on arrival: `tracepoint:net:netif_receive_skb` (every kernel; sees
//! echo requests and replies, IPv4 and IPv6, TCP) and `kprobe:icmp_echo` (the 2019 GitHub incident's
//! hook; IPv4 echo requests only). Unrelated packets cost a few reads and no record.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::{kprobe, raw_tracepoint},
    programs::{ProbeContext, RawTracePointContext},
};
use tracer_common::{
    EventKind, Filter, PacketEvent, PacketHookKind, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, TCP_RST,
    TCP_SYN,
};

use crate::header::{fill_header, Subject};
use crate::maps::{
    count_lost, cpu_state, current_task, is_kthread, kread, lazy_wakeup, now, EVENTS, FILTER,
    OFFSETS, PACKET_SCRATCH,
};
use crate::rx_thread::is_rx_thread_name;

#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: RawTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    // At netif_receive_skb, skb->data points at the network header.
    let Some(data) = kread::<u64>(skb, OFFSETS.load().skb_data) else {
        return 0;
    };
    handle(
        data as *const u8,
        core::ptr::null(),
        PacketHookKind::Tracepoint,
    );
    0
}

#[kprobe]
pub fn icmp_echo(ctx: ProbeContext) -> u32 {
    let Some(skb) = ctx.arg::<*const u8>(0) else {
        return 0;
    };
    let o = OFFSETS.load();
    // SAFETY: reads of skb fields at BTF offsets through bpf_probe_read_kernel, which
    // fails safely.
    let (head, nh, th) = unsafe {
        let head: u64 = match bpf_probe_read_kernel(skb.add(o.skb_head as usize) as *const u64) {
            Ok(h) => h,
            Err(_) => return 0,
        };
        let nh: u16 = bpf_probe_read_kernel(skb.add(o.skb_network_header as usize) as *const u16)
            .unwrap_or(0xffff);
        let th: u16 = bpf_probe_read_kernel(skb.add(o.skb_transport_header as usize) as *const u16)
            .unwrap_or(0xffff);
        (head, nh, th)
    };
    if nh == 0xffff || th == 0xffff {
        return 0;
    }
    let head = head as *const u8;
    // SAFETY: pointer arithmetic only; the result is read through bpf_probe_read_kernel.
    let (l3, l4) = unsafe { (head.add(nh as usize), head.add(th as usize)) };
    handle(l3, l4, PacketHookKind::Kprobe);
    0
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    ((b0 as u16) << 8) | b1 as u16
}

/// Source or destination equals the filter's peer. Branch-free over two u64 words:
/// a byte loop with early outs multiplies verifier states past its limit.
#[inline(always)]
fn peer_ok(f: &Filter, s: &[u8; 16], d: &[u8; 16], v4: bool) -> bool {
    if f.peer_family == 0 {
        return true;
    }
    let w = |a: &[u8; 16]| {
        (
            u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        )
    };
    let (p0, p1) = w(&f.peer);
    let (s0, s1) = w(s);
    let (d0, d1) = w(d);
    // IPv4 lives in the first 4 bytes (the low half of word 0 on little endian).
    let (m0, m1) = if v4 {
        (u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), 0)
    } else {
        (u64::MAX, u64::MAX)
    };
    let ds = ((s0 ^ p0) & m0) | ((s1 ^ p1) & m1);
    let dd = ((d0 ^ p0) & m0) | ((d1 ^ p1) & m1);
    ds == 0 || dd == 0
}

/// Parses IP and ICMP/TCP at `l3` (and `l4` when the hook knows it), applies the filter
/// as early as each header allows, and emits a record for probe traffic. Every packet
/// pays one read of `skb->data` and one of the IP header; only candidates read L4.
#[inline(always)]
fn handle(l3: *const u8, l4_known: *const u8, hook: PacketHookKind) {
    let f = FILTER.load();
    // IPv4 header, or the first 20 bytes of an IPv6 one.
    let mut ip = [0u8; 20];
    // SAFETY: all packet reads go through bpf_probe_read_kernel, which fails safely.
    if unsafe { bpf_probe_read_kernel_buf(l3, &mut ip) }.is_err() {
        return;
    }
    let v4 = ip[0] >> 4 == 4;
    let proto = match ip[0] >> 4 {
        4 => ip[9],
        6 => ip[6],
        _ => return,
    };
    let wanted = if proto == PROTO_ICMP || proto == PROTO_ICMPV6 {
        f.icmp != 0
    } else {
        proto == PROTO_TCP && f.tcp_port_set != 0
    };
    if !wanted {
        return;
    }
    // IPv4: the peer filter from the header already read, before anything else.
    if v4 && f.peer_family != 0 {
        // Whole words, not a byte loop: fewer branches for the verifier to explore.
        let peer = u32::from_ne_bytes([f.peer[0], f.peer[1], f.peer[2], f.peer[3]]);
        let src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        if f.peer_family != 4 || (src != peer && dst != peer) {
            return;
        }
    }
    // Addresses go straight into this CPU's scratch record (a map value, not stack: the
    // BPF stack is 512 bytes for all calls, and 6.1's verifier counts it strictly).
    let Some(ev) = PACKET_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, not shared with a concurrent run.
    let ev = unsafe { &mut *ev };
    let l4;
    if v4 {
        // Later fragments carry no L4 header.
        if (be16(ip[6], ip[7]) & 0x1fff) != 0 {
            return;
        }
        ev.saddr = [0; 16];
        ev.daddr = [0; 16];
        ev.saddr[..4].copy_from_slice(&ip[12..16]);
        ev.daddr[..4].copy_from_slice(&ip[16..20]);
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return;
        }
        l4 = if l4_known.is_null() {
            // SAFETY: pointer arithmetic only; reads go through bpf_probe_read_kernel.
            unsafe { l3.add(ihl) }
        } else {
            l4_known
        };
    } else {
        // SAFETY: as above.
        unsafe {
            if bpf_probe_read_kernel_buf(l3.add(8), &mut ev.saddr).is_err()
                || bpf_probe_read_kernel_buf(l3.add(24), &mut ev.daddr).is_err()
            {
                return;
            }
        }
        l4 = if l4_known.is_null() {
            // SAFETY: pointer arithmetic only, as above.
            unsafe { l3.add(40) }
        } else {
            l4_known
        };
    }
    if !v4 && !peer_ok(&f, &ev.saddr, &ev.daddr, false) {
        return;
    }
    let (icmp_type, tcp_flags, ident, seq, tcp_seq);
    if proto == PROTO_ICMP || proto == PROTO_ICMPV6 {
        let mut h = [0u8; 8];
        // SAFETY: as above.
        if unsafe { bpf_probe_read_kernel_buf(l4, &mut h) }.is_err() {
            return;
        }
        let echo = if proto == PROTO_ICMP {
            h[0] == 8 || h[0] == 0
        } else {
            h[0] == 128 || h[0] == 129
        };
        if !echo {
            return;
        }
        let id = be16(h[4], h[5]);
        if f.icmp_id_set != 0 && id != f.icmp_id && id != f.icmp_id.swap_bytes() {
            return;
        }
        icmp_type = h[0];
        tcp_flags = 0;
        ident = id;
        seq = be16(h[6], h[7]);
        tcp_seq = 0;
    } else {
        let mut h = [0u8; 14];
        // SAFETY: as above.
        if unsafe { bpf_probe_read_kernel_buf(l4, &mut h) }.is_err() {
            return;
        }
        let sport = be16(h[0], h[1]);
        let dport = be16(h[2], h[3]);
        if (sport != f.tcp_port && dport != f.tcp_port) || h[13] & (TCP_SYN | TCP_RST) == 0 {
            return;
        }
        icmp_type = 0;
        tcp_flags = h[13];
        ident = sport;
        seq = dport;
        tcp_seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    }

    ev.family = if v4 { 4 } else { 6 };
    ev.proto = proto;
    ev.icmp_type = icmp_type;
    ev.tcp_flags = tcp_flags;
    ev.ident = ident;
    ev.seq = seq;
    ev.tcp_seq = tcp_seq;
    let pt = bpf_get_current_pid_tgid();
    fill_header(
        &mut ev.header,
        EventKind::Packet,
        now(),
        Subject::current(pt),
    );
    ev.hook = hook as u8;
    ev._pad0 = [0; 2];
    // The RX run a packet belongs to: for an RX thread (ksoftirqd, napi/…), its run since
    // it was switched in, however many softirq rounds it goes through (a starved
    // ksoftirqd drains a backlog over many); otherwise the NET_RX softirq running now, or
    // the current task's run.
    let rx_thread = is_rx_thread_name(&ev.header.comm) && is_kthread(current_task());
    let (in_softirq, rx_start, drain) = match cpu_state() {
        Some(st) => {
            let soft = st.netrx_entry_ns != 0;
            let start = if rx_thread && st.rx_run_pid == ev.header.pid && st.rx_run_start != 0 {
                st.rx_run_start
            } else if (rx_thread || !soft) && st.cur_since != 0 {
                st.cur_since
            } else {
                st.netrx_entry_ns
            };
            (
                u8::from(soft),
                start,
                crate::drain::of_packet(st, ev.header.ts_ns),
            )
        }
        None => (0, 0, 0),
    };
    ev.in_softirq = in_softirq;
    ev.rx_start_ns = rx_start;
    ev.drain_start_ns = drain;
    if EVENTS.output::<PacketEvent>(&*ev, lazy_wakeup()).is_err() {
        count_lost(EventKind::Packet as u32);
    }
}
