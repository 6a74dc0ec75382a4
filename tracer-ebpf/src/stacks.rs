//! `record --stacks`: a cpu-clock perf_event program that samples the task holding a
//! CPU, kernel and user stack, but only while an RX wait is pending on that CPU (a
//! NET_RX raise not yet run, or an RX thread woken to this CPU and not yet switched
//! in) and never the idle task. Outside waits a sample costs a few loads and returns.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    macros::{map, perf_event},
    maps::{Array, StackTrace},
    programs::{tracing::StackIdContext, PerfEventContext},
};
use tracer_common::{
    EventKind, StackEvent, COMM_LEN, MAX_CPUS, PENDING_NET_RX, PENDING_RX_THREAD, STACK_MAP_ENTRIES,
};

use crate::maps::{count_lost, cpu_state, lazy_wakeup, now, EVENTS};

/// Kernel and user stacks of the samples (ids in [`StackEvent`]). Sized by user space:
/// one entry unless `--stacks`.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Per target CPU: when an RX thread was woken to run there and has not switched in
/// yet (0 = none). Written by `sched_wakeup` on the waker's CPU, read by the sampler on
/// the target CPU, cleared by `sched_switch`: a plain array, because the wakeup and the
/// wait happen on different CPUs. A race only costs or saves one sample.
#[map]
pub static RX_PENDING: Array<u64> = Array::with_max_entries(MAX_CPUS, 0);

/// Marks an RX-thread wakeup pending on `cpu` (keeps the earliest).
#[inline(always)]
pub fn mark_rx_pending(cpu: u32, ts: u64) {
    if let Some(p) = RX_PENDING.get_ptr_mut(cpu) {
        // SAFETY: pointer into an array map slot, valid for this program run; racing
        // writers store whole u64s.
        unsafe {
            if *p == 0 {
                *p = ts;
            }
        }
    }
}

#[inline(always)]
pub fn clear_rx_pending(cpu: u32) {
    if let Some(p) = RX_PENDING.get_ptr_mut(cpu) {
        // SAFETY: as in mark_rx_pending.
        unsafe { *p = 0 };
    }
}

#[perf_event]
pub fn stack_sample(ctx: PerfEventContext) -> u32 {
    let pt = bpf_get_current_pid_tgid();
    let pid = pt as u32;
    if pid == 0 {
        return 0;
    }
    let Some(st) = cpu_state() else { return 0 };
    // SAFETY: helper with no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let netrx = st.netrx_raise_ns;
    let rxw = match RX_PENDING.get(cpu) {
        Some(v) => *v,
        None => 0,
    };
    if netrx == 0 && rxw == 0 {
        return 0;
    }
    let mut pending = 0;
    let mut start = u64::MAX;
    if netrx != 0 {
        pending |= PENDING_NET_RX;
        start = netrx;
    }
    if rxw != 0 {
        pending |= PENDING_RX_THREAD;
        if rxw < start {
            start = rxw;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<StackEvent>(0) else {
        count_lost(EventKind::StackSample as u32);
        return 0;
    };
    // SAFETY: reserved, exclusively owned slot; every field is written before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header.kind = EventKind::StackSample as u32;
    ev.header.cpu = cpu;
    ev.header.ts_ns = now();
    ev.header.pid = pid;
    ev.header.tgid = (pt >> 32) as u32;
    ev.header.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    ev.kstack_id = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(e) => e,
    };
    ev.ustack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(e) => e,
    };
    ev.wait_start_ns = start;
    ev.pending = pending;
    ev._pad0 = 0;
    entry.submit(lazy_wakeup());
    0
}
