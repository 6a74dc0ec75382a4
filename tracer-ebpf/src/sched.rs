//! Context switches: the run that ends goes into the CPU's history, an RX thread
//! switching in closes its wait, and syscalls in flight are parked and taken back.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{EventKind, COMM_LEN, HIST_RX_THREAD, LOST_PARKED, VEC_THREAD};

use crate::{
    header::Subject,
    history::record_run,
    maps::{
        clear_rx_pending, count_insert_failure, cpu_state, hist_add, is_kthread, kread, now,
        rx_pending, unmark_rx_pending, CpuState, CONFIG, OFFSETS, PARKED_SYSCALLS, RX_WAKE,
        STALE_PENDING_NS,
    },
    rx_thread::{is_rx_thread, mark_runnable_rx_thread, rx_thread_sleeps, still_runnable},
    wait::{emit_wait, WaitSpec},
};

/// `--syscalls`: a thread leaving its CPU inside a syscall is parked until it runs
/// again (wherever that is); the next one takes its parked syscall back.
#[inline(always)]
fn park_syscalls(st: &mut CpuState, next_pid: u32, ts: u64) {
    let prev_pid = bpf_get_current_pid_tgid() as u32;
    if st.sys.valid != 0 && st.sys.pid == prev_pid {
        let mut parked = st.sys;
        parked.parked_at = ts;
        if PARKED_SYSCALLS.insert(prev_pid, parked, 0).is_err() {
            count_insert_failure(LOST_PARKED);
        }
    }
    st.sys.valid = 0;
    if let Some(p) = PARKED_SYSCALLS.get_ptr(next_pid) {
        // SAFETY: pointer from a map lookup, valid for this program run.
        let mut sys = unsafe { *p };
        let _ = PARKED_SYSCALLS.remove(next_pid);
        sys.off_cpu += ts.saturating_sub(sys.parked_at);
        st.sys = sys;
    }
}

/// `CpuState::cur_since` when the task now on the CPU was switched in while no wait was
/// pending: its start does not matter (a wait that begins during its run starts the
/// window), so that switch reads no clock.
const SINCE_BEFORE_WAIT: u64 = 1;

/// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...).
/// While no RX wait is pending on this CPU (nearly always), a switch costs two loads
/// and a store (a preemption a few more: is prev an RX thread?). While one is pending: the run that ends goes into the history, and an
/// RX thread switching in closes its wait.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let Some(st) = cpu_state() else { return 0 };
    // SAFETY: helper with no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Only preemptions read prev, and the switch-out of the RX thread whose run this
    // CPU last saw begin: a read of every prev would double the hook's cost, and most
    // switches are tasks going to sleep.
    let preempt: u64 = ctx.arg(0);
    let prev_task: u64 = ctx.arg(1);
    if preempt & 0xff != 0 {
        mark_runnable_rx_thread(ctx.arg(1), ctx.arg(2), cpu, true);
    } else if prev_task != 0 && prev_task == st.rx_run_task && still_runnable(ctx.arg(1)) {
        mark_runnable_rx_thread(ctx.arg(1), ctx.arg(2), cpu, false);
    } else if (st.drain_of != 0 || rx_pending(cpu) != 0)
        && is_rx_thread(ctx.arg(1))
        && !still_runnable(ctx.arg(1))
    {
        rx_thread_sleeps(st);
    }
    let rx_marked = rx_pending(cpu);
    let pending = st.netrx_raise_ns != 0 || rx_marked != 0;
    let syscalls = CONFIG.load().track_syscalls != 0;
    if !pending && !syscalls {
        st.cur_since = SINCE_BEFORE_WAIT;
        return 0;
    }
    let ts = now();
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    if rx_marked != 0 && ts.saturating_sub(rx_marked) > STALE_PENDING_NS {
        clear_rx_pending(cpu);
    }
    if pending && st.cur_since != 0 {
        // The pending wait began at the earlier of the NET_RX raise and the RX-thread
        // mark (either may be 0: none).
        let since = match (st.netrx_raise_ns, rx_marked) {
            (0, m) => m,
            (r, 0) => r,
            (r, m) => r.min(m),
        };
        record_run(st, prev, ts, since);
    }
    let next_kthread = pending && is_kthread(next);
    let next_pid = if syscalls || next_kthread {
        kread::<i32>(next, OFFSETS.load().task_pid).unwrap_or(0) as u32
    } else {
        0
    };
    if syscalls {
        park_syscalls(st, next_pid, ts);
    }
    st.cur_since = ts;
    if !next_kthread {
        return 0;
    }
    // An RX thread switching in: close its wakeup wait.
    let Some(w) = RX_WAKE.get_ptr(next_pid) else {
        return 0;
    };
    // SAFETY: pointer from a map lookup, valid for this program run.
    let w = unsafe { *w };
    let _ = RX_WAKE.remove(next_pid);
    let threshold = CONFIG.load().wait_threshold_ns;
    // A brief preemption does not end the run: the packets the thread goes on with
    // still belong to the wait that started it (a starved ksoftirqd draining a backlog
    // with budget 1 is preempted at its cond_resched between rounds). A woken thread,
    // or one preempted for a reported wait, starts a run.
    let continues = w.preempted != 0
        && st.rx_run_pid == next_pid
        && st.rx_run_start != 0
        && ts.saturating_sub(w.ts) < threshold;
    if !continues {
        st.rx_run_pid = next_pid;
        st.rx_run_start = ts;
        st.rx_run_task = next as u64;
    }
    // This thread's wait is over: its mark goes from the CPU it was counted on (where
    // the wakeup aimed, if it migrated since).
    unmark_rx_pending(w.target_cpu, ts);
    if ts > w.ts {
        let wait = ts - w.ts;
        hist_add(HIST_RX_THREAD, wait);
        if wait >= threshold {
            let next_comm = kread(next, OFFSETS.load().task_comm).unwrap_or([0; COMM_LEN]);
            emit_wait(
                st,
                &WaitSpec {
                    kind: EventKind::RxThreadWait,
                    vec: VEC_THREAD,
                    start: w.ts,
                    end: ts,
                    run_ns: 0,
                    who: Subject {
                        pid: next_pid,
                        tgid: next_pid,
                        comm: next_comm,
                    },
                    waker_pid: w.waker_pid,
                    waker_comm: w.waker_comm,
                    include_current: false,
                },
            );
        }
    }
    0
}
