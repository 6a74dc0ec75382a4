//! Scheduler-heavy load: `taskset -c 1 perf bench sched pipe -l N` (two tasks pinned to
//! one CPU ping-ponging through a pipe: two context switches and two wakeups per loop)
//! untraced, under the floor (empty programs on the same hooks), under `stalltrace
//! record` in its default mode, and under the bpftrace runqslower-style peer, in
//! alternating rounds. Throughput with bpf_stats off; then one more run per tracer and
//! round with it on for `sched_switch`/`sched_wakeup` ns per run.
use std::collections::BTreeMap;
use std::{process::Command, time::Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::bpf::{delta, snapshot, sum, Programs};
use crate::ctx::{Ctx, Mode};
use crate::stats::Spread;
use crate::sys::*;

const MODES: [Mode; 4] = [Mode::None, Mode::Floor, Mode::Default, Mode::Runqslower];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SchedMode {
    pub(crate) label: String,
    pub(crate) ops_per_s: Spread,
    /// Median ops/s over the untraced median.
    pub(crate) ratio_vs_none: Option<f64>,
    /// Per round: ops/s over the untraced run's of the same round.
    pub(crate) ratio_paired: Spread,
    /// bpf_stats summed over the rounds' stats-on runs.
    pub(crate) programs_stats_on: Programs,
    /// ns per run of each program, per round.
    pub(crate) ns_per_run: BTreeMap<String, Spread>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SchedPart {
    pub(crate) loops: u64,
    pub(crate) rounds: usize,
    pub(crate) modes: BTreeMap<String, SchedMode>,
}

/// One `perf bench sched pipe` run: ops per second.
fn pipe_bench(loops: u64) -> anyhow::Result<f64> {
    if stopped() {
        bail!("interrupted; cleaning up");
    }
    let out = Command::new("taskset")
        .args(["-c", "1", "perf", "bench", "sched", "pipe", "-l"])
        .arg(loops.to_string())
        .output()
        .context("running perf bench sched pipe")?;
    if !out.status.success() {
        bail!(
            "perf bench sched pipe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_suffix("ops/sec"))
        .and_then(|x| x.trim().parse::<f64>().ok())
        .with_context(|| format!("no ops/sec in perf bench's output:\n{text}"))
}

/// ns per run by program name, per round, from each round's costs.
pub(crate) fn per_round_ns(rounds: &[&Programs]) -> BTreeMap<String, Spread> {
    let mut names: Vec<&String> = rounds.iter().flat_map(|p| p.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let v = rounds
                .iter()
                .map(|p| p.get(n).and_then(|c| c.ns_per_run()).unwrap_or(f64::NAN));
            (n.clone(), Spread::of(v))
        })
        .collect()
}

pub(crate) fn run(cx: &mut Ctx, rounds: usize) -> anyhow::Result<SchedPart> {
    let loops: u64 = if cx.quick { 50_000 } else { 200_000 };
    println!(
        "bench: scheduler load: `taskset -c 1 perf bench sched pipe -l {loops}`, {rounds} rounds alternating {}",
        MODES.map(Mode::short).join(" / ")
    );
    let mut ops: Vec<(Mode, usize, f64)> = vec![];
    let mut costs: Vec<(Mode, Programs)> = vec![];
    for r in 0..rounds {
        for m in MODES {
            let tracer = cx.start_tracer(m, &[])?;
            // Two runs with bpf_stats off, the better one kept (a neighbour's burst
            // only ever slows a run down).
            let best = pipe_bench(loops)?.max(pipe_bench(loops)?);
            ops.push((m, r, best));
            if let Some((mut p, ids, dump)) = tracer {
                cx.stats.set(true)?;
                let s0 = snapshot(&ids)?;
                let t0 = Instant::now();
                let on = pipe_bench(loops);
                let dt = t0.elapsed().as_secs_f64();
                let s1 = snapshot(&ids)?;
                cx.stats.set(false)?;
                on?;
                costs.push((m, delta(&s0, &s1, dt)));
                p.stop(std::time::Duration::from_secs(20));
                let _ = std::fs::remove_file(dump);
                let _ = std::fs::remove_file(&p.out);
            }
            println!("  round {} {:<22} {:>9.0} ops/s", r + 1, m.short(), best);
        }
    }
    let of = |m: Mode| -> Vec<f64> { ops.iter().filter(|x| x.0 == m).map(|x| x.2).collect() };
    let none = crate::stats::median(&of(Mode::None));
    let mut modes = BTreeMap::new();
    for m in MODES {
        let paired = ops.iter().filter(|x| x.0 == m).filter_map(|x| {
            ops.iter()
                .find(|n| n.0 == Mode::None && n.1 == x.1)
                .map(|n| x.2 / n.2)
        });
        let mine: Vec<&Programs> = costs.iter().filter(|c| c.0 == m).map(|c| &c.1).collect();
        let ops_s = Spread::of(of(m));
        modes.insert(
            m.key().to_string(),
            SchedMode {
                label: m.label().into(),
                ratio_vs_none: ops_s.median.map(|x| x / none).filter(|x| x.is_finite()),
                ops_per_s: ops_s,
                ratio_paired: Spread::of(paired),
                programs_stats_on: sum(mine.iter().copied()),
                ns_per_run: per_round_ns(&mine),
            },
        );
    }
    Ok(SchedPart {
        loops,
        rounds,
        modes,
    })
}
