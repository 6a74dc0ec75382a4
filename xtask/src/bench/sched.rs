//! Scheduler-heavy load: `taskset -c 1 perf bench sched pipe -l N` (two tasks pinned to
//! one CPU ping-ponging through a pipe: two context switches and two wakeups per loop)
//! untraced, under `stalltrace record` in its default mode, and under the bpftrace
//! runqslower-style peer, in alternating rounds. Throughput with bpf_stats off; then one
//! more run per tracer with it on for `sched_switch`/`sched_wakeup` ns per run.
use std::{process::Command, time::Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::flood::{Ctx, Mode};
use super::util::*;

const MODES: [Mode; 3] = [Mode::None, Mode::Default, Mode::Runqslower];

/// One `perf bench sched pipe` run: ops per second.
fn pipe_bench(loops: u64) -> anyhow::Result<f64> {
    if super::util::stopped() {
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

pub(crate) fn run(cx: &mut Ctx, rounds: usize) -> anyhow::Result<Value> {
    let loops: u64 = if cx.quick { 50_000 } else { 200_000 };
    println!(
        "bench: scheduler load: `taskset -c 1 perf bench sched pipe -l {loops}`, {rounds} rounds alternating {}",
        MODES.map(Mode::short).join(" / ")
    );
    let mut ops: Vec<(Mode, usize, f64)> = vec![];
    let mut costs: Vec<(Mode, Costs, f64)> = vec![];
    for r in 0..rounds {
        for m in MODES {
            let tracer = cx.start_tracer(m, &[])?;
            // Two runs with bpf_stats off, the better one kept (a neighbour's burst
            // only ever slows a run down).
            let a = pipe_bench(loops)?;
            let b = pipe_bench(loops)?;
            let best = a.max(b);
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
                costs.push((m, delta(&s0, &s1), dt));
                p.stop(std::time::Duration::from_secs(20));
                let _ = std::fs::remove_file(dump);
                let _ = std::fs::remove_file(&p.out);
            }
            println!("  round {} {:<22} {:>9.0} ops/s", r + 1, m.short(), best);
        }
    }
    let mut out = serde_json::Map::new();
    let of = |m: Mode| -> Vec<f64> {
        ops.iter()
            .filter(|x| x.0 == m)
            .map(|x| x.2)
            .collect::<Vec<_>>()
    };
    let none = median(&of(Mode::None));
    for m in MODES {
        let paired: Vec<f64> = ops
            .iter()
            .filter(|x| x.0 == m)
            .filter_map(|x| {
                ops.iter()
                    .find(|n| n.0 == Mode::None && n.1 == x.1)
                    .map(|n| x.2 / n.2)
            })
            .collect();
        let mut agg = Costs::new();
        let mut secs = 0.0;
        for (_, c, dt) in costs.iter().filter(|x| x.0 == m) {
            secs += dt;
            for (k, v) in c {
                let e = agg.entry(k.clone()).or_insert((0, 0, 0, v.3.clone()));
                e.0 += v.0;
                e.1 += v.1;
                e.2 += v.2;
            }
        }
        out.insert(
            m.key().into(),
            json!({
                "label": m.label(),
                "ops_per_s_runs": of(m),
                "ops_per_s_median": median(&of(m)),
                "ratio_vs_none": median(&of(m)) / none,
                "ratio_paired": paired,
                "programs_stats_on": costs_json(&agg, secs.max(1e-9)),
            }),
        );
    }
    out.insert("loops".into(), json!(loops));
    out.insert("rounds".into(), json!(rounds));
    Ok(Value::Object(out))
}
