//! What the agent knows of the node and of itself for the metrics: the kernel's wait
//! histograms and losses, its BPF programs' run time, its own CPU, memory and fds.
use stalltrace_analysis::{analyze::Pipeline, report::metrics::NodeStats};

use crate::record::pipeline::Source;

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of this process in seconds.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after "(comm)" start at field 3: utime is 14, stime 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get(14) + get(15)) as f64 / ticks_per_second()
}

/// Resident memory of this process in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|k| k.parse::<u64>().ok())
                })
        })
        .map_or(0, |kib| kib * 1024)
}

pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

pub fn stats(src: &Source, p: &Pipeline<'_>, flight: Option<&super::flight::Stats>) -> NodeStats {
    let hists = src.tracer.hists().ok();
    NodeStats {
        net_rx: hists.as_ref().map(|h| h.net_rx.clone()).unwrap_or_default(),
        rx_thread: hists.map(|h| h.rx_thread).unwrap_or_default(),
        lost: src.lost().unwrap_or_default(),
        bpf: src
            .tracer
            .program_stats()
            .into_iter()
            .filter(|b| b.2 > 0)
            .collect(),
        cpu_seconds: cpu_seconds(),
        rss_bytes: rss_bytes(),
        open_fds: open_fds(),
        retained: p.correlator().retained(),
        dumps_written: flight.map_or(0, super::flight::Stats::written),
        recorder_bytes: flight.map_or(0, super::flight::Stats::held_bytes),
        flight_failures: flight
            .map(super::flight::Stats::failures)
            .unwrap_or_default(),
    }
}
