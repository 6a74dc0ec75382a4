//! The always-on sampler and record on an idle node.
//!
//! 1. Idle: `record` in its default mode on a node with no traffic; bpf_stats of every
//!    program, record's own CPU (user+sys) and RSS. Nearly every sampler tick finds no
//!    RX wait pending and returns early: its ns per run is the cost per idle tick.
//! 2. Stall: `record --probe` into the threaded-NAPI namespace while a SCHED_FIFO hog
//!    holds CPU 1 (where that namespace's RX thread runs) in 100 ms bursts: the
//!    sampler records the hog at every tick of every wait. The cost per recorded
//!    sample is the sampler's run time minus its idle ticks (at the idle cost), divided
//!    by the samples the dump's footer counts.
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::flood::{Ctx, HOG_NAME};
use super::util::*;

const SAMPLERS: [&str; 2] = ["sample_task_regs", "sample_stack_regs"];

fn sampler_cost(c: &Costs) -> Option<(u64, u64)> {
    SAMPLERS
        .iter()
        .find_map(|n| c.get(*n))
        .map(|(t, n, _, _)| (*t, *n))
}

pub(crate) fn run(cx: &mut Ctx) -> anyhow::Result<Value> {
    let idle_secs = if cx.quick { 3.0 } else { 10.0 };
    println!("bench: record on an idle node ({idle_secs} s), then the sampler during a stall");
    let dump = cx.dump_path("idle");
    let args: Vec<String> = [
        "record",
        "--quiet",
        "--force",
        "--duration",
        "600s",
        "-o",
        &dump.display().to_string(),
    ]
    .map(String::from)
    .into();
    let (mut p, ids) = cx.start_stalltrace("record-idle", &args, "recording to")?;
    pause(Duration::from_millis(500))?;
    cx.stats.set(true)?;
    let s0 = snapshot(&ids)?;
    let c0 = cpu_secs(p.pid());
    let t0 = Instant::now();
    pause(Duration::from_secs_f64(idle_secs))?;
    let c1 = cpu_secs(p.pid());
    let dt = t0.elapsed().as_secs_f64();
    let s1 = snapshot(&ids)?;
    cx.stats.set(false)?;
    let rss = status_kib(p.pid(), "VmRSS");
    p.stop(Duration::from_secs(20));
    let idle_samples = footer_of(&dump)["sampler"]["samples"].as_u64().unwrap_or(0);
    let _ = std::fs::remove_file(&dump);
    let costs = delta(&s0, &s1);
    let kernel_ns: u64 = costs.values().map(|c| c.0).sum();
    let (st, sn) = sampler_cost(&costs).unwrap_or((0, 0));
    // The few samples an idle node records (a rare NET_RX raise) are charged to ticks.
    let idle_tick_ns = if sn > 0 {
        st as f64 / sn as f64
    } else {
        f64::NAN
    };
    let idle = json!({
        "secs": dt,
        "cpu_pct": 100.0 * (c1 - c0) / dt,
        "rss_kib": rss,
        "kernel_bpf_cpu_pct": 100.0 * kernel_ns as f64 / 1e9 / dt,
        "sampler_ns_per_tick": idle_tick_ns,
        "sampler_ticks_per_s": sn as f64 / dt,
        "samples_recorded": idle_samples,
        "programs": costs_json(&costs, dt),
    });
    println!(
        "  idle: record {:.2}% of a CPU, its programs {:.2}%; sampler {:.0} ns per tick at {:.0} ticks/s",
        100.0 * (c1 - c0) / dt,
        100.0 * kernel_ns as f64 / 1e9 / dt,
        idle_tick_ns,
        sn as f64 / dt
    );

    // 2. During a stall.
    let addr = cx.stall_ns()?;
    let secs: u64 = if cx.quick { 3 } else { 8 };
    let dump = cx.dump_path("stall");
    let args: Vec<String> = [
        "record",
        "--quiet",
        "--force",
        "--duration",
        "600s",
        "--probe",
        &addr,
        "-o",
        &dump.display().to_string(),
    ]
    .map(String::from)
    .into();
    let (mut p, ids) = cx.start_stalltrace("record-stall", &args, "recording to")?;
    pause(Duration::from_millis(500))?;
    cx.stats.set(true)?;
    let s0 = snapshot(&ids)?;
    let c0 = cpu_secs(p.pid());
    let t0 = Instant::now();
    let mut hog = cx.start_hog(secs)?;
    pause(Duration::from_secs(secs))?;
    for _ in 0..50 {
        if hog
            .child
            .as_mut()
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
        {
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    hog.stop(Duration::from_secs(1));
    let dt = t0.elapsed().as_secs_f64();
    let c1 = cpu_secs(p.pid());
    let s1 = snapshot(&ids)?;
    cx.stats.set(false)?;
    pause(Duration::from_millis(300))?;
    let text = p.stop(Duration::from_secs(30));
    let footer = footer_of(&dump);
    let _ = std::fs::remove_file(&dump);
    let samples = footer["sampler"]["samples"].as_u64().unwrap_or(0);
    let costs = delta(&s0, &s1);
    // No sampler program (a kernel where neither loads): reported as missing, not fatal.
    let (tt, tn) = sampler_cost(&costs).unwrap_or((0, 0));
    let per_sample = if samples > 0 && idle_tick_ns.is_finite() {
        (tt as f64 - tn.saturating_sub(samples) as f64 * idle_tick_ns) / samples as f64
    } else {
        f64::NAN
    };
    let named = text.contains(HOG_NAME);
    println!(
        "  stall: {samples} samples in {dt:.1} s ({} sampler runs, {:.0} ns per run on average): {:.0} ns per recorded sample; culprit {HOG_NAME} named: {named}",
        tn,
        tt as f64 / tn.max(1) as f64,
        per_sample
    );
    Ok(json!({
        "idle": idle,
        "stall": {
            "secs": dt,
            "hog": format!("stalltrace hog --cpu 1 --fifo 50 --burst 100ms --gap 30ms --duration {secs}s"),
            "samples_recorded": samples,
            "samples_attributed": footer["sampler"]["attributed"],
            "sampler_runs": tn,
            "sampler_run_time_ns": tt,
            "sampler_ns_per_sample": per_sample,
            "record_cpu_pct": 100.0 * (c1 - c0) / dt,
            "culprit_named": named,
            "waits": footer["counts"]["waits"],
            "lost": footer["lost"],
            "programs": costs_json(&costs, dt),
        },
    }))
}
