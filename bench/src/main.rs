//! `stalltrace-bench` (run by `cargo xtask bench`, which builds it and stalltrace
//! first): what stalltrace costs on this machine, side by side with bpftrace peers and
//! with the floor (an empty program on each hook stalltrace uses, same attach type),
//! in one run. Prints numbers and writes `bench/results.{md,json}` (`--quick` and
//! `--only` write `target/bench/results-{quick,only}.*` instead); never fails on a
//! number.
//!
//! Modules: `ctx` (configurations and the tracers, floods, probers and hogs a part
//! starts), `sys` (child processes, namespaces, sysctls and /proc readings, all
//! cleaned up on drop), `bpf` (program statistics through bpftool), `floor` (the
//! `floor` subcommand: the empty programs, held until signalled), `stats` (medians and
//! spreads), `parts/*` (one per part, in the order they run: sampler, syscalls, sched,
//! floods, perf, watch, headroom, analyze, soak), `results` (the typed results.json
//! and its headline), `report` (results.md and soak.md from those types).
//!
//! Safety: floods go only to the namespaces made here (10.213.230-249.x), bounded by
//! `timeout` and `-c`; hogs are bounded by `--duration` and `timeout -s KILL`;
//! namespaces, veths, floods, probers, hogs, tracers, the bpf_stats sysctl and a
//! tracefs mounted here are cleaned up on every exit path (errors, Ctrl-C, SIGTERM).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod bpf;
mod ctx;
mod floor;
mod parts;
mod report;
mod results;
mod stats;
mod sys;

use ctx::{Ctx, Mode};
use results::{Headline, Machine, Parts, Results};
use sys::*;

/// The parts `--only` can pick.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// record idle + the sampler's costs, and the floor's ticks.
    Sampler,
    /// getpid() loop: the syscall tax.
    Syscalls,
    /// perf bench sched pipe vs the floor and bpftrace runqslower.
    Sched,
    /// The alternating flood rounds (+ one --stacks run).
    Floods,
    /// perf profile of the flood under stalltrace.
    Perf,
    /// watch vs record, CPU and RSS.
    Watch,
    /// Ring-buffer headroom at rising echo rates.
    Headroom,
    /// analyze on generated dumps, one and several at once.
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

#[derive(Parser, Debug)]
#[command(
    name = "stalltrace-bench",
    about = "What stalltrace costs on this machine (run by `cargo xtask bench`)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    args: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Load the floor's empty programs and hold them until SIGINT/SIGTERM (the bench
    /// runs this itself).
    Floor(floor::FloorArgs),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Smoke run (a few minutes): one round, short windows, 100 k / 1 M record dumps;
    /// writes target/bench/results-quick.{md,json} instead of bench/results.*.
    #[arg(long)]
    quick: bool,
    /// Rounds of the alternating flood runs [default: 5, 1 with --quick]; the syscall
    /// and scheduler parts run max(3, this) rounds (1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Run only these parts (comma-separated); writes target/bench/results-only.*.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Also soak for this long (e.g. 30m; off by default): record --probe under
    /// alternating floods and stalls, RSS and fds every 10 s; writes bench/soak.*.
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    soak: Option<u64>,
    /// Skip every kernel part (sampler, syscalls, sched, floods, perf, watch, headroom).
    #[arg(long)]
    skip_kernel: bool,
    /// Skip the analyze part.
    #[arg(long)]
    skip_analyze: bool,
    /// Skip the `perf` profile of the flood.
    #[arg(long)]
    no_perf: bool,
    /// Measure nothing: draw the headline again from the parts in bench/results.json and
    /// rewrite it and bench/results.md (and bench/soak.md) from it (after a change to
    /// the tables or the headline).
    #[arg(long)]
    render: bool,
    /// The stalltrace binary measured [default: next to this one].
    #[arg(long, value_name = "PATH")]
    stalltrace: Option<PathBuf>,
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

/// The repository: two levels above this crate's manifest (bench/).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
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

fn first_line(args: &[&str]) -> String {
    run_cmd(args).unwrap_or_default().trim().to_string()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `--render`: the Markdown again from the JSON the last runs wrote.
fn render_only(root: &Path) -> anyhow::Result<()> {
    let p = root.join("bench/results.json");
    match fs::read_to_string(&p) {
        Ok(text) => {
            let mut r: Results =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            // The headline again from the parts as measured (after a change to how it
            // is drawn from them).
            r.headline = Headline::new(&r.parts);
            write(
                &p,
                &(serde_json::to_string_pretty(&r).context("serializing the results")? + "\n"),
            )?;
            write(&root.join("bench/results.md"), &report::results_md(&r))?;
            println!("bench: wrote bench/results.json and bench/results.md");
        }
        Err(_) => println!("bench: no bench/results.json; skipped"),
    }
    let p = root.join("bench/soak.json");
    match fs::read_to_string(&p) {
        Ok(text) => match serde_json::from_str::<report::SoakDoc>(&text) {
            Ok(s) => {
                write(&root.join("bench/soak.md"), &report::soak_md(&s))?;
                println!("bench: wrote bench/soak.md");
            }
            // A soak.json of the bench before its typed results: its soak.md stands.
            Err(e) => println!(
                "bench: bench/soak.json is not in this bench's form ({e}); soak.md left as it is"
            ),
        },
        Err(_) => println!("bench: no bench/soak.json; skipped"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Floor(f)) = cli.cmd {
        return floor::run(f);
    }
    run(cli.args)
}

fn run(mut a: BenchArgs) -> anyhow::Result<()> {
    let root = root();
    if a.render {
        return render_only(&root);
    }
    install_signal_handlers();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench needs root (namespaces, BPF, sysctl): run it as root");
    }
    let bin = match a.stalltrace.clone() {
        Some(b) => b,
        None => std::env::current_exe()
            .context("the bench's own path")?
            .with_file_name("stalltrace"),
    };
    if !bin.exists() {
        bail!(
            "no stalltrace at {} (`cargo xtask bench` builds it)",
            bin.display()
        );
    }
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 5 });
    let small_rounds = if a.quick { 1 } else { rounds.max(3) };
    let started = Instant::now();
    let steal0 = steal_secs();
    let mut machine = Machine {
        kernel: first_line(&["uname", "-r"]),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        mem_gib: fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .map(|k| k / 1024.0 / 1024.0),
        bpftrace: first_line(&["bpftrace", "--version"]),
        perf: first_line(&["perf", "--version"]),
        loadavg_at_start: fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
        rounds,
        rounds_sched_syscalls: small_rounds,
        kprobes: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
        ..Default::default()
    };
    let mut commit = git(&root, &["rev-parse", "--short=12", "HEAD"]);
    if !git(&root, &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    let date = first_line(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]);
    println!(
        "bench: commit {commit}, kernel {}, {}, load average at start {}",
        machine.kernel, machine.bpftrace, machine.loadavg_at_start
    );
    if a.only.contains(&Part::Soak) && a.soak.is_none() {
        a.soak = Some(30 * 60);
    }
    let mut parts = Parts::default();
    let mut soak = None;
    let kernel = KERNEL_PARTS.iter().any(|p| a.wants(*p));
    if kernel || a.soak.is_some() {
        soak = kernel_parts(
            &root,
            &bin,
            &dir,
            &a,
            rounds,
            small_rounds,
            &mut machine,
            &mut parts,
        )?;
    }
    if a.wants(Part::Analyze) {
        parts.analyze = Some(parts::analyze::run(&bin, &dir, a.quick)?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    machine.loadavg_at_end = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    machine.steal_pct = 100.0 * (steal_secs() - steal0) / elapsed.max(1e-9);
    let results = Results {
        commit: commit.clone(),
        date: date.clone(),
        quick: a.quick,
        partial: !a.only.is_empty(),
        elapsed_s: elapsed,
        headline: Headline::new(&parts),
        machine: machine.clone(),
        parts,
    };
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
        write(
            &json_path,
            &(serde_json::to_string_pretty(&results).context("serializing the results")? + "\n"),
        )?;
        let md = report::results_md(&results);
        write(&md_path, &md)?;
        println!("\n{md}");
        println!("wrote {} and {}", md_path.display(), json_path.display());
    }
    if let Some(s) = soak {
        let (md_path, json_path) = if a.quick {
            (dir.join("soak-quick.md"), dir.join("soak-quick.json"))
        } else {
            (root.join("bench/soak.md"), root.join("bench/soak.json"))
        };
        let doc = report::SoakDoc {
            machine,
            commit,
            date,
            soak: s,
        };
        write(
            &json_path,
            &(serde_json::to_string_pretty(&doc).context("serializing the soak")? + "\n"),
        )?;
        let md = report::soak_md(&doc);
        write(&md_path, &md)?;
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
    machine: &mut Machine,
    parts: &mut Parts,
) -> anyhow::Result<Option<parts::soak::Soak>> {
    let (tp, tc) = if a.quick { (2.0, 1.5) } else { (4.0, 3.0) };
    remove_stale_namespaces();
    let (sf, sp, ss) = pick_subnets()?;
    let me = std::process::id() % 100_000;
    let stats = StatsGuard::new()?;
    // bpftrace needs tracefs (stalltrace does not); dropped last: unmounted at the end.
    let _tracefs = if a.wants(Part::Floods) || a.wants(Part::Sched) {
        let g = TracefsGuard::ensure()?;
        machine.tracefs_mounted_by_bench = g.mounted_here;
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
    machine.other_tracing_programs_at_start = bpf::other_tracing_programs(&[]);
    if !machine.other_tracing_programs_at_start.is_empty() {
        println!(
            "bench: note: {} other tracing BPF programs attached on this machine (other users' tools): numbers are noisier",
            machine.other_tracing_programs_at_start.len()
        );
    }
    if !machine.kprobes {
        println!("bench: note: no kprobes on this kernel: kprobe:icmp_echo (stalltrace's and the floor's) is not measured");
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
        parts.sampler = Some(parts::sampler::run(&mut cx)?);
    }
    if a.wants(Part::Syscalls) {
        parts.syscalls = Some(parts::syscall::run(&mut cx, small_rounds)?);
    }
    if a.wants(Part::Sched) {
        parts.sched = Some(parts::sched::run(&mut cx, small_rounds)?);
    }
    if a.wants(Part::Floods) {
        parts.flood = Some(parts::flood::run(&mut cx, rounds, tp, tc)?);
    }
    if a.wants(Part::Perf) && Command::new("perf").arg("--version").output().is_ok() {
        let mut profiles = vec![];
        for m in [Mode::Default, Mode::Every] {
            profiles.push(parts::perf::profile(&mut cx, m).unwrap_or_else(|e| {
                parts::perf::Profile {
                    mode: m.key().into(),
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                }
            }));
        }
        parts.perf = Some(profiles);
    }
    if a.wants(Part::Watch) {
        parts.watch = Some(parts::watch::run(&mut cx)?);
    }
    if a.wants(Part::Headroom) {
        parts.ring_buffer = Some(parts::headroom::run(&mut cx)?);
    }
    match a.soak {
        Some(secs) => Ok(Some(parts::soak::run(&mut cx, secs)?)),
        None => Ok(None),
    }
}
