//! flood
use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::util::*;
// ---------------------------------------------------------------------------------
// The run

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    None,
    Default,
    Every,
    Bpftrace,
    /// Default-mode filter plus `--stacks` (measured once, after the rounds).
    Stacks,
    /// Default-mode filter plus `--syscalls` (exact syscall tracing, opt-in).
    Syscalls,
    /// bpftrace `bench/runqslower.bt`: the scheduler peer.
    Runqslower,
}

impl Mode {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Default => "stalltrace_default",
            Mode::Every => "stalltrace_every_echo",
            Mode::Bpftrace => "bpftrace",
            Mode::Stacks => "stalltrace_stacks",
            Mode::Syscalls => "stalltrace_syscalls",
            Mode::Runqslower => "bpftrace_runqslower",
        }
    }
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Default => "stalltrace record, default mode (--peer of the probe namespace: the flood does not match)",
            Mode::Every => "stalltrace record, every ICMP echo (no filter; the same job as bpftrace)",
            Mode::Bpftrace => "bpftrace bench/seed-equivalent.bt (the seed's job)",
            Mode::Stacks => "stalltrace record --stacks, default-mode filter",
            Mode::Syscalls => "stalltrace record --syscalls, default-mode filter",
            Mode::Runqslower => "bpftrace bench/runqslower.bt (wakeup/switch hooks, hash map)",
        }
    }
    pub(crate) fn short(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Default => "stalltrace default",
            Mode::Every => "stalltrace every echo",
            Mode::Bpftrace => "bpftrace",
            Mode::Stacks => "stalltrace --stacks",
            Mode::Syscalls => "stalltrace --syscalls",
            Mode::Runqslower => "bpftrace runqslower",
        }
    }
}

/// The planted culprit's name in stalls the bench makes.
pub(crate) const HOG_NAME: &str = "bench-hog";

pub(crate) struct Ctx {
    pub(crate) root: PathBuf,
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) quick: bool,
    pub(crate) flood: Ns,
    pub(crate) probe: Ns,
    pub(crate) flood_pid: u32,
    pub(crate) stats: StatsGuard,
    pub(crate) seq: u32,
    pub(crate) ksoftirqd0: u32,
    /// A namespace whose RX runs on a threaded-NAPI kthread pinned to CPU 1 (for
    /// stalls: a SCHED_FIFO hog on CPU 1 starves it); made when first needed.
    pub(crate) stall_ns: Option<stalltrace_testkit::netns::Netns>,
    pub(crate) stall_subnet: u8,
}

impl Ctx {
    pub(crate) fn name(&mut self, tag: &str) -> String {
        self.seq += 1;
        format!("{:03}-{tag}", self.seq)
    }

    /// A fresh dump path in the bench's directory.
    pub(crate) fn dump_path(&mut self, tag: &str) -> PathBuf {
        let n = self.name(tag);
        self.dir.join(format!("{n}.jsonl"))
    }

    /// The threaded-NAPI namespace (made on first use): (namespace, its address).
    pub(crate) fn stall_ns(&mut self) -> anyhow::Result<String> {
        if self.stall_ns.is_none() {
            let me = std::process::id() % 100_000;
            let ns = stalltrace_testkit::netns::Netns::create(
                &format!("stb{me}s"),
                &format!("stb{me}sh"),
                &format!("stb{me}sn"),
                self.stall_subnet,
            )
            .context("creating the stall namespace")?;
            let napi = ns
                .threaded_napi(1)
                .context("threaded NAPI in the stall namespace")?;
            println!(
                "bench: stall namespace {} ({}), RX by napi thread pid {napi} pinned to CPU 1",
                ns.name, ns.ns_addr
            );
            self.stall_ns = Some(ns);
        }
        Ok(self
            .stall_ns
            .as_ref()
            .map(|n| n.ns_addr.clone())
            .unwrap_or_default())
    }

    /// Starts `stalltrace <args>` and waits for `marker` in its output; returns it with
    /// the ids of the BPF programs it holds.
    pub(crate) fn start_stalltrace(
        &mut self,
        tag: &str,
        args: &[String],
        marker: &str,
    ) -> anyhow::Result<(Proc, Vec<u64>)> {
        let before = bpftool_progs()?.iter().map(|p| p.id).max().unwrap_or(0);
        let tag = self.name(tag);
        let mut argv = vec![self.bin.display().to_string()];
        argv.extend(args.iter().cloned());
        let mut p = Proc::spawn(&tag, &argv, &self.dir)?;
        p.wait_for(marker, Duration::from_secs(90))?;
        pause(Duration::from_millis(300))?;
        let ids = tracer_progs(p.pid(), before)?;
        if ids.is_empty() {
            bail!("{tag}: no BPF programs found for pid {}", p.pid());
        }
        Ok((p, ids))
    }

    /// `stalltrace hog` on CPU 1 at SCHED_FIFO 50 for `secs`, in 100 ms bursts with 30
    /// ms gaps (the lab's rt-hog culprit); it exits by itself.
    pub(crate) fn start_hog(&mut self, secs: u64) -> anyhow::Result<Proc> {
        let tag = self.name("hog");
        let argv: Vec<String> = vec![
            "timeout".into(),
            "-s".into(),
            "KILL".into(),
            (secs + 5).to_string(),
            self.bin.display().to_string(),
            "hog".into(),
            "--cpu".into(),
            "1".into(),
            "--fifo".into(),
            "50".into(),
            "--name".into(),
            HOG_NAME.into(),
            "--duration".into(),
            format!("{secs}s"),
            "--burst".into(),
            "100ms".into(),
            "--gap".into(),
            "30ms".into(),
        ];
        Proc::spawn(&tag, &argv, &self.dir)
    }

    /// An hping3 flood (or rate `-i r`) pinned to CPU 0 to `addr`, bounded by `secs`.
    pub(crate) fn start_flood_to(
        &mut self,
        addr: &str,
        rate: Option<&str>,
        secs: u64,
    ) -> anyhow::Result<Proc> {
        let tag = self.name("flood");
        let mut argv: Vec<String> = ["timeout", "-s", "INT"].map(String::from).into();
        argv.push(secs.to_string());
        argv.extend(
            [
                "taskset",
                "-c",
                "0",
                "hping3",
                "--icmp",
                "-q",
                "-c",
                "500000000",
            ]
            .map(String::from),
        );
        match rate {
            None => argv.push("--flood".into()),
            Some(r) => argv.extend(["-i".into(), r.into()]),
        }
        argv.push(addr.into());
        Proc::spawn(&tag, &argv, &self.dir)
    }

    /// Starts a tracer and waits until its programs are attached.
    pub(crate) fn start_tracer(
        &mut self,
        mode: Mode,
        extra: &[&str],
    ) -> anyhow::Result<Option<(Proc, Vec<u64>, PathBuf)>> {
        let before = bpftool_progs()?.iter().map(|p| p.id).max().unwrap_or(0);
        let tag = self.name(mode.key());
        let dump = self.dir.join(format!("{tag}.jsonl"));
        let (argv, marker): (Vec<String>, &str) = match mode {
            Mode::None => return Ok(None),
            Mode::Default | Mode::Every | Mode::Stacks | Mode::Syscalls => {
                let mut a: Vec<String> = vec![
                    self.bin.display().to_string(),
                    "record".into(),
                    "--quiet".into(),
                    "--force".into(),
                ];
                a.extend([
                    "--duration".into(),
                    "600s".into(),
                    "-o".into(),
                    dump.display().to_string(),
                ]);
                if mode != Mode::Every {
                    a.extend(["--peer".into(), self.probe.addr.clone()]);
                }
                if mode == Mode::Stacks {
                    a.push("--stacks".into());
                }
                if mode == Mode::Syscalls {
                    a.push("--syscalls".into());
                }
                a.extend(extra.iter().map(|s| s.to_string()));
                (a, "recording to")
            }
            Mode::Bpftrace | Mode::Runqslower => {
                let script = self.root.join(if mode == Mode::Bpftrace {
                    "bench/seed-equivalent.bt"
                } else {
                    "bench/runqslower.bt"
                });
                (
                    vec![
                        "timeout".into(),
                        "-s".into(),
                        "INT".into(),
                        "600".into(),
                        "bpftrace".into(),
                        script.display().to_string(),
                    ],
                    "Attaching",
                )
            }
        };
        let mut p = Proc::spawn(&tag, &argv, &self.dir)?;
        p.wait_for(marker, Duration::from_secs(90))?;
        // bpftrace runs under `timeout`: its programs are held by the child.
        let mut holder = p.pid();
        if matches!(mode, Mode::Bpftrace | Mode::Runqslower) {
            if let Some(c) = fs::read_to_string(format!("/proc/{holder}/task/{holder}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next().and_then(|x| x.parse().ok()))
            {
                holder = c;
            }
        }
        pause(Duration::from_millis(300))?;
        let ids = tracer_progs(holder, before)?;
        if ids.is_empty() {
            bail!("{tag}: no BPF programs found for pid {holder}");
        }
        Ok(Some((p, ids, dump)))
    }

    pub(crate) fn start_flood(&mut self, rate: Option<&str>, secs: u64) -> anyhow::Result<Proc> {
        let addr = self.flood.addr.clone();
        self.start_flood_to(&addr, rate, secs + 5)
    }

    pub(crate) fn start_prober(&mut self, secs: u64) -> anyhow::Result<Proc> {
        let tag = self.name("prober");
        let count = (secs * 100 + 500).to_string();
        let argv: Vec<String> = vec![
            "timeout".into(),
            "-s".into(),
            "INT".into(),
            (secs + 10).to_string(),
            self.bin.display().to_string(),
            "probe".into(),
            self.probe.addr.clone(),
            "--interval".into(),
            "10ms".into(),
            "--count".into(),
            count,
        ];
        let mut p = Proc::spawn(&tag, &argv, &self.dir)?;
        p.wait_for("PROBE", Duration::from_secs(10))?;
        Ok(p)
    }
}

/// Packets dropped because a CPU's input backlog was full, all CPUs.
pub(crate) struct FloodRun {
    pub(crate) mode: Mode,
    pub(crate) round: usize,
    pub(crate) pps: f64,
    /// Echo requests per CPU-second spent by the flood path (hping3, whose context runs
    /// most of the softirq work, + ksoftirqd/0): insensitive to other tenants' load.
    pub(crate) per_cpu_s: f64,
    /// Packets the kernel dropped at the per-CPU backlog (softnet_stat column 2).
    pub(crate) backlog_drops: u64,
    pub(crate) pps_stats_on: f64,
    pub(crate) tracer_cpu_pct: f64,
    pub(crate) costs: Costs,
    pub(crate) cost_secs: f64,
    pub(crate) probes: Value,
    pub(crate) recorded: Value,
}

pub(crate) fn flood_run(
    cx: &mut Ctx,
    mode: Mode,
    round: usize,
    tp: f64,
    tc: f64,
) -> anyhow::Result<FloodRun> {
    let total = (tp + tc + 3.0) as u64;
    let tracer = cx.start_tracer(mode, &[])?;
    let mut prober = cx.start_prober(total + 2)?;
    pause(Duration::from_millis(300))?;
    let d0 = softnet_drops();
    let mut flood = cx.start_flood(None, total)?;
    pause(Duration::from_millis(1000))?;
    let tpid = tracer.as_ref().map(|t| t.0.pid()).unwrap_or(0);
    let tpid = if mode == Mode::Bpftrace {
        fs::read_to_string(format!("/proc/{tpid}/task/{tpid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(tpid)
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
    let mut costs = Costs::new();
    let t1 = Instant::now();
    if let Some((_, ids, _)) = &tracer {
        cx.stats.set(true)?;
        let s0 = snapshot(ids)?;
        pause(Duration::from_secs_f64(tc))?;
        let s1 = snapshot(ids)?;
        cx.stats.set(false)?;
        costs = delta(&s0, &s1);
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
            let v = if mode == Mode::Bpftrace {
                let lines = fs::read_to_string(&p.out)
                    .map(|s| {
                        s.lines()
                            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                            .count()
                    })
                    .unwrap_or(0);
                json!({"lines": lines, "lost": bpftrace_lost(&text)})
            } else {
                let f = footer_of(&dump);
                json!({"packets": f["counts"]["packets"], "lost": f["lost"]})
            };
            let _ = fs::remove_file(&dump);
            let _ = fs::remove_file(&p.out);
            v
        }
        None => Value::Null,
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
        cost_secs: dc,
        probes,
        recorded,
    };
    println!(
        "  round {} {:<22} {:>9.0} echo req/s ({:>9.0} per flood CPU-s; stats on: {:>9.0}), tracer CPU {:>5.1}%, probes {}",
        round + 1,
        mode.short(),
        r.pps,
        r.per_cpu_s,
        r.pps_stats_on,
        r.tracer_cpu_pct,
        r.probes
    );
    Ok(r)
}

pub(crate) fn summarize_floods(runs: &[FloodRun]) -> Value {
    let mut out = serde_json::Map::new();
    let none: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::None)
        .map(|r| r.pps)
        .collect();
    let none_med = median(&none);
    for m in [Mode::None, Mode::Default, Mode::Every, Mode::Bpftrace] {
        let rs: Vec<&FloodRun> = runs.iter().filter(|r| r.mode == m).collect();
        let pps: Vec<f64> = rs.iter().map(|r| r.pps).collect();
        // Paired ratio: each run against the untraced run of its round.
        let paired: Vec<f64> = rs
            .iter()
            .filter_map(|r| {
                runs.iter()
                    .find(|n| n.mode == Mode::None && n.round == r.round)
                    .map(|n| r.pps / n.pps)
            })
            .collect();
        let mut agg = Costs::new();
        let mut secs = 0.0;
        for r in &rs {
            secs += r.cost_secs;
            for (k, v) in &r.costs {
                let e = agg.entry(k.clone()).or_insert((0, 0, 0, v.3.clone()));
                e.0 += v.0;
                e.1 += v.1;
                e.2 += v.2;
            }
        }
        let total_ns: u64 = agg.values().map(|c| c.0).sum();
        let pkt_runs = agg.get("netif_receive_skb").map(|c| c.1).unwrap_or(0);
        let probes_lost: u64 = rs.iter().filter_map(|r| r.probes["lost"].as_u64()).sum();
        let probes_sent: u64 = rs.iter().filter_map(|r| r.probes["sent"].as_u64()).sum();
        let max_rtt = rs
            .iter()
            .filter_map(|r| r.probes["max_rtt_ms"].as_f64())
            .fold(f64::NAN, f64::max);
        out.insert(
            m.key().into(),
            json!({
                "label": m.label(),
                "pps_runs": pps,
                "pps_median": median(&pps),
                "pps_ratio_vs_none": median(&pps) / none_med,
                "pps_ratio_paired": paired,
                "pps_ratio_paired_median": median(&paired),
                "per_flood_cpu_s_runs": rs.iter().map(|r| r.per_cpu_s).collect::<Vec<_>>(),
                "per_flood_cpu_s_median": median(&rs.iter().map(|r| r.per_cpu_s).collect::<Vec<_>>()),
                "per_flood_cpu_s_ratio_vs_none": median(&rs.iter().map(|r| r.per_cpu_s).collect::<Vec<_>>())
                    / median(&runs.iter().filter(|r| r.mode == Mode::None).map(|r| r.per_cpu_s).collect::<Vec<_>>()),
                "pps_stats_on_median": median(&rs.iter().map(|r| r.pps_stats_on).collect::<Vec<_>>()),
                "tracer_cpu_pct_median": median(&rs.iter().map(|r| r.tracer_cpu_pct).collect::<Vec<_>>()),
                "programs": costs_json(&agg, secs),
                "bpf_ns_per_packet_all_programs": if pkt_runs > 0 { total_ns as f64 / pkt_runs as f64 } else { f64::NAN },
                "bpf_cpu_pct": 100.0 * total_ns as f64 / 1e9 / secs.max(1e-9),
                "backlog_drops": rs.iter().map(|r| r.backlog_drops).sum::<u64>(),
                "probes_sent": probes_sent,
                "probes_lost": probes_lost,
                "probe_max_rtt_ms": max_rtt,
                "recorded": rs.iter().map(|r| r.recorded.clone()).collect::<Vec<_>>(),
            }),
        );
    }
    let ns = |k: &str| {
        out.get(k)
            .and_then(|v| v["programs"]["netif_receive_skb"]["ns_per_run"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let all = |k: &str| {
        out.get(k)
            .and_then(|v| v["bpf_ns_per_packet_all_programs"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let vals = [
        ("ns_per_packet_default", ns("stalltrace_default")),
        ("ns_per_echo_every", ns("stalltrace_every_echo")),
        ("ns_per_echo_bpftrace", ns("bpftrace")),
        (
            "overhead_ratio_vs_bpftrace",
            ns("stalltrace_every_echo") / ns("bpftrace"),
        ),
        (
            "overhead_ratio_vs_bpftrace_all_programs",
            all("stalltrace_every_echo") / all("bpftrace"),
        ),
    ];
    for (k, x) in vals {
        out.insert(k.into(), json!(x));
    }
    Value::Object(out)
}

pub(crate) fn perf_profile(cx: &mut Ctx, mode: Mode) -> anyhow::Result<Value> {
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
    let argv: Vec<String> = vec![
        "perf".into(),
        "record".into(),
        "-q".into(),
        "-C".into(),
        "0".into(),
        "-e".into(),
        "cpu-clock".into(),
        "-F".into(),
        "1999".into(),
        "-o".into(),
        data.display().to_string(),
        "--".into(),
        "sleep".into(),
        secs.to_string(),
    ];
    let mut p = Proc::spawn(&tag, &argv, &cx.dir)?;
    pause(Duration::from_secs(secs + 1))?;
    for _ in 0..100 {
        if p.child
            .as_mut()
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
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
    let top: Vec<Value> = rep
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('%'))
        .take(30)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pct = it.next()?.trim_end_matches('%').parse::<f64>().ok()?;
            let sym = it
                .filter(|w| *w != "[k]" && *w != "[.]")
                .collect::<Vec<_>>()
                .join(" ");
            Some(json!({"pct": pct, "symbol": sym}))
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
    let bpf: f64 = top
        .iter()
        .filter(|v| v["symbol"].as_str().is_some_and(glue))
        .filter_map(|v| v["pct"].as_f64())
        .sum();
    let _ = fs::remove_file(&data);
    Ok(json!({"mode": mode.key(), "secs": secs, "top": top, "bpf_symbols_pct": bpf}))
}

pub(crate) fn headroom(cx: &mut Ctx) -> anyhow::Result<Value> {
    println!(
        "bench: ring-buffer headroom (record every echo, default 4 MiB ring) at rising echo rates"
    );
    let secs: u64 = if cx.quick { 2 } else { 3 };
    let steps: Vec<(Option<&str>, &str)> = if cx.quick {
        vec![
            (Some("u1000"), "4MiB"),
            (Some("u50"), "4MiB"),
            (None, "4MiB"),
        ]
    } else {
        vec![
            (Some("u1000"), "4MiB"),
            (Some("u200"), "4MiB"),
            (Some("u50"), "4MiB"),
            (Some("u20"), "4MiB"),
            (None, "4MiB"),
        ]
    };
    let mut out = vec![];
    let mut any_loss = false;
    let run_step = |cx: &mut Ctx, rate: Option<&str>, ring: &str| -> anyhow::Result<Value> {
        let (mut t, _, dump) = cx
            .start_tracer(Mode::Every, &["--ring-buffer", ring])?
            .context("no tracer")?;
        let e0 = in_echos(cx.flood_pid)?;
        let t0 = Instant::now();
        let mut flood = cx.start_flood(rate, secs)?;
        pause(Duration::from_secs(secs))?;
        flood.stop(Duration::from_secs(3));
        let dt = t0.elapsed().as_secs_f64();
        let e1 = in_echos(cx.flood_pid)?;
        pause(Duration::from_millis(300))?;
        let text = t.stop(Duration::from_secs(30));
        let f = footer_of(&dump);
        let _ = fs::remove_file(&dump);
        let recorded = f["counts"]["packets"].as_u64().unwrap_or(0);
        let lost = f["lost"]["packets"].as_u64().unwrap_or(0);
        let shown: Vec<String> = text
            .lines()
            .filter(|l| {
                l.contains("lost") && (l.starts_with("warning:") || l.starts_with("stopped"))
            })
            .map(String::from)
            .collect();
        let v = json!({
            "hping3_rate": rate.unwrap_or("--flood"), "ring_buffer": ring, "secs": dt,
            "echo_requests_per_s": (e1 - e0) as f64 / dt,
            "events_recorded": recorded, "events_lost": lost,
            "events_recorded_per_s": recorded as f64 / dt,
            "events_offered_per_s": (recorded + lost) as f64 / dt,
            "user_sees": shown,
        });
        println!(
            "  {:>8} ring {:>6}: {:>9.0} events/s offered, {:>9.0} recorded/s, lost {}",
            rate.unwrap_or("--flood"),
            ring,
            v["events_offered_per_s"].as_f64().unwrap_or(0.0),
            v["events_recorded_per_s"].as_f64().unwrap_or(0.0),
            lost
        );
        Ok(v)
    };
    for (rate, ring) in steps {
        let v = run_step(cx, rate, ring)?;
        any_loss |= v["events_lost"].as_u64().unwrap_or(0) > 0;
        out.push(v);
    }
    if !any_loss {
        // Nothing lost with the default ring: show what a user sees when it overflows.
        out.push(run_step(cx, None, "16KiB")?);
    }
    let best = out
        .iter()
        .filter(|v| v["ring_buffer"] == "4MiB" && v["events_lost"].as_u64() == Some(0))
        .filter_map(|v| v["events_recorded_per_s"].as_f64())
        .fold(0.0, f64::max);
    Ok(
        json!({"steps": out, "max_rate_without_loss_per_s": best, "any_loss_with_default_ring": any_loss}),
    )
}

/// Parts 1 and 2: the alternating flood rounds (none / default / every echo /
/// bpftrace), then one `--stacks` run; bpf_stats per program and the packet rates.
pub(crate) fn rounds(
    cx: &mut Ctx,
    rounds: usize,
    tp: f64,
    tc: f64,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    // 1 + 2: alternating flood runs.
    println!(
        "bench: {rounds} rounds of floods, alternating {}",
        [Mode::None, Mode::Default, Mode::Every, Mode::Bpftrace]
            .map(Mode::short)
            .join(" / ")
    );
    let modes = [Mode::None, Mode::Default, Mode::Every, Mode::Bpftrace];
    let tb = Instant::now();
    let steal0 = steal_secs();
    let mut runs = vec![];
    // CPU of processes that are not ours, by comm, over the runs (pids seen at both
    // ends of a run: our tracers, floods and probers live inside one run).
    let mut others: BTreeMap<String, f64> = BTreeMap::new();
    for r in 0..rounds {
        for m in modes {
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
    out.insert(
        "steal_pct".into(),
        json!(100.0 * (steal_secs() - steal0) / wall),
    );
    let mut busy: Vec<(f64, String)> = others
        .into_iter()
        .map(|(c, s)| (100.0 * s / wall, c))
        .filter(|(pct, _)| *pct >= 3.0)
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.insert(
        "other_busy_processes".into(),
        json!(busy
            .iter()
            .map(|(p, n)| json!({"process": n, "cpu_pct": p}))
            .collect::<Vec<_>>()),
    );
    out.insert("kernel".into(), summarize_floods(&runs));

    // --stacks: one run with the default-mode filter; the sampler records only while an
    // RX wait is pending, which a flood keeps true much of the time (a worst case).
    let st = flood_run(cx, Mode::Stacks, 0, tp, tc)?;
    let none_pps: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::None)
        .map(|r| r.pps)
        .collect();
    let none_cpu: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::None)
        .map(|r| r.per_cpu_s)
        .collect();
    out.insert(
        "stacks".into(),
        json!({
            "pps": st.pps,
            "pps_ratio_vs_none": st.pps / median(&none_pps),
            "per_cpu_s_ratio_vs_none": st.per_cpu_s / median(&none_cpu),
            "tracer_cpu_pct": st.tracer_cpu_pct,
            "programs": costs_json(&st.costs, st.cost_secs),
            "probes": st.probes,
        }),
    );

    Ok(out)
}
