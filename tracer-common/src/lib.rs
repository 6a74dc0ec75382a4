//! Event types shared by the kernel programs (`tracer-ebpf`) and the loader
//! (`stalltrace`). Every record starts with [`EventHeader`]; `kind` carries a stable
//! numeric id ([`EventKind`]) that never changes meaning once released, so old dumps and
//! new decoders agree. All structs are `#[repr(C)]`, fixed width, with explicit padding
//! fields so that no byte is left undefined (the verifier rejects reading uninitialised
//! stack, and user space decodes by copying bytes).
#![no_std]

/// Length of a kernel task name, including the NUL.
pub const COMM_LEN: usize = 16;

/// Stable numeric ids of the record kinds in the ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A probe packet seen on arrival ([`PacketEvent`]).
    Packet = 1,
    /// A softirq raise→entry wait above the threshold ([`WaitEvent`]).
    SoftirqWait = 2,
    /// An RX thread's wakeup→switch-in wait above the threshold ([`WaitEvent`]).
    RxThreadWait = 3,
    /// A syscall longer than the syscall threshold ([`SyscallEvent`]).
    Syscall = 4,
    /// Retired (a stack sample before samples carried activity): never written.
    StackSample = 5,
    /// A sample of the task holding a CPU while an RX wait was pending there: what it
    /// was doing, and its stacks with `--stacks` ([`SampleEvent`]).
    Sample = 6,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Packet),
            2 => Some(Self::SoftirqWait),
            3 => Some(Self::RxThreadWait),
            4 => Some(Self::Syscall),
            5 => Some(Self::StackSample),
            6 => Some(Self::Sample),
            _ => None,
        }
    }
}

/// Common prefix of every record. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// [`EventKind`] as a number.
    pub kind: u32,
    /// CPU the event happened on.
    pub cpu: u32,
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_ns: u64,
    /// Thread id of the context the event ran in (0 = idle/swapper).
    pub pid: u32,
    /// Process id (thread group) of that context.
    pub tgid: u32,
    /// Task name of that context, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// IP protocol numbers we parse.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_ICMPV6: u8 = 58;

/// Which hook saw a packet ([`PacketEvent::hook`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketHookKind {
    /// `tracepoint:net:netif_receive_skb`.
    Tracepoint = 1,
    /// `kprobe:icmp_echo`.
    Kprobe = 2,
}

impl PacketHookKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tracepoint),
            2 => Some(Self::Kprobe),
            _ => None,
        }
    }
}

/// TCP flag bits as on the wire (byte 13 of the TCP header).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A probe packet seen on arrival. 104 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    pub header: EventHeader,
    /// Source and destination address; IPv4 in the first 4 bytes, network order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// 4 or 6.
    pub family: u8,
    /// [`PROTO_ICMP`], [`PROTO_ICMPV6`] or [`PROTO_TCP`].
    pub proto: u8,
    /// ICMP type (echo request 8 / 128, reply 0 / 129); 0 for TCP.
    pub icmp_type: u8,
    /// TCP flags byte; 0 for ICMP.
    pub tcp_flags: u8,
    /// 1 when a NET_RX softirq was running on this CPU when the packet was seen.
    pub in_softirq: u8,
    /// [`PacketHookKind`] as a number.
    pub hook: u8,
    pub _pad0: [u8; 2],
    /// ICMP echo identifier (read big-endian from the wire) or TCP source port.
    pub ident: u16,
    /// ICMP echo sequence (read big-endian from the wire) or TCP destination port.
    pub seq: u16,
    /// TCP sequence number (host order); 0 for ICMP.
    pub tcp_seq: u32,
    /// Start of the RX run that processed this packet: the NET_RX softirq entry, or
    /// the RX thread's switch-in; 0 when unknown.
    pub rx_start_ns: u64,
    /// When this CPU's RX work was processed as part of a backlog drain: the end of the
    /// first wait of that drain ([`WaitEvent::drain_of_ns`]); 0 when no drain was open.
    /// A backlog held up by a long wait takes several RX runs (a budget at a time, with
    /// short waits in between) to drain; its packets are delayed by the wait even when
    /// they are not processed right after it.
    pub drain_start_ns: u64,
}

/// Number of CPU holders reported with a wait.
pub const MAX_HOLDERS: usize = 3;

/// A task that held the CPU while a wait was pending. 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub tgid: u32,
    /// Time on the CPU inside the wait window.
    pub run_ns: u64,
    pub cgroup_id: u64,
    /// Kernel priority as the sched tracepoints report it (0..99 real-time, 100..139 normal).
    pub prio: u32,
    /// Scheduling policy (0 normal, 1 FIFO, 2 RR, 3 batch, 5 idle, 6 deadline); u32::MAX unknown.
    pub policy: u32,
    /// Syscall the task was inside when it last left the CPU in the window; -1 none.
    pub sys_nr: i64,
    pub sys_arg0: u64,
    /// When that syscall was entered (boot ns).
    pub sys_start_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// Value of [`WaitEvent::vec`] for an RX-thread wait.
pub const VEC_THREAD: u32 = 0xffff;
/// Softirq vectors.
pub const NET_TX_SOFTIRQ: u32 = 2;
pub const NET_RX_SOFTIRQ: u32 = 3;
pub const TIMER_SOFTIRQ: u32 = 1;

/// A wait above the threshold: NET_RX raise→entry ([`EventKind::SoftirqWait`]) or an RX
/// thread's wakeup→switch-in ([`EventKind::RxThreadWait`]). The header's pid/comm is the
/// context that then ran the RX work; `ts_ns` is when the wait ended. 320 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitEvent {
    pub header: EventHeader,
    /// Raise or wakeup time (boot ns).
    pub wait_start_ns: u64,
    /// Softirq vector, or [`VEC_THREAD`].
    pub vec: u32,
    /// Who raised the softirq or woke the thread.
    pub waker_pid: u32,
    pub waker_comm: [u8; COMM_LEN],
    /// Context switches on this CPU inside the window.
    pub nr_switches: u32,
    /// Runs in the window by tasks other than the listed holders.
    pub nr_other_runs: u32,
    /// 1 when the per-CPU run history was shorter than the window, so the holders may
    /// miss early runs.
    pub truncated: u32,
    pub _pad0: u32,
    /// How long the RX work then ran (softirq entry→exit); 0 for RX-thread waits.
    pub run_ns: u64,
    /// The backlog drain this wait belongs to: the end (`ts_ns`) of the first wait since
    /// this CPU's RX work last ran out, when that drain was still open as this wait
    /// began; this wait's own end when it opens a drain.
    pub drain_of_ns: u64,
    pub holders: [Holder; MAX_HOLDERS],
}

/// A syscall that kept its caller on the CPU longer than the syscall threshold
/// (time on CPU, not wall time: a `futex` wait of 2 s is not reported, a 98 ms
/// `read()` of memory.stat is). On-CPU time is the wall time minus the time the thread
/// spent switched out, from the scheduler's own switches. 88 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    /// `ts_ns` is the exit time; pid/tgid/comm the caller.
    pub header: EventHeader,
    pub nr: i64,
    pub arg0: u64,
    pub start_ns: u64,
    pub ret: i64,
    pub cgroup_id: u64,
    /// Time on CPU during the syscall (wall time minus time switched out).
    pub cpu_ns: u64,
}

/// Bits of [`StackEvent::pending`]: which RX wait was pending on the CPU.
pub const PENDING_NET_RX: u32 = 1;
pub const PENDING_RX_THREAD: u32 = 2;

/// Depth of a stack in the `STACKS` map (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const STACK_DEPTH: usize = 127;
/// Default number of distinct stacks the `STACKS` map holds (`record --stacks`; the
/// map is created with one entry otherwise). Entries are never deleted (a deleted id
/// can be reused by another stack while samples naming it are still queued), so a
/// long recording can fill it: further new stacks are then counted as misses.
pub const STACK_MAP_ENTRIES: u32 = 8192;
/// `STACKS` is sized to this many CPUs at most (the `RX_PENDING` marker array too).
pub const MAX_CPUS: u32 = 4096;

/// A stack sample as written before [`SampleEvent`] replaced it; kept so the layout
/// and its decoder test stay documented. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackEvent {
    pub header: EventHeader,
    pub kstack_id: i32,
    pub ustack_id: i32,
    pub wait_start_ns: u64,
    pub pending: u32,
    pub _pad0: u32,
}

/// What a sampled task was doing ([`SampleEvent::mode`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleMode {
    /// In user space.
    User = 1,
    /// In the kernel, not inside a syscall (a page fault, an interrupt it was in).
    Kernel = 2,
    /// Inside syscall `nr`.
    Syscall = 3,
    /// A kernel thread (no user space).
    Kthread = 4,
    /// In the kernel, and whether inside a syscall could not be read.
    KernelUnknown = 5,
}

impl SampleMode {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::User),
            2 => Some(Self::Kernel),
            3 => Some(Self::Syscall),
            4 => Some(Self::Kthread),
            5 => Some(Self::KernelUnknown),
            _ => None,
        }
    }
}

/// Bytes of a path argument kept with a sample (openat and friends): Kubernetes cgroup
/// paths run to 200 bytes and more.
pub const SAMPLE_PATH_LEN: usize = 256;

/// A cpu-clock sample of the task on a CPU while an RX wait was pending there (a
/// NET_RX raise not yet run, or an RX thread woken to this CPU and not yet switched
/// in); the idle task is never sampled. The header's pid/tgid/comm is the sampled task,
/// `ts_ns` the sample time. What it was doing comes from the interrupted registers
/// (user or kernel mode) and, in the kernel, from its saved user registers (the
/// syscall number and first argument). 336 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleEvent {
    pub header: EventHeader,
    /// Start of the pending wait (the earlier one when both are pending), boot ns.
    pub wait_start_ns: u64,
    /// [`PENDING_NET_RX`] | [`PENDING_RX_THREAD`].
    pub pending: u32,
    /// [`SampleMode`] as a number.
    pub mode: u32,
    /// The syscall number in [`SampleMode::Syscall`], else -1.
    pub nr: i64,
    /// Its first argument (a file descriptor for read, pread64, …).
    pub arg0: u64,
    /// `--stacks`: ids in the `STACKS` map, or a negative errno (-EFAULT: no such
    /// stack, user space for the kernel one or a kernel thread for the user one);
    /// -ENOENT (-2) without `--stacks`.
    pub kstack_id: i32,
    pub ustack_id: i32,
    /// The path argument of open/openat/stat-like syscalls, NUL-terminated (may be cut).
    pub path: [u8; SAMPLE_PATH_LEN],
}

/// Index of the per-CPU lost-event counters in the `LOST` map, by kind (slot 0 unused),
/// then the map-insert failures (a table full in the kernel).
pub const LOST_SLOTS: u32 = 9;
/// An RX thread's wakeup not remembered (its table was full): its wait is not seen.
pub const LOST_RX_WAKE: u32 = 7;
/// A syscall in flight not parked (`--syscalls`; its table was full).
pub const LOST_PARKED: u32 = 8;

/// Log2 histogram: bucket i counts waits of [2^i, 2^(i+1)) microseconds (bucket 0 also
/// takes < 1 µs).
pub const HIST_BUCKETS: usize = 32;
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS],
}
/// Histogram slots in the `HISTS` map.
pub const HIST_NET_RX: u32 = 0;
pub const HIST_RX_THREAD: u32 = 1;
/// NET_TX and TIMER raise→entry delays, for context next to NET_RX.
pub const HIST_NET_TX: u32 = 2;
pub const HIST_TIMER: u32 = 3;
pub const HIST_SLOTS: u32 = 4;

/// Packet filter, set from user space in the `FILTER` global. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Peer address (either source or destination must equal it) when `peer_family` != 0.
    pub peer: [u8; 16],
    pub peer_family: u8,
    /// 1: ICMP echo identifier must be `icmp_id` (either byte order, as hping3 writes it
    /// in host order); 0: every ICMP echo.
    pub icmp_id_set: u8,
    pub icmp_id: u16,
    /// 1: record ICMP echoes at all.
    pub icmp: u8,
    /// 1: record TCP SYN/SYN-ACK/RST to or from `tcp_port`.
    pub tcp_port_set: u8,
    pub tcp_port: u16,
    pub _pad: [u8; 16],
}

impl Filter {
    /// Every ICMP echo, no TCP.
    pub const fn all_icmp() -> Self {
        Self {
            peer: [0; 16],
            peer_family: 0,
            icmp_id_set: 0,
            icmp_id: 0,
            icmp: 1,
            tcp_port_set: 0,
            tcp_port: 0,
            _pad: [0; 16],
        }
    }
}

/// Offsets into kernel structs, read by user space from the running kernel's BTF and
/// passed in the `OFFSETS` global, because aya cannot emit CO-RE relocations from Rust.
/// The programs are raw tracepoints: their arguments are the tracepoint's `TP_PROTO`
/// (task_struct and sk_buff pointers), so every field is read through these.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    // struct sk_buff
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    // struct task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_prio: u32,
    /// 0 = unknown (policy reported as unknown).
    pub task_policy: u32,
    /// `task_struct.cpu` (or `thread_info.cpu` on older kernels).
    pub task_cpu: u32,
    /// `struct pt_regs` member holding a syscall's first argument (`di` on x86_64).
    pub regs_arg0: u32,
    /// `task_struct.flags` (PF_KTHREAD: RX threads are kernel threads, not names).
    pub task_flags: u32,
    /// `task_struct.__state` (`state` before 5.14; its low 32 bits): an RX thread that
    /// switches out without being preempted while still `TASK_RUNNING` (0) was woken
    /// as it went to sleep, and waits runnable. 0 = unknown.
    pub task_state: u32,
    /// `task_struct.stack` and the kernel stack's size: where a task's saved user
    /// registers are on kernels without `bpf_task_pt_regs` (before 5.15).
    pub task_stack: u32,
    pub kstack_size: u32,
    /// `struct pt_regs`: its size and the members that tell a syscall from a fault
    /// (x86_64: the `syscall` instruction leaves RIP in rcx and RFLAGS in r11, so
    /// `cx == ip && r11 == flags` inside a syscall, and `orig_ax` is its number), and
    /// the second argument (`si`, the path of openat).
    pub regs_size: u32,
    pub regs_orig_ax: u32,
    pub regs_ip: u32,
    pub regs_cx: u32,
    pub regs_r11: u32,
    pub regs_flags: u32,
    pub regs_arg1: u32,
}

impl Offsets {
    /// The layout of an x86_64 6.x kernel; user space overrides it with what it reads.
    pub const fn defaults() -> Self {
        Self {
            skb_head: 192,
            skb_data: 200,
            skb_network_header: 184,
            skb_transport_header: 182,
            task_pid: 0,
            task_tgid: 0,
            task_comm: 0,
            task_prio: 0,
            task_policy: 0,
            task_cpu: 0,
            regs_arg0: 112,
            task_flags: 0,
            task_state: 0,
            task_stack: 0,
            kstack_size: 16384,
            regs_size: 168,
            regs_orig_ax: 120,
            regs_ip: 128,
            regs_cx: 88,
            regs_r11: 48,
            regs_flags: 144,
            regs_arg1: 104,
        }
    }
}

/// Tuning knobs passed in the `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Emit waits longer than this.
    pub wait_threshold_ns: u64,
    /// Emit syscalls longer than this.
    pub syscall_threshold_ns: u64,
    /// 1: track syscalls (raw_syscalls hooks attached).
    pub track_syscalls: u32,
    /// Syscall numbers that never return (exit, exit_group on this architecture): not
    /// tracked, or their entry would outlive the task.
    pub nr_exit: u32,
    pub nr_exit_group: u32,
    /// 1: `record --stacks`: samples carry kernel and user stack ids.
    pub stacks: u32,
    /// Packet and stack records wake the reader only once this many bytes are queued
    /// (the reader also drains on a timer): a wakeup per record costs the traced CPU an
    /// interrupt. 0 wakes on every record.
    pub wakeup_bytes: u32,
    /// The recorder's own process: its syscalls are not its subject.
    pub self_tgid: u32,
    /// A wait this long opens a backlog drain, which stays open this long after its
    /// latest wait ended at most: the stall threshold.
    pub drain_window_ns: u64,
    /// … and this long after the CPU's RX work ran out.
    pub drain_grace_ns: u64,
}

impl KernelConfig {
    pub const fn defaults() -> Self {
        Self {
            wait_threshold_ns: 1_000_000,
            syscall_threshold_ns: 10_000_000,
            track_syscalls: 0,
            nr_exit: 60,
            nr_exit_group: 231,
            wakeup_bytes: 0,
            self_tgid: 0,
            stacks: 0,
            drain_window_ns: 50_000_000,
            drain_grace_ns: 20_000_000,
        }
    }
}

/// Slots in each list of [`PathSyscalls`].
pub const PATH_SYSCALL_SLOTS: usize = 8;

/// The syscalls whose first or second argument is a path, which a sample taken inside
/// one reads (numbers differ by architecture, so user space passes them in the
/// `PATH_SYSCALLS` global). Unused slots hold `u32::MAX`. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathSyscalls {
    pub in_arg0: [u32; PATH_SYSCALL_SLOTS],
    pub in_arg1: [u32; PATH_SYSCALL_SLOTS],
}

impl PathSyscalls {
    /// No syscall: samples read no path.
    pub const fn none() -> Self {
        Self {
            in_arg0: [u32::MAX; PATH_SYSCALL_SLOTS],
            in_arg1: [u32::MAX; PATH_SYSCALL_SLOTS],
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are #[repr(C)] with only integer fields and explicit padding,
    // so every bit pattern is valid and no byte is padding.
    unsafe impl aya::Pod for Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PathSyscalls {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Hist {}
}

/// Compile-time layout checks: the kernel and user side must agree byte for byte.
const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 40);
    assert!(core::mem::size_of::<PacketEvent>() == 104);
    assert!(core::mem::size_of::<Holder>() == 72);
    assert!(core::mem::size_of::<WaitEvent>() == 40 + 8 + 8 + 16 + 16 + 8 + 8 + 72 * MAX_HOLDERS);
    assert!(core::mem::size_of::<SyscallEvent>() == 88);
    assert!(core::mem::size_of::<StackEvent>() == 64);
    assert!(core::mem::size_of::<SampleEvent>() == 80 + SAMPLE_PATH_LEN);
    assert!((EventKind::Sample as u32) < LOST_RX_WAKE);
    assert!(core::mem::size_of::<Filter>() == 40);
    assert!(core::mem::size_of::<Offsets>() == 88);
    assert!(core::mem::size_of::<KernelConfig>() == 56);
    assert!(core::mem::size_of::<PathSyscalls>() == 64);
};
