//! Where the time goes: a `perf record` (cpu-clock, CPU 0) of the flood's tasks
//! (hping3 + ksoftirqd/0) under a tracer, its top symbols, and the share of BPF
//! programs, helpers, maps and tracepoint glue among them.
use std::{fs, time::Duration};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::ctx::{Ctx, Mode};
use crate::sys::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Symbol {
    pub(crate) pct: f64,
    pub(crate) symbol: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub(crate) mode: String,
    pub(crate) secs: u64,
    pub(crate) top: Vec<Symbol>,
    /// Share of BPF and tracepoint symbols among the top (a lower bound).
    pub(crate) bpf_symbols_pct: f64,
    pub(crate) error: Option<String>,
}

pub(crate) fn profile(cx: &mut Ctx, mode: Mode) -> anyhow::Result<Profile> {
    println!(
        "bench: perf profile (cpu-clock, CPU 0, the flood's tasks) of a flood under {}",
        mode.short()
    );
    let secs = if cx.quick { 2 } else { 3 };
    let (mut t, _, dump) = cx.start_tracer(mode, &[])?.context("no tracer")?;
    let mut flood = cx.start_flood(None, secs + 3)?;
    pause(Duration::from_millis(700))?;
    let data = cx.dir.join("perf.data");
    let tag = cx.name("perf");
    let argv: Vec<String> = [
        "perf",
        "record",
        "-q",
        "-C",
        "0",
        "-e",
        "cpu-clock",
        "-F",
        "1999",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        data.display().to_string(),
        "--".into(),
        "sleep".into(),
        secs.to_string(),
    ])
    .collect();
    let mut p = Proc::spawn(&tag, &argv, &cx.dir)?;
    pause(Duration::from_secs(secs + 1))?;
    for _ in 0..100 {
        if p.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            break;
        }
        pause(Duration::from_millis(100))?;
    }
    p.stop(Duration::from_secs(5));
    flood.stop(Duration::from_secs(3));
    t.stop(Duration::from_secs(20));
    let _ = fs::remove_file(dump);
    let rep = run_cmd(&[
        "perf",
        "report",
        "-i",
        &data.display().to_string(),
        "--stdio",
        "--no-children",
        "--comms",
        "hping3,ksoftirqd/0",
        "--percentage",
        "relative",
        "--sort",
        "sym",
        "--percent-limit",
        "0.7",
        "-g",
        "none",
    ])?;
    let top: Vec<Symbol> = rep
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('%'))
        .take(30)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pct = it.next()?.trim_end_matches('%').parse::<f64>().ok()?;
            let symbol = it
                .filter(|w| *w != "[k]" && *w != "[.]")
                .collect::<Vec<_>>()
                .join(" ");
            Some(Symbol { pct, symbol })
        })
        .collect();
    let glue = |s: &str| {
        [
            "bpf_",
            "htab_",
            "__htab_",
            "perf_trace_",
            "trace_call_bpf",
            "copy_from_kernel_nofault",
        ]
        .iter()
        .any(|p| s.starts_with(p))
    };
    let bpf = top.iter().filter(|v| glue(&v.symbol)).map(|v| v.pct).sum();
    let _ = fs::remove_file(&data);
    Ok(Profile {
        mode: mode.key().into(),
        secs,
        top,
        bpf_symbols_pct: bpf,
        error: None,
    })
}
