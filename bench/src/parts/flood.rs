//! Under an ICMP echo flood into a namespace made here: per-program kernel cost
//! (bpf_stats) and the received packet rate, untraced / the floor (empty programs on
//! the same hooks) / default mode (`--peer`: the flood filtered out in the kernel) /
//! every echo / bpftrace `bench/seed-equivalent.bt`, in alternating rounds with a 10 ms
//! prober through each flood; then one `--stacks` run.
use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::sched::per_round_ns;
use crate::bpf::{delta, snapshot, sum, Programs};
use crate::ctx::{Ctx, Mode};
use crate::stats::{median, Spread};
use crate::sys::*;

/// The configurations of the alternating rounds, in the order they run.
pub(crate) const MODES: [Mode; 5] = [
    Mode::None,
    Mode::Floor,
    Mode::Default,
    Mode::Every,
    Mode::Bpftrace,
];

/// What one tracer recorded in one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Recorded {
    /// stalltrace: packets in the dump's footer; bpftrace: lines printed.
    pub(crate) events: u64,
    pub(crate) lost: u64,
}

struct FloodRun {
    mode: Mode,
    round: usize,
    pps: f64,
    /// Echo requests per CPU-second spent by the flood path (hping3, whose context runs
    /// most of the softirq work, + ksoftirqd/0): insensitive to other tenants' load.
    per_cpu_s: f64,
    /// Packets the kernel dropped at the per-CPU backlog (softnet_stat column 2).
    backlog_drops: u64,
    pps_stats_on: f64,
    tracer_cpu_pct: f64,
    costs: Programs,
    probes: ProbeStats,
    recorded: Option<Recorded>,
}

impl FloodRun {
    /// Run time of all programs per packet the packet hook saw.
    fn ns_all_per_packet(&self) -> f64 {
        let total: u64 = self.costs.values().map(|c| c.run_time_ns).sum();
        match self.costs.get("netif_receive_skb").map(|c| c.run_cnt) {
            Some(n) if n > 0 => total as f64 / n as f64,
            _ => f64::NAN,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct FloodMode {
    pub(crate) label: String,
    pub(crate) pps: Spread,
    /// Median pps over the untraced median.
    pub(crate) pps_ratio_vs_none: Option<f64>,
    /// Per round: pps over the untraced run's of the same round.
    pub(crate) pps_ratio_paired: Spread,
    pub(crate) per_flood_cpu_s: Spread,
    pub(crate) per_flood_cpu_s_ratio_vs_none: Option<f64>,
    pub(crate) pps_stats_on: Spread,
    pub(crate) tracer_cpu_pct: Spread,
    /// bpf_stats summed over the rounds.
    pub(crate) programs: Programs,
    /// ns per run of each program, per round.
    pub(crate) ns_per_run: BTreeMap<String, Spread>,
    /// Run time of all programs per received packet, per round.
    pub(crate) bpf_ns_per_packet_all_programs: Spread,
    pub(crate) bpf_cpu_pct: Option<f64>,
    pub(crate) backlog_drops: u64,
    pub(crate) probes_sent: u64,
    pub(crate) probes_lost: u64,
    pub(crate) probe_max_rtt_ms: Option<f64>,
    pub(crate) recorded: Vec<Recorded>,
}

/// `--stacks`, one run with the default-mode filter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StacksRun {
    pub(crate) pps: f64,
    pub(crate) pps_ratio_vs_none: Option<f64>,
    pub(crate) per_cpu_s_ratio_vs_none: Option<f64>,
    pub(crate) tracer_cpu_pct: f64,
    pub(crate) programs: Programs,
    pub(crate) probes: ProbeStats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Busy {
    pub(crate) process: String,
    pub(crate) cpu_pct: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct FloodPart {
    pub(crate) rounds: usize,
    pub(crate) window_stats_off_s: f64,
    pub(crate) window_stats_on_s: f64,
    /// Hypervisor steal over the rounds, % of all CPUs.
    pub(crate) steal_pct: f64,
    /// Processes not ours busy during the rounds (share of one CPU, 3% and more).
    pub(crate) other_busy_processes: Vec<Busy>,
    pub(crate) modes: BTreeMap<String, FloodMode>,
    pub(crate) stacks: Option<StacksRun>,
}

impl FloodPart {
    pub(crate) fn mode(&self, m: Mode) -> Option<&FloodMode> {
        self.modes.get(m.key())
    }
}

fn flood_run(cx: &mut Ctx, mode: Mode, round: usize, tp: f64, tc: f64) -> anyhow::Result<FloodRun> {
    let total = (tp + tc + 3.0) as u64;
    let tracer = cx.start_tracer(mode, &[])?;
    let mut prober = cx.start_prober(total + 2)?;
    pause(Duration::from_millis(300))?;
    let d0 = softnet_drops();
    let mut flood = cx.start_flood(None, total)?;
    pause(Duration::from_millis(1000))?;
    let tpid = tracer.as_ref().map_or(0, |t| t.0.pid());
    // bpftrace runs under `timeout`: its CPU is its child's.
    let tpid = if mode == Mode::Bpftrace {
        child_of(tpid).unwrap_or(tpid)
    } else {
        tpid
    };
    let hping = child_of(flood.pid())
        .and_then(|p| child_of(p).or(Some(p)))
        .unwrap_or(0);
    let ksoft = cx.ksoftirqd0;
    let path_cpu = || cpu_secs(hping) + cpu_secs(ksoft);
    // Window P: bpf_stats off (unless it was on before the bench).
    let e0 = in_echos(cx.flood_pid)?;
    let c0 = cpu_secs(tpid);
    let p0 = path_cpu();
    let t0 = Instant::now();
    pause(Duration::from_secs_f64(tp))?;
    let e1 = in_echos(cx.flood_pid)?;
    let c1 = cpu_secs(tpid);
    let p1 = path_cpu();
    let dt = t0.elapsed().as_secs_f64();
    // Window C: bpf_stats on.
    let mut costs = Programs::new();
    let t1 = Instant::now();
    if let Some((_, ids, _)) = &tracer {
        cx.stats.set(true)?;
        let s0 = snapshot(ids)?;
        pause(Duration::from_secs_f64(tc))?;
        let s1 = snapshot(ids)?;
        cx.stats.set(false)?;
        costs = delta(&s0, &s1, t1.elapsed().as_secs_f64());
    } else {
        pause(Duration::from_secs_f64(tc))?;
    }
    let e2 = in_echos(cx.flood_pid)?;
    let dc = t1.elapsed().as_secs_f64();
    flood.stop(Duration::from_secs(3));
    let backlog_drops = softnet_drops().saturating_sub(d0);
    pause(Duration::from_millis(300))?;
    let probes = prober_stats(&prober.stop(Duration::from_secs(5)));
    let recorded = match tracer {
        Some((mut p, _, dump)) => {
            let text = p.stop(Duration::from_secs(30));
            let r = match mode {
                Mode::Bpftrace => Some(Recorded {
                    events: fs::read_to_string(&p.out).map_or(0, |s| {
                        s.lines()
                            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                            .count() as u64
                    }),
                    lost: bpftrace_lost(&text),
                }),
                Mode::Floor | Mode::FloorSyscalls => None,
                _ => footer_of(&dump).map(|f| Recorded {
                    events: f.counts.packets,
                    lost: f.lost.packets,
                }),
            };
            let _ = fs::remove_file(&dump);
            let _ = fs::remove_file(&p.out);
            r
        }
        None => None,
    };
    let r = FloodRun {
        mode,
        round,
        pps: (e1 - e0) as f64 / dt,
        backlog_drops,
        per_cpu_s: if p1 > p0 {
            (e1 - e0) as f64 / (p1 - p0)
        } else {
            f64::NAN
        },
        pps_stats_on: (e2 - e1) as f64 / dc,
        tracer_cpu_pct: if tpid != 0 {
            100.0 * (c1 - c0) / dt
        } else {
            f64::NAN
        },
        costs,
        probes,
        recorded,
    };
    println!(
        "  round {} {:<22} {:>9.0} echo req/s ({:>9.0} per flood CPU-s; stats on: {:>9.0}), tracer CPU {:>5.1}%, probes lost {}",
        round + 1,
        mode.short(),
        r.pps,
        r.per_cpu_s,
        r.pps_stats_on,
        r.tracer_cpu_pct,
        r.probes.lost.map_or("?".into(), |l| l.to_string())
    );
    Ok(r)
}

fn summarize(runs: &[FloodRun], m: Mode) -> FloodMode {
    let rs: Vec<&FloodRun> = runs.iter().filter(|r| r.mode == m).collect();
    let none = |f: fn(&FloodRun) -> f64| -> f64 {
        median(
            &runs
                .iter()
                .filter(|r| r.mode == Mode::None)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let paired = rs.iter().filter_map(|r| {
        runs.iter()
            .find(|n| n.mode == Mode::None && n.round == r.round)
            .map(|n| r.pps / n.pps)
    });
    let costs: Vec<&Programs> = rs.iter().map(|r| &r.costs).collect();
    let programs = sum(costs.iter().copied());
    let secs: f64 = programs.values().map(|c| c.secs).fold(0.0, f64::max);
    let total_ns: u64 = programs.values().map(|c| c.run_time_ns).sum();
    let pps = Spread::of(rs.iter().map(|r| r.pps));
    let per_cpu = Spread::of(rs.iter().map(|r| r.per_cpu_s));
    let ratio = |a: Option<f64>, b: f64| a.map(|a| a / b).filter(|x| x.is_finite());
    FloodMode {
        label: m.label().into(),
        pps_ratio_vs_none: ratio(pps.median, none(|r| r.pps)),
        pps,
        pps_ratio_paired: Spread::of(paired),
        per_flood_cpu_s_ratio_vs_none: ratio(per_cpu.median, none(|r| r.per_cpu_s)),
        per_flood_cpu_s: per_cpu,
        pps_stats_on: Spread::of(rs.iter().map(|r| r.pps_stats_on)),
        tracer_cpu_pct: Spread::of(rs.iter().map(|r| r.tracer_cpu_pct)),
        ns_per_run: per_round_ns(&costs),
        bpf_ns_per_packet_all_programs: Spread::of(rs.iter().map(|r| r.ns_all_per_packet())),
        bpf_cpu_pct: (secs > 0.0).then(|| 100.0 * total_ns as f64 / 1e9 / secs),
        programs,
        backlog_drops: rs.iter().map(|r| r.backlog_drops).sum(),
        probes_sent: rs.iter().filter_map(|r| r.probes.sent).sum(),
        probes_lost: rs.iter().filter_map(|r| r.probes.lost).sum(),
        probe_max_rtt_ms: rs
            .iter()
            .filter_map(|r| r.probes.max_rtt_ms)
            .reduce(f64::max),
        recorded: rs.iter().filter_map(|r| r.recorded.clone()).collect(),
    }
}

/// The alternating flood rounds, then one `--stacks` run.
pub(crate) fn run(cx: &mut Ctx, rounds: usize, tp: f64, tc: f64) -> anyhow::Result<FloodPart> {
    println!(
        "bench: {rounds} rounds of floods, alternating {}",
        MODES.map(Mode::short).join(" / ")
    );
    let tb = Instant::now();
    let steal0 = steal_secs();
    let mut runs = vec![];
    // CPU of processes that are not ours, by comm, over the runs (pids seen at both
    // ends of a run: our tracers, floods and probers live inside one run).
    let mut others: BTreeMap<String, f64> = BTreeMap::new();
    for r in 0..rounds {
        for m in MODES {
            let before = proc_cpu_table();
            runs.push(flood_run(cx, m, r, tp, tc)?);
            for (pid, (comm, c)) in proc_cpu_table() {
                if let Some((_, b)) = before.get(&pid) {
                    if pid != std::process::id()
                        && !comm.starts_with("ksoftirqd/")
                        && comm != "sleep"
                    {
                        *others.entry(comm).or_default() += c - b;
                    }
                }
            }
        }
    }
    let wall = tb.elapsed().as_secs_f64();
    let mut busy: Vec<Busy> = others
        .into_iter()
        .map(|(process, s)| Busy {
            process,
            cpu_pct: 100.0 * s / wall,
        })
        .filter(|b| b.cpu_pct >= 3.0)
        .collect();
    busy.sort_by(|a, b| b.cpu_pct.total_cmp(&a.cpu_pct));
    let mut part = FloodPart {
        rounds,
        window_stats_off_s: tp,
        window_stats_on_s: tc,
        steal_pct: 100.0 * (steal_secs() - steal0) / wall,
        other_busy_processes: busy,
        modes: MODES
            .iter()
            .map(|m| (m.key().to_string(), summarize(&runs, *m)))
            .collect(),
        stacks: None,
    };
    // --stacks: one run with the default-mode filter; the sampler records only while an
    // RX wait is pending, which a flood keeps true much of the time (a worst case).
    let st = flood_run(cx, Mode::Stacks, 0, tp, tc)?;
    let none = |f: fn(&FloodRun) -> f64| {
        median(
            &runs
                .iter()
                .filter(|r| r.mode == Mode::None)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    part.stacks = Some(StacksRun {
        pps: st.pps,
        pps_ratio_vs_none: Some(st.pps / none(|r| r.pps)).filter(|x| x.is_finite()),
        per_cpu_s_ratio_vs_none: Some(st.per_cpu_s / none(|r| r.per_cpu_s))
            .filter(|x| x.is_finite()),
        tracer_cpu_pct: st.tracer_cpu_pct,
        programs: st.costs,
        probes: st.probes,
    });
    Ok(part)
}
