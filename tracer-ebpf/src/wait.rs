//! Wait records: what waited, from when to when, and who held the CPU meanwhile.
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
};
use tracer_common::{EventKind, Holder, WaitEvent, COMM_LEN, MAX_HOLDERS};

use crate::{
    header::{fill_header, Subject},
    maps::{count_lost, current_policy, current_task, kread, CpuState, EVENTS, OFFSETS, SEGS},
};

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
