//! The always-on sampler and `record` on an idle node, each against the floor.
//!
//! 1. Idle: `record` in its default mode on a node with no traffic: bpf_stats of every
//!    program, record's own CPU (user+sys) and RSS. Nearly every sampler tick finds no
//!    RX wait pending and returns early: its ns per run is the cost per idle tick. Then
//!    the floor (an empty cpu-clock program at the same rate) on the same idle node.
//! 2. Stall: `record --probe` into the threaded-NAPI namespace while a SCHED_FIFO hog
//!    holds CPU 1 (where that namespace's RX thread runs) in 100 ms bursts: the sampler
//!    records the hog at every tick of every wait. The cost per recorded sample is the
//!    sampler's run time minus its idle ticks (at the idle cost), divided by the
//!    samples the dump's footer counts. Then the floor under the same hog.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bpf::{self, delta, snapshot, Programs};
use crate::ctx::{Ctx, Mode, HOG_NAME};
use crate::sys::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Idle {
    pub(crate) secs: f64,
    pub(crate) cpu_pct: f64,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) kernel_bpf_cpu_pct: f64,
    pub(crate) sampler_ns_per_tick: Option<f64>,
    pub(crate) sampler_ticks_per_s: f64,
    pub(crate) samples_recorded: u64,
    pub(crate) programs: Programs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Stall {
    pub(crate) secs: f64,
    pub(crate) hog: String,
    pub(crate) samples_recorded: u64,
    pub(crate) samples_attributed: u64,
    pub(crate) sampler_runs: u64,
    pub(crate) sampler_run_time_ns: u64,
    pub(crate) sampler_ns_per_sample: Option<f64>,
    pub(crate) record_cpu_pct: f64,
    pub(crate) culprit_named: bool,
    pub(crate) waits: u64,
    pub(crate) lost: u64,
    pub(crate) programs: Programs,
}

/// The empty cpu-clock program's ns per tick.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct FloorTicks {
    pub(crate) idle_ns_per_tick: Option<f64>,
    pub(crate) stall_ns_per_tick: Option<f64>,
    pub(crate) idle_programs: Programs,
    pub(crate) stall_programs: Programs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SamplerPart {
    pub(crate) idle: Idle,
    pub(crate) stall: Stall,
    pub(crate) floor: FloorTicks,
}

/// Bpf_stats of `ids` over `secs` (and what `during` does meanwhile).
fn costs_over(
    cx: &mut Ctx,
    ids: &[u64],
    during: impl FnOnce(&mut Ctx) -> anyhow::Result<()>,
) -> anyhow::Result<(Programs, f64)> {
    cx.stats.set(true)?;
    let s0 = snapshot(ids)?;
    let t0 = Instant::now();
    let r = during(cx);
    let dt = t0.elapsed().as_secs_f64();
    let s1 = snapshot(ids)?;
    cx.stats.set(false)?;
    r?;
    Ok((delta(&s0, &s1, dt), dt))
}

fn tick_ns(p: &Programs) -> Option<f64> {
    bpf::sampler(p).and_then(|c| c.ns_per_run())
}

/// Runs the hog for `secs` and waits for it to exit.
fn hog_for(cx: &mut Ctx, secs: u64) -> anyhow::Result<()> {
    let mut hog = cx.start_hog(secs)?;
    pause(Duration::from_secs(secs))?;
    for _ in 0..50 {
        if hog
            .child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    hog.stop(Duration::from_secs(1));
    Ok(())
}

pub(crate) fn run(cx: &mut Ctx) -> anyhow::Result<SamplerPart> {
    let idle_secs = if cx.quick { 3.0 } else { 10.0 };
    println!("bench: record on an idle node ({idle_secs} s), then the sampler during a stall; the floor after each");
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
    let pid = p.pid();
    let c0 = cpu_secs(pid);
    let (costs, dt) = costs_over(cx, &ids, |_| pause(Duration::from_secs_f64(idle_secs)))?;
    let c1 = cpu_secs(pid);
    let rss = status_kib(pid, "VmRSS");
    p.stop(Duration::from_secs(20));
    let idle_samples = footer_of(&dump)
        .and_then(|f| f.sampler)
        .map_or(0, |s| s.samples);
    let _ = std::fs::remove_file(&dump);
    let kernel_ns: u64 = costs.values().map(|c| c.run_time_ns).sum();
    // The few samples an idle node records (a rare NET_RX raise) are charged to ticks.
    let idle_tick_ns = tick_ns(&costs);
    let ticks = bpf::sampler(&costs).map_or(0, |c| c.run_cnt);
    let idle = Idle {
        secs: dt,
        cpu_pct: 100.0 * (c1 - c0) / dt,
        rss_kib: rss,
        kernel_bpf_cpu_pct: 100.0 * kernel_ns as f64 / 1e9 / dt,
        sampler_ns_per_tick: idle_tick_ns,
        sampler_ticks_per_s: ticks as f64 / dt,
        samples_recorded: idle_samples,
        programs: costs,
    };
    println!(
        "  idle: record {:.2}% of a CPU, its programs {:.2}%; sampler {} ns per tick at {:.0} ticks/s",
        idle.cpu_pct,
        idle.kernel_bpf_cpu_pct,
        crate::stats::num(idle_tick_ns, 0),
        idle.sampler_ticks_per_s
    );
    let mut floor = FloorTicks::default();
    if let Some((mut f, ids, _)) = cx.start_tracer(Mode::Floor, &[])? {
        pause(Duration::from_millis(500))?;
        let (c, _) = costs_over(cx, &ids, |_| pause(Duration::from_secs_f64(idle_secs)))?;
        f.stop(Duration::from_secs(10));
        floor.idle_ns_per_tick = tick_ns(&c);
        floor.idle_programs = c;
        println!(
            "  idle, floor: empty cpu-clock program {} ns per tick",
            crate::stats::num(floor.idle_ns_per_tick, 0)
        );
    }

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
    let c0 = cpu_secs(p.pid());
    let pid = p.pid();
    let (costs, dt) = costs_over(cx, &ids, |cx| hog_for(cx, secs))?;
    let c1 = cpu_secs(pid);
    pause(Duration::from_millis(300))?;
    let text = p.stop(Duration::from_secs(30));
    let footer = footer_of(&dump).unwrap_or_default();
    let _ = std::fs::remove_file(&dump);
    let sampler = footer.sampler.clone().unwrap_or_default();
    let samples = sampler.samples;
    // No sampler program (a kernel where neither loads): reported as missing, not fatal.
    let (tt, tn) = bpf::sampler(&costs).map_or((0, 0), |c| (c.run_time_ns, c.run_cnt));
    // An estimate: when idle ticks (cold caches) cost more than the stall's average
    // run, it goes below zero and says nothing.
    let per_sample = match idle_tick_ns {
        Some(idle) if samples > 0 => {
            Some((tt as f64 - tn.saturating_sub(samples) as f64 * idle) / samples as f64)
                .filter(|v| *v > 0.0)
        }
        _ => None,
    };
    let named = text.contains(HOG_NAME);
    println!(
        "  stall: {samples} samples in {dt:.1} s ({tn} sampler runs): {} ns per recorded sample; culprit {HOG_NAME} named: {named}",
        crate::stats::num(per_sample, 0)
    );
    let stall = Stall {
        secs: dt,
        hog: format!(
            "stalltrace hog --cpu 1 --fifo 50 --burst 100ms --gap 30ms --duration {secs}s"
        ),
        samples_recorded: samples,
        samples_attributed: sampler.attributed,
        sampler_runs: tn,
        sampler_run_time_ns: tt,
        sampler_ns_per_sample: per_sample,
        record_cpu_pct: 100.0 * (c1 - c0) / dt,
        culprit_named: named,
        waits: footer.counts.waits,
        lost: footer.lost.total(),
        programs: costs,
    };
    if let Some((mut f, ids, _)) = cx.start_tracer(Mode::Floor, &[])? {
        pause(Duration::from_millis(500))?;
        let (c, _) = costs_over(cx, &ids, |cx| hog_for(cx, secs))?;
        f.stop(Duration::from_secs(10));
        floor.stall_ns_per_tick = tick_ns(&c);
        floor.stall_programs = c;
        println!(
            "  stall, floor: empty cpu-clock program {} ns per tick",
            crate::stats::num(floor.stall_ns_per_tick, 0)
        );
    }
    Ok(SamplerPart { idle, stall, floor })
}
