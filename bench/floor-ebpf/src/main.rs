//! The floor: one empty program on each hook stalltrace attaches, of the same program
//! type (raw tracepoints, a kprobe, a cpu-clock perf event). Each returns at once, so
//! what the bench measures on them is the kernel's cost of running any program there
//! (the hook's dispatch, the BPF trampoline, bpf_stats' own clock reads) and nothing
//! of stalltrace's. Named after their hooks, as stalltrace's programs are, so the bench
//! compares them by name.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{kprobe, perf_event, raw_tracepoint},
    programs::{PerfEventContext, ProbeContext, RawTracePointContext},
};

#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn netif_receive_skb(_ctx: RawTracePointContext) -> i32 {
    0
}

#[kprobe]
pub fn icmp_echo(_ctx: ProbeContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "softirq_raise")]
pub fn softirq_raise(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn softirq_entry(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn softirq_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[perf_event]
pub fn cpu_clock(_ctx: PerfEventContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
