//! NET_RX softirq raise→entry waits, and whether a NET_RX run is in progress (which
//! tells the packet hook it runs in softirq context).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use tracer_common::{
    EventKind, COMM_LEN, HIST_NET_RX, HIST_NET_TX, HIST_TIMER, NET_RX_SOFTIRQ, NET_TX_SOFTIRQ,
    TIMER_SOFTIRQ,
};

use crate::{
    header::Subject,
    maps::{cpu_state, hist_add, now, rx_pending, CONFIG},
    wait::{emit_wait, WaitSpec},
};

/// The softirq vector: the tracepoints' only argument.
#[inline(always)]
fn vec(ctx: &RawTracePointContext) -> u32 {
    ctx.arg::<u64>(0) as u32
}

#[raw_tracepoint(tracepoint = "softirq_raise")]
pub fn softirq_raise(ctx: RawTracePointContext) -> i32 {
    let v = vec(&ctx);
    if v != NET_RX_SOFTIRQ && v != NET_TX_SOFTIRQ && v != TIMER_SOFTIRQ {
        return 0;
    }
    let Some(st) = cpu_state() else { return 0 };
    // Only the first raise since the last entry starts a wait.
    if v == NET_TX_SOFTIRQ {
        if st.nettx_raise_ns == 0 {
            st.nettx_raise_ns = now();
        }
    } else if v == TIMER_SOFTIRQ {
        if st.timer_raise_ns == 0 {
            st.timer_raise_ns = now();
        }
    } else if st.netrx_raise_ns == 0 {
        // Only the pid: this runs for every raise, and user space names the raiser
        // from /proc when a wait is reported.
        st.netrx_raise_ns = now();
        st.netrx_raiser_pid = bpf_get_current_pid_tgid() as u32;
    }
    0
}

/// Histogram of a context vector's raise→entry delay; clears its pending raise.
#[inline(always)]
fn context_entry(pending: &mut u64, slot: u32) {
    let raised = *pending;
    *pending = 0;
    let ts = now();
    if raised != 0 && ts > raised {
        hist_add(slot, ts - raised);
    }
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn softirq_entry(ctx: RawTracePointContext) -> i32 {
    let v = vec(&ctx);
    if v != NET_RX_SOFTIRQ {
        if v == NET_TX_SOFTIRQ || v == TIMER_SOFTIRQ {
            if let Some(st) = cpu_state() {
                if v == NET_TX_SOFTIRQ {
                    context_entry(&mut st.nettx_raise_ns, HIST_NET_TX);
                } else {
                    context_entry(&mut st.timer_raise_ns, HIST_TIMER);
                }
            }
        }
        return 0;
    }
    let Some(st) = cpu_state() else { return 0 };
    let ts = now();
    st.netrx_entry_ns = ts;
    st.netrx_entry_since = st.cur_since;
    let raised = st.netrx_raise_ns;
    st.netrx_raise_ns = 0;
    if raised == 0 || ts <= raised {
        return 0;
    }
    let wait = ts - raised;
    hist_add(HIST_NET_RX, wait);
    if wait >= CONFIG.load().wait_threshold_ns {
        // Reported at exit, with the run time. Elsewhere no context switch happens in
        // between; on PREEMPT_RT one can, and emit_wait only takes runs that ended by
        // entry, with the current task's start saved here.
        st.netrx_wait_raised = raised;
    }
    0
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn softirq_exit(ctx: RawTracePointContext) -> i32 {
    if vec(&ctx) != NET_RX_SOFTIRQ {
        return 0;
    }
    let Some(st) = cpu_state() else { return 0 };
    let entry = st.netrx_entry_ns;
    let raised = st.netrx_wait_raised;
    st.netrx_entry_ns = 0;
    st.netrx_wait_raised = 0;
    if raised != 0 && entry > raised {
        let pt = bpf_get_current_pid_tgid();
        // The holders are as of entry (the wait's end): the current task's run start
        // as it was then, whatever switches a preemptible softirq (PREEMPT_RT) saw since.
        let since_now = st.cur_since;
        st.cur_since = st.netrx_entry_since;
        let spec = WaitSpec {
            kind: EventKind::SoftirqWait,
            vec: NET_RX_SOFTIRQ,
            start: raised,
            end: entry,
            run_ns: now().saturating_sub(entry),
            who: Subject::current(pt),
            waker_pid: st.netrx_raiser_pid,
            waker_comm: [0; COMM_LEN],
            include_current: true,
        };
        emit_wait(st, &spec);
        st.cur_since = since_now;
    }
    // NET_RX re-raises itself while work is left: none raised and no RX thread pending
    // means this CPU's RX work ran out.
    if st.drain_of != 0 && st.netrx_raise_ns == 0 {
        // SAFETY: helper with no arguments.
        let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
        if rx_pending(cpu) == 0 {
            crate::drain::ran_out(st, now());
        }
    }
    0
}
