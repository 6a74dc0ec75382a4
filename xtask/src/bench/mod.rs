//! `cargo xtask bench`: what stalltrace costs on this machine, side by side with
//! bpftrace peers, in one run. Prints numbers and writes `bench/results.{md,json}`
//! (`--quick` and `--only` write `target/bench/results-{quick,only}.*` instead);
//! never fails on a number. The headline keys of results.json carry issue 12's
//! targets (`results.rs`).
//!
//! Parts, one module each, in the order they run:
//! - `sampler`: record on an idle node (its CPU, every program's bpf_stats, the
//!   sampler's cost per idle tick), then the sampler's cost per recorded sample during
//!   a stall (a SCHED_FIFO hog starving a threaded-NAPI RX thread on CPU 1).
//! - `syscall`: the syscall tax, a getpid() loop untraced / default mode / `--syscalls`.
//! - `sched`: `perf bench sched pipe` pinned to CPU 1 untraced / default mode / a
//!   bpftrace runqslower-style script (`bench/runqslower.bt`), alternating rounds.
//! - `flood`: per-program kernel cost under an ICMP echo flood into a namespace made
//!   here, and the received packet rate untraced / default mode (`--peer`: the flood
//!   filtered out in the kernel) / every echo / bpftrace `bench/seed-equivalent.bt`, in
//!   alternating rounds with a 10 ms prober through each flood; one `--stacks` run; a
//!   `perf` profile; ring-buffer headroom at rising rates.
//! - `watch`: `stalltrace watch` next to `record`, CPU and RSS idle and under a flood.
//! - `analyze`: throughput and peak RSS on generated 1 M / 10 M record dumps.
//! - `soak` (`--soak 30m`, off by default): record --probe under alternating floods and
//!   stalls, RSS and fds every 10 s; writes bench/soak.{md,json}.
//!
//! Safety: floods go only to the namespaces made here (10.213.230-249.x), bounded by
//! `timeout` and `-c`; hogs are bounded by `--duration` and `timeout -s KILL`;
//! namespaces, veths, floods, probers, hogs, tracers, the bpf_stats sysctl and a
//! tracefs mounted here are cleaned up on every exit path (errors, Ctrl-C, SIGTERM).
use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};

mod analyze;
mod flood;
mod report;
mod results;
mod sampler;
mod sched;
mod soak;
mod syscall;
mod util;
mod watch;

use flood::{Ctx, Mode};
use util::*;

/// The parts `--only` can pick.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// record idle + the sampler's costs.
    Sampler,
    /// getpid() loop: the syscall tax.
    Syscalls,
    /// perf bench sched pipe vs bpftrace runqslower.
    Sched,
    /// The alternating flood rounds (+ one --stacks run).
    Floods,
    /// perf profile of the flood under stalltrace.
    Perf,
    /// watch vs record, CPU and RSS.
    Watch,
    /// Ring-buffer headroom at rising echo rates.
    Headroom,
    /// analyze on generated dumps.
    Analyze,
    /// Nothing but the soak (its length from --soak, default 30m).
    Soak,
}

const KERNEL_PARTS: [Part; 7] = [
    Part::Sampler,
    Part::Syscalls,
    Part::Sched,
    Part::Floods,
    Part::Perf,
    Part::Watch,
    Part::Headroom,
];

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Smoke run (a few minutes): one round, short windows, 100 k / 1 M record dumps;
    /// writes target/bench/results-quick.{md,json} instead of bench/results.*.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of the alternating flood runs [default: 5, 1 with --quick]; the syscall
    /// and scheduler parts run max(3, this) rounds (1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Run only these parts (comma-separated); writes target/bench/results-only.*.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Also soak for this long (e.g. 30m; off by default): record --probe under
    /// alternating floods and stalls, RSS and fds every 10 s; writes bench/soak.*.
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub soak: Option<u64>,
    /// Skip every kernel part (sampler, syscalls, sched, floods, perf, watch, headroom).
    #[arg(long)]
    pub skip_kernel: bool,
    /// Skip the analyze part.
    #[arg(long)]
    pub skip_analyze: bool,
    /// Skip the `perf` profile of the flood.
    #[arg(long)]
    pub no_perf: bool,
    /// Measure nothing: rewrite bench/results.md and bench/soak.md from the JSON files
    /// (after a change to the tables).
    #[arg(long)]
    pub render: bool,
}

/// `--render`: the Markdown again from the JSON the last runs wrote.
fn render_only(root: &Path) -> anyhow::Result<()> {
    for (json_name, md_name, soak) in [
        ("bench/results.json", "bench/results.md", false),
        ("bench/soak.json", "bench/soak.md", true),
    ] {
        let p = root.join(json_name);
        let Ok(text) = fs::read_to_string(&p) else {
            println!("bench: no {json_name}; skipped");
            continue;
        };
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        let md = if soak {
            report::soak_md(&v)
        } else {
            report::render_md(&v, v["quick"] == json!(true), false)
        };
        let out = root.join(md_name);
        fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
        println!("bench: wrote {}", out.display());
    }
    Ok(())
}

impl BenchArgs {
    fn wants(&self, p: Part) -> bool {
        if !self.only.is_empty() {
            return self.only.contains(&p);
        }
        match p {
            Part::Soak => false,
            Part::Analyze => !self.skip_analyze,
            Part::Perf => !self.skip_kernel && !self.no_perf,
            _ => !self.skip_kernel,
        }
    }
}

fn git(root: &Path, args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn run(root: &Path, bin: &Path, a: BenchArgs) -> anyhow::Result<()> {
    if a.render {
        return render_only(root);
    }
    install_signal_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (namespaces, BPF, sysctl): run it as root");
    }
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 5 });
    let small_rounds = if a.quick { 1 } else { rounds.max(3) };
    let (tp, tc) = if a.quick { (2.0, 1.5) } else { (4.0, 3.0) };
    let started = Instant::now();
    let uname = run_cmd(&["uname", "-r"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let bt_ver = run_cmd(&["bpftrace", "--version"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let perf_ver = run_cmd(&["perf", "--version"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let load0 = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut commit = git(root, &["rev-parse", "--short=12", "HEAD"]);
    if !git(root, &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    let date = run_cmd(&["date", "-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let host_cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map(|k| k / 1024.0 / 1024.0);
    let machine = json!({
        "kernel": uname, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": host_cpu, "mem_gib": mem_gib,
        "bpftrace": bt_ver, "perf": perf_ver, "loadavg_at_start": load0, "quick": a.quick, "rounds": rounds,
        "rounds_sched_syscalls": small_rounds,
        "window_stats_off_s": tp, "window_stats_on_s": tc,
    });
    println!("bench: commit {commit}, kernel {uname}, {bt_ver}, load average at start {load0}");

    let mut a = a;
    if a.only.contains(&Part::Soak) && a.soak.is_none() {
        a.soak = Some(30 * 60);
    }
    let mut res = Map::new();
    let kernel = KERNEL_PARTS.iter().any(|p| a.wants(*p));
    if kernel || a.soak.is_some() {
        kernel_parts(root, bin, &dir, &a, rounds, small_rounds, tp, tc, &mut res)?;
    }
    if a.wants(Part::Analyze) {
        analyze::analyze_part(bin, &dir, a.quick, &mut res)?;
    }
    res.insert(
        "loadavg_at_end".into(),
        json!(fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()),
    );
    let soak = res.remove("soak");
    let results = results::Results::new(
        machine.clone(),
        commit.clone(),
        date.clone(),
        a.quick,
        started.elapsed().as_secs_f64(),
        res,
    );
    let v = serde_json::to_value(&results).context("serializing the results")?;
    let (md_path, json_path) = if a.quick {
        (dir.join("results-quick.md"), dir.join("results-quick.json"))
    } else if !a.only.is_empty() {
        (dir.join("results-only.md"), dir.join("results-only.json"))
    } else {
        (
            root.join("bench/results.md"),
            root.join("bench/results.json"),
        )
    };
    if kernel || a.wants(Part::Analyze) {
        fs::write(&json_path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        let md = report::render_md(&v, a.quick, !a.only.is_empty());
        fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
        println!("\n{md}");
        println!("wrote {} and {}", md_path.display(), json_path.display());
    }
    if let Some(s) = soak {
        let (md_path, json_path) = if a.quick {
            (dir.join("soak-quick.md"), dir.join("soak-quick.json"))
        } else {
            (root.join("bench/soak.md"), root.join("bench/soak.json"))
        };
        let v = json!({"machine": machine, "commit": commit, "date": date, "soak": s});
        fs::write(&json_path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        let md = report::soak_md(&v);
        fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
        println!("\n{md}");
        println!("wrote {} and {}", md_path.display(), json_path.display());
    }
    println!("bench: {:.0} s in all", started.elapsed().as_secs_f64());
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn kernel_parts(
    root: &Path,
    bin: &Path,
    dir: &Path,
    a: &BenchArgs,
    rounds: usize,
    small_rounds: usize,
    tp: f64,
    tc: f64,
    res: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    remove_stale_namespaces();
    let (sf, sp, ss) = pick_subnets()?;
    let me = std::process::id() % 100_000;
    let stats = StatsGuard::new()?;
    // bpftrace needs tracefs (stalltrace does not); dropped last: unmounted at the end.
    let _tracefs = if a.wants(Part::Floods) || a.wants(Part::Sched) {
        let g = TracefsGuard::ensure()?;
        res.insert("tracefs_mounted_by_bench".into(), json!(g.mounted_here));
        Some(g)
    } else {
        None
    };
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
        stall_ns: None,
        stall_subnet: ss,
    };
    if a.wants(Part::Sampler) {
        res.insert("sampler".into(), sampler::run(&mut cx)?);
    }
    if a.wants(Part::Syscalls) {
        res.insert("syscalls".into(), syscall::run(&mut cx, small_rounds)?);
    }
    if a.wants(Part::Sched) {
        res.insert("sched".into(), sched::run(&mut cx, small_rounds)?);
    }
    if a.wants(Part::Floods) {
        res.extend(flood::rounds(&mut cx, rounds, tp, tc)?);
    }
    if a.wants(Part::Perf) && Command::new("perf").arg("--version").output().is_ok() {
        let mut profiles = vec![];
        for m in [Mode::Default, Mode::Every] {
            profiles.push(
                flood::perf_profile(&mut cx, m)
                    .unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
            );
        }
        res.insert("perf".into(), json!(profiles));
    }
    if a.wants(Part::Watch) {
        res.insert("watch_vs_record".into(), watch::run(&mut cx)?);
    }
    if a.wants(Part::Headroom) {
        res.insert("ring_buffer".into(), flood::headroom(&mut cx)?);
    }
    if let Some(secs) = a.soak {
        res.insert("soak".into(), soak::run(&mut cx, secs)?);
    }
    Ok(())
}
