//! Syscalls in flight per thread, and the ones that held the CPU longer than the
//! threshold (time on CPU, so blocking waits such as futex or epoll are not reported).
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{EventKind, SyscallEvent};

use crate::header::{fill_header, Subject};
use crate::maps::{count_lost, cpu_state, kread, now, SysState, CONFIG, EVENTS, OFFSETS};

/// TP_PROTO(struct pt_regs *regs, long id)
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(st) = cpu_state() else { return 0 };
    let nr: i64 = ctx.arg(1);
    let c = CONFIG.load();
    // exit and exit_group never return: nothing to time.
    if nr == c.nr_exit as i64 || nr == c.nr_exit_group as i64 {
        st.sys.valid = 0;
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    st.sys = SysState {
        nr,
        arg0: kread(regs, OFFSETS.load().regs_arg0).unwrap_or(0),
        start: now(),
        off_cpu: 0,
        parked_at: 0,
        pid: bpf_get_current_pid_tgid() as u32,
        valid: 1,
    };
    0
}

/// TP_PROTO(struct pt_regs *regs, long ret)
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let Some(st) = cpu_state() else { return 0 };
    let pt = bpf_get_current_pid_tgid();
    let pid = pt as u32;
    if st.sys.valid == 0 || st.sys.pid != pid {
        // Entered before we attached.
        return 0;
    }
    st.sys.valid = 0;
    // The recorder's own syscalls (its verifier loads, its reads of /proc) are not
    // what it is looking for.
    if (pt >> 32) as u32 == CONFIG.load().self_tgid {
        return 0;
    }
    let s = st.sys;
    let ts = now();
    let wall = ts.saturating_sub(s.start);
    let cpu_ns = wall.saturating_sub(s.off_cpu);
    if cpu_ns < CONFIG.load().syscall_threshold_ns {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<SyscallEvent>(0) else {
        count_lost(EventKind::Syscall as u32);
        return 0;
    };
    // SAFETY: reserved, exclusively owned slot; all fields written before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::Syscall, ts, Subject::current(pt));
    ev.nr = s.nr;
    ev.arg0 = s.arg0;
    ev.start_ns = s.start;
    ev.ret = ctx.arg(1);
    // SAFETY: helper with no arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.cpu_ns = cpu_ns;
    entry.submit(0);
    0
}
