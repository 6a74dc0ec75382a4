//! BPF programs as `bpftool prog show -j` reports them: which ones a tracer holds, and
//! their run statistics (`run_time_ns`, `run_cnt` with `kernel.bpf_stats_enabled=1`)
//! between two snapshots, summed by program name into [`Programs`].
use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::sys::run_cmd;

/// Names of stalltrace's programs (and the floor's, named after the same hooks).
pub(crate) const PROG_NAMES: [&str; 12] = [
    "netif_receive_skb",
    "icmp_echo",
    "softirq_raise",
    "softirq_entry",
    "softirq_exit",
    "sched_switch",
    "sched_wakeup",
    "sys_enter",
    "sys_exit",
    "sample_task_regs",
    "sample_stack_regs",
    "cpu_clock",
];

/// Names of the syscall programs (attached only with `--syscalls`).
pub(crate) const SYSCALL_PROGS: [&str; 2] = ["sys_enter", "sys_exit"];

/// The sampler's programs (one of them loads), and the floor's empty perf program.
pub(crate) const SAMPLERS: [&str; 3] = ["sample_task_regs", "sample_stack_regs", "cpu_clock"];

/// The kernel keeps 15 characters of a program's name.
pub(crate) fn canonical(name: &str) -> String {
    PROG_NAMES
        .iter()
        .find(|n| n.starts_with(name) || name.starts_with(*n))
        .map_or_else(|| name.to_string(), |n| n.to_string())
}

#[derive(Debug, Clone, Default, Deserialize)]
struct BpftoolProg {
    #[serde(default)]
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    run_time_ns: u64,
    #[serde(default)]
    run_cnt: u64,
    #[serde(default)]
    recursion_misses: u64,
}

/// One program's statistics at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prog {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) kind: String,
    run_time_ns: u64,
    run_cnt: u64,
    misses: u64,
}

pub(crate) fn bpftool_progs() -> anyhow::Result<Vec<Prog>> {
    let out = run_cmd(&["bpftool", "prog", "show", "-j"])?;
    let v: Vec<BpftoolProg> = serde_json::from_str(&out).context("parsing bpftool prog show -j")?;
    Ok(v.into_iter()
        .map(|p| Prog {
            id: p.id,
            name: canonical(&p.name),
            kind: p.kind,
            run_time_ns: p.run_time_ns,
            run_cnt: p.run_cnt,
            misses: p.recursion_misses,
        })
        .collect())
}

/// The highest program id now (programs loaded later have higher ids).
pub(crate) fn max_prog_id() -> anyhow::Result<u64> {
    Ok(bpftool_progs()?.iter().map(|p| p.id).max().unwrap_or(0))
}

/// Ids of the BPF programs process `pid` holds open.
pub(crate) fn prog_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = vec![];
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in rd.flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path()) {
            if let Some(id) = s
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|x| x.trim().parse().ok())
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A tracer's programs: the ones it holds open, else (fd-less loaders) programs with
/// our names loaded after `after_id`.
pub(crate) fn tracer_progs(pid: u32, after_id: u64) -> anyhow::Result<Vec<u64>> {
    let ids = prog_ids_of(pid);
    if !ids.is_empty() {
        return Ok(ids);
    }
    Ok(bpftool_progs()?
        .into_iter()
        .filter(|p| p.id > after_id && PROG_NAMES.contains(&p.name.as_str()))
        .map(|p| p.id)
        .collect())
}

pub(crate) type Snapshot = BTreeMap<u64, Prog>;

pub(crate) fn snapshot(ids: &[u64]) -> anyhow::Result<Snapshot> {
    Ok(bpftool_progs()?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| (p.id, p))
        .collect())
}

/// One program's cost over a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProgCost {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) run_time_ns: u64,
    pub(crate) run_cnt: u64,
    pub(crate) recursion_misses: u64,
    /// Seconds the window lasted.
    pub(crate) secs: f64,
}

impl ProgCost {
    pub(crate) fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
    pub(crate) fn runs_per_s(&self) -> Option<f64> {
        (self.secs > 0.0).then(|| self.run_cnt as f64 / self.secs)
    }
    fn add(&mut self, o: &ProgCost) {
        if self.kind.is_empty() {
            self.kind.clone_from(&o.kind);
        }
        self.run_time_ns += o.run_time_ns;
        self.run_cnt += o.run_cnt;
        self.recursion_misses += o.recursion_misses;
        self.secs += o.secs;
    }
}

/// Costs by program name (programs of one name summed).
pub(crate) type Programs = BTreeMap<String, ProgCost>;

/// What ran between two snapshots `secs` apart.
pub(crate) fn delta(a: &Snapshot, b: &Snapshot, secs: f64) -> Programs {
    let mut out = Programs::new();
    for (id, pb) in b {
        let Some(pa) = a.get(id) else { continue };
        let e = out.entry(pb.name.clone()).or_insert_with(|| ProgCost {
            kind: pb.kind.clone(),
            secs,
            ..Default::default()
        });
        e.run_time_ns += pb.run_time_ns.saturating_sub(pa.run_time_ns);
        e.run_cnt += pb.run_cnt.saturating_sub(pa.run_cnt);
        e.recursion_misses += pb.misses.saturating_sub(pa.misses);
    }
    out
}

/// Several windows' costs summed by name.
pub(crate) fn sum<'a>(windows: impl IntoIterator<Item = &'a Programs>) -> Programs {
    let mut out = Programs::new();
    for w in windows {
        for (k, v) in w {
            out.entry(k.clone()).or_default().add(v);
        }
    }
    out
}

/// The sampler's cost among `p` (whichever sampler program loaded).
pub(crate) fn sampler(p: &Programs) -> Option<&ProgCost> {
    SAMPLERS.iter().find_map(|n| p.get(*n))
}

/// Tracing programs attached on this machine other than `ours` (other users' tools).
pub(crate) fn other_tracing_programs(ours: &[u64]) -> Vec<String> {
    bpftool_progs()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            matches!(
                p.kind.as_str(),
                "tracepoint" | "raw_tracepoint" | "kprobe" | "tracing" | "perf_event"
            )
        })
        .filter(|p| !ours.contains(&p.id))
        .map(|p| format!("{} ({})", p.name, p.kind))
        .collect()
}
