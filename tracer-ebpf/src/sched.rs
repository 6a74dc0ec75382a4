//! Context switches (run history per CPU, RX-thread switch-in) and RX-thread wakeups.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{
    EventKind, Holder, WaitEvent, COMM_LEN, HIST_RX_THREAD, LOST_PARKED, LOST_RX_WAKE, MAX_HOLDERS,
    VEC_THREAD,
};

use crate::header::{fill_header, Subject};
use crate::maps::{
    clear_rx_pending, count_insert_failure, count_lost, cpu_state, current_policy, current_task,
    hist_add, is_kthread, kread, mark_rx_pending, now, rx_pending, unmark_rx_pending, CpuState,
    RxWake, CONFIG, EVENTS, OFFSETS, PARKED_SYSCALLS, RX_WAKE, SEGS, SEG_MASK, STALE_PENDING_NS,
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
fn is_rx_thread(task: *const u8) -> bool {
    if !is_kthread(task) {
        return false;
    }
    kread::<[u8; COMM_LEN]>(task, OFFSETS.load().task_comm).is_some_and(|c| is_rx_thread_name(&c))
}

/// An RX thread preempted while it still had work (`preempt` set: it stays runnable)
/// waits for the CPU from now until it switches back in, just like one woken to run.
/// Common on PREEMPT_RT, where bottom-half sections are preemptible and a napi thread
/// is preempted in the middle of a poll; elsewhere ksoftirqd's and napi threads'
/// `cond_resched` between rounds does the same. No wakeup follows, so without this the
/// wait would go unseen. The wait's "waker" is the task that preempted it.
#[inline(always)]
fn mark_preempted_rx_thread(prev: *const u8, next: *const u8, cpu: u32) {
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
    let w = RxWake {
        ts: now(),
        waker_pid: kread::<i32>(next, o.task_pid).unwrap_or(0) as u32,
        target_cpu: cpu,
        waker_comm: kread(next, o.task_comm).unwrap_or([0; COMM_LEN]),
        preempted: 1,
        _pad: 0,
    };
    // An entry of its own from a wakeup while it ran is replaced, its mark taken back.
    forget_wake(pid as u32);
    if RX_WAKE.insert(pid as u32, w, 0).is_err() {
        count_insert_failure(LOST_RX_WAKE);
        return;
    }
    mark_rx_pending(cpu, w.ts);
}

/// Removes an RX thread's pending wakeup, taking back its CPU's mark if still counted.
#[inline(always)]
fn forget_wake(pid: u32) {
    if let Some(old) = RX_WAKE.get_ptr(pid) {
        // SAFETY: pointer from a map lookup, valid for this program run.
        let target = unsafe { (*old).target_cpu };
        unmark_rx_pending(target, now());
        let _ = RX_WAKE.remove(pid);
    }
}

/// An RX thread going to sleep (a switch that is not a preemption): a wakeup recorded
/// while it was still running is moot, and the backlog it drained is cleared, so the
/// CPU's drain is over after its grace (another RX context still pending here, or a
/// raise that has not run, is fresh work: a wait for it is a stall of its own).
#[inline(always)]
fn rx_thread_sleeps(st: &mut CpuState) {
    forget_wake(bpf_get_current_pid_tgid() as u32);
    if st.drain_of != 0 {
        crate::drain::ran_out(st, now());
    }
}

/// The slot the next run goes into, and the length of the run there that it must
/// exceed to be kept (0: any run). The oldest slot, unless the history is full and the
/// oldest ended inside the pending wait (which began at `pending_since`): then a slot
/// that ended before the wait, else the shortest run. So a wait with more switches than
/// slots (threaded IRQs ping-ponging with the culprit on PREEMPT_RT) keeps its long
/// holders and drops its brief ones.
#[inline(always)]
fn slot_for_run(st: &CpuState, pending_since: u64) -> (usize, u64) {
    let head = (st.head & SEG_MASK) as usize & (SEGS - 1);
    if st.written < SEGS as u64 || st.segs[head].end <= pending_since {
        return (head, 0);
    }
    let mut pick = head;
    let mut pick_len = st.segs[head].end.saturating_sub(st.segs[head].start);
    let mut k = 0;
    while k < SEGS {
        let seg = &st.segs[k];
        if seg.end <= pending_since {
            return (k, 0);
        }
        let len = seg.end.saturating_sub(seg.start);
        if len < pick_len {
            pick = k;
            pick_len = len;
        }
        k += 1;
    }
    (pick, pick_len)
}

/// Records prev's run in this CPU's history (it is `current` here).
#[inline(always)]
fn record_run(st: &mut CpuState, prev: *const u8, ts: u64, pending_since: u64) {
    let o = OFFSETS.load();
    let pt = bpf_get_current_pid_tgid();
    let prev_pid = pt as u32;
    let (idx, must_exceed) = slot_for_run(st, pending_since);
    // A run briefer than every one kept inside the wait is the one dropped.
    if must_exceed != 0 && ts.saturating_sub(st.cur_since) <= must_exceed {
        st.written = st.written.wrapping_add(1);
        st.last_drop_end = ts;
        return;
    }
    let oldest = idx == (st.head & SEG_MASK) as usize;
    if must_exceed != 0 {
        st.last_drop_end = st.segs[idx & (SEGS - 1)].end;
    }
    let seg = &mut st.segs[idx & (SEGS - 1)];
    seg.start = st.cur_since;
    seg.end = ts;
    seg.pid = prev_pid;
    seg.tgid = (pt >> 32) as u32;
    seg.prio = kread::<i32>(prev, o.task_prio).unwrap_or(0) as u32;
    // SAFETY: helper with no arguments.
    seg.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    seg.policy = current_policy();
    seg.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    if st.sys.valid != 0 && st.sys.pid == prev_pid {
        seg.sys_nr = st.sys.nr;
        seg.sys_arg0 = st.sys.arg0;
        seg.sys_start = st.sys.start;
    } else {
        seg.sys_nr = -1;
        seg.sys_arg0 = 0;
        seg.sys_start = 0;
    }
    if oldest {
        st.head = st.head.wrapping_add(1) & SEG_MASK;
    }
    st.written = st.written.wrapping_add(1);
}

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
    // Only preemptions read prev: most switches are tasks going to sleep.
    let preempt: u64 = ctx.arg(0);
    if preempt & 0xff != 0 {
        mark_preempted_rx_thread(ctx.arg(1), ctx.arg(2), cpu);
    } else if (st.drain_of != 0 || rx_pending(cpu) != 0) && is_rx_thread(ctx.arg(1)) {
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

/// Adds `run` ns of the task in `src` to the holders, keeping the longest three.
/// Returns false when the run was not kept, or displaced another task's run.
#[inline(always)]
fn add_holder(h: &mut [Holder; MAX_HOLDERS], src: &Holder, run: u64) -> bool {
    let mut i = 0;
    while i < MAX_HOLDERS {
        if h[i].run_ns != 0 && h[i].pid == src.pid {
            h[i].run_ns += run;
            // A later run carries the newer syscall state.
            h[i].sys_nr = src.sys_nr;
            h[i].sys_arg0 = src.sys_arg0;
            h[i].sys_start_ns = src.sys_start_ns;
            return true;
        }
        i += 1;
    }
    // Replace the empty or the smallest slot if this run is longer.
    let mut min = 0;
    let mut j = 1;
    while j < MAX_HOLDERS {
        if h[j].run_ns < h[min].run_ns {
            min = j;
        }
        j += 1;
    }
    if run > h[min].run_ns {
        let displaced = h[min].run_ns != 0;
        h[min] = *src;
        h[min].run_ns = run;
        return !displaced;
    }
    false
}

/// A wait to report: what waited, from when to when, and who made it wait.
pub struct WaitSpec {
    pub kind: EventKind,
    /// Softirq vector, or [`VEC_THREAD`].
    pub vec: u32,
    /// Raise or wakeup, and when the RX work started (boot ns).
    pub start: u64,
    pub end: u64,
    /// How long the RX work then ran (softirq waits).
    pub run_ns: u64,
    /// The context that ran the RX work.
    pub who: Subject,
    /// Who raised the softirq or woke the thread.
    pub waker_pid: u32,
    pub waker_comm: [u8; COMM_LEN],
    /// Count the task running now as a holder (softirq waits, reported at exit).
    pub include_current: bool,
}

/// Writes a wait record: the RX context in the header, and the tasks that held this
/// CPU between `start` and `end` from the run history (plus, for softirq waits, the
/// task still running now). The wait joins this CPU's backlog drain, or opens one
/// ([`crate::drain`]).
#[inline(always)]
pub fn emit_wait(st: &mut CpuState, w: &WaitSpec) {
    let drain_of = crate::drain::join(st, w.start, w.end);
    let (kind, start, end) = (w.kind, w.start, w.end);
    let Some(mut entry) = EVENTS.reserve::<WaitEvent>(0) else {
        count_lost(kind as u32);
        return;
    };
    // SAFETY: `entry` is a reserved, exclusively owned ring-buffer slot of the right
    // size; every field is written below before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, kind, end, w.who);
    ev.wait_start_ns = start;
    ev.vec = w.vec;
    ev.waker_pid = w.waker_pid;
    ev.waker_comm = w.waker_comm;
    ev.nr_switches = 0;
    ev.nr_other_runs = 0;
    ev._pad0 = 0;
    ev.run_ns = w.run_ns;
    ev.drain_of_ns = drain_of;
    let mut i = 0;
    while i < MAX_HOLDERS {
        ev.holders[i] = EMPTY_HOLDER;
        i += 1;
    }
    let mut oldest_in_window = false;
    let mut k = 0;
    while k < SEGS {
        let seg = &st.segs[k];
        if seg.end > start && seg.end <= end && st.written > k as u64 {
            ev.nr_switches += 1;
            // A run whose start was not seen (the first switch on this CPU after
            // attach) counts as a switch but not as time held.
            if seg.pid != 0 && seg.start != 0 {
                let from = if seg.start > start { seg.start } else { start };
                let run = seg.end - from;
                let h = Holder {
                    pid: seg.pid,
                    tgid: seg.tgid,
                    run_ns: run,
                    cgroup_id: seg.cgroup_id,
                    prio: seg.prio,
                    policy: seg.policy,
                    sys_nr: seg.sys_nr,
                    sys_arg0: seg.sys_arg0,
                    sys_start_ns: seg.sys_start,
                    comm: seg.comm,
                };
                if !add_holder(&mut ev.holders, &h, run) {
                    ev.nr_other_runs += 1;
                }
            }
            if seg.start != 0 && seg.start <= start {
                oldest_in_window = true;
            }
        }
        k += 1;
    }
    // The window reaches back past the history when every slot is inside it and none
    // started before the wait, or a run inside it was left out of the full history.
    ev.truncated =
        ((ev.nr_switches as usize >= SEGS && !oldest_in_window) || st.last_drop_end > start) as u32;
    let pt = bpf_get_current_pid_tgid();
    if w.include_current && st.cur_since != 0 && pt as u32 != 0 {
        let from = if st.cur_since > start {
            st.cur_since
        } else {
            start
        };
        if end > from {
            let (nr, arg0, sstart) = if st.sys.valid != 0 && st.sys.pid == pt as u32 {
                (st.sys.nr, st.sys.arg0, st.sys.start)
            } else {
                (-1, 0, 0)
            };
            let h = Holder {
                pid: pt as u32,
                tgid: (pt >> 32) as u32,
                run_ns: end - from,
                // SAFETY: helper with no arguments.
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                prio: kread::<i32>(current_task(), OFFSETS.load().task_prio).unwrap_or(0) as u32,
                policy: current_policy(),
                sys_nr: nr,
                sys_arg0: arg0,
                sys_start_ns: sstart,
                comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
            };
            if !add_holder(&mut ev.holders, &h, end - from) {
                ev.nr_other_runs += 1;
            }
        }
    }
    sort_holders(&mut ev.holders);
    entry.submit(0);
}

#[inline(always)]
fn sort_holders(h: &mut [Holder; MAX_HOLDERS]) {
    if h[1].run_ns > h[0].run_ns {
        h.swap(0, 1);
    }
    if h[2].run_ns > h[1].run_ns {
        h.swap(1, 2);
    }
    if h[1].run_ns > h[0].run_ns {
        h.swap(0, 1);
    }
}

const EMPTY_HOLDER: Holder = Holder {
    pid: 0,
    tgid: 0,
    run_ns: 0,
    cgroup_id: 0,
    prio: 0,
    policy: u32::MAX,
    sys_nr: -1,
    sys_arg0: 0,
    sys_start_ns: 0,
    comm: [0; COMM_LEN],
};
