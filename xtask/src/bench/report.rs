//! report
use serde_json::{json, Value};

use super::util::*;
// ---------------------------------------------------------------------------------
// Report

pub(crate) fn f(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

pub(crate) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

pub(crate) fn render_md(v: &Value, quick: bool) -> String {
    let mut s = String::new();
    let m = &v["machine"];
    s += "# stalltrace benchmarks\n\n";
    s += &format!(
        "Produced by `cargo xtask bench{}` on this machine: kernel {}, {} CPUs, {}; load average at start {}, at end {}; {:.0} s in all.{}\n\n",
        if quick { " --quick" } else { "" },
        m["kernel"].as_str().unwrap_or(""),
        m["cpus"],
        m["bpftrace"].as_str().unwrap_or(""),
        m["loadavg_at_start"].as_str().unwrap_or(""),
        v["loadavg_at_end"].as_str().unwrap_or(""),
        v["elapsed_s"].as_f64().unwrap_or(0.0),
        if quick { " **Quick smoke run: one round, short windows; not the figures to quote.**" } else { "" }
    );
    s += &format!(
        "Hypervisor steal during the flood runs: {}% of the CPUs.\n\n",
        f(&v["steal_pct"], 1)
    );
    if let Some(b) = v["other_busy_processes"].as_array() {
        if !b.is_empty() {
            s += "Machine noise: other processes busy during the flood runs (share of one CPU): ";
            s += &b
                .iter()
                .map(|x| {
                    format!(
                        "{} {:.0}%",
                        x["process"].as_str().unwrap_or(""),
                        x["cpu_pct"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            s += ". Runs alternate to spread that noise evenly; read ratios, not absolute rates.\n\n";
        }
    }
    if let Some(o) = v["other_tracing_programs_at_start"].as_array() {
        if !o.is_empty() {
            s += &format!("{} tracing BPF programs of other users were attached when the bench started (they add their own cost to every configuration).\n\n", o.len());
        }
    }
    let k = &v["kernel"];
    if k.is_object() {
        s += &format!(
            "Set-up: `hping3 --icmp --flood` pinned to CPU 0 into a namespace over veth (10.213.x.2), {} round(s) alternating the configurations below; each run measures {} s with `kernel.bpf_stats_enabled=0` (received packets per second) then {} s with it at 1 (per-program `run_time_ns / run_cnt` from `bpftool prog show -j`, and the rate again). A 10 ms `stalltrace probe` into a second namespace runs through every flood.\n\n",
            m["rounds"], m["window_stats_off_s"], m["window_stats_on_s"]
        );
        s += "## Kernel cost per event (ns per program run, bpf_stats)\n\n";
        s += "| program | default mode ns/run | runs/s | every echo ns/run | runs/s | bpftrace ns/run | runs/s |\n|---|---:|---:|---:|---:|---:|---:|\n";
        let modes = ["stalltrace_default", "stalltrace_every_echo", "bpftrace"];
        let mut names: Vec<String> = vec![];
        for md in modes {
            if let Some(p) = k[md]["programs"].as_object() {
                for n in p.keys() {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
        names.sort_by_key(|n| PROG_NAMES.iter().position(|p| p == n).unwrap_or(99));
        for n in &names {
            s += &format!("| `{n}` |");
            for md in modes {
                let p = &k[md]["programs"][n];
                if p.is_null() {
                    s += " – | – |";
                } else {
                    let miss = p["recursion_misses"].as_u64().unwrap_or(0);
                    s += &format!(
                        " {}{} | {} |",
                        f(&p["ns_per_run"], 0),
                        if miss > 0 {
                            format!(" ({miss} missed)")
                        } else {
                            String::new()
                        },
                        thousands(p["runs_per_s"].as_f64().unwrap_or(f64::NAN))
                    );
                }
            }
            s += "\n";
        }
        s += "| **all programs, ns per received packet** |";
        for md in modes {
            s += &format!(
                " **{}** | |",
                f(&k[md]["bpf_ns_per_packet_all_programs"], 0)
            );
        }
        s += "\n| all programs, % of one CPU |";
        for md in modes {
            s += &format!(" {}% | |", f(&k[md]["bpf_cpu_pct"], 1));
        }
        s += "\n\n";
        s += "\"missed\": runs the kernel skipped (per-CPU recursion guard: another BPF program was running on that CPU).\n\n";
        let stk = &v["stacks"];
        if let Some(sp) = stk["programs"]["stack_sample"].as_object() {
            s += &format!(
                "With `--stacks` (one run, default-mode filter; a flood keeps NET_RX pending much of the time, so the sampler records far more than on a quiet node): `stack_sample` {} ns per run at {} runs/s; received packets {} of the untraced rate ({} per flood CPU-second); recorder CPU {}%.\n\n",
                f(&sp["ns_per_run"].clone(), 0),
                thousands(sp["runs_per_s"].as_f64().unwrap_or(f64::NAN)),
                f(&stk["pps_ratio_vs_none"], 3),
                f(&stk["per_cpu_s_ratio_vs_none"], 3),
                f(&stk["tracer_cpu_pct"], 1)
            );
        }
        s += &format!(
            "Per recorded echo, stalltrace's packet hook costs {} ns against bpftrace's {} ns: ratio **{}** (`overhead_ratio_vs_bpftrace`); counting every program per packet, {}. In the default mode the packet hook costs **{} ns** per packet (`ns_per_packet_default`).\n\n",
            f(&k["ns_per_echo_every"], 0),
            f(&k["ns_per_echo_bpftrace"], 0),
            f(&k["overhead_ratio_vs_bpftrace"], 3),
            f(&k["overhead_ratio_vs_bpftrace_all_programs"], 3),
            f(&k["ns_per_packet_default"], 0)
        );
        s += "## Effect on the node (echo requests received per second in the flood namespace)\n\n";
        s += "| configuration | median pps | ratio vs none (medians) | per-round ratios | echoes per flood CPU-s (ratio) | median pps, bpf_stats on | tracer CPU % (user+sys) | probes sent / lost, max RTT | backlog drops (all runs) |\n|---|---:|---:|---|---:|---:|---:|---|---:|\n";
        for md in [
            "none",
            "stalltrace_default",
            "stalltrace_every_echo",
            "bpftrace",
        ] {
            let x = &k[md];
            let paired = x["pps_ratio_paired"]
                .as_array()
                .map(|a| a.iter().map(|r| f(r, 2)).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            s += &format!(
                "| {} | {} | {} | {} | {} ({}) | {} | {} | {} / {}, {} ms | {} |\n",
                x["label"].as_str().unwrap_or(md),
                thousands(x["pps_median"].as_f64().unwrap_or(f64::NAN)),
                f(&x["pps_ratio_vs_none"], 3),
                paired,
                thousands(x["per_flood_cpu_s_median"].as_f64().unwrap_or(f64::NAN)),
                f(&x["per_flood_cpu_s_ratio_vs_none"], 3),
                thousands(x["pps_stats_on_median"].as_f64().unwrap_or(f64::NAN)),
                f(&x["tracer_cpu_pct_median"], 1),
                x["probes_sent"],
                x["probes_lost"],
                f(&x["probe_max_rtt_ms"], 1),
                thousands(x["backlog_drops"].as_f64().unwrap_or(f64::NAN))
            );
        }
        s += "\n\"Echoes per flood CPU-s\": echo requests received per CPU-second used by the flood path (hping3, in whose context most of the receive softirq runs — this kernel has no IRQ time accounting — plus ksoftirqd/0). It measures the per-packet cost the tracer adds and is far less sensitive to other tenants than the wall-clock rate.\n\nPer-run details (recorded packets and lost events per run) are in `results.json`.\n\n";
    }
    if let Some(ps) = v["perf"].as_array() {
        s += "## Where the time goes (perf, cpu-clock on CPU 0, samples of the flood's tasks hping3 + ksoftirqd/0)\n\n";
        s += "| default mode: % | symbol | every echo: % | symbol |\n|---:|---|---:|---|\n";
        let col = |i: usize| {
            ps.get(i)
                .and_then(|p| p["top"].as_array().cloned())
                .unwrap_or_default()
        };
        let (a, b) = (col(0), col(1));
        for i in 0..a.len().max(b.len()).min(20) {
            let cell = |c: &Vec<Value>| {
                c.get(i)
                    .map(|x| {
                        (
                            f(&x["pct"], 2),
                            format!("`{}`", x["symbol"].as_str().unwrap_or("")),
                        )
                    })
                    .unwrap_or_default()
            };
            let (pa, sa) = cell(&a);
            let (pb, sb) = cell(&b);
            s += &format!("| {pa} | {sa} | {pb} | {sb} |\n");
        }
        s += &format!(
            "\nBPF programs, helpers, maps and tracepoint glue (`bpf_*`, `htab_*`, `perf_trace_*`, `trace_call_bpf`, `copy_from_kernel_nofault`; symbols above 0.7% only, so a lower bound): {}% (default mode), {}% (every echo) of the flood's samples. In every-echo mode `native_write_msr` is the ring buffer's per-record wakeup: `bpf_ringbuf_output` → `irq_work_queue` → self-IPI through the x2APIC MSR, a VM exit here.\n\n",
            f(&ps.first().map(|p| p["bpf_symbols_pct"].clone()).unwrap_or_default(), 1),
            f(&ps.get(1).map(|p| p["bpf_symbols_pct"].clone()).unwrap_or_default(), 1)
        );
    }
    let rb = &v["ring_buffer"];
    if rb.is_object() {
        s += "## Ring-buffer headroom (record every echo)\n\n| hping3 rate | ring | echo req/s | events offered/s | recorded/s | lost |\n|---|---|---:|---:|---:|---:|\n";
        for x in rb["steps"].as_array().cloned().unwrap_or_default() {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                x["hping3_rate"].as_str().unwrap_or(""),
                x["ring_buffer"].as_str().unwrap_or(""),
                thousands(x["echo_requests_per_s"].as_f64().unwrap_or(f64::NAN)),
                thousands(x["events_offered_per_s"].as_f64().unwrap_or(f64::NAN)),
                thousands(x["events_recorded_per_s"].as_f64().unwrap_or(f64::NAN)),
                x["events_lost"]
            );
        }
        s += &format!(
            "\nHighest rate recorded with no loss (default 4 MiB ring): **{} events/s**{}.\n\n",
            thousands(
                rb["max_rate_without_loss_per_s"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
            if rb["any_loss_with_default_ring"] == json!(false) {
                " — nothing was lost at any rate this machine's flood reached with the default ring; the 16 KiB row shows what a user sees when the ring overflows"
            } else {
                ""
            }
        );
        if let Some(x) = rb["steps"].as_array().and_then(|a| {
            a.iter()
                .find(|x| x["events_lost"].as_u64().unwrap_or(0) > 0)
        }) {
            s += "What the user sees when events are dropped:\n\n```\n";
            for l in x["user_sees"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .take(4)
            {
                s += l.as_str().unwrap_or("");
                s += "\n";
            }
            s += "```\n\n(and the dump's footer carries `lost: {packets, waits, syscalls}`).\n\n";
        }
    }
    if let Some(a) = v["analyze"].as_array() {
        s += "## analyze (generated dumps, `stalltrace_testkit::benchdump`; report to /dev/null; best of runs)\n\n| records | size | wall s | events/s | user+sys s | peak RSS |\n|---:|---:|---:|---:|---:|---:|\n";
        for x in a {
            s += &format!(
                "| {} | {:.0} MiB | {} | {} | {} | {:.1} MiB |\n",
                thousands(x["records"].as_f64().unwrap_or(f64::NAN)),
                x["bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
                f(&x["wall_s"], 2),
                thousands(x["events_per_s"].as_f64().unwrap_or(f64::NAN)),
                f(
                    &json!(
                        x["user_s"].as_f64().unwrap_or(0.0) + x["sys_s"].as_f64().unwrap_or(0.0)
                    ),
                    2
                ),
                x["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            );
        }
        s += "\n";
    }
    if v["record_idle"].is_object() {
        s += "## record's own CPU (user+sys of the recorder process, share of one CPU)\n\n| state | record CPU % | its BPF programs, % of one CPU |\n|---|---:|---:|\n";
        s += &format!(
            "| idle (default mode, no traffic) | {} | {} |\n",
            f(&v["record_idle"]["cpu_pct"], 2),
            f(&v["record_idle"]["kernel_bpf_cpu_pct"], 2)
        );
        for md in ["stalltrace_default", "stalltrace_every_echo"] {
            s += &format!(
                "| flood, {} | {} | {} |\n",
                if md == "stalltrace_default" {
                    "default mode"
                } else {
                    "every echo"
                },
                f(&k[md]["tracer_cpu_pct_median"], 1),
                f(&k[md]["bpf_cpu_pct"], 1)
            );
        }
        s += &format!(
            "| flood, bpftrace (for comparison) | {} | {} |\n\n",
            f(&k["bpftrace"]["tracer_cpu_pct_median"], 1),
            f(&k["bpftrace"]["bpf_cpu_pct"], 1)
        );
    }
    s += &targets_md(v);
    s
}

pub(crate) fn targets_md(v: &Value) -> String {
    let k = &v["kernel"];
    let mut rows: Vec<(String, String, Option<bool>)> = vec![];
    let r = k["overhead_ratio_vs_bpftrace"].as_f64();
    if k.is_object() {
        rows.push((
            "per recorded echo ≤ 1/10 of bpftrace".into(),
            format!(
                "{} (all programs: {})",
                f(&k["overhead_ratio_vs_bpftrace"], 3),
                f(&k["overhead_ratio_vs_bpftrace_all_programs"], 3)
            ),
            r.map(|x| x <= 0.1),
        ));
        let n = k["ns_per_packet_default"].as_f64();
        rows.push((
            "< 100 ns per packet, default mode".into(),
            format!(
                "{} ns (all programs per packet: {} ns)",
                f(&k["ns_per_packet_default"], 0),
                f(
                    &k["stalltrace_default"]["bpf_ns_per_packet_all_programs"],
                    0
                )
            ),
            n.map(|x| x < 100.0),
        ));
        let d = &k["stalltrace_default"];
        let p = d["pps_ratio_vs_none"].as_f64();
        let c = d["per_flood_cpu_s_ratio_vs_none"].as_f64();
        rows.push((
            "received pps with stalltrace ≥ 0.97 of untraced (judged on both the wall-clock and the per-CPU-s ratio)".into(),
            format!("wall clock {} (paired median {}), per flood CPU-s {}", f(&d["pps_ratio_vs_none"], 3), f(&d["pps_ratio_paired_median"], 3), f(&d["per_flood_cpu_s_ratio_vs_none"], 3)),
            p.zip(c).map(|(x, y)| x >= 0.97 && y >= 0.97),
        ));
        let lost = k["stalltrace_default"]["probes_lost"].as_u64();
        let ev_lost: u64 = k["stalltrace_default"]["recorded"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["lost"]["packets"].as_u64()).sum())
            .unwrap_or(0);
        rows.push((
            "no probe lost at 10 ms probing during the flood".into(),
            format!(
                "{} of {} probes lost (untraced: {} of {}), {} packet events lost by the recorder",
                k["stalltrace_default"]["probes_lost"],
                k["stalltrace_default"]["probes_sent"],
                k["none"]["probes_lost"],
                k["none"]["probes_sent"],
                ev_lost
            ),
            lost.map(|l| l == 0 && ev_lost == 0),
        ));
    }
    if let Some(a) = v["analyze"].as_array() {
        let eps: Vec<f64> = a
            .iter()
            .filter_map(|x| x["events_per_s"].as_f64())
            .collect();
        let rss: Vec<f64> = a
            .iter()
            .filter_map(|x| x["peak_rss_kib"].as_f64())
            .collect();
        let min_eps = eps.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push((
            "analyze ≥ 1 M events/s".into(),
            format!("{} events/s (slowest dump)", thousands(min_eps)),
            Some(min_eps >= 1e6),
        ));
        if rss.len() == 2 {
            rows.push((
                "analyze memory flat as the dump grows".into(),
                format!(
                    "peak RSS {:.1} → {:.1} MiB for 10× the records",
                    rss[0] / 1024.0,
                    rss[1] / 1024.0
                ),
                Some(rss[1] <= rss[0] * 1.5 + 4096.0),
            ));
        }
    }
    let mut s = "## Targets\n\n| target | measured | met? |\n|---|---|---|\n".to_string();
    for (t, m, ok) in rows {
        s += &format!(
            "| {t} | {m} | {} |\n",
            match ok {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    s += "\nThese are measurements, not assertions: the bench never fails on a number.\n";
    s
}
