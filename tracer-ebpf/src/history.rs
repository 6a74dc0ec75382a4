//! The run history kept per CPU: who held it, for how long, in which syscall, so a
//! wait can name its holders.
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
};
use tracer_common::COMM_LEN;

use crate::maps::{current_policy, kread, CpuState, OFFSETS, SEGS, SEG_MASK};

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
pub fn record_run(st: &mut CpuState, prev: *const u8, ts: u64, pending_since: u64) {
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
