//! Loads the eBPF object with this kernel's offsets and the user's filter, attaches the
//! programs, and reads the maps. Dropping the [`Tracer`] detaches everything (aya owns
//! the links and program fds), so no program outlives the process.
use aya::{
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        KProbe, PerfEvent, RawTracePoint,
    },
    Ebpf, EbpfLoader,
};
use thiserror::Error;
use tracer_common::{
    EventKind, Filter, Hist, KernelConfig, Offsets, PathSyscalls, HIST_NET_RX, HIST_NET_TX,
    HIST_RX_THREAD, HIST_TIMER, LOST_PARKED, LOST_RX_WAKE, LOST_SLOTS, STACK_MAP_ENTRIES,
};

use stalltrace_analysis::dump::{CpuHist, Lost};

use super::packet_path::{PacketHook, PacketPath};

/// The object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("this stalltrace was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`")]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Object(String),
    #[error("program {prog} was rejected by the kernel: {why}")]
    Verifier { prog: String, why: String },
    #[error("{hook} loaded (the verifier accepted it) but cannot be attached: {why}")]
    KprobeUnavailable { hook: String, why: String },
    #[error("attaching {hook} failed: {why}")]
    Attach { hook: String, why: String },
    #[error("map {0} missing or of the wrong type: {1}")]
    Map(&'static str, String),
    #[error("the sampler needs perf events (a software cpu-clock event per CPU), and {why}")]
    PerfUnavailable { why: String },
}

impl LoadError {
    pub fn is_kernel_feature(&self) -> bool {
        matches!(
            self,
            LoadError::KprobeUnavailable { .. } | LoadError::PerfUnavailable { .. }
        )
    }
}

pub struct LoadOptions {
    pub filter: Filter,
    pub offsets: Offsets,
    pub config: KernelConfig,
    pub ring_bytes: u32,
    /// `--stacks`: size the stack map (one entry otherwise).
    pub stacks: bool,
}

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A raw tracepoint (BPF_RAW_TRACEPOINT_OPEN): cheaper than a classic tracepoint
    /// program, no tracefs needed, and not skipped by the per-CPU recursion guard that
    /// classic tracepoint programs share (which drops a softirq or packet event that
    /// lands on top of another program, e.g. sys_enter).
    RawTracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A kprobe through the perf kprobe PMU.
    Kprobe { function: &'static str },
    /// A software cpu-clock perf event on every CPU.
    CpuClock,
}

/// When a program is part of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Always: RX waits and who holds each CPU.
    Waits,
    /// Packets, by the tracepoint (every kernel).
    PacketsTracepoint,
    /// Packets, by `kprobe:icmp_echo` (where the kernel has kprobes).
    PacketsKprobe,
    /// Exact syscall tracing (`--syscalls`).
    Syscalls,
    /// The sampler: what holders were doing (always; one of the two loads).
    Sampler,
}

/// A program of the eBPF object.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// Its name in the object (the kernel shows the first 15 bytes).
    pub name: &'static str,
    pub hook: Hook,
    pub role: Role,
}

impl Program {
    /// The hook as the dump header and `features` name it.
    pub fn hook_name(&self) -> String {
        match self.hook {
            Hook::RawTracepoint { category, name } => format!("tracepoint:{category}:{name}"),
            Hook::Kprobe { function } => format!("kprobe:{function}"),
            Hook::CpuClock => "perf_event:cpu-clock".into(),
        }
    }
}

const fn tp(name: &'static str, category: &'static str, role: Role) -> Program {
    Program {
        name,
        hook: Hook::RawTracepoint { category, name },
        role,
    }
}

/// Every program of the object, once; load, attach, `features`, `--dry-run` and the
/// tests' leftover check all read this list.
pub const PROGRAMS: &[Program] = &[
    tp("sched_switch", "sched", Role::Waits),
    tp("sched_wakeup", "sched", Role::Waits),
    tp("softirq_raise", "irq", Role::Waits),
    tp("softirq_entry", "irq", Role::Waits),
    tp("softirq_exit", "irq", Role::Waits),
    tp("netif_receive_skb", "net", Role::PacketsTracepoint),
    Program {
        name: "icmp_echo",
        hook: Hook::Kprobe {
            function: "icmp_echo",
        },
        role: Role::PacketsKprobe,
    },
    tp("sys_enter", "raw_syscalls", Role::Syscalls),
    tp("sys_exit", "raw_syscalls", Role::Syscalls),
    // The sampler, in the order tried: with `bpf_task_pt_regs` (5.15+), then reading
    // the saved registers off the kernel stack.
    Program {
        name: "sample_task_regs",
        hook: Hook::CpuClock,
        role: Role::Sampler,
    },
    Program {
        name: "sample_stack_regs",
        hook: Hook::CpuClock,
        role: Role::Sampler,
    },
];

fn program(name: &str) -> Result<&'static Program, LoadError> {
    PROGRAMS
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| LoadError::Object(format!("program {name} is not in the table")))
}

/// Per-CPU delay histograms (CPUs with no wait are left out).
pub struct Hists {
    /// NET_RX raise→entry.
    pub net_rx: Vec<CpuHist>,
    /// RX-thread wakeup→switch-in.
    pub rx_thread: Vec<CpuHist>,
    /// NET_TX and TIMER raise→entry, for context.
    pub net_tx: Vec<CpuHist>,
    pub timer: Vec<CpuHist>,
}

impl Hists {
    /// (name, histograms) in the order reports show them.
    pub fn named(&self) -> [(&'static str, &[CpuHist]); 4] {
        [
            ("NET_RX raise->entry", &self.net_rx),
            ("RX thread wakeup->run", &self.rx_thread),
            ("NET_TX raise->entry", &self.net_tx),
            ("TIMER raise->entry", &self.timer),
        ]
    }
}

pub struct Tracer {
    ebpf: Ebpf,
    /// The in-kernel packet filter it was loaded with.
    pub filter: Filter,
    /// Hooks attached, in the dump's `category:name` form.
    pub hooks: Vec<String>,
    /// `kprobe` or `tracepoint`.
    pub packet_hook: &'static str,
    /// The sampler program that loaded, if one did.
    pub sampler: Option<&'static str>,
    /// What this kernel did not allow, and what the recording does without it.
    pub degraded: Vec<String>,
    /// Programs the verifier accepted, in table order.
    pub loaded: Vec<&'static str>,
}

/// This architecture's syscalls with a path in their first or second argument: a
/// sample taken inside one reads the path.
fn path_syscalls() -> PathSyscalls {
    let mut p = PathSyscalls::none();
    #[cfg(target_arch = "x86_64")]
    {
        use syscalls::Sysno;
        let arg0 = [
            Sysno::open,
            Sysno::stat,
            Sysno::lstat,
            Sysno::access,
            Sysno::readlink,
        ];
        let arg1 = [
            Sysno::openat,
            Sysno::newfstatat,
            Sysno::readlinkat,
            Sysno::faccessat,
            Sysno::statx,
            Sysno::openat2,
        ];
        for (slot, nr) in p.in_arg0.iter_mut().zip(arg0) {
            *slot = nr as u32;
        }
        for (slot, nr) in p.in_arg1.iter_mut().zip(arg1) {
            *slot = nr as u32;
        }
    }
    p
}

impl Tracer {
    /// Loads the object and every program a recording may use through the verifier,
    /// without attaching: the kprobe too (so its verdict is known where kprobes exist
    /// nowhere to attach it), the syscall programs when asked, the sampler for `--stacks`.
    pub fn load(opts: &LoadOptions, with_syscalls: bool) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("FILTER", &opts.filter, true)
            .override_global("OFFSETS", &opts.offsets, true)
            .override_global("CONFIG", &opts.config, true)
            .override_global("PATH_SYSCALLS", &path_syscalls(), true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("STACKS", if opts.stacks { STACK_MAP_ENTRIES } else { 1 })
            .load(OBJECT)
            .map_err(|e| LoadError::Object(format!("{e:#}{}", too_old_hint())))?;
        let mut sampler = None;
        let mut degraded = vec![];
        let mut loaded = vec![];
        for p in PROGRAMS {
            let wanted = match p.role {
                Role::Syscalls => with_syscalls,
                Role::Sampler => sampler.is_none(),
                _ => true,
            };
            if !wanted {
                continue;
            }
            let prog = ebpf
                .program_mut(p.name)
                .ok_or_else(|| LoadError::Object(format!("program {} missing", p.name)))?;
            let verdict = match p.hook {
                Hook::RawTracepoint { .. } => <&mut RawTracePoint>::try_from(prog)
                    .map_err(|e| LoadError::Object(format!("{}: {e}", p.name)))?
                    .load(),
                Hook::Kprobe { .. } => <&mut KProbe>::try_from(prog)
                    .map_err(|e| LoadError::Object(format!("{}: {e}", p.name)))?
                    .load(),
                Hook::CpuClock => <&mut PerfEvent>::try_from(prog)
                    .map_err(|e| LoadError::Object(format!("{}: {e}", p.name)))?
                    .load(),
            };
            if verdict.is_ok() {
                loaded.push(p.name);
            }
            match (verdict, p.role) {
                (Ok(()), Role::Sampler) => sampler = Some(p.name),
                (Ok(()), _) => {}
                // The first sampler needs 5.15's helpers; the second is the fallback.
                (Err(e), Role::Sampler) if p.name == "sample_task_regs" => {
                    log::info!("{}: {}", p.name, verifier_msg(&e));
                }
                (Err(e), Role::Sampler) => degraded.push(format!(
                    "no sampler ({}): culprits are named without what they were doing",
                    verifier_msg(&e).lines().next().unwrap_or_default()
                )),
                (Err(e), _) => {
                    return Err(LoadError::Verifier {
                        prog: p.name.into(),
                        why: verifier_msg(&e),
                    })
                }
            }
        }
        if sampler == Some("sample_stack_regs") {
            degraded.push(
                "no bpf_task_pt_regs (before 5.15): the sampler reads saved registers off the kernel stack"
                    .into(),
            );
        }
        Ok(Self {
            ebpf,
            filter: opts.filter,
            hooks: vec![],
            packet_hook: "tracepoint",
            sampler,
            degraded,
            loaded,
        })
    }

    /// The sampler variant that loaded, for `features` and the docs: how it finds a
    /// task's saved user registers.
    pub fn sampler_variant(&self) -> &'static str {
        match self.sampler {
            Some("sample_task_regs") => "sample_task_regs (bpf_task_pt_regs, Linux 5.15+)",
            Some(_) => "sample_stack_regs (saved registers read off the task's kernel stack: no bpf_task_pt_regs before 5.15)",
            None => "none",
        }
    }

    /// What `record --dry-run` prints: the hooks it would attach, and the packet path.
    pub fn dry_run(
        &self,
        path: &PacketPath,
        with_syscalls: bool,
        sampler_hz: u64,
        stacks: bool,
    ) -> Vec<String> {
        let hooks: Vec<String> = PROGRAMS
            .iter()
            .filter(|p| p.role == Role::Waits || (p.role == Role::Syscalls && with_syscalls))
            .map(Program::hook_name)
            .collect();
        let mut packets = format!("{}: {}", path.hook.name(), path.reason());
        if path.hook == PacketHook::Kprobe {
            if let Err(why) = super::preflight::kprobe_support() {
                packets.push_str(&format!(
                    "; {}",
                    if path.may_fall_back() {
                        format!("but {why}: the tracepoint would serve instead")
                    } else {
                        format!("attaching it would fail: {why}")
                    }
                ));
            }
        }
        // Read back from the kernel's side: the programs that hold a verified fd now.
        let verified: Vec<&str> = PROGRAMS
            .iter()
            .filter(|p| {
                self.ebpf
                    .program(p.name)
                    .is_some_and(|prog| prog.fd().is_ok())
            })
            .map(|p| p.name)
            .collect();
        let mut out = vec![
            "dry run: every program passed the verifier; nothing attached".to_string(),
            format!("verified: {}", verified.join(" ")),
            format!("would attach: {}", hooks.join(" ")),
            format!("packets via: {packets}"),
        ];
        match self.sampler {
            Some(name) => out.push(format!(
                "would sample: perf_event cpu-clock at {sampler_hz} Hz on each online CPU ({name}), recording only while an RX wait is pending{}",
                if stacks { ", with kernel and user stacks" } else { "" }
            )),
            None => out.push("no sampler on this kernel".into()),
        }
        out.extend(self.degraded.iter().map(|d| format!("degraded: {d}")));
        out
    }

    /// Attaches the state tracepoints, the syscall ones if asked, and the packet hook
    /// the plan decided. Returns the packet path as attached: the tracepoint, saying
    /// why, when the kprobe `auto` chose did not attach.
    pub fn attach(
        &mut self,
        path: &PacketPath,
        with_syscalls: bool,
    ) -> Result<PacketPath, LoadError> {
        for p in PROGRAMS {
            if p.role == Role::Waits || (p.role == Role::Syscalls && with_syscalls) {
                self.attach_one(p)?;
            }
        }
        let tracepoint = program("netif_receive_skb")?;
        let kprobe = program("icmp_echo")?;
        match path.hook {
            PacketHook::Tracepoint => {
                self.attach_one(tracepoint)?;
                Ok(path.clone())
            }
            PacketHook::Kprobe => {
                let attached = match super::preflight::kprobe_support() {
                    Ok(()) => self.attach_one(kprobe),
                    Err(why) => Err(LoadError::KprobeUnavailable {
                        hook: kprobe.hook_name(),
                        why,
                    }),
                };
                match attached {
                    Ok(()) => Ok(path.clone()),
                    Err(e) if path.may_fall_back() => {
                        self.attach_one(tracepoint)?;
                        Ok(path.fell_back(e.to_string()))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Attaches a raw tracepoint or kprobe program (the sampler has its own call).
    fn attach_one(&mut self, p: &Program) -> Result<(), LoadError> {
        let hook = p.hook_name();
        let prog = self
            .ebpf
            .program_mut(p.name)
            .ok_or_else(|| LoadError::Object(format!("program {} missing", p.name)))?;
        let attached = match p.hook {
            Hook::RawTracepoint { name, .. } => <&mut RawTracePoint>::try_from(prog)
                .map_err(|e| LoadError::Object(format!("{}: {e}", p.name)))?
                .attach(name)
                .map(drop),
            Hook::Kprobe { function } => <&mut KProbe>::try_from(prog)
                .map_err(|e| LoadError::Object(format!("{}: {e}", p.name)))?
                .attach(function, 0)
                .map(drop),
            Hook::CpuClock => {
                return Err(LoadError::Object(format!("{} attaches per CPU", p.name)))
            }
        };
        attached.map_err(|e| LoadError::Attach {
            hook: hook.clone(),
            why: format!("{e:#}"),
        })?;
        if matches!(p.hook, Hook::Kprobe { .. }) {
            self.packet_hook = "kprobe";
        }
        log::info!("attached {} to {hook}", p.name);
        self.hooks.push(hook);
        Ok(())
    }

    /// Starts the sampler: one software cpu-clock perf event per online CPU at `hz`
    /// samples a second, each running the sampler program (which records only while an
    /// RX wait is pending on its CPU). Returns the CPUs sampled.
    pub fn attach_sampler(&mut self, hz: u64) -> Result<Vec<u32>, LoadError> {
        let cpus = aya::util::online_cpus().map_err(|(path, e)| LoadError::PerfUnavailable {
            why: format!("the online CPUs could not be read from {path}: {e}"),
        })?;
        let name = self.sampler.ok_or_else(|| LoadError::PerfUnavailable {
            why: "no sampler program loaded on this kernel".into(),
        })?;
        let pe: &mut PerfEvent = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::Object(format!("program {name} missing")))?
            .try_into()
            .map_err(|e| LoadError::Object(format!("{name}: {e}")))?;
        for &cpu in &cpus {
            pe.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                false,
            )
            .map_err(|e| LoadError::PerfUnavailable {
                why: format!("opening the cpu-clock event on CPU {cpu} failed: {e:#}"),
            })?;
        }
        log::info!("attached {name} to perf_event:cpu-clock@{hz}Hz on CPUs {cpus:?}");
        self.hooks.push(format!("perf_event:cpu-clock@{hz}Hz"));
        Ok(cpus)
    }

    /// The stack map, taken out so the stack symbolizer can own it.
    pub fn take_stacks(&mut self) -> Result<StackTraceMap<MapData>, LoadError> {
        let m = self
            .ebpf
            .take_map("STACKS")
            .ok_or_else(|| LoadError::Map("STACKS", "missing".into()))?;
        StackTraceMap::try_from(m).map_err(|e| LoadError::Map("STACKS", e.to_string()))
    }

    /// The ring buffer, taken out so the reader can own it.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let m = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| LoadError::Map("EVENTS", "missing".into()))?;
        RingBuf::try_from(m).map_err(|e| LoadError::Map("EVENTS", e.to_string()))
    }

    /// Failed ring-buffer reserves so far, summed over CPUs.
    pub fn lost(&self) -> Result<Lost, LoadError> {
        let m = self
            .ebpf
            .map("LOST")
            .ok_or_else(|| LoadError::Map("LOST", "missing".into()))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(m).map_err(|e| LoadError::Map("LOST", e.to_string()))?;
        let mut by_kind = [0u64; LOST_SLOTS as usize];
        for (k, slot) in by_kind.iter_mut().enumerate() {
            let vals = arr
                .get(&(k as u32), 0)
                .map_err(|e| LoadError::Map("LOST", e.to_string()))?;
            *slot = vals.iter().sum();
        }
        Ok(Lost {
            packets: by_kind[EventKind::Packet as usize],
            waits: by_kind[EventKind::SoftirqWait as usize]
                + by_kind[EventKind::RxThreadWait as usize],
            syscalls: by_kind[EventKind::Syscall as usize],
            stack_samples: 0,
            samples: by_kind[EventKind::Sample as usize],
            table_full: by_kind[LOST_RX_WAKE as usize] + by_kind[LOST_PARKED as usize],
            unread_at_exit: 0,
            evicted: 0,
        })
    }

    /// Per-CPU delay histograms: (NET_RX raise→entry, RX-thread wakeup→run).
    pub fn hists(&self) -> Result<Hists, LoadError> {
        let m = self
            .ebpf
            .map("HISTS")
            .ok_or_else(|| LoadError::Map("HISTS", "missing".into()))?;
        let arr: PerCpuArray<_, Hist> =
            PerCpuArray::try_from(m).map_err(|e| LoadError::Map("HISTS", e.to_string()))?;
        let read = |slot: u32| -> Result<Vec<CpuHist>, LoadError> {
            let vals = arr
                .get(&slot, 0)
                .map_err(|e| LoadError::Map("HISTS", e.to_string()))?;
            Ok(vals
                .iter()
                .enumerate()
                .filter(|(_, h)| h.buckets.iter().any(|&b| b != 0))
                .map(|(cpu, h)| CpuHist {
                    cpu: cpu as u32,
                    buckets: h.buckets.to_vec(),
                })
                .collect())
        };
        Ok(Hists {
            net_rx: read(HIST_NET_RX)?,
            rx_thread: read(HIST_RX_THREAD)?,
            net_tx: read(HIST_NET_TX)?,
            timer: read(HIST_TIMER)?,
        })
    }
}

impl Tracer {
    /// Time and runs of each loaded program so far (counted by the kernel while
    /// `kernel.bpf_stats_enabled` is 1): (name, run time ns, runs).
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                let t = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                Some((name.to_string(), t, info.run_count()))
            })
            .collect()
    }
}

/// The oldest kernel the object can load on: the BPF ring buffer and
/// `bpf_ktime_get_boot_ns` came in 5.8 (`--btf` makes up for missing BTF, not for
/// these). Known from the helpers' history, not tested: the matrix's oldest is 5.10.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// What to say when the object does not load on a kernel older than [`MIN_KERNEL`].
fn too_old_hint() -> String {
    let release = crate::sys::kernel_release();
    if crate::host::kernel_at_least(&release, MIN_KERNEL.0, MIN_KERNEL.1) {
        return String::new();
    }
    format!(
        " (this kernel, {release}, is older than {}.{}, which stalltrace needs: the BPF ring buffer and bpf_ktime_get_boot_ns)",
        MIN_KERNEL.0, MIN_KERNEL.1
    )
}

/// The verifier's log can be long; keep its last lines, which say why.
fn verifier_msg(e: &aya::programs::ProgramError) -> String {
    let full = format!("{e:#}");
    let lines: Vec<&str> = full.lines().collect();
    if lines.len() > 12 {
        format!(
            "{}\n...\n{}",
            lines[0],
            lines[lines.len() - 10..].join("\n")
        )
    } else {
        full
    }
}

#[cfg(test)]
mod tests {
    /// The numbers the sampler gets are x86_64's, as arch/x86/entry/syscalls/syscall_64.tbl
    /// lists them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn path_syscalls_are_x86_64_numbers() {
        let p = super::path_syscalls();
        assert_eq!(p.in_arg0[..6], [2, 4, 6, 21, 89, u32::MAX]);
        assert_eq!(p.in_arg1[..7], [257, 262, 267, 269, 332, 437, u32::MAX]);
    }
}
