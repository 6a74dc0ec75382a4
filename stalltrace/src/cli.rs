//! The command line: flags parsed by clap into each command's own arguments, which
//! each command checks into its plan before doing any work; `main` maps the outcome
//! to a documented exit code after printing the error chain.
use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::{analyze, doctor, exit, features, lab, probe, record, watch};

const AFTER_HELP: &str = "\
Examples:
  sudo stalltrace lab                         # plant a stall in namespaces, catch it, blame it
  sudo stalltrace record -o stalls.jsonl      # record every ICMP echo and RX wait until Ctrl-C
  sudo stalltrace record --probe 10.0.0.7     # probe a host every 10ms and record together
  stalltrace analyze stalls.jsonl --probe-log hping3.log
  stalltrace probe 10.0.0.7 --count 1000

Exit codes:
  0 success   1 runtime failure   2 bad command line   3 missing privileges
  4 the kernel lacks a needed feature   5 unreadable or malformed input file
  6 lab: the tool did not blame the planted culprit   7 doctor: a check is bad";

#[derive(Parser)]
#[command(name = "stalltrace", version, about = "Why did this packet wait on this node, and who is to blame?",
          long_about = "Traces probe packets through the kernel's receive path, measures how long the \
NET_RX softirq or the RX thread (ksoftirqd/N, napi/<dev>-<id>) waited for its CPU, and names the task \
that held the CPU meanwhile, the syscall it was in, and the episode of delayed probes it caused.",
          after_help = AFTER_HELP)]
pub struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trace probe packets and RX waits; print them live and write a JSON Lines dump.
    Record(record::RecordArgs),
    /// Run as a node agent until SIGTERM: Prometheus metrics (pods and containers
    /// named), one dump per stall episode (flight recorder).
    Watch(watch::WatchArgs),
    /// Check this node for what makes receive work wait (dying memory cgroups, slow
    /// memory.stat, RX layout, kernel behaviours) and say what to do; read-only.
    Doctor(doctor::DoctorArgs),
    /// Send ICMP echo or TCP SYN probes and print hping3-style lines with RTTs.
    Probe(probe::ProbeArgs),
    /// Report what this kernel allows (BTF, kprobes, perf events, the verifier's word on
    /// every program) and which path `record` would take.
    Features(features::FeaturesArgs),
    /// Build namespaces, plant a culprit that stalls RX, record it, and check the blame.
    Lab(lab::LabArgs),
    /// (internal) The lab's planted culprit.
    #[command(hide = true)]
    Hog(lab::hog::HogArgs),
    /// (internal) The memcg-stat lab scenario's cgroup charger.
    #[command(hide = true)]
    ChargeCgroups(lab::memcg::ChargeArgs),
    /// (internal) The ksoftirqd lab scenario's UDP flood.
    #[command(hide = true)]
    Flood(lab::flood::FloodArgs),
    /// Correlate a recorded dump (and optionally a prober's log) into stall episodes.
    Analyze(analyze::AnalyzeArgs),
    /// Print a shell completion script (e.g. `stalltrace completions bash >
    /// /etc/bash_completion.d/stalltrace`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// (internal) Write the man pages into a directory (`cargo xtask man`).
    #[command(hide = true)]
    ManPages {
        #[arg(long)]
        out: PathBuf,
    },
}

/// The `stalltrace` binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let res = match cli.cmd {
        Cmd::Record(a) => record::run(a),
        Cmd::Watch(a) => watch::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Probe(a) => probe::run(a),
        Cmd::Lab(a) => lab::run(a),
        Cmd::Features(a) => features::run(a),
        Cmd::Hog(a) => lab::hog::run(a),
        Cmd::Flood(a) => lab::flood::run(a),
        Cmd::ChargeCgroups(a) => lab::memcg::charge_run(a),
        Cmd::Analyze(a) => analyze::run(a),
        Cmd::Completions { shell } => completions(shell),
        Cmd::ManPages { out } => man_pages(&out),
    };
    match res {
        Ok(code) => code.into(),
        Err(e) => {
            crate::errln!("stalltrace: {e:#}");
            exit::classify(&e).into()
        }
    }
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<exit::ExitCode> {
    let mut out = std::io::stdout();
    clap_complete::generate(shell, &mut Cli::command(), "stalltrace", &mut out);
    Ok(exit::ExitCode::Ok)
}

/// `stalltrace.1` and one page per visible subcommand (`stalltrace-record.1`, …).
fn man_pages(out: &std::path::Path) -> anyhow::Result<exit::ExitCode> {
    use anyhow::Context as _;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("writing man pages into {}", out.display()))?;
    Ok(exit::ExitCode::Ok)
}
