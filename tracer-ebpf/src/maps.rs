//! Maps, globals and the per-CPU state shared by all programs.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    Global,
};
use tracer_common::{
    Filter, Hist, KernelConfig, Offsets, PacketEvent, PathSyscalls, COMM_LEN, HIST_BUCKETS,
    HIST_SLOTS, LOST_SLOTS, MAX_CPUS, STACK_MAP_ENTRIES,
};

#[unsafe(no_mangle)]
pub static FILTER: Global<Filter> = Global::new(Filter::all_icmp());
#[unsafe(no_mangle)]
pub static OFFSETS: Global<Offsets> = Global::new(Offsets::defaults());
#[unsafe(no_mangle)]
pub static CONFIG: Global<KernelConfig> = Global::new(KernelConfig::defaults());
/// The syscalls whose path argument a sample reads (this architecture's numbers).
#[unsafe(no_mangle)]
pub static PATH_SYSCALLS: Global<PathSyscalls> = Global::new(PathSyscalls::none());

/// Size overridden by user space (`--ring-buffer`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Failed ring-buffer reserves, per CPU, by event kind.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Delay histograms per CPU (NET_RX, RX thread, NET_TX, TIMER: the `HIST_*` slots).
#[map]
pub static HISTS: PerCpuArray<Hist> = PerCpuArray::with_max_entries(HIST_SLOTS, 0);

/// Kernel and user stacks of the samples (`--stacks`; one entry otherwise).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Per-CPU scratch space for a packet record (too large for the BPF stack).
#[map]
pub static PACKET_SCRATCH: PerCpuArray<PacketEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU state: the run history, pending softirq raises, the syscall in flight.
#[map]
pub static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// Pending wakeups of RX threads (ksoftirqd, napi/…, backlog_napi), by thread id. A
/// plain preallocated hash, not an LRU one: the scheduler hooks use it with the run
/// queue locked, and an LRU map's node stealing across CPUs (which deletes from the
/// hash under its own locks) is more than these hooks should risk. Entries go when the
/// thread runs or sleeps; one left by a thread that died is counted as a table-full
/// loss once the table fills.
#[map]
pub static RX_WAKE: HashMap<u32, RxWake> = HashMap::with_max_entries(4096, 0);

/// Syscalls in flight of threads that left their CPU inside one, by thread id; moved
/// back into the CPU's slot at switch-in. LRU bounds what a task that dies inside a
/// syscall can leave behind.
#[map]
pub static PARKED_SYSCALLS: LruHashMap<u32, SysState> = LruHashMap::with_max_entries(32768, 0);

/// Per target CPU: RX threads woken (or preempted) to run there that have not switched
/// in yet, and since when. Written by `sched_wakeup` on the waker's CPU and by the
/// target CPU's `sched_switch`, read by the sampler and `sched_switch` there: a plain
/// array, because the wakeup and the wait happen on different CPUs. Several RX threads
/// can wait on one CPU at once (ksoftirqd and a NIC's RX and TX napi threads, woken
/// from two CPUs at the same moment): two counters that only ever grow, each by an
/// atomic add, so no wakeup is lost to a race; the CPU has RX threads pending while
/// `marks` is ahead of `unmarks`. A count left behind expires with
/// [`STALE_PENDING_NS`].
#[map]
pub static RX_PENDING: Array<RxPending> = Array::with_max_entries(MAX_CPUS, 0);

#[repr(C)]
pub struct RxPending {
    /// The earliest pending wakeup (0 = none).
    pub since: u64,
    /// RX threads marked pending here, and those that ran, since the start.
    pub marks: u64,
    pub unmarks: u64,
}

impl RxPending {
    /// RX threads pending: marks ahead of unmarks.
    #[inline(always)]
    fn pending(&self) -> bool {
        self.marks > self.unmarks
    }
}

/// `*p += 1` as one atomic instruction (BPF_XADD, every kernel; the result unused, so
/// no fetch, which kernels before 5.12 lack).
#[inline(always)]
fn atomic_inc(p: &mut u64) {
    // SAFETY: `p` is a valid, aligned u64 in a map value; the intrinsic is a plain
    // atomic add to it.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, 1,
        );
    }
}

/// A CPU marked as having RX threads pending where none has run for this long is stale
/// (a thread ran elsewhere, its mark left behind): the mark is dropped. Real-time
/// throttling lets starved threads run every second by default.
pub const STALE_PENDING_NS: u64 = 10_000_000_000;

#[inline(always)]
fn rx_slot(cpu: u32) -> Option<&'static mut RxPending> {
    // SAFETY: pointer into an array map slot, valid for this program run. Its counters
    // are only changed by atomic adds; `since` is a plain word that racing writers
    // store whole (a race costs or saves one sample).
    RX_PENDING.get_ptr_mut(cpu).map(|p| unsafe { &mut *p })
}

/// Marks one more RX thread pending on `cpu`.
#[inline(always)]
pub fn mark_rx_pending(cpu: u32, ts: u64) {
    if let Some(p) = rx_slot(cpu) {
        if !p.pending() || p.since == 0 {
            p.since = ts;
        }
        atomic_inc(&mut p.marks);
    }
}

/// One RX thread counted on `cpu` ran (at `now`). The count never goes below zero (a
/// mark dropped as stale has nothing to take back); while others still wait, `since`
/// moves up to now, so that only a CPU where no RX thread ran for
/// [`STALE_PENDING_NS`] is taken as stale.
#[inline(always)]
pub fn unmark_rx_pending(cpu: u32, now: u64) {
    if let Some(p) = rx_slot(cpu) {
        if !p.pending() {
            return;
        }
        atomic_inc(&mut p.unmarks);
        p.since = if p.pending() { now } else { 0 };
    }
}

/// Drops the mark of `cpu` whatever its count (stale).
#[inline(always)]
pub fn clear_rx_pending(cpu: u32) {
    if let Some(p) = rx_slot(cpu) {
        p.unmarks = p.marks;
        p.since = 0;
    }
}

/// When the earliest RX thread pending on `cpu` was woken (0 = none).
#[inline(always)]
pub fn rx_pending(cpu: u32) -> u64 {
    match RX_PENDING.get(cpu) {
        Some(v) if v.pending() => v.since.max(1),
        _ => 0,
    }
}

/// Run history kept per CPU: enough to name who held the CPU during a wait. 32 runs
/// verify too, but take the verifier ~3 s (the scan is unrolled at two call sites); 64
/// exceed its 1M-instruction budget. A wait with more switches is marked truncated.
pub const SEGS: usize = 16;
pub const SEG_MASK: u32 = (SEGS as u32) - 1;

/// One run of a task on a CPU, ended by a context switch.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub pid: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    pub prio: u32,
    pub policy: u32,
    pub sys_nr: i64,
    pub sys_arg0: u64,
    pub sys_start: u64,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
pub struct CpuState {
    /// When the task now on this CPU was switched in (0 = no switch seen yet): every
    /// switch sets it, so a run recorded at its end knows its start.
    pub cur_since: u64,
    /// The RX thread whose run started here after a wakeup, and when: its run lasts
    /// until it sleeps, through any preemption in between (packets it processes then
    /// still belong to that run, and so to the wait that preceded it).
    pub rx_run_pid: u32,
    pub _pad_rx: u32,
    pub rx_run_start: u64,
    /// That RX thread's task, to know its switch-out without reading memory.
    pub rx_run_task: u64,
    /// First NET_RX raise since the last entry (0 = none pending) and who raised it.
    pub netrx_raise_ns: u64,
    pub netrx_raiser_pid: u32,
    pub _pad0: u32,
    /// First NET_TX / TIMER raise since their last entry (0 = none): histograms only.
    pub nettx_raise_ns: u64,
    pub timer_raise_ns: u64,
    /// Start of the NET_RX softirq running now (0 = none).
    pub netrx_entry_ns: u64,
    /// A NET_RX wait above the threshold, reported at softirq exit with its run time
    /// (0 = none): when it was raised.
    pub netrx_wait_raised: u64,
    /// `cur_since` at NET_RX entry: the softirq's task's run start as it was then. On
    /// PREEMPT_RT the softirq can be preempted before its exit, and the switches in
    /// between (no wait pending any more) reset `cur_since`.
    pub netrx_entry_since: u64,
    /// The running thread's syscall in flight, if any.
    pub sys: SysState,
    /// Next slot of `segs` to write, and how many were ever written.
    pub head: u32,
    pub _pad1: u32,
    pub written: u64,
    /// The end of the latest run left out of a full history (it or the run it would
    /// have displaced was the briefest): a wait covering it is `truncated`.
    pub last_drop_end: u64,
    /// The backlog drain open on this CPU ([`crate::drain`]): the end of its first wait
    /// (0 = none), the end of its latest one, when its RX work last ran out (0: RX
    /// work going on), and whether it ran out once (the backlog was cleared).
    pub drain_of: u64,
    pub drain_last_end: u64,
    pub drain_idle_since: u64,
    pub drain_cleared: u64,
    pub segs: [Segment; SEGS],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct RxWake {
    pub ts: u64,
    pub waker_pid: u32,
    pub target_cpu: u32,
    pub waker_comm: [u8; COMM_LEN],
    /// 1: the thread was preempted while runnable (its run goes on), 0: woken.
    pub preempted: u32,
    pub _pad: u32,
}

/// A syscall in flight. Per-CPU in [`CpuState::sys`] while its thread runs (no map
/// operation per syscall), parked in [`PARKED_SYSCALLS`] while the thread is off the CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysState {
    pub nr: i64,
    pub arg0: u64,
    pub start: u64,
    /// Time spent off the CPU since `start` (so on-CPU time = wall - off_cpu).
    pub off_cpu: u64,
    /// When it was parked (switched out).
    pub parked_at: u64,
    pub pid: u32,
    /// 1 when the slot holds a syscall of `pid`.
    pub valid: u32,
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper with no arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
pub fn cpu_state() -> Option<&'static mut CpuState> {
    // SAFETY: index 0 of a per-CPU array: the pointer is valid for this CPU's slot and
    // programs on one CPU do not run concurrently with each other for the same slot
    // (tracepoint programs run with preemption disabled).
    CPU_STATE.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn count_lost(kind: u32) {
    if let Some(p) = LOST.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn hist_add(slot: u32, ns: u64) {
    let us = ns / 1000;
    let mut b: usize = 0;
    let mut v = us;
    while v > 1 && b < HIST_BUCKETS - 1 {
        v >>= 1;
        b += 1;
    }
    if let Some(h) = HISTS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU; b < HIST_BUCKETS.
        unsafe { (*h).buckets[b & (HIST_BUCKETS - 1)] += 1 };
    }
}

/// Reads a `T` at `off` bytes into a kernel object; `None` when the offset is unknown
/// (0) or the read faults.
#[inline(always)]
pub fn kread<T>(base: *const u8, off: u32) -> Option<T> {
    if off == 0 || base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails safely; the offset
    // comes from this kernel's BTF.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).ok() }
}

/// The current task, as a pointer for [`kread`].
#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: helper with no arguments.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// Scheduling policy of the current task, u32::MAX when the offset is unknown.
#[inline(always)]
pub fn current_policy() -> u32 {
    let off = OFFSETS.load().task_policy;
    if off == 0 {
        return u32::MAX;
    }
    kread(current_task(), off).unwrap_or(u32::MAX)
}

/// `PF_KTHREAD` in `task_struct.flags`: RX threads are kernel threads, whatever a user
/// task names itself.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Whether `task` is a kernel thread (false when its flags cannot be read).
#[inline(always)]
pub fn is_kthread(task: *const u8) -> bool {
    kread::<u32>(task, OFFSETS.load().task_flags).is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Counts a failed insert into a kernel table (`LOST_RX_WAKE`, `LOST_PARKED`).
#[inline(always)]
pub fn count_insert_failure(slot: u32) {
    count_lost(slot);
}

/// Flags for a record that need not wake the reader: no wakeup until a backlog of
/// `CONFIG.wakeup_bytes` builds up (the reader drains on a timer as well).
#[inline(always)]
pub fn lazy_wakeup() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    let at = CONFIG.load().wakeup_bytes as u64;
    if at == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA) >= at {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
