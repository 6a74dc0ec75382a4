//! `stalltrace watch` next to `record`: CPU (user+sys, share of one CPU) and RSS of the
//! tool's process on an idle node and during an echo flood into the flood namespace,
//! both with no packet filter (what each does out of the box) and with `--peer` of the
//! probe namespace (the flood filtered out in the kernel). watch's own /metrics
//! (`stalltrace_process_cpu_seconds_total`, `stalltrace_process_resident_memory_bytes`)
//! are read next to /proc.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::sys::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Phase {
    pub(crate) cpu_pct: f64,
    pub(crate) rss_end_kib: Option<u64>,
    pub(crate) rss_max_kib: u64,
    /// watch's own /metrics.
    pub(crate) metrics_cpu_pct: Option<f64>,
    pub(crate) metrics_rss_kib: Option<f64>,
    pub(crate) echo_requests_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) tool: String,
    pub(crate) filter: String,
    pub(crate) label: String,
    pub(crate) idle: Phase,
    pub(crate) flood: Phase,
    pub(crate) rss_after_flood_kib: Option<u64>,
    pub(crate) record_packets: Option<u64>,
    pub(crate) packets_forgotten_line: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WatchPart {
    pub(crate) idle_s: u64,
    pub(crate) flood_s: u64,
    pub(crate) rows: Vec<Row>,
}

fn phase(
    cx: &mut Ctx,
    pid: u32,
    port: Option<u16>,
    secs: u64,
    flood: bool,
) -> anyhow::Result<Phase> {
    let scrape = |p: u16| -> (Option<f64>, Option<f64>) {
        let t = http_get(p, "/metrics").unwrap_or_default();
        (
            metric(&t, "stalltrace_process_cpu_seconds_total"),
            metric(&t, "stalltrace_process_resident_memory_bytes"),
        )
    };
    let mut fl = if flood {
        Some(cx.start_flood(None, secs + 1)?)
    } else {
        None
    };
    let m0 = port.map(scrape);
    let e0 = in_echos(cx.flood_pid)?;
    let c0 = cpu_secs(pid);
    let t0 = Instant::now();
    let mut rss_max = 0;
    for _ in 0..secs {
        pause(Duration::from_secs(1))?;
        rss_max = rss_max.max(status_kib(pid, "VmRSS").unwrap_or(0));
    }
    let dt = t0.elapsed().as_secs_f64();
    let c1 = cpu_secs(pid);
    let e1 = in_echos(cx.flood_pid)?;
    let m1 = port.map(scrape);
    let rss_end = status_kib(pid, "VmRSS");
    if let Some(f) = fl.as_mut() {
        f.stop(Duration::from_secs(3));
    }
    let (metrics_cpu_pct, metrics_rss_kib) = match (m0, m1) {
        (Some((Some(a), _)), Some((Some(b), r))) => {
            (Some(100.0 * (b - a) / dt), r.map(|x| x / 1024.0))
        }
        (_, Some((_, r))) => (None, r.map(|x| x / 1024.0)),
        _ => (None, None),
    };
    Ok(Phase {
        cpu_pct: 100.0 * (c1 - c0) / dt,
        rss_end_kib: rss_end,
        rss_max_kib: rss_max,
        metrics_cpu_pct,
        metrics_rss_kib,
        echo_requests_per_s: (e1 - e0) as f64 / dt,
    })
}

pub(crate) fn run(cx: &mut Ctx) -> anyhow::Result<WatchPart> {
    let (idle_s, flood_s) = if cx.quick { (3, 5) } else { (10, 20) };
    println!(
        "bench: watch vs record: CPU and RSS idle ({idle_s} s) and during a flood ({flood_s} s)"
    );
    let mut rows = vec![];
    for filter in [false, true] {
        for tool in ["record", "watch"] {
            let mut args: Vec<String> = vec![tool.into()];
            let mut port = None;
            let dump = cx.dump_path(tool);
            if tool == "record" {
                args.extend(["--quiet", "--force", "--duration", "600s", "-o"].map(String::from));
                args.push(dump.display().to_string());
            } else {
                let p = free_port()?;
                port = Some(p);
                args.extend(["--listen".into(), format!("127.0.0.1:{p}")]);
            }
            if filter {
                args.extend(["--peer".into(), cx.probe.addr.clone()]);
            }
            let marker = if tool == "record" {
                "recording to"
            } else {
                "watching:"
            };
            let (mut p, _) = cx.start_stalltrace(tool, &args, marker)?;
            pause(Duration::from_millis(700))?;
            let pid = p.pid();
            let idle = phase(cx, pid, port, idle_s, false)?;
            let flood = phase(cx, pid, port, flood_s, true)?;
            // The correlator lets go of old packets some seconds after the flood.
            pause(Duration::from_secs(if cx.quick { 2 } else { 5 }))?;
            let after = status_kib(pid, "VmRSS");
            let text = p.stop(Duration::from_secs(30));
            let footer = footer_of(&dump);
            let _ = std::fs::remove_file(&dump);
            let _ = std::fs::remove_file(&p.out);
            let label = format!(
                "{tool}{}",
                if filter {
                    " --peer (flood filtered out)"
                } else {
                    " (no filter: every echo)"
                }
            );
            println!(
                "  {label:<40} idle {:.2}% CPU, {:.1} MiB; flood {:.1}% CPU, max {:.1} MiB (metrics: {}% CPU, {} MiB); 5 s after: {:.1} MiB",
                idle.cpu_pct,
                idle.rss_end_kib.unwrap_or(0) as f64 / 1024.0,
                flood.cpu_pct,
                flood.rss_max_kib as f64 / 1024.0,
                flood.metrics_cpu_pct.map(|x| format!("{x:.1}")).unwrap_or("–".into()),
                flood.metrics_rss_kib.map(|x| format!("{:.1}", x / 1024.0)).unwrap_or("–".into()),
                after.unwrap_or(0) as f64 / 1024.0
            );
            let forgotten = text
                .lines()
                .find(|l| l.contains("forgotten"))
                .map(String::from);
            rows.push(Row {
                tool: tool.into(),
                filter: if filter { "peer" } else { "none" }.into(),
                label,
                idle,
                flood,
                rss_after_flood_kib: after,
                record_packets: footer.map(|f| f.counts.packets),
                packets_forgotten_line: forgotten,
            });
        }
    }
    Ok(WatchPart {
        idle_s,
        flood_s,
        rows,
    })
}
