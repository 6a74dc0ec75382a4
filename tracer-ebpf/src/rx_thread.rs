//! RX threads (ksoftirqd/N, napi/…, backlog_napi/N): which tasks they are, their
//! wakeups and preemptions (the start of a wait for the CPU), and their sleep.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{COMM_LEN, LOST_RX_WAKE};

use crate::maps::{
    count_insert_failure, is_kthread, kread, mark_rx_pending, now, rx_pending, unmark_rx_pending,
    CpuState, RxWake, OFFSETS, RX_WAKE,
};

/// ksoftirqd/N, napi/<dev>-<id> (threaded NAPI), backlog_napi/N: the names of the
/// kernel threads that do receive work (checked together with the kthread flag).
#[inline(always)]
pub fn is_rx_thread_name(c: &[u8; COMM_LEN]) -> bool {
    (c[0] == b'k' && c[1] == b's' && c[2] == b'o' && c[3] == b'f' && c[8] == b'd' && c[9] == b'/')
        || (c[0] == b'n' && c[1] == b'a' && c[2] == b'p' && c[3] == b'i' && c[4] == b'/')
        || (c[0] == b'b'
            && c[1] == b'a'
            && c[2] == b'c'
            && c[3] == b'k'
            && c[7] == b'_'
            && c[8] == b'n')
}

/// TP_PROTO(struct task_struct *p). Most wakeups are of user tasks: one read of the
/// task's flags and out.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    let p: *const u8 = ctx.arg(0);
    if !is_kthread(p) {
        return 0;
    }
    let o = OFFSETS.load();
    let Some(comm) = kread::<[u8; COMM_LEN]>(p, o.task_comm) else {
        return 0;
    };
    if !is_rx_thread_name(&comm) {
        return 0;
    }
    // A thread still on a CPU may be in the middle of switching out to sleep: woken now,
    // it waits runnable from here. If it was running instead and goes on, its entry goes
    // when it next sleeps (rx_thread_sleeps).
    let Some(pid) = kread::<i32>(p, o.task_pid) else {
        return 0;
    };
    let pid = pid as u32;
    // Keep the earliest pending wakeup (the wait runs from it), unless the mark on its
    // CPU is gone: then that wakeup's run was never seen (it ran elsewhere) and it is
    // stale.
    if let Some(old) = RX_WAKE.get_ptr(pid) {
        // SAFETY: pointer from a map lookup, valid for this program run.
        if rx_pending(unsafe { (*old).target_cpu }) != 0 {
            return 0;
        }
    }
    let w = RxWake {
        ts: now(),
        waker_pid: bpf_get_current_pid_tgid() as u32,
        target_cpu: kread(p, o.task_cpu).unwrap_or(u32::MAX),
        waker_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        preempted: 0,
        _pad: 0,
    };
    if RX_WAKE.insert(pid, w, 0).is_err() {
        count_insert_failure(LOST_RX_WAKE);
        return 0;
    }
    // The wait happens on the target CPU: tell its scheduler hook and sampler.
    mark_rx_pending(w.target_cpu, w.ts);
    0
}

/// Whether `task` is an RX thread: a kernel thread with an RX thread's name.
#[inline(always)]
pub fn is_rx_thread(task: *const u8) -> bool {
    if !is_kthread(task) {
        return false;
    }
    kread::<[u8; COMM_LEN]>(task, OFFSETS.load().task_comm).is_some_and(|c| is_rx_thread_name(&c))
}

/// An RX thread switched out while still runnable waits for the CPU from now until it
/// switches back in, just like one woken to run; no wakeup follows, so without this the
/// wait would go unseen. Preempted (`preempt` set): on PREEMPT_RT a napi thread in the
/// middle of a poll, elsewhere at `cond_resched` between rounds. Or switched out by
/// `schedule()` while still `TASK_RUNNING` (`preempt` clear: seen on 6.1 as a real-time
/// task came back from throttling; `replace` false): then a wakeup already pending (it
/// was woken as it went to sleep) is kept, the wait runs from it. The wait's "waker" is
/// the task that took the CPU.
#[inline(always)]
pub fn mark_runnable_rx_thread(prev: *const u8, next: *const u8, cpu: u32, replace: bool) {
    if !is_kthread(prev) {
        return;
    }
    let o = OFFSETS.load();
    let Some(comm) = kread::<[u8; COMM_LEN]>(prev, o.task_comm) else {
        return;
    };
    if !is_rx_thread_name(&comm) {
        return;
    }
    let Some(pid) = kread::<i32>(prev, o.task_pid) else {
        return;
    };
    let pid = pid as u32;
    if !replace && RX_WAKE.get_ptr(pid).is_some() {
        return;
    }
    let w = RxWake {
        ts: now(),
        waker_pid: kread::<i32>(next, o.task_pid).unwrap_or(0) as u32,
        target_cpu: cpu,
        waker_comm: kread(next, o.task_comm).unwrap_or([0; COMM_LEN]),
        preempted: 1,
        _pad: 0,
    };
    // An entry of its own from a wakeup while it ran is replaced, its mark taken back.
    forget_wake(pid);
    if RX_WAKE.insert(pid, w, 0).is_err() {
        count_insert_failure(LOST_RX_WAKE);
        return;
    }
    mark_rx_pending(cpu, w.ts);
}

/// Removes an RX thread's pending wakeup, taking back its CPU's mark if still counted.
#[inline(always)]
pub fn forget_wake(pid: u32) {
    if let Some(old) = RX_WAKE.get_ptr(pid) {
        // SAFETY: pointer from a map lookup, valid for this program run.
        let target = unsafe { (*old).target_cpu };
        unmark_rx_pending(target, now());
        let _ = RX_WAKE.remove(pid);
    }
}

/// Whether `task`, switching out without being preempted, is still `TASK_RUNNING`: it
/// stays on the run queue, waiting for the CPU rather than sleeping. Unknown state:
/// sleeping.
#[inline(always)]
pub fn still_runnable(task: *const u8) -> bool {
    kread::<u32>(task, OFFSETS.load().task_state).is_some_and(|s| s == 0)
}

/// An RX thread going to sleep (a switch that is not a preemption): a wakeup recorded
/// while it was still running is moot, and the backlog it drained is cleared, so the
/// CPU's drain is over after its grace (another RX context still pending here, or a
/// raise that has not run, is fresh work: a wait for it is a stall of its own).
#[inline(always)]
pub fn rx_thread_sleeps(st: &mut CpuState) {
    forget_wake(bpf_get_current_pid_tgid() as u32);
    if st.drain_of != 0 {
        crate::drain::ran_out(st, now());
    }
}
