//! The soak (`--soak 30m`): `record --probe` into the threaded-NAPI namespace (10 ms
//! probes) for the whole duration, under a repeating minute of phases: 15 s of a full
//! echo flood into the flood namespace (filtered out in the kernel: every hook runs,
//! nothing is recorded), 15 s of a SCHED_FIFO hog on CPU 1 (the probed namespace's RX
//! thread starves: real stalls, waits, samples, episodes), 15 s of a 5 000/s echo
//! flood into the probed namespace (recorded: the correlator and the dump work), 15 s
//! quiet. Every 10 s: the recorder's RSS, open fds, CPU time and the dump's size. At
//! the end: first/last/max, the footer's counts and lost events.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::sys::*;

/// One reading of the recorder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub(crate) t_s: u64,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) fds: Option<usize>,
    pub(crate) cpu_s: f64,
    pub(crate) dump_bytes: Option<u64>,
}

/// First, last, min and max of a series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Range {
    pub(crate) first: Option<f64>,
    pub(crate) last: Option<f64>,
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
}

impl Range {
    fn of(v: &[f64]) -> Self {
        Self {
            first: v.first().copied(),
            last: v.last().copied(),
            min: v.iter().copied().reduce(f64::min),
            max: v.iter().copied().reduce(f64::max),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Soak {
    pub(crate) secs: f64,
    pub(crate) phases: Vec<String>,
    pub(crate) phase_s: u64,
    pub(crate) phases_run: [u32; 4],
    pub(crate) sample_every_s: u64,
    pub(crate) rss_kib: Range,
    pub(crate) rss_growth_after_first_minute_kib: Option<f64>,
    pub(crate) fds: Range,
    pub(crate) record_cpu_pct: Option<f64>,
    pub(crate) dump_bytes: Option<u64>,
    pub(crate) footer: Option<stalltrace_analysis::dump::Footer>,
    pub(crate) warnings: Vec<String>,
    pub(crate) samples: Vec<Sample>,
}

const PHASES: [&str; 4] = [
    "flood (unmatched)",
    "stall (hog on CPU 1)",
    "matched flood 5k/s",
    "quiet",
];
const PHASE_S: u64 = 15;
const SAMPLE_S: u64 = 10;

pub(crate) fn run(cx: &mut Ctx, secs: u64) -> anyhow::Result<Soak> {
    let addr = cx.stall_ns()?;
    println!(
        "bench: soak for {secs} s: record --probe {addr}; phases of {PHASE_S} s: {}; RSS and fds every {SAMPLE_S} s",
        PHASES.join(", ")
    );
    let dump = cx.dump_path("soak");
    let args: Vec<String> = vec![
        "record".into(),
        "--quiet".into(),
        "--force".into(),
        "--duration".into(),
        format!("{}s", secs + 600),
        "--probe".into(),
        addr.clone(),
        "-o".into(),
        dump.display().to_string(),
    ];
    let (mut rec, _) = cx.start_stalltrace("soak-record", &args, "recording to")?;
    let pid = rec.pid();
    let t0 = Instant::now();
    let mut samples: Vec<Sample> = vec![];
    let mut next_sample = 0u64;
    let mut phase_i = 0usize;
    let mut phases_run = [0u32; 4];
    let mut load: Option<Proc> = None;
    let mut phase_end = 0u64;
    let result = (|| -> anyhow::Result<()> {
        loop {
            let el = t0.elapsed().as_secs();
            if el >= phase_end && el < secs {
                if let Some(mut l) = load.take() {
                    l.stop(Duration::from_secs(2));
                    let _ = std::fs::remove_file(&l.out);
                }
                let which = phase_i % PHASES.len();
                let left = (secs - el).min(PHASE_S);
                load = match which {
                    0 => {
                        let a = cx.flood.addr.clone();
                        Some(cx.start_flood_to(&a, None, left)?)
                    }
                    1 => Some(cx.start_hog(left)?),
                    2 => Some(cx.start_flood_to(&addr, Some("u200"), left)?),
                    _ => None,
                };
                phases_run[which] += 1;
                phase_i += 1;
                phase_end = el + left;
            }
            if el >= next_sample {
                let s = Sample {
                    t_s: el,
                    rss_kib: status_kib(pid, "VmRSS"),
                    fds: fd_count(pid),
                    cpu_s: cpu_secs(pid),
                    dump_bytes: std::fs::metadata(&dump).map(|m| m.len()).ok(),
                };
                if el % 300 < SAMPLE_S {
                    println!("  soak t={el:>5} s: {s:?}");
                }
                samples.push(s);
                next_sample += SAMPLE_S;
            }
            if el >= secs {
                return Ok(());
            }
            if rec
                .child
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true)
            {
                anyhow::bail!(
                    "the recorder exited during the soak:\n{}",
                    tail(&rec.text(), 20)
                );
            }
            pause(Duration::from_millis(200))?;
        }
    })();
    if let Some(mut l) = load.take() {
        l.stop(Duration::from_secs(2));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    pause(Duration::from_millis(500)).ok();
    let text = rec.stop(Duration::from_secs(60));
    let footer = footer_of(&dump);
    let dump_bytes = std::fs::metadata(&dump).map(|m| m.len()).ok();
    let _ = std::fs::remove_file(&dump);
    result?;
    // After the first cycle (everything allocated once): growth from there to the end.
    let rss: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.rss_kib.map(|k| k as f64))
        .collect();
    let fds: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.fds.map(|k| k as f64))
        .collect();
    let settle = (60 / SAMPLE_S) as usize;
    let rss_growth = match (rss.get(settle), rss.last()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let warnings: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .take(10)
        .map(String::from)
        .collect();
    let cpu = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => Some(100.0 * (b.cpu_s - a.cpu_s) / elapsed),
        _ => None,
    };
    Ok(Soak {
        secs: elapsed,
        phases: PHASES.map(String::from).into(),
        phase_s: PHASE_S,
        phases_run,
        sample_every_s: SAMPLE_S,
        rss_kib: Range::of(&rss),
        rss_growth_after_first_minute_kib: rss_growth,
        fds: Range::of(&fds),
        record_cpu_pct: cpu,
        dump_bytes,
        footer,
        warnings,
        samples,
    })
}
