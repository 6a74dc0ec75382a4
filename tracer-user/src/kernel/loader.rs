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
    Config, EventKind, Filter, Hist, Offsets, HIST_NET_RX, HIST_NET_TX, HIST_RX_THREAD, HIST_TIMER,
    LOST_SLOTS, STACK_MAP_ENTRIES,
};

use crate::dump::{CpuHist, Lost};

/// The object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// kprobe:icmp_echo where the kernel has kprobes, else the tracepoint.
    Auto,
    /// kprobe:icmp_echo (IPv4 echo requests only; fails where kprobes are missing).
    Kprobe,
    /// tracepoint:net:netif_receive_skb (requests and replies, IPv4/IPv6, TCP).
    Tracepoint,
}

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
    #[error("--stacks needs perf events (a software cpu-clock sampler per CPU), and {why}")]
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
    pub config: Config,
    pub ring_bytes: u32,
    /// `--stacks`: load the sampler and size the stack map (one entry otherwise).
    pub stacks: bool,
}

/// The `--stacks` sampler program.
const STACK_PROG: &str = "stack_sample";

/// Tracepoints of the attribution side, as (program, category, name). All are attached
/// raw (BPF_RAW_TRACEPOINT_OPEN): cheaper, no tracefs needed, and not skipped by the
/// per-CPU recursion guard that classic tracepoint programs share (which drops a
/// softirq or packet event that lands on top of another program, e.g. sys_enter).
const STATE_TPS: &[(&str, &str, &str)] = &[
    ("sched_switch", "sched", "sched_switch"),
    ("sched_wakeup", "sched", "sched_wakeup"),
    ("softirq_raise", "irq", "softirq_raise"),
    ("softirq_entry", "irq", "softirq_entry"),
    ("softirq_exit", "irq", "softirq_exit"),
];
const SYSCALL_TPS: &[(&str, &str, &str)] = &[
    ("sys_enter", "raw_syscalls", "sys_enter"),
    ("sys_exit", "raw_syscalls", "sys_exit"),
];

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
    /// Hooks attached, in the dump's `category:name` form.
    pub hooks: Vec<String>,
    /// `kprobe` or `tracepoint`.
    pub packet_hook: &'static str,
}

impl Tracer {
    /// Loads the object and every program through the verifier, without attaching.
    pub fn load(opts: &LoadOptions, with_syscalls: bool) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("FILTER", &opts.filter, true)
            .override_global("OFFSETS", &opts.offsets, true)
            .override_global("CONFIG", &opts.config, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("STACKS", if opts.stacks { STACK_MAP_ENTRIES } else { 1 })
            .load(OBJECT)
            .map_err(|e| LoadError::Object(format!("{e:#}")))?;
        let mut names: Vec<&str> = STATE_TPS.iter().map(|t| t.0).collect();
        names.push("netif_receive_skb");
        if with_syscalls {
            names.extend(SYSCALL_TPS.iter().map(|t| t.0));
        }
        for name in names {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| LoadError::Object(format!("program {name} missing")))?
                .try_into()
                .map_err(|e| LoadError::Object(format!("{name}: {e}")))?;
            prog.load().map_err(|e| LoadError::Verifier {
                prog: name.into(),
                why: verifier_msg(&e),
            })?;
        }
        let kp: &mut KProbe = ebpf
            .program_mut("icmp_echo")
            .ok_or_else(|| LoadError::Object("program icmp_echo missing".into()))?
            .try_into()
            .map_err(|e| LoadError::Object(format!("icmp_echo: {e}")))?;
        kp.load().map_err(|e| LoadError::Verifier {
            prog: "icmp_echo".into(),
            why: verifier_msg(&e),
        })?;
        if opts.stacks {
            let pe: &mut PerfEvent = ebpf
                .program_mut(STACK_PROG)
                .ok_or_else(|| LoadError::Object(format!("program {STACK_PROG} missing")))?
                .try_into()
                .map_err(|e| LoadError::Object(format!("{STACK_PROG}: {e}")))?;
            pe.load().map_err(|e| LoadError::Verifier {
                prog: STACK_PROG.into(),
                why: verifier_msg(&e),
            })?;
        }
        Ok(Self {
            ebpf,
            hooks: vec![],
            packet_hook: "tracepoint",
        })
    }

    /// Attaches the state tracepoints, the syscall ones if asked, and the packet hook
    /// the mode and the kernel allow. Returns notes for the user (fallbacks).
    pub fn attach(
        &mut self,
        mode: AttachMode,
        with_syscalls: bool,
    ) -> Result<Vec<String>, LoadError> {
        let mut notes = vec![];
        let mut tps: Vec<(&str, &str, &str)> = STATE_TPS.to_vec();
        if with_syscalls {
            tps.extend_from_slice(SYSCALL_TPS);
        }
        for (prog, cat, name) in tps {
            self.attach_tp(prog, cat, name)?;
        }
        let kprobe_ok = super::preflight::kprobe_support();
        match (mode, kprobe_ok) {
            (AttachMode::Tracepoint, _) => {
                self.attach_tp("netif_receive_skb", "net", "netif_receive_skb")?
            }
            (AttachMode::Kprobe, Err(why)) => {
                return Err(LoadError::KprobeUnavailable {
                    hook: "kprobe:icmp_echo".into(),
                    why,
                })
            }
            (AttachMode::Kprobe, Ok(())) => self.attach_kprobe()?,
            (AttachMode::Auto, Ok(())) => match self.attach_kprobe() {
                Ok(()) => notes.push("packets: kprobe:icmp_echo (kprobes available)".into()),
                Err(e) => {
                    notes.push(format!(
                        "packets: {e}; falling back to tracepoint:net:netif_receive_skb"
                    ));
                    self.attach_tp("netif_receive_skb", "net", "netif_receive_skb")?;
                }
            },
            (AttachMode::Auto, Err(why)) => {
                notes.push(format!(
                    "packets: tracepoint:net:netif_receive_skb, because {why}"
                ));
                self.attach_tp("netif_receive_skb", "net", "netif_receive_skb")?;
            }
        }
        Ok(notes)
    }

    fn attach_tp(&mut self, prog: &str, cat: &str, name: &str) -> Result<(), LoadError> {
        let hook = format!("tracepoint:{cat}:{name}");
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| LoadError::Object(format!("program {prog} missing")))?
            .try_into()
            .map_err(|e| LoadError::Object(format!("{prog}: {e}")))?;
        let _ = cat;
        p.attach(name).map_err(|e| LoadError::Attach {
            hook: hook.clone(),
            why: format!("{e:#}"),
        })?;
        self.hooks.push(hook);
        Ok(())
    }

    fn attach_kprobe(&mut self) -> Result<(), LoadError> {
        let hook = "kprobe:icmp_echo".to_string();
        let p: &mut KProbe = self
            .ebpf
            .program_mut("icmp_echo")
            .ok_or_else(|| LoadError::Object("program icmp_echo missing".into()))?
            .try_into()
            .map_err(|e| LoadError::Object(format!("icmp_echo: {e}")))?;
        p.attach("icmp_echo", 0).map_err(|e| LoadError::Attach {
            hook: hook.clone(),
            why: format!("{e:#}"),
        })?;
        self.hooks.push(hook);
        self.packet_hook = "kprobe";
        Ok(())
    }

    /// Starts the stack sampler: one software cpu-clock perf event per online CPU at
    /// `hz` samples a second, each running the sampler program (which records only
    /// while an RX wait is pending on its CPU). Returns the CPUs sampled.
    pub fn attach_stacks(&mut self, hz: u64) -> Result<Vec<u32>, LoadError> {
        let cpus = aya::util::online_cpus().map_err(|(path, e)| LoadError::PerfUnavailable {
            why: format!("the online CPUs could not be read from {path}: {e}"),
        })?;
        let pe: &mut PerfEvent = self
            .ebpf
            .program_mut(STACK_PROG)
            .ok_or_else(|| LoadError::Object(format!("program {STACK_PROG} missing")))?
            .try_into()
            .map_err(|e| LoadError::Object(format!("{STACK_PROG}: {e}")))?;
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
            stack_samples: by_kind[EventKind::StackSample as usize],
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
