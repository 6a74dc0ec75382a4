//! `bench/results.md` and `bench/soak.md`, rendered from the typed results (so
//! `--render` rewrites them from the JSON alone).
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::bpf::PROG_NAMES;
use crate::ctx::Mode;
use crate::parts::{flood::FloodPart, soak::Soak};
use crate::results::{Machine, Results, Target};
use crate::stats::{num, thousands};

/// bench/soak.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SoakDoc {
    pub(crate) machine: Machine,
    pub(crate) commit: String,
    pub(crate) date: String,
    pub(crate) soak: Soak,
}

fn met(t: &Target) -> &'static str {
    match t.met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "–",
    }
}

fn digits(unit: &str) -> usize {
    if unit.starts_with("ratio") {
        3
    } else if unit.starts_with('%') {
        2
    } else {
        0
    }
}

/// `173 ns (160–190) = 2.6× (2.4–2.9) the floor's 66`.
fn measured(t: &Target) -> String {
    let d = digits(&t.unit);
    let mut s = if t.unit.starts_with("events") {
        format!("{} {}", thousands(t.value), t.unit)
    } else {
        format!("{} {}", t.spread.show(d), t.unit)
    };
    if let (Some(f), Some(m)) = (&t.floor, &t.multiple_of_floor) {
        let what = if t.unit.starts_with("ratio") {
            "the floor's loss"
        } else {
            "the floor"
        };
        let _ = write!(s, "; floor {}; **{}×** {what}", f.show(d), m.show(1));
    }
    if let Some(n) = &t.note {
        let _ = write!(s, " ({n})");
    }
    s
}

fn headline_md(r: &Results) -> String {
    let rows = r.headline.rows();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = "## Headline\n\nEach figure is the median over the rounds with their range (min–max) in brackets. **The floor** is the same figure, in the same rounds, for an empty program (`return 0`) attached to the same hook with the same attach type (`bench/floor-ebpf`): what any program costs there. The multiple of the floor is the measure meant to hold across machines (absolute nanoseconds move with the machine and its neighbours); for a throughput ratio it is the loss against untraced as a multiple of the floor's loss.\n\n| key | measured | target | met? | how |\n|---|---|---|---|---|\n".to_string();
    for (k, t) in rows {
        let _ = writeln!(
            s,
            "| `{k}` | {} | {} | {} | {} |",
            measured(t),
            t.target,
            met(t),
            t.source
        );
    }
    if !r.machine.kprobes {
        s += "\nNot measured here: `kprobe:icmp_echo` (the packet hook stalltrace takes where kprobes exist) and its floor: this kernel has no kprobes (`/sys/bus/event_source/devices/kprobe` is absent). The `tp_btf`/fentry paths are refused here too (EPERM); both belong to the qemu guests of `cargo xtask vmtest`.\n";
    }
    s + "\n"
}

fn noise_md(r: &Results) -> String {
    let mut s = format!(
        "Hypervisor steal: {}% of the CPUs over the whole run",
        num(Some(r.machine.steal_pct), 1)
    );
    if let Some(f) = &r.parts.flood {
        let _ = write!(
            s,
            ", {}% during the flood rounds",
            num(Some(f.steal_pct), 1)
        );
    }
    s += ".";
    if let Some(f) = r
        .parts
        .flood
        .as_ref()
        .filter(|f| !f.other_busy_processes.is_empty())
    {
        s += " Other processes busy during the flood rounds (share of one CPU): ";
        s += &f
            .other_busy_processes
            .iter()
            .map(|b| format!("{} {:.0}%", b.process, b.cpu_pct))
            .collect::<Vec<_>>()
            .join(", ");
        s += ". Runs alternate to spread that noise evenly: read the same-run ratios and multiples of the floor, not absolute rates. Processes marked SCHED_IDLE only run when a CPU would otherwise idle.";
    }
    if !r.machine.other_tracing_programs_at_start.is_empty() {
        let _ = write!(
            s,
            " {} tracing BPF programs of other users were attached when the bench started (they add their own cost to every configuration).",
            r.machine.other_tracing_programs_at_start.len()
        );
    }
    s + "\n\n"
}

pub(crate) fn results_md(r: &Results) -> String {
    let m = &r.machine;
    let mut s = "# stalltrace benchmarks\n\n".to_string();
    let _ = write!(
        s,
        "Produced by `cargo xtask bench{}` on {} at commit `{}`: a VM with {} CPUs ({}), {} GiB, kernel {}; {}, {}. Load average at start {}, at end {}; {:.0} s in all.{}{}\n\n",
        if r.quick { " --quick" } else { "" },
        r.date,
        r.commit,
        m.cpus,
        m.cpu_model,
        num(m.mem_gib, 0),
        m.kernel,
        m.bpftrace,
        m.perf,
        m.loadavg_at_start,
        m.loadavg_at_end,
        r.elapsed_s,
        if r.quick { " **Quick smoke run: one round, short windows; not the figures to quote.**" } else { "" },
        if r.partial { " **Partial run (`--only`).**" } else { "" }
    );
    s += "Regenerated by the bench (do not edit by hand); machine-readable: `results.json` (`headline` holds the numbers below, each with its target, `met`, its rounds, its floor and its multiple of the floor). The soak (`cargo xtask bench --soak 30m`) writes [soak.md](soak.md). These are measurements, not assertions: the bench never fails on a number. The load average also counts runnable SCHED_IDLE tasks, which take only CPU time nothing else wants.\n\n";
    if m.tracefs_mounted_by_bench {
        s += "tracefs was not mounted (bpftrace needs it; stalltrace does not): the bench mounted it for the run and unmounted it after.\n\n";
    }
    s += &headline_md(r);
    s += &noise_md(r);
    s += &sampler_md(r);
    s += &syscalls_md(r);
    s += &sched_md(r);
    if let Some(f) = &r.parts.flood {
        s += &flood_md(f);
    }
    s += &perf_md(r);
    s += &headroom_md(r);
    s += &analyze_md(r);
    s += &watch_md(r);
    s
}

fn sampler_md(r: &Results) -> String {
    let Some(x) = &r.parts.sampler else {
        return String::new();
    };
    let (i, st, f) = (&x.idle, &x.stall, &x.floor);
    let mut s = "## The always-on sampler (cpu-clock at 499 Hz per CPU, records only while an RX wait is pending)\n\n| | stalltrace | floor (empty cpu-clock program) |\n|---|---:|---:|\n".to_string();
    let _ = writeln!(
        s,
        "| idle node: ns per tick | {} ({} ticks/s over the CPUs; {} samples recorded in {:.0} s) | {} |",
        num(i.sampler_ns_per_tick, 0),
        num(Some(i.sampler_ticks_per_s), 0),
        i.samples_recorded,
        i.secs,
        num(f.idle_ns_per_tick, 0)
    );
    let _ = writeln!(
        s,
        "| idle node: record CPU %, its BPF programs % of one CPU, RSS MiB | {}, {}, {} | – |",
        num(Some(i.cpu_pct), 2),
        num(Some(i.kernel_bpf_cpu_pct), 2),
        num(i.rss_kib.map(|k| k as f64 / 1024.0), 1)
    );
    let _ = writeln!(
        s,
        "| stall ({}): samples recorded (attributed to a wait) | {} ({}) | – |",
        st.hog, st.samples_recorded, st.samples_attributed
    );
    let _ = writeln!(
        s,
        "| stall: ns per tick, all ticks (per recorded sample, the other ticks charged at the idle cost) | {} ({}; {} runs) | {} |",
        num(
            (st.sampler_runs > 0)
                .then(|| st.sampler_run_time_ns as f64 / st.sampler_runs as f64),
            0
        ),
        num(st.sampler_ns_per_sample.filter(|v| *v > 0.0), 0),
        st.sampler_runs,
        num(f.stall_ns_per_tick, 0)
    );
    let _ = writeln!(
        s,
        "| stall: culprit `bench-hog` named by record | {} | – |\n",
        if st.culprit_named { "yes" } else { "**no**" }
    );
    s
}

fn syscalls_md(r: &Results) -> String {
    let Some(x) = &r.parts.syscalls else {
        return String::new();
    };
    let mut s = format!(
        "## Syscall tax (getpid() x {} pinned to CPU 1, best of {} per run, {} alternating rounds)\n\n| configuration | ns per getpid | added ns (per round vs untraced) | syscall programs attached | `sys_enter` / `sys_exit` ns/run |\n|---|---:|---:|---|---:|\n",
        x.calls_per_run, x.repetitions, x.rounds
    );
    for m in [
        Mode::None,
        Mode::Default,
        Mode::Syscalls,
        Mode::FloorSyscalls,
    ] {
        let Some(y) = x.modes.get(m.key()) else {
            continue;
        };
        let ns = |n: &str| num(y.programs_stats_on.get(n).and_then(|c| c.ns_per_run()), 0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} / {} |",
            y.label,
            y.ns_per_getpid.show(1),
            if m == Mode::None {
                "–".into()
            } else {
                y.added_ns.show(1)
            },
            if m == Mode::None {
                "–".into()
            } else {
                format!(
                    "{} {}",
                    y.syscall_programs.len(),
                    y.syscall_programs.join(", ")
                )
            },
            ns("sys_enter"),
            ns("sys_exit")
        );
    }
    s + "\n"
}

fn sched_md(r: &Results) -> String {
    let Some(x) = &r.parts.sched else {
        return String::new();
    };
    let mut s = format!(
        "## Scheduler-heavy load (`taskset -c 1 perf bench sched pipe -l {}`, {} alternating rounds, better of two runs each with bpf_stats off, then one with it on)\n\n| configuration | ops/s | ratio vs untraced (per round) | `sched_switch` ns/run | `sched_wakeup` ns/run | runs/s (switch) |\n|---|---:|---:|---:|---:|---:|\n",
        x.loops, x.rounds
    );
    for m in [Mode::None, Mode::Floor, Mode::Default, Mode::Runqslower] {
        let Some(y) = x.modes.get(m.key()) else {
            continue;
        };
        // bpftrace names its programs after the probe; take what matches.
        let find = |name: &str| -> String {
            y.ns_per_run
                .iter()
                .find(|(n, _)| n.contains(name))
                .map_or("–".into(), |(_, v)| v.show(0))
        };
        let rate = y
            .programs_stats_on
            .iter()
            .find(|(n, _)| n.contains("sched_switch"))
            .and_then(|(_, c)| c.runs_per_s());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            y.label,
            thousands(y.ops_per_s.median),
            y.ratio_paired.show(3),
            find("sched_switch"),
            find("sched_wakeup"),
            thousands(rate)
        );
    }
    s + "\nEach loop of the pipe benchmark is two context switches and two wakeups on CPU 1. With bpf_stats on, every program run also pays two clock reads (the floor pays them too).\n\n"
}

fn flood_md(f: &FloodPart) -> String {
    let mut s = format!(
        "## Under an ICMP echo flood\n\nSet-up: `hping3 --icmp --flood` pinned to CPU 0 into a namespace over veth (10.213.x.2), {} round(s) alternating the configurations below; each run measures {} s with `kernel.bpf_stats_enabled=0` (received packets per second) then {} s with it at 1 (per-program `run_time_ns / run_cnt` from `bpftool prog show -j`). A 10 ms `stalltrace probe` into a second namespace runs through every flood.\n\n",
        f.rounds, f.window_stats_off_s, f.window_stats_on_s
    );
    let modes = [Mode::Floor, Mode::Default, Mode::Every, Mode::Bpftrace];
    s += "### Kernel cost per program run (ns, median of the rounds (min–max))\n\n| program | floor | default mode | every echo | bpftrace |\n|---|---:|---:|---:|---:|\n";
    let mut names: Vec<String> = vec![];
    for m in modes {
        if let Some(x) = f.mode(m) {
            for n in x.ns_per_run.keys() {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
    }
    // Programs that never ran (a kprobe this kernel could not attach) are left out.
    names.retain(|n| {
        modes.iter().any(|m| {
            f.mode(*m)
                .and_then(|x| x.programs.get(n))
                .is_some_and(|c| c.run_cnt > 0)
        })
    });
    names.sort_by_key(|n| PROG_NAMES.iter().position(|p| p == n).unwrap_or(99));
    for n in &names {
        let _ = write!(s, "| `{n}` |");
        for m in modes {
            let cell = f.mode(m).and_then(|x| {
                let sp = x.ns_per_run.get(n)?;
                let c = x.programs.get(n)?;
                let miss = if c.recursion_misses > 0 {
                    format!(", {} missed", c.recursion_misses)
                } else {
                    String::new()
                };
                Some(format!(
                    " {} at {}/s{miss} |",
                    sp.show(0),
                    thousands(c.runs_per_s())
                ))
            });
            s += &cell.unwrap_or_else(|| " – |".into());
        }
        s += "\n";
    }
    s += "| **all programs, ns per received packet** |";
    for m in modes {
        let _ = write!(
            s,
            " **{}** |",
            f.mode(m)
                .map_or("–".into(), |x| x.bpf_ns_per_packet_all_programs.show(0))
        );
    }
    s += "\n| all programs, % of one CPU |";
    for m in modes {
        let _ = write!(s, " {}% |", num(f.mode(m).and_then(|x| x.bpf_cpu_pct), 1));
    }
    s += "\n\n\"missed\": runs the kernel skipped (per-CPU recursion guard: another BPF program was running on that CPU). The floor's `cpu_clock` stands for the sampler.\n\n";
    if let Some(st) = &f.stacks {
        if let Some(c) = crate::bpf::sampler(&st.programs) {
            let _ = write!(
                s,
                "With `--stacks` (one run, default-mode filter; a flood keeps NET_RX pending much of the time, so the sampler records far more than on a quiet node): the sampler {} ns per run at {}/s; received packets {} of the untraced rate ({} per flood CPU-second); recorder CPU {}%.\n\n",
                num(c.ns_per_run(), 0),
                thousands(c.runs_per_s()),
                num(st.pps_ratio_vs_none, 3),
                num(st.per_cpu_s_ratio_vs_none, 3),
                num(Some(st.tracer_cpu_pct), 1)
            );
        }
    }
    s += "### Effect on the node (echo requests received per second in the flood namespace)\n\n| configuration | pps | ratio vs untraced, per round | echoes per flood CPU-s (ratio) | pps, bpf_stats on | tracer CPU % | probes sent / lost, max RTT | backlog drops |\n|---|---:|---:|---:|---:|---:|---|---:|\n";
    for m in [
        Mode::None,
        Mode::Floor,
        Mode::Default,
        Mode::Every,
        Mode::Bpftrace,
    ] {
        let Some(x) = f.mode(m) else { continue };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({}) | {} | {} | {} / {}, {} ms | {} |",
            x.label,
            thousands(x.pps.median),
            x.pps_ratio_paired.show(3),
            thousands(x.per_flood_cpu_s.median),
            num(x.per_flood_cpu_s_ratio_vs_none, 3),
            thousands(x.pps_stats_on.median),
            x.tracer_cpu_pct.show(1),
            x.probes_sent,
            x.probes_lost,
            num(x.probe_max_rtt_ms, 1),
            thousands(Some(x.backlog_drops as f64))
        );
    }
    s + "\n\"Echoes per flood CPU-s\": echo requests received per CPU-second used by the flood path (hping3, in whose context most of the receive softirq runs, plus ksoftirqd/0): the per-packet cost a tracer adds, far less sensitive to other tenants than the wall-clock rate.\n\n"
}

fn perf_md(r: &Results) -> String {
    let Some(ps) = &r.parts.perf else {
        return String::new();
    };
    let mut s = "## Where the time goes (perf, cpu-clock on CPU 0, samples of the flood's tasks hping3 + ksoftirqd/0)\n\n| default mode: % | symbol | every echo: % | symbol |\n|---:|---|---:|---|\n".to_string();
    let col = |i: usize| ps.get(i).map(|p| p.top.clone()).unwrap_or_default();
    let (a, b) = (col(0), col(1));
    for i in 0..a.len().max(b.len()).min(20) {
        let cell = |c: &Vec<crate::parts::perf::Symbol>| {
            c.get(i)
                .map(|x| (num(Some(x.pct), 2), format!("`{}`", x.symbol)))
                .unwrap_or_default()
        };
        let ((pa, sa), (pb, sb)) = (cell(&a), cell(&b));
        let _ = writeln!(s, "| {pa} | {sa} | {pb} | {sb} |");
    }
    let _ = write!(
        s,
        "\nBPF programs, helpers, maps and tracepoint glue (`bpf_*`, `htab_*`, `perf_trace_*`, `trace_call_bpf`, `copy_from_kernel_nofault`; symbols above 0.7% only, so a lower bound): {}% (default mode), {}% (every echo) of the flood's samples.\n\n",
        num(ps.first().map(|p| p.bpf_symbols_pct), 1),
        num(ps.get(1).map(|p| p.bpf_symbols_pct), 1)
    );
    s
}

fn headroom_md(r: &Results) -> String {
    let Some(rb) = &r.parts.ring_buffer else {
        return String::new();
    };
    let mut s = "## Ring-buffer headroom (record every echo)\n\n| hping3 rate | ring | echo req/s | events offered/s | recorded/s | lost |\n|---|---|---:|---:|---:|---:|\n".to_string();
    for x in &rb.steps {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            x.hping3_rate,
            x.ring_buffer,
            thousands(Some(x.echo_requests_per_s)),
            thousands(Some(x.events_offered_per_s)),
            thousands(Some(x.events_recorded_per_s)),
            x.events_lost
        );
    }
    let _ = write!(
        s,
        "\nHighest rate recorded with no loss (default 4 MiB ring): **{} events/s**{}.\n\n",
        thousands(Some(rb.max_rate_without_loss_per_s)),
        if rb.any_loss_with_default_ring {
            ""
        } else {
            " — nothing was lost at any rate this machine's flood reached with the default ring; the 16 KiB row shows what a user sees when the ring overflows"
        }
    );
    if let Some(x) = rb.steps.iter().find(|x| x.events_lost > 0) {
        s += "What the user sees when events are dropped:\n\n```\n";
        for l in x.user_sees.iter().take(4) {
            s += l;
            s += "\n";
        }
        s += "```\n\n";
    }
    s
}

fn analyze_md(r: &Results) -> String {
    let Some(a) = &r.parts.analyze else {
        return String::new();
    };
    let mut s = "## analyze (generated dumps, `stalltrace_testkit::benchdump`; report to /dev/null; best of runs)\n\n| dumps | records | size | wall s | events/s | user+sys s | peak RSS |\n|---:|---:|---:|---:|---:|---:|---:|\n".to_string();
    for x in a.single.iter().chain(&a.multi) {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} MiB | {} | {} | {} | {:.1} MiB |",
            if x.dumps > 1 {
                format!("{} (`analyze DIR`)", x.dumps)
            } else {
                "1".into()
            },
            thousands(Some(x.records as f64)),
            x.bytes as f64 / (1 << 20) as f64,
            num(Some(x.wall_s), 2),
            thousands(Some(x.events_per_s)),
            num(Some(x.user_s + x.sys_s), 2),
            x.peak_rss_kib / 1024.0
        );
    }
    s + "\nOne dump is read on one thread (a hand-written decoder for packet and probe lines, serde_json for the rest); `analyze DIR` analyses its dumps on one thread per CPU, each with its own reader and correlator: peak RSS depends on the threads, not on the number of dumps.\n\n"
}

fn watch_md(r: &Results) -> String {
    let Some(w) = &r.parts.watch else {
        return String::new();
    };
    let mut s = format!(
        "## watch next to record (CPU user+sys as a share of one CPU, resident memory; idle {} s, then an echo flood into the flood namespace for {} s)\n\n| tool | idle CPU % | idle RSS MiB | flood CPU % | flood RSS max MiB | RSS 5 s after the flood MiB | flood echo req/s | watch's own /metrics during the flood: CPU %, RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
        w.idle_s, w.flood_s
    );
    let mib = |x: Option<f64>| num(x.map(|k| k / 1024.0), 1);
    for r in &w.rows {
        let metrics = if r.tool == "watch" {
            format!(
                "{}, {}",
                num(r.flood.metrics_cpu_pct, 1),
                mib(r.flood.metrics_rss_kib)
            )
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            num(Some(r.idle.cpu_pct), 2),
            mib(r.idle.rss_end_kib.map(|k| k as f64)),
            num(Some(r.flood.cpu_pct), 1),
            mib(Some(r.flood.rss_max_kib as f64)),
            mib(r.rss_after_flood_kib.map(|k| k as f64)),
            thousands(Some(r.flood.echo_requests_per_s)),
            metrics
        );
    }
    s + "\nWith no filter every echo of the flood is a packet event: record writes each to its dump, watch holds them in its correlator (at most 100 000 packets) and writes nothing. With `--peer` the flood is dropped in the kernel. RSS is VmRSS from /proc, sampled every second.\n\n"
}

/// bench/soak.md.
pub(crate) fn soak_md(d: &SoakDoc) -> String {
    let x = &d.soak;
    let mut s = "# stalltrace soak\n\n".to_string();
    let _ = write!(
        s,
        "Produced by `cargo xtask bench --soak …` on {} at commit `{}`: {} CPUs, kernel {}. Regenerated by the bench.\n\n",
        d.date, d.commit, d.machine.cpus, d.machine.kernel
    );
    let _ = write!(
        s,
        "`stalltrace record --probe` (10 ms ICMP probes) into a namespace whose RX runs on a threaded-NAPI kthread pinned to CPU 1, for {:.0} s, while phases of {} s repeat: {} (each phase ran {:?} times). Every {} s the recorder's RSS, open fds, CPU time and dump size are sampled.\n\n",
        x.secs,
        x.phase_s,
        x.phases.join(" → "),
        x.phases_run,
        x.sample_every_s
    );
    let mib = |y: Option<f64>| num(y.map(|k| k / 1024.0), 1);
    s += "| | first | last | max |\n|---|---:|---:|---:|\n";
    let _ = writeln!(
        s,
        "| RSS MiB | {} | {} | {} |",
        mib(x.rss_kib.first),
        mib(x.rss_kib.last),
        mib(x.rss_kib.max)
    );
    let _ = writeln!(
        s,
        "| open fds | {} | {} | {} |\n",
        num(x.fds.first, 0),
        num(x.fds.last, 0),
        num(x.fds.max, 0)
    );
    let (counts, lost, reason) = x.footer.as_ref().map_or(
        ("–".to_string(), "–".to_string(), "–".to_string()),
        |f| {
            (
                format!(
                    "{} packets, {} waits, {} probes",
                    f.counts.packets, f.counts.waits, f.counts.probes
                ),
                f.lost.total().to_string(),
                f.reason.clone(),
            )
        },
    );
    let _ = write!(
        s,
        "RSS growth from the end of the first minute to the end: {} MiB. Recorder CPU over the soak: {}% of one CPU. Dump: {} MiB. Footer: {counts}, {lost} lost, ended by {reason}.\n\n",
        mib(x.rss_growth_after_first_minute_kib),
        num(x.record_cpu_pct, 2),
        num(x.dump_bytes.map(|b| b as f64 / 1048576.0), 0)
    );
    if !x.warnings.is_empty() {
        s += "Warnings the recorder printed (first 10):\n\n```\n";
        for l in &x.warnings {
            s += l;
            s += "\n";
        }
        s += "```\n\n";
    }
    s + "Every sample is in `soak.json`.\n"
}
