//! The exported event dump: JSON Lines, one [`Record`] per line, tagged by `"type"`.
//! A dump is a header line, then packet/wait/syscall/probe lines in arrival order, then
//! a footer line. A dump without a footer was cut short (crash, kill -9) and is still
//! readable up to its last complete line.
//!
//! Times are `CLOCK_BOOTTIME` nanoseconds of the recording host (`ts_ns`, `start_ns`);
//! `header.boot_to_wall_ns` converts them to wall-clock time (`wall = ts + offset`).
//! Schema version [`DUMP_VERSION`]: fields are only ever added; a reader ignores fields
//! it does not know. Version 2 added what culprits were doing from samples
//! (`holders[].activity`) and made exact syscall tracing optional (`syscall` records
//! and `holders[].syscall` only with `record --syscalls`); version 1 dumps read as
//! they always did.
use serde::{Deserialize, Serialize};

pub const DUMP_FORMAT: &str = "stalltrace-dump";
pub const DUMP_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Header(Header),
    Packet(PacketRec),
    Wait(WaitRec),
    Syscall(SyscallRec),
    Probe(ProbeRec),
    Footer(Footer),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`DUMP_FORMAT`].
    pub format: String,
    pub version: u32,
    pub host: String,
    /// `uname -r`.
    pub kernel: String,
    pub cpus: u32,
    /// Wall-clock ns since the epoch minus boot-clock ns, at the start.
    pub boot_to_wall_ns: i64,
    /// RFC 3339 wall-clock start.
    pub started_at: String,
    /// Programs attached, as `category:name` or `kprobe:func`.
    pub hooks: Vec<String>,
    /// `tracepoint` or `kprobe`: which hook reports packets.
    pub packet_hook: String,
    /// The command line options that shaped the recording.
    pub options: Options,
    /// Memory cgroups (live, dying) and the cost of reading memory.stat, measured at
    /// the start (as `stalltrace doctor` does): what a culprit reading cgroup files
    /// is up against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<super::node::CgroupFacts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    pub icmp_id: Option<u16>,
    pub peer: Option<String>,
    pub tcp_port: Option<u16>,
    pub wait_threshold_ns: u64,
    pub syscall_threshold_ns: u64,
    pub stall_threshold_ns: u64,
    pub ring_buffer_bytes: u32,
    /// Target of the built-in prober, when `record --probe` ran one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// `record --stacks`: the sampling rate (cpu-clock samples a second per CPU, taken
    /// only while an RX wait is pending). Absent: stacks were not sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_hz: Option<u64>,
    /// The sampler's rate (samples a second per CPU, taken only while an RX wait is
    /// pending), from which holders' activity comes. Absent: no sampler (version 1
    /// dumps, or a kernel without perf events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_hz: Option<u64>,
    /// `record --syscalls`: exact syscall tracing was on (always in version 1: see
    /// [`Header::exact_syscalls`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub syscalls: bool,
    /// The recorder's own process id: never blamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder_pid: Option<u32>,
    /// Features this kernel did not allow, and what the recording did without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
    /// Why `packet_hook` reports packets: what the run needed that decided it (e.g.
    /// "--probe receives echo replies, which kprobe:icmp_echo never sees"), or what
    /// the kernel did not allow. Absent in dumps of recorders that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_hook_reason: Option<String>,
}

/// Where the packet was processed, from the kernel's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RxContext {
    /// NET_RX softirq run by `ksoftirqd/N`.
    Ksoftirqd,
    /// Threaded NAPI kthread `napi/<dev>-<id>`.
    Napi,
    /// `backlog_napi/N` thread (RPS/backlog processing in a thread).
    BacklogNapi,
    /// NET_RX softirq on an idle CPU (`swapper/N`).
    Idle,
    /// NET_RX softirq run on a process's stack (irq exit or `local_bh_enable`).
    ProcessSoftirq,
    /// No softirq and no RX thread: process context.
    Process,
}

impl RxContext {
    pub fn classify(comm: &str, pid: u32, in_softirq: bool) -> Self {
        if comm.starts_with("napi/") {
            RxContext::Napi
        } else if comm.starts_with("backlog_napi/") {
            RxContext::BacklogNapi
        } else if comm.starts_with("ksoftirqd/") {
            // ksoftirqd only ever runs softirqs: its waits and packets are NET_RX work.
            RxContext::Ksoftirqd
        } else if in_softirq && pid == 0 {
            RxContext::Idle
        } else if in_softirq {
            RxContext::ProcessSoftirq
        } else {
            RxContext::Process
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketKind {
    EchoRequest,
    EchoReply,
    Syn,
    SynAck,
    Rst,
    /// Another TCP segment with SYN or RST set (e.g. RST-ACK).
    OtherTcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PacketRec {
    pub ts_ns: u64,
    pub cpu: u32,
    /// The context that processed the packet.
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub context: RxContext,
    /// `tracepoint` or `kprobe`.
    pub hook: String,
    /// `icmp`, `icmpv6` or `tcp`.
    pub proto: String,
    pub kind: PacketKind,
    pub src: String,
    pub dst: String,
    /// ICMP echo identifier as read big-endian off the wire, or the TCP source port.
    pub ident: u16,
    /// ICMP echo sequence as read big-endian off the wire, or the TCP destination port.
    pub seq: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_seq: Option<u32>,
    /// Start of the RX run that processed the packet (softirq entry or RX-thread
    /// switch-in); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_start_ns: Option<u64>,
    /// Processed in a backlog drain: the end of the drain's first wait on this CPU (a
    /// wait record's `drain_of_ns`). Absent when no drain was open, and in dumps of
    /// recorders that did not track drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_start_ns: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// NET_RX raised → NET_RX softirq entry.
    NetRxSoftirq,
    /// RX thread (ksoftirqd, napi/…, backlog_napi) woken → switched in.
    RxThread,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    pub pid: u32,
    #[serde(default)]
    pub tgid: u32,
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyscallRef {
    pub nr: i64,
    /// `read`, `openat`…; `syscall_N` when unknown.
    pub name: String,
    pub arg0: u64,
    /// The file behind an fd argument, resolved from /proc while the task lived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// When the syscall was entered (boot ns); for several calls, the first.
    pub since_ns: u64,
    /// How many calls of it fell in the wait window (1 for the one in flight).
    #[serde(default = "one")]
    pub calls: u32,
    /// Time inside it within the wait window.
    #[serde(default)]
    pub in_window_ns: u64,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderRec {
    pub pid: u32,
    pub tgid: u32,
    /// The thread's name.
    pub comm: String,
    /// The process's name (its thread-group leader's), when it differs or is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Kubernetes pod and container (or the systemd unit), from its cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::identity::Identity>,
    /// Time on the CPU inside the wait window.
    pub run_ns: u64,
    pub cgroup_id: u64,
    /// cgroup v2 path, when it could be resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// `SCHED_OTHER`, `SCHED_FIFO`, … or `unknown`.
    pub policy: String,
    /// Real-time priority (1..99) for RT tasks, nice (-20..19) otherwise.
    pub priority: i32,
    /// `record --syscalls` (and every version 1 dump): the long syscalls (on CPU over
    /// the syscall threshold) it spent the most of the window in, else the syscall it
    /// was inside when it left the CPU if that covers most of its run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<SyscallRef>,
    /// What it was doing in the window, from the samples of it on the wait's CPU: user
    /// space, which syscalls (and files), the kernel otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// `record --stacks`: its stacks sampled on the wait's CPU inside the wait window,
    /// symbolized while it ran; absent when stacks were off or no sample fell on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<HolderStacks>,
}

/// A task's samples, by what they caught it doing (see `crate::activity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub samples: u32,
    /// In user space.
    #[serde(default)]
    pub user: u32,
    /// In the kernel outside a syscall (a page fault, an interrupt).
    #[serde(default)]
    pub kernel: u32,
    /// A kernel thread.
    #[serde(default)]
    pub kthread: u32,
    /// In the kernel, and whether inside a syscall could not be told.
    #[serde(default)]
    pub unknown: u32,
    /// Inside syscalls, most sampled first, by (syscall, file); at most
    /// [`crate::activity::TOP_SYSCALLS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallShare>,
    /// Samples inside syscalls not listed in `syscalls`.
    #[serde(default)]
    pub other_syscalls: u32,
}

/// Samples inside one syscall (on one file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallShare {
    pub nr: i64,
    /// `read`, `openat`…; `syscall_N` when unknown.
    pub name: String,
    /// The file: behind the fd argument (read from /proc while the process lived), or
    /// the path argument of openat and friends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub samples: u32,
}

/// What a holder's samples inside one wait window show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HolderStacks {
    /// Samples of this task on the wait's CPU inside the window.
    pub samples: u32,
    /// … of which caught it in user space (no kernel stack).
    #[serde(default)]
    pub user_mode: u32,
    /// … of which lost a stack (stack map full, or a hash collision in it).
    #[serde(default)]
    pub missing: u32,
    /// Distinct code paths among them (stacks that differ only in offsets are one).
    #[serde(default)]
    pub distinct: u32,
    /// The most frequent code paths (kernel + user function names; offsets may differ
    /// between the samples of one), most frequent first, at most [`TOP_STACKS`]. Each
    /// shows the frames of its most sampled member.
    pub top: Vec<StackRec>,
}

/// Stacks kept per holder and wait.
pub const TOP_STACKS: usize = 3;
/// Frames kept per stack (innermost first; the outermost are dropped).
pub const MAX_FRAMES: usize = 32;

/// One distinct stack and how many samples showed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackRec {
    pub count: u32,
    /// Kernel frames, innermost first: `function+0xoff`, with ` [module]` for module
    /// code, or `0x…` when no symbol covers it. Empty when the task was in user space.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel: Vec<String>,
    /// User frames, innermost first: `function+0xoff [binary]`, `0x… [binary+0xoff]`
    /// when the binary has no symbol for it, or `0x…`. Empty for kernel threads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitRec {
    pub kind: WaitKind,
    pub cpu: u32,
    /// Raise or wakeup (boot ns).
    pub start_ns: u64,
    /// When the RX work started (boot ns).
    pub ts_ns: u64,
    pub wait_ns: u64,
    /// The context that then ran the RX work.
    pub rx: TaskRef,
    pub rx_context: RxContext,
    /// Who raised the softirq or woke the RX thread.
    pub waker: TaskRef,
    /// Longest holders first (at most three).
    pub holders: Vec<HolderRec>,
    pub nr_switches: u32,
    /// Runs in the window by tasks other than the listed holders.
    #[serde(default)]
    pub nr_other_runs: u32,
    /// How long the RX work then ran (softirq entry→exit); 0 for RX-thread waits.
    #[serde(default)]
    pub run_ns: u64,
    /// The per-CPU run history was shorter than the window; holders may miss early runs.
    pub truncated: bool,
    /// The backlog drain this wait belongs to: the end of the first wait since the CPU's
    /// RX work last ran out (this wait's own `ts_ns` when it opened the drain). Absent
    /// in dumps of recorders that did not track drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_of_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyscallRec {
    /// Exit time (boot ns).
    pub ts_ns: u64,
    pub start_ns: u64,
    pub dur_ns: u64,
    /// Time on the CPU during the syscall.
    pub cpu_ns: u64,
    pub cpu: u32,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub nr: i64,
    pub name: String,
    pub arg0: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub ret: i64,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeProto {
    Icmp,
    Icmpv6,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// Answered; `rtt_ns` is set.
    Ok,
    /// No answer within the timeout.
    Lost,
    /// A duplicate answer to a sequence already answered.
    Dup,
}

/// One probe as the prober saw it. Matched to kernel packets by `ident`/`seq` as they
/// appear on the wire (ICMP) or by ports (TCP), never by comparing clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRec {
    /// `builtin`, `hping3` or `ping`.
    pub source: String,
    pub proto: ProbeProto,
    /// Target address.
    pub target: String,
    /// The prober's sequence number as it prints it.
    pub seq: u32,
    /// ICMP echo identifier on the wire (big-endian reading), or the TCP source port
    /// of the probe; absent when the prober's log does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_ident: Option<u16>,
    /// ICMP echo sequence on the wire (big-endian reading), or the TCP destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_seq: Option<u16>,
    /// Send time in boot ns, when the prober ran on the recording host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ns: Option<u64>,
    pub status: ProbeStatus,
    /// Why the probe never left (the kernel refused the send: a firewall's EPERM, an
    /// unreachable network); such a probe is `lost` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub packets: u64,
    pub waits: u64,
    pub syscalls: u64,
    pub probes: u64,
}

impl Counts {
    /// Counts one more record of its kind (header and footer are not counted).
    pub fn add(&mut self, r: &Record) {
        match r {
            Record::Packet(_) => self.packets += 1,
            Record::Wait(_) => self.waits += 1,
            Record::Syscall(_) => self.syscalls += 1,
            Record::Probe(_) => self.probes += 1,
            Record::Header(_) | Record::Footer(_) => {}
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    pub packets: u64,
    pub waits: u64,
    pub syscalls: u64,
    /// Stack samples dropped (version 1 dumps with `--stacks`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stack_samples: u64,
    /// Samples dropped (ring buffer full): activity is then drawn from fewer samples.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub samples: u64,
    /// Kernel tables full: an RX thread's wakeup not remembered (its wait unseen), or
    /// a syscall in flight not parked (`--syscalls`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub table_full: u64,
    /// Records still in the ring buffer when a stop's time was up (a stop under a
    /// flood ends promptly instead of decoding everything queued).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unread_at_exit: u64,
    /// A flight recorder's episode dump: records of its window that the recorder's
    /// memory caps forgot before the dump was written (the other counts are then what
    /// the kernel lost while the window was recorded). Not the kernel's doing: left out
    /// of [`Lost::total`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evicted: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl Header {
    /// Whether syscalls were traced exactly (version 1 always did).
    pub fn exact_syscalls(&self) -> bool {
        self.version < 2 || self.options.syscalls
    }
}

impl Lost {
    /// What was lost since `earlier` (counters taken from the same recording).
    pub fn since(&self, earlier: &Lost) -> Lost {
        Lost {
            packets: self.packets.saturating_sub(earlier.packets),
            waits: self.waits.saturating_sub(earlier.waits),
            syscalls: self.syscalls.saturating_sub(earlier.syscalls),
            stack_samples: self.stack_samples.saturating_sub(earlier.stack_samples),
            samples: self.samples.saturating_sub(earlier.samples),
            table_full: self.table_full.saturating_sub(earlier.table_full),
            unread_at_exit: self.unread_at_exit.saturating_sub(earlier.unread_at_exit),
            evicted: self.evicted.saturating_sub(earlier.evicted),
        }
    }

    /// Everything lost (saturating: a forged footer cannot make it wrap to 0).
    pub fn total(&self) -> u64 {
        [
            self.waits,
            self.syscalls,
            self.stack_samples,
            self.samples,
            self.table_full,
            self.unread_at_exit,
        ]
        .iter()
        .fold(self.packets, |a, &b| a.saturating_add(b))
    }
}

/// Log2 histogram per CPU: `buckets[i]` counts waits of [2^i, 2^(i+1)) µs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuHist {
    pub cpu: u32,
    pub buckets: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Footer {
    pub ended_at: String,
    pub duration_ns: u64,
    pub counts: Counts,
    pub lost: Lost,
    /// NET_RX raise→entry delays.
    #[serde(default)]
    pub hist_net_rx: Vec<CpuHist>,
    /// RX-thread wakeup→switch-in delays.
    #[serde(default)]
    pub hist_rx_thread: Vec<CpuHist>,
    /// NET_TX and TIMER raise→entry delays, for context.
    #[serde(default)]
    pub hist_net_tx: Vec<CpuHist>,
    #[serde(default)]
    pub hist_timer: Vec<CpuHist>,
    /// Why the recording ended: `duration`, `sigint`, `sigterm`, `error`.
    pub reason: String,
    /// `record --stacks`: what the sampler delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<StackStats>,
    /// What the sampler delivered (holders' activity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerStats>,
    /// What the recorder warned about while recording, each once (e.g. answered
    /// probes none of whose packets the packet hook saw).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The sampler's counts over a recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplerStats {
    pub hz: u64,
    /// Samples received (taken while an RX wait was pending).
    pub samples: u64,
    /// … of which fell on a holder of a reported wait (each counted once).
    pub attributed: u64,
}

/// The stack sampler's counts over a recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackStats {
    pub hz: u64,
    /// Samples received (taken while an RX wait was pending).
    pub samples: u64,
    /// … of which fell on a holder of a reported wait and were attached to it (each
    /// counted once, though overlapping waits of one stall may both show it).
    pub attributed: u64,
    /// Kernel / user stacks lost: the stack map was full or two stacks collided in it.
    pub kernel_misses: u64,
    pub user_misses: u64,
    /// Distinct stacks read from the kernel's stack map.
    pub distinct_stacks: u64,
}

impl Record {
    /// Escapes control characters in every text field (see [`crate::report::escape`]):
    /// names come from tenants and dumps from elsewhere; once read, a field prints as
    /// one line. The reader and the recorder both call it.
    pub fn sanitize(&mut self) {
        use crate::report::escape::field as esc;
        fn task(t: &mut TaskRef) {
            esc(&mut t.comm);
        }
        fn holder(h: &mut HolderRec) {
            esc(&mut h.comm);
            esc(&mut h.policy);
            h.process.as_mut().map(esc);
            if let Some(i) = h.identity.as_mut() {
                i.sanitize();
            }
            h.cgroup.as_mut().map(esc);
            if let Some(s) = h.syscall.as_mut() {
                esc(&mut s.name);
                s.path.as_mut().map(esc);
            }
            if let Some(a) = h.activity.as_mut() {
                for x in &mut a.syscalls {
                    esc(&mut x.name);
                    x.path.as_mut().map(esc);
                }
            }
            if let Some(st) = h.stacks.as_mut() {
                for t in &mut st.top {
                    t.kernel.iter_mut().for_each(esc);
                    t.user.iter_mut().for_each(esc);
                }
            }
        }
        match self {
            Record::Header(h) => {
                for s in [
                    &mut h.format,
                    &mut h.host,
                    &mut h.kernel,
                    &mut h.started_at,
                    &mut h.packet_hook,
                ] {
                    esc(s);
                }
                h.hooks.iter_mut().for_each(esc);
                h.options.peer.as_mut().map(esc);
                h.options.probe.as_mut().map(esc);
                h.options.packet_hook_reason.as_mut().map(esc);
            }
            Record::Packet(p) => {
                for s in [
                    &mut p.comm,
                    &mut p.hook,
                    &mut p.proto,
                    &mut p.src,
                    &mut p.dst,
                ] {
                    esc(s);
                }
            }
            Record::Wait(w) => {
                task(&mut w.rx);
                task(&mut w.waker);
                w.holders.iter_mut().for_each(holder);
            }
            Record::Syscall(s) => {
                esc(&mut s.comm);
                esc(&mut s.name);
                s.path.as_mut().map(esc);
            }
            Record::Probe(p) => {
                esc(&mut p.source);
                esc(&mut p.target);
                p.send_error.as_mut().map(esc);
            }
            Record::Footer(f) => {
                esc(&mut f.ended_at);
                esc(&mut f.reason);
                f.warnings.iter_mut().for_each(esc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (dump_structured target): a footer's lost counts overflowed
    /// their sum in the text report.
    #[test]
    fn lost_total_saturates() {
        let lost = Lost {
            packets: u64::MAX,
            waits: 1,
            ..Default::default()
        };
        assert_eq!(lost.total(), u64::MAX);
        // Every field counts.
        let each = Lost {
            packets: 1,
            waits: 2,
            syscalls: 4,
            stack_samples: 8,
            samples: 16,
            table_full: 32,
            unread_at_exit: 64,
            evicted: 128,
        };
        // Every field of the kernel's counts; evicted is the flight recorder's.
        assert_eq!(each.total(), 127);
    }
}
