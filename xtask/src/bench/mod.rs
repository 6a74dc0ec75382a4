//! `cargo xtask bench`: what stalltrace costs on this machine, next to bpftrace doing
//! the seed's job. Prints numbers and writes `bench/results.{md,json}` (a `--quick`
//! smoke run writes `target/bench/results-quick.*` instead); asserts nothing.
//!
//! Parts (issue 7):
//! 1. Kernel cost per event: `run_time_ns / run_cnt` of every program (found by the
//!    tracer's open program fds, named via `bpftool prog show -j`, whatever their type)
//!    with `kernel.bpf_stats_enabled=1`, under an ICMP echo flood over veth into a
//!    namespace made here: `record` in its default mode (a `--peer` filter that does
//!    not match the flood), `record` of every echo, and the bpftrace script
//!    `bench/seed-equivalent.bt`; one more run with `--stacks` (default-mode filter).
//! 2. Effect on the node: echo requests received per second in the flood namespace,
//!    runs alternating none / default / every-echo / bpftrace, medians and ratios;
//!    measured with bpf_stats off, then a second window with it on for part 1. A
//!    10 ms prober into a second namespace runs through every flood.
//! 3. Ring-buffer headroom: every-echo recordings at rising echo rates.
//! 4. `analyze` throughput and peak RSS on generated dumps (`stalltrace_testkit::benchdump`).
//! 5. `record`'s own CPU while idle and during the flood.
//!
//! Safety: floods go only to the namespaces made here (10.213.230-249.x), bounded by
//! `timeout` and `-c`; namespaces, veths, floods, probers, tracers and the bpf_stats
//! sysctl are cleaned up on every exit path (errors, panics, Ctrl-C, SIGTERM).
use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

mod analyze;
mod flood;
mod report;
mod util;

use analyze::*;
use flood::*;
use report::*;
use util::*;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Smoke run: one round, short windows, 100 k / 1 M event dumps; writes
    /// target/bench/results-quick.{md,json} instead of bench/results.*.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of the alternating flood runs [default: 5, 1 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Skip the kernel parts (1, 2, 3, 5).
    #[arg(long)]
    pub skip_kernel: bool,
    /// Skip the analyze part (4).
    #[arg(long)]
    pub skip_analyze: bool,
    /// Skip the `perf` profile of a default-mode flood.
    #[arg(long)]
    pub no_perf: bool,
}

pub fn run(root: &Path, bin: &Path, a: BenchArgs) -> anyhow::Result<()> {
    install_signal_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (namespaces, BPF, sysctl): run it as root");
    }
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 5 });
    let (tp, tc) = if a.quick { (2.0, 1.5) } else { (4.0, 3.0) };
    let started = Instant::now();
    let mut res = serde_json::Map::new();
    let uname = run_cmd(&["uname", "-r"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let bt_ver = run_cmd(&["bpftrace", "--version"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let load0 = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    res.insert(
        "machine".into(),
        json!({"kernel": uname, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
               "bpftrace": bt_ver, "loadavg_at_start": load0, "quick": a.quick, "rounds": rounds,
               "window_stats_off_s": tp, "window_stats_on_s": tc}),
    );
    println!("bench: kernel {uname}, {bt_ver}, load average at start {load0}");

    if !a.skip_kernel {
        kernel_parts(root, bin, &dir, &a, rounds, tp, tc, &mut res)?;
    }
    if !a.skip_analyze {
        analyze_part(bin, &dir, a.quick, &mut res)?;
    }
    res.insert("elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    res.insert(
        "loadavg_at_end".into(),
        json!(fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()),
    );
    let (md_path, json_path) = if a.quick {
        (dir.join("results-quick.md"), dir.join("results-quick.json"))
    } else {
        (
            root.join("bench/results.md"),
            root.join("bench/results.json"),
        )
    };
    let v = Value::Object(res);
    fs::write(&json_path, serde_json::to_string_pretty(&v)? + "\n")?;
    let md = render_md(&v, a.quick);
    fs::write(&md_path, &md)?;
    println!("\n{md}");
    println!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
pub(crate) fn kernel_parts(
    root: &Path,
    bin: &Path,
    dir: &Path,
    a: &BenchArgs,
    rounds: usize,
    tp: f64,
    tc: f64,
    res: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let (sf, sp) = pick_subnets()?;
    let me = std::process::id() % 100_000;
    let stats = StatsGuard::new()?;
    let flood = Ns::create(
        &format!("stb{me}f"),
        &format!("stb{me}fh"),
        &format!("stb{me}fn"),
        sf,
        dir,
    )?;
    let probe = Ns::create(
        &format!("stb{me}p"),
        &format!("stb{me}ph"),
        &format!("stb{me}pn"),
        sp,
        dir,
    )?;
    let flood_pid = flood.snmp_pid()?;
    println!(
        "bench: flood namespace {} ({}), probe namespace {} ({})",
        flood.name, flood.addr, probe.name, probe.addr
    );
    if stats.was_on() {
        println!("bench: note: kernel.bpf_stats_enabled was already 1; the 'stats off' windows run with it on");
    }
    let others = other_tracing_programs(&[]);
    res.insert("other_tracing_programs_at_start".into(), json!(others));
    if !others.is_empty() {
        println!("bench: note: {} other tracing BPF programs attached on this machine (other users' tools): numbers are noisier", others.len());
    }
    let mut cx = Ctx {
        root: root.into(),
        bin: bin.into(),
        dir: dir.into(),
        quick: a.quick,
        flood,
        probe,
        flood_pid,
        stats,
        seq: 0,
        ksoftirqd0: find_comm("ksoftirqd/0"),
    };

    // 5a. record idle.
    println!("bench: record's CPU while idle");
    let idle_secs = if cx.quick { 2.0 } else { 5.0 };
    let idle = {
        let (mut p, ids, dump) = cx.start_tracer(Mode::Default, &[])?.context("no tracer")?;
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
        p.stop(Duration::from_secs(20));
        let _ = fs::remove_file(dump);
        let costs = delta(&s0, &s1);
        let kernel_ns: u64 = costs.values().map(|c| c.0).sum();
        json!({"cpu_pct": 100.0 * (c1 - c0) / dt, "secs": dt, "kernel_bpf_cpu_pct": 100.0 * kernel_ns as f64 / 1e9 / dt,
               "programs": costs_json(&costs, dt)})
    };
    println!(
        "  idle: record {:.2}% of a CPU; its programs {:.2}% (bpf_stats)",
        idle["cpu_pct"].as_f64().unwrap_or(0.0),
        idle["kernel_bpf_cpu_pct"].as_f64().unwrap_or(0.0)
    );
    res.insert("record_idle".into(), idle);

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
            runs.push(flood_run(&mut cx, m, r, tp, tc)?);
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
    res.insert(
        "steal_pct".into(),
        json!(100.0 * (steal_secs() - steal0) / wall),
    );
    let mut busy: Vec<(f64, String)> = others
        .into_iter()
        .map(|(c, s)| (100.0 * s / wall, c))
        .filter(|(pct, _)| *pct >= 3.0)
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    res.insert(
        "other_busy_processes".into(),
        json!(busy
            .iter()
            .map(|(p, n)| json!({"process": n, "cpu_pct": p}))
            .collect::<Vec<_>>()),
    );
    res.insert("kernel".into(), summarize_floods(&runs));

    // --stacks: one run with the default-mode filter; the sampler records only while an
    // RX wait is pending, which a flood keeps true much of the time (a worst case).
    let st = flood_run(&mut cx, Mode::Stacks, 0, tp, tc)?;
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
    res.insert(
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

    // perf profile of a default-mode flood.
    if !a.no_perf && Command::new("perf").arg("--version").output().is_ok() {
        let mut profiles = vec![];
        for m in [Mode::Default, Mode::Every] {
            profiles.push(
                perf_profile(&mut cx, m).unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
            );
        }
        res.insert("perf".into(), json!(profiles));
    }

    // 3. ring-buffer headroom.
    res.insert("ring_buffer".into(), headroom(&mut cx)?);
    Ok(())
}
