//! The typed `bench/results.json`: the machine and run facts, the headline numbers
//! (each with its target, whether it was met, its spread over the rounds and, where
//! the hook has one, the floor: the same figure for an empty program on the same hook
//! in the same run, and the figure as a multiple of it), then each part as measured.
use serde::{Deserialize, Serialize};

use crate::ctx::Mode;
use crate::parts::{
    analyze::AnalyzePart, flood::FloodPart, headroom::Headroom, perf::Profile,
    sampler::SamplerPart, sched::SchedPart, syscall::SyscallPart, watch::WatchPart,
};
use crate::stats::Spread;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) kernel: String,
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) mem_gib: Option<f64>,
    pub(crate) bpftrace: String,
    pub(crate) perf: String,
    pub(crate) loadavg_at_start: String,
    pub(crate) loadavg_at_end: String,
    /// Hypervisor steal over the whole run, % of all CPUs.
    pub(crate) steal_pct: f64,
    pub(crate) rounds: usize,
    pub(crate) rounds_sched_syscalls: usize,
    /// Tracing programs of other users attached when the bench started.
    pub(crate) other_tracing_programs_at_start: Vec<String>,
    pub(crate) tracefs_mounted_by_bench: bool,
    /// Whether this kernel can attach kprobes (else `kprobe:icmp_echo` is not measured).
    pub(crate) kprobes: bool,
}

/// One headline number next to its target and its floor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Target {
    /// The median over the rounds.
    pub(crate) value: Option<f64>,
    /// Its rounds (min, max, each).
    pub(crate) spread: Spread,
    pub(crate) unit: String,
    pub(crate) target: String,
    /// None where no number is set (reported, not judged) or nothing was measured.
    pub(crate) met: Option<bool>,
    /// Where the number comes from.
    pub(crate) source: String,
    /// The same figure for the floor (empty programs on the same hooks, same run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) floor: Option<Spread>,
    /// The figure as a multiple of the floor, per round (for a throughput ratio: the
    /// loss against untraced as a multiple of the floor's loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) multiple_of_floor: Option<Spread>,
    /// What else belongs to the number (a peer's figure, programs attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

impl Target {
    fn new(
        spread: Spread,
        unit: &str,
        target: &str,
        ok: Option<fn(f64) -> bool>,
        source: &str,
    ) -> Self {
        Self {
            value: spread.median,
            met: spread.median.zip(ok).map(|(v, f)| f(v)),
            spread,
            unit: unit.into(),
            target: target.into(),
            source: source.into(),
            ..Default::default()
        }
    }

    /// With the floor `f` and the multiple per round.
    fn floor(mut self, f: &Spread, multiple: impl Fn(f64, f64) -> f64) -> Self {
        let m = self
            .spread
            .runs
            .iter()
            .zip(&f.runs)
            .map(|(a, b)| multiple(*a, *b));
        self.multiple_of_floor = Some(Spread::of(m));
        self.floor = Some(f.clone());
        self
    }

    fn note(mut self, n: String) -> Self {
        self.note = Some(n);
        self
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

/// The loss against untraced (1 − ratio) as a multiple of the floor's.
fn loss_multiple(a: f64, f: f64) -> f64 {
    let m = (1.0 - a) / (1.0 - f);
    if 1.0 - f > 0.0 {
        m
    } else {
        f64::NAN
    }
}

/// The headline, in the order results.md lists it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Headline {
    pub(crate) ns_per_packet_default: Option<Target>,
    pub(crate) ns_all_programs_per_packet_default: Option<Target>,
    pub(crate) ns_softirq_raise_default: Option<Target>,
    pub(crate) ns_softirq_entry_default: Option<Target>,
    pub(crate) ns_softirq_exit_default: Option<Target>,
    pub(crate) ns_per_echo_every: Option<Target>,
    pub(crate) overhead_ratio_vs_bpftrace: Option<Target>,
    pub(crate) pps_ratio_default: Option<Target>,
    pub(crate) syscall_tax_ns: Option<Target>,
    pub(crate) syscalls_flag_added_ns: Option<Target>,
    pub(crate) ns_sched_switch_default: Option<Target>,
    pub(crate) ns_sched_wakeup_default: Option<Target>,
    pub(crate) sched_ratio_default: Option<Target>,
    pub(crate) sampler_ns_per_idle_tick: Option<Target>,
    pub(crate) sampler_ns_per_tick_stall: Option<Target>,
    pub(crate) record_idle_cpu_pct: Option<Target>,
    pub(crate) analyze_events_per_s: Option<Target>,
    pub(crate) analyze_dir_events_per_s: Option<Target>,
}

impl Headline {
    /// (key, target) in order.
    pub(crate) fn rows(&self) -> Vec<(&'static str, &Target)> {
        let all = [
            ("ns_per_packet_default", &self.ns_per_packet_default),
            (
                "ns_all_programs_per_packet_default",
                &self.ns_all_programs_per_packet_default,
            ),
            ("ns_softirq_raise_default", &self.ns_softirq_raise_default),
            ("ns_softirq_entry_default", &self.ns_softirq_entry_default),
            ("ns_softirq_exit_default", &self.ns_softirq_exit_default),
            ("ns_per_echo_every", &self.ns_per_echo_every),
            (
                "overhead_ratio_vs_bpftrace",
                &self.overhead_ratio_vs_bpftrace,
            ),
            ("pps_ratio_default", &self.pps_ratio_default),
            ("syscall_tax_ns", &self.syscall_tax_ns),
            ("syscalls_flag_added_ns", &self.syscalls_flag_added_ns),
            ("ns_sched_switch_default", &self.ns_sched_switch_default),
            ("ns_sched_wakeup_default", &self.ns_sched_wakeup_default),
            ("sched_ratio_default", &self.sched_ratio_default),
            ("sampler_ns_per_idle_tick", &self.sampler_ns_per_idle_tick),
            ("sampler_ns_per_tick_stall", &self.sampler_ns_per_tick_stall),
            ("record_idle_cpu_pct", &self.record_idle_cpu_pct),
            ("analyze_events_per_s", &self.analyze_events_per_s),
            ("analyze_dir_events_per_s", &self.analyze_dir_events_per_s),
        ];
        all.into_iter()
            .filter_map(|(k, t)| t.as_ref().map(|t| (k, t)))
            .collect()
    }
}

/// Every part that ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Parts {
    pub(crate) sampler: Option<SamplerPart>,
    pub(crate) syscalls: Option<SyscallPart>,
    pub(crate) sched: Option<SchedPart>,
    pub(crate) flood: Option<FloodPart>,
    pub(crate) perf: Option<Vec<Profile>>,
    pub(crate) watch: Option<WatchPart>,
    pub(crate) ring_buffer: Option<Headroom>,
    pub(crate) analyze: Option<AnalyzePart>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Results {
    pub(crate) commit: String,
    pub(crate) date: String,
    pub(crate) quick: bool,
    /// Only some parts ran (`--only`).
    pub(crate) partial: bool,
    pub(crate) elapsed_s: f64,
    pub(crate) machine: Machine,
    pub(crate) headline: Headline,
    #[serde(flatten)]
    pub(crate) parts: Parts,
}

fn spread_of(s: Option<&Spread>) -> Spread {
    s.cloned().unwrap_or_default()
}

impl Headline {
    /// The headline from the parts that ran.
    pub(crate) fn new(p: &Parts) -> Self {
        let mut h = Headline::default();
        if let Some(f) = &p.flood {
            let d = f.mode(Mode::Default);
            let fl = f.mode(Mode::Floor);
            let prog = |m: Option<&crate::parts::flood::FloodMode>, n: &str| {
                spread_of(m.and_then(|m| m.ns_per_run.get(n)))
            };
            let hook = |n: &str, target: &str, ok: fn(f64) -> bool, src: &str| {
                Target::new(prog(d, n), "ns per run", target, Some(ok), src)
                    .floor(&prog(fl, n), ratio)
            };
            h.ns_per_packet_default = Some(hook(
                "netif_receive_skb",
                "< 100",
                |v| v < 100.0,
                "packet hook (raw tracepoint netif_receive_skb), default mode (--peer: the flood filtered out in the kernel), bpf_stats during the flood rounds",
            ));
            h.ns_all_programs_per_packet_default = Some(
                Target::new(
                    d.map(|m| m.bpf_ns_per_packet_all_programs.clone()).unwrap_or_default(),
                    "ns per received packet",
                    "<= 300",
                    Some(|v| v <= 300.0),
                    "run time of all of record's programs / packets received, default mode, during the flood rounds",
                )
                .floor(
                    &fl.map(|m| m.bpf_ns_per_packet_all_programs.clone()).unwrap_or_default(),
                    ratio,
                ),
            );
            for (slot, n) in [
                (&mut h.ns_softirq_raise_default, "softirq_raise"),
                (&mut h.ns_softirq_entry_default, "softirq_entry"),
                (&mut h.ns_softirq_exit_default, "softirq_exit"),
            ] {
                *slot = Some(hook(
                    n,
                    "<= 60",
                    |v| v <= 60.0,
                    "raw tracepoint, bpf_stats during the flood rounds, default mode",
                ));
            }
            let every = prog(f.mode(Mode::Every), "netif_receive_skb");
            let bt = prog(f.mode(Mode::Bpftrace), "netif_receive_skb");
            h.ns_per_echo_every = Some(
                Target::new(
                    every.clone(),
                    "ns per run",
                    "none set (reported)",
                    None,
                    "packet hook recording every echo (no filter), bpf_stats during the flood rounds",
                )
                .floor(&prog(fl, "netif_receive_skb"), ratio)
                .note(format!(
                    "bpftrace's hook on the same tracepoint: {} ns",
                    bt.show(0)
                )),
            );
            let per_round = every.runs.iter().zip(&bt.runs).map(|(a, b)| a / b);
            h.overhead_ratio_vs_bpftrace = Some(Target::new(
                Spread::of(per_round),
                "ratio of bpftrace's ns per recorded echo",
                "<= 0.1",
                Some(|v| v <= 0.1),
                "every-echo packet hook / bpftrace bench/seed-equivalent.bt's, per round",
            ));
            let paired = |m: Option<&crate::parts::flood::FloodMode>| {
                m.map(|m| m.pps_ratio_paired.clone()).unwrap_or_default()
            };
            let mut t = Target::new(
                paired(d),
                "ratio of untraced",
                ">= 0.95 (stretch 0.97)",
                Some(|v| v >= 0.95),
                "echo requests received per second under the flood, default mode / untraced in the same round",
            )
            .floor(&paired(fl), loss_multiple);
            t.note = Some(format!(
                "per flood CPU-second {}; floor {}",
                crate::stats::num(d.and_then(|m| m.per_flood_cpu_s_ratio_vs_none), 3),
                crate::stats::num(fl.and_then(|m| m.per_flood_cpu_s_ratio_vs_none), 3)
            ));
            h.pps_ratio_default = Some(t);
        }
        if let Some(s) = &p.syscalls {
            let added = |m: Mode| {
                s.modes
                    .get(m.key())
                    .map(|x| x.added_ns.clone())
                    .unwrap_or_default()
            };
            let attached = |m: Mode| s.modes.get(m.key()).map_or(0, |x| x.syscall_programs.len());
            let n = attached(Mode::Default);
            let mut t = Target::new(
                added(Mode::Default),
                "ns per syscall",
                "<= 5 ns measured, 0 syscall programs attached",
                None,
                "getpid() loop on CPU 1, record in default mode minus untraced, per round (best-of-N runs)",
            );
            t.met = t.value.map(|v| v <= 5.0 && n == 0);
            h.syscall_tax_ns = Some(t.note(format!("{n} syscall programs attached")));
            h.syscalls_flag_added_ns = Some(
                Target::new(
                    added(Mode::Syscalls),
                    "ns per syscall",
                    "none set (opt-in)",
                    None,
                    "getpid() loop on CPU 1, record --syscalls minus untraced, per round",
                )
                .floor(&added(Mode::FloorSyscalls), ratio)
                .note(format!(
                    "{} syscall programs attached",
                    attached(Mode::Syscalls)
                )),
            );
        }
        if let Some(s) = &p.sched {
            let d = s.modes.get(Mode::Default.key());
            let fl = s.modes.get(Mode::Floor.key());
            let prog = |m: Option<&crate::parts::sched::SchedMode>, n: &str| {
                spread_of(m.and_then(|m| m.ns_per_run.get(n)))
            };
            // During the flood a NET_RX wait is pending much of the time: the hooks'
            // busy path, against the floor's in the same rounds.
            let flood_ns = |n: &str| {
                let of = |m: Mode| {
                    p.flood
                        .as_ref()
                        .and_then(|f| f.mode(m))
                        .and_then(|x| x.ns_per_run.get(n))
                        .map_or_else(|| "–".into(), |s| s.show(0))
                };
                format!("{} ns, floor {}", of(Mode::Default), of(Mode::Floor))
            };
            for (slot, n, target, ok) in [
                (
                    &mut h.ns_sched_switch_default,
                    "sched_switch",
                    "<= 150",
                    (|v| v <= 150.0) as fn(f64) -> bool,
                ),
                (
                    &mut h.ns_sched_wakeup_default,
                    "sched_wakeup",
                    "<= 100",
                    |v| v <= 100.0,
                ),
            ] {
                *slot = Some(
                    Target::new(
                        prog(d, n),
                        "ns per run",
                        target,
                        Some(ok),
                        "raw tracepoint, bpf_stats during `taskset -c 1 perf bench sched pipe`, record in default mode",
                    )
                    .floor(&prog(fl, n), ratio)
                    .note(format!("during the flood: {}", flood_ns(n))),
                );
            }
            let paired = |m: Option<&crate::parts::sched::SchedMode>| {
                m.map(|m| m.ratio_paired.clone()).unwrap_or_default()
            };
            h.sched_ratio_default = Some(
                Target::new(
                    paired(d),
                    "ratio of untraced",
                    ">= 0.95",
                    Some(|v| v >= 0.95),
                    "`taskset -c 1 perf bench sched pipe` ops/s, record in default mode / untraced in the same round",
                )
                .floor(&paired(fl), loss_multiple)
                .note(format!(
                    "bpftrace runqslower peer: {}",
                    s.modes
                        .get(Mode::Runqslower.key())
                        .map_or("–".into(), |m| m.ratio_paired.show(3))
                )),
            );
        }
        if let Some(s) = &p.sampler {
            let one = |x: Option<f64>| Spread::of(x);
            h.sampler_ns_per_idle_tick = Some(
                Target::new(
                    one(s.idle.sampler_ns_per_tick),
                    "ns per tick",
                    "none set (reported)",
                    None,
                    "perf_event cpu-clock, bpf_stats on an idle node (nearly every tick finds no RX wait pending)",
                )
                .floor(&one(s.floor.idle_ns_per_tick), ratio),
            );
            let st = &s.stall;
            let per_run = (st.sampler_runs > 0)
                .then(|| st.sampler_run_time_ns as f64 / st.sampler_runs as f64);
            h.sampler_ns_per_tick_stall = Some(
                Target::new(
                    one(per_run),
                    "ns per tick",
                    "none set (reported)",
                    None,
                    "perf_event cpu-clock during a stall (a SCHED_FIFO hog starving an RX thread on CPU 1), all ticks; floor: an empty tick under the same hog",
                )
                .floor(&one(s.floor.stall_ns_per_tick), ratio)
                .note(format!(
                    "{} of {} ticks recorded a sample; per recorded sample, the other ticks charged at the idle cost: {} ns",
                    st.samples_recorded,
                    st.sampler_runs,
                    crate::stats::num(st.sampler_ns_per_sample.filter(|v| *v > 0.0), 0)
                )),
            );
            h.record_idle_cpu_pct = Some(Target::new(
                one(Some(s.idle.cpu_pct)),
                "% of one CPU",
                "none set (reported)",
                None,
                "record's user+sys CPU on an idle node, default mode",
            ));
        }
        if let Some(a) = &p.analyze {
            if let Some(big) = a.single.last() {
                h.analyze_events_per_s = Some(
                    Target::new(
                        Spread::of(Some(big.events_per_s)),
                        "events per second",
                        ">= 1 500 000, single-threaded",
                        Some(|v| v >= 1.5e6),
                        "stalltrace analyze of one generated dump (the largest), best of runs",
                    )
                    .note(format!(
                        "{} records, peak RSS {:.1} MiB",
                        crate::stats::thousands(Some(big.records as f64)),
                        big.peak_rss_kib / 1024.0
                    )),
                );
            }
            if let (Some(few), Some(many)) = (a.multi.first(), a.multi.last()) {
                h.analyze_dir_events_per_s = Some(
                    Target::new(
                        Spread::of(Some(many.events_per_s)),
                        "events per second over all dumps",
                        "memory flat in the number of dumps",
                        None,
                        "stalltrace analyze DIR (dumps in parallel, one thread per CPU)",
                    )
                    .note(format!(
                        "{} dumps: peak RSS {:.1} MiB; {} dumps: {:.1} MiB",
                        few.dumps,
                        few.peak_rss_kib / 1024.0,
                        many.dumps,
                        many.peak_rss_kib / 1024.0
                    )),
                );
                if let Some(t) = h.analyze_dir_events_per_s.as_mut() {
                    t.met = Some(many.peak_rss_kib <= few.peak_rss_kib * 1.25 + 4096.0);
                }
            }
        }
        h
    }
}
