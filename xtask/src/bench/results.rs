//! The typed top level of `bench/results.json`: every headline number with the target
//! issue 12 sets for it and whether it was met, then each part's details as measured.
use serde::Serialize;
use serde_json::{json, Map, Value};

/// One headline number next to its target. `met` is None where the issue sets no
/// number (reported, not judged) or the part did not run.
#[derive(Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) value: Option<f64>,
    pub(crate) unit: &'static str,
    pub(crate) target: &'static str,
    pub(crate) met: Option<bool>,
    /// Where the number comes from.
    pub(crate) source: &'static str,
    /// Extra facts that belong to this number (e.g. programs attached).
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

fn finite(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn t(
    value: Option<f64>,
    unit: &'static str,
    target: &'static str,
    ok: Option<fn(f64) -> bool>,
    source: &'static str,
) -> Target {
    Target {
        value,
        unit,
        target,
        met: value.zip(ok).map(|(v, f)| f(v)),
        source,
        extra: Map::new(),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub(crate) machine: Value,
    pub(crate) commit: String,
    pub(crate) date: String,
    pub(crate) quick: bool,
    pub(crate) elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_per_packet_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_all_programs_per_packet_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) syscall_tax_ns: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pps_ratio_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_sched_switch_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_sched_wakeup_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sched_ratio_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_softirq_raise_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_softirq_entry_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_softirq_exit_default: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sampler_ns_per_idle_tick: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sampler_ns_per_sample: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) record_idle_cpu_pct: Option<Target>,
    /// Each part's measurements (kernel, sched, syscalls, sampler, watch, ring_buffer,
    /// analyze, perf, stacks, soak, …), as measured.
    #[serde(flatten)]
    pub(crate) details: Map<String, Value>,
}

impl Results {
    /// Builds the headline from the parts that ran.
    pub(crate) fn new(
        machine: Value,
        commit: String,
        date: String,
        quick: bool,
        elapsed_s: f64,
        details: Map<String, Value>,
    ) -> Self {
        let k = details.get("kernel").cloned().unwrap_or(Value::Null);
        let d = &k["stalltrace_default"];
        let flood_ns = |prog: &str| finite(&d["programs"][prog]["ns_per_run"]);
        let have_k = d.is_object();
        let sched = details.get("sched").cloned().unwrap_or(Value::Null);
        let sys = details.get("syscalls").cloned().unwrap_or(Value::Null);
        let smp = details.get("sampler").cloned().unwrap_or(Value::Null);

        let ns_per_packet_default = have_k.then(|| {
            t(
                flood_ns("netif_receive_skb"),
                "ns per run",
                "< 100",
                Some(|v| v < 100.0),
                "packet hook (netif_receive_skb), default mode (--peer: the flood filtered out in the kernel), bpf_stats during the flood rounds",
            )
        });
        let ns_all_programs_per_packet_default = have_k.then(|| {
            t(
                finite(&d["bpf_ns_per_packet_all_programs"]),
                "ns per received packet",
                "<= 300",
                Some(|v| v <= 300.0),
                "run time of all of record's programs / packets received, default mode, during the flood rounds",
            )
        });
        let pps_ratio_default = have_k.then(|| {
            let mut x = t(
                finite(&d["pps_ratio_vs_none"]),
                "ratio of untraced",
                ">= 0.95 (stretch 0.97)",
                Some(|v| v >= 0.95),
                "echo requests received per second under the flood, default mode vs untraced (medians of the alternating rounds)",
            );
            x.extra.insert(
                "paired_median".into(),
                d["pps_ratio_paired_median"].clone(),
            );
            x.extra.insert(
                "per_flood_cpu_s_ratio".into(),
                d["per_flood_cpu_s_ratio_vs_none"].clone(),
            );
            x.extra
                .insert("stretch_met".into(), json!(x.value.map(|v| v >= 0.97)));
            x
        });
        let softirq = |prog: &str| {
            have_k.then(|| {
                t(
                    flood_ns(prog),
                    "ns per run",
                    "<= 60",
                    Some(|v| v <= 60.0),
                    "bpf_stats during the flood rounds, default mode",
                )
            })
        };
        let sys_d = &sys["stalltrace_default"];
        let syscall_tax_ns = sys_d.is_object().then(|| {
            let n = sys_d["syscall_programs_attached"].as_u64();
            let v = finite(&sys_d["added_ns_median"]);
            let mut x = t(
                v,
                "ns per syscall",
                "<= 5 ns measured, 0 syscall programs attached",
                None,
                "getpid() loop on CPU 1, record in default mode vs untraced (median of the per-round differences of best-of-N runs)",
            );
            x.met = v.zip(n).map(|(v, n)| v <= 5.0 && n == 0);
            x.extra
                .insert("syscall_programs_attached".into(), json!(n));
            x.extra.insert(
                "with_syscalls_flag_ns".into(),
                sys["stalltrace_syscalls"]["added_ns_median"].clone(),
            );
            x.extra.insert(
                "with_syscalls_flag_programs_attached".into(),
                sys["stalltrace_syscalls"]["syscall_programs_attached"].clone(),
            );
            x
        });
        let sd = &sched["stalltrace_default"];
        let sched_ns = |prog: &str, target: &'static str, ok: fn(f64) -> bool| {
            sd.is_object().then(|| {
                let mut x = t(
                    finite(&sd["programs_stats_on"][prog]["ns_per_run"]),
                    "ns per run",
                    target,
                    Some(ok),
                    "bpf_stats during `taskset -c 1 perf bench sched pipe`, record in default mode",
                );
                x.extra
                    .insert("during_flood_ns".into(), json!(flood_ns(prog)));
                x
            })
        };
        let ns_sched_switch_default = sched_ns("sched_switch", "<= 150", |v| v <= 150.0);
        let ns_sched_wakeup_default = sched_ns("sched_wakeup", "<= 100", |v| v <= 100.0);
        let sched_ratio_default = sd.is_object().then(|| {
            let mut x = t(
                finite(&sd["ratio_vs_none"]),
                "ratio of untraced",
                ">= 0.95",
                Some(|v| v >= 0.95),
                "`taskset -c 1 perf bench sched pipe` ops/s, record in default mode vs untraced (medians of the alternating rounds)",
            );
            x.extra
                .insert("paired".into(), sd["ratio_paired"].clone());
            x.extra.insert(
                "bpftrace_runqslower_ratio".into(),
                sched["bpftrace_runqslower"]["ratio_vs_none"].clone(),
            );
            x
        });
        let has_smp = smp.is_object();
        let sampler_ns_per_idle_tick = has_smp.then(|| {
            t(
                finite(&smp["idle"]["sampler_ns_per_tick"]),
                "ns per tick",
                "none set (reported)",
                None,
                "sampler's bpf_stats on an idle node (nearly every tick finds no RX wait pending)",
            )
        });
        let sampler_ns_per_sample = has_smp.then(|| {
            t(
                finite(&smp["stall"]["sampler_ns_per_sample"]),
                "ns per recorded sample",
                "none set (reported)",
                None,
                "sampler's run time during a stall minus its idle ticks, per sample the dump counts",
            )
        });
        let record_idle_cpu_pct = has_smp.then(|| {
            t(
                finite(&smp["idle"]["cpu_pct"]),
                "% of one CPU",
                "none set (reported)",
                None,
                "record's user+sys CPU on an idle node, default mode",
            )
        });
        Self {
            machine,
            commit,
            date,
            quick,
            elapsed_s,
            ns_per_packet_default,
            ns_all_programs_per_packet_default,
            syscall_tax_ns,
            pps_ratio_default,
            ns_sched_switch_default,
            ns_sched_wakeup_default,
            sched_ratio_default,
            ns_softirq_raise_default: softirq("softirq_raise"),
            ns_softirq_entry_default: softirq("softirq_entry"),
            ns_softirq_exit_default: softirq("softirq_exit"),
            sampler_ns_per_idle_tick,
            sampler_ns_per_sample,
            record_idle_cpu_pct,
            details,
        }
    }
}

/// The headline keys in the order results.md lists them.
pub(crate) const HEADLINE: [&str; 13] = [
    "ns_per_packet_default",
    "ns_all_programs_per_packet_default",
    "ns_softirq_raise_default",
    "ns_softirq_entry_default",
    "ns_softirq_exit_default",
    "syscall_tax_ns",
    "pps_ratio_default",
    "ns_sched_switch_default",
    "ns_sched_wakeup_default",
    "sched_ratio_default",
    "sampler_ns_per_idle_tick",
    "sampler_ns_per_sample",
    "record_idle_cpu_pct",
];
