//! The sampler: a cpu-clock perf event on every CPU whose program records the task
//! holding the CPU, but only while an RX wait is pending there (a NET_RX raise not
//! yet run, or an RX thread woken to this CPU and not yet switched in), never the idle
//! task. A sample says what the task was doing: user space, a syscall (its number and
//! first argument, read from the task's saved user registers), the kernel otherwise,
//! or a kernel thread. Outside waits a tick costs a few loads. Two programs, one per
//! way to find the saved registers: `bpf_task_pt_regs` (5.15+), or the top of the
//! task's kernel stack (older kernels); the loader takes the first that loads.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id,
        bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::perf_event,
    programs::{tracing::StackIdContext as _, PerfEventContext},
};
use tracer_common::{EventKind, SampleEvent, SampleMode, PENDING_NET_RX, PENDING_RX_THREAD};

use crate::header::{fill_header, Subject};
use crate::maps::{
    count_lost, cpu_state, kread, lazy_wakeup, now, rx_pending, CONFIG, EVENTS, OFFSETS,
    PATH_SYSCALLS, PF_KTHREAD, STACKS,
};

/// The saved user registers of a task in the kernel: (mode, nr, arg0, arg1).
#[inline(always)]
fn syscall_of(regs: *const u8) -> (SampleMode, i64, u64, u64) {
    let o = OFFSETS.load();
    if regs.is_null() || o.regs_orig_ax == 0 {
        return (SampleMode::KernelUnknown, -1, 0, 0);
    }
    let nr: i64 = kread(regs, o.regs_orig_ax).unwrap_or(-1);
    let ip: u64 = kread(regs, o.regs_ip).unwrap_or(0);
    let cx: u64 = kread(regs, o.regs_cx).unwrap_or(1);
    let r11: u64 = kread(regs, o.regs_r11).unwrap_or(0);
    let flags: u64 = kread(regs, o.regs_flags).unwrap_or(1);
    // The `syscall` instruction put the return address in rcx and RFLAGS in r11; an
    // exception or interrupt leaves them as the program had them (and puts an error
    // code, not a syscall number, in orig_ax).
    if !(0..1024).contains(&nr) || cx != ip || r11 != flags {
        return (SampleMode::Kernel, -1, 0, 0);
    }
    let a0: u64 = kread(regs, o.regs_arg0).unwrap_or(0);
    let a1: u64 = kread(regs, o.regs_arg1).unwrap_or(0);
    (SampleMode::Syscall, nr, a0, a1)
}

/// The pending wait on this CPU: (start, PENDING_* bits), or None.
#[inline(always)]
fn pending_wait(cpu: u32) -> Option<(u64, u32)> {
    let st = cpu_state()?;
    let netrx = st.netrx_raise_ns;
    let rxw = rx_pending(cpu);
    if netrx == 0 && rxw == 0 {
        return None;
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
    Some((start, pending))
}

/// The body of both samplers; `regs_of_current` finds the current task's saved user
/// registers.
#[inline(always)]
fn sample(ctx: &PerfEventContext, regs_of_current: impl FnOnce() -> *const u8) -> u32 {
    let pt = bpf_get_current_pid_tgid();
    let pid = pt as u32;
    if pid == 0 {
        return 0;
    }
    // SAFETY: helper with no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some((start, pending)) = pending_wait(cpu) else {
        return 0;
    };
    // SAFETY: the perf event context's registers are readable in place: the
    // interrupted CPU state (cs's low bits are the privilege level: 3 is user).
    let user = unsafe { (*ctx.ctx).regs.cs & 3 } == 3;
    let (mode, nr, arg0, arg1) = if user {
        (SampleMode::User, -1, 0, 0)
    } else {
        // SAFETY: helper with no arguments.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        let flags: u32 = kread(task, OFFSETS.load().task_flags).unwrap_or(0);
        if flags & PF_KTHREAD != 0 {
            (SampleMode::Kthread, -1, 0, 0)
        } else {
            syscall_of(regs_of_current())
        }
    };
    let Some(mut entry) = EVENTS.reserve::<SampleEvent>(0) else {
        count_lost(EventKind::Sample as u32);
        return 0;
    };
    // SAFETY: reserved, exclusively owned slot; every field is written before submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut ev.header,
        EventKind::Sample,
        now(),
        Subject::current(pt),
    );
    ev.wait_start_ns = start;
    ev.pending = pending;
    ev.mode = mode as u32;
    ev.nr = nr;
    ev.arg0 = arg0;
    ev.path[0] = 0;
    let path_arg = if nr < 0 {
        0
    } else {
        let paths = PATH_SYSCALLS.load();
        let nr = nr as u32;
        if paths.in_arg0.contains(&nr) {
            arg0
        } else if paths.in_arg1.contains(&nr) {
            arg1
        } else {
            0
        }
    };
    if path_arg != 0 {
        // SAFETY: a user pointer read with the fault-safe helper; a page not resident
        // just leaves the path empty.
        if unsafe { bpf_probe_read_user_str_bytes(path_arg as *const u8, &mut ev.path) }.is_err() {
            ev.path[0] = 0;
        }
    }
    if CONFIG.load().stacks != 0 {
        ev.kstack_id = match ctx.get_stackid(&STACKS, 0) {
            Ok(id) => id as i32,
            Err(e) => e,
        };
        ev.ustack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => id as i32,
            Err(e) => e,
        };
    } else {
        ev.kstack_id = -2;
        ev.ustack_id = -2;
    }
    entry.submit(lazy_wakeup());
    0
}

/// 5.15+: `bpf_task_pt_regs` finds the saved user registers.
#[perf_event]
pub fn sample_task_regs(ctx: PerfEventContext) -> u32 {
    sample(&ctx, || {
        // SAFETY: helpers taking the current task as a BTF pointer, which is what
        // bpf_get_current_task_btf returns; the result is only read through
        // bpf_probe_read_kernel.
        unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8 }
    })
}

/// Older kernels: the saved user registers sit at the top of the task's kernel stack
/// (x86_64 `task_pt_regs`: stack + THREAD_SIZE - sizeof(struct pt_regs)).
#[perf_event]
pub fn sample_stack_regs(ctx: PerfEventContext) -> u32 {
    sample(&ctx, || {
        let o = OFFSETS.load();
        // SAFETY: helper with no arguments.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        let stack: u64 = kread(task, o.task_stack).unwrap_or(0);
        if stack == 0 {
            return core::ptr::null();
        }
        (stack + o.kstack_size as u64 - o.regs_size as u64) as *const u8
    })
}
