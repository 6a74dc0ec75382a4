//! `stalltrace analyze`: the command line over [`stalltrace_analysis::analyze`].
use std::{
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use stalltrace_analysis::{
    analyze::{analyze, analyze_many, AnalyzeOptions, Sink},
    merge::{self, Merged},
    report::{
        json::{self, JsonSink},
        perfetto::PerfettoWriter,
        text::{self, TextSink},
    },
    units::parse_duration,
};

use crate::exit::{CodedError, ExitCode};

const AFTER_HELP: &str = "\
Examples:
  stalltrace analyze stalls.jsonl
  stalltrace analyze stalls.jsonl --probe-log hping3.log --stall-threshold 80ms
  stalltrace analyze stalls.jsonl --format json > report.json
  stalltrace analyze stalls.jsonl --perfetto stalls.trace.json   # open in ui.perfetto.dev
  stalltrace analyze /var/lib/stalltrace/   # every *.jsonl in it, in parallel
  stalltrace analyze --merge node-a/ node-b/ # all their dumps as one culprit table

The Perfetto file is created new (mode 0600, never through a symlink): an existing
one is replaced only with --force, and never when it is a device, FIFO or directory.
A dump recorded on another machine works as is. A dump without its footer (the
recorder was killed) is reported up to its last complete line, and said so.
Malformed input fails with file:line and exit code 5.

Several dumps (or a directory: its *.jsonl files) are analysed in parallel, --jobs
at a time; each gets its own report, headed by its path (with --format json, one
report per line), in the order they finish. Memory is that of --jobs analyses,
however many dumps. A dump that fails is said on stderr, the others are still
reported, and the exit code is 5.

With --merge they are reported as one culprit table instead: a culprit is the same
across dumps when its namespace, workload (the pod's owner, from its name), container
and process name agree, so pids that differ between nodes and boots, and pods renamed
by rollouts, still add up.";

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct AnalyzeArgs {
    /// The dump written by `stalltrace record -o`; several dumps, or a directory of
    /// them (its *.jsonl files), are analysed in parallel, one report each.
    #[arg(value_name = "DUMP", required = true)]
    pub dumps: Vec<PathBuf>,
    /// Dumps analysed at once when there are several [default: the CPUs].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// hping3 or ping output from the prober (possibly run on another host); its
    /// probes are matched to the dump's packets by ICMP id/seq on the wire (a log
    /// without ids follows one sender's echoes, ignoring other echo traffic), or for
    /// hping3 -S by ports, its source-port base learnt from the dump's SYNs (record
    /// from before hping3 starts).
    #[arg(long, value_name = "FILE")]
    pub probe_log: Option<PathBuf>,
    /// Report format on standard output.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also write a Perfetto / Chrome trace-event JSON file (open in ui.perfetto.dev):
    /// a new file of mode 0600; an existing OUT is refused unless --force.
    #[arg(long, value_name = "OUT")]
    pub perfetto: Option<PathBuf>,
    /// Replace an existing --perfetto file when it is a regular file or a symbolic link
    /// (the path is unlinked, never written through); a device, FIFO, socket or
    /// directory is refused even so.
    #[arg(long, requires = "perfetto")]
    pub force: bool,
    /// A probe whose RTT is at or above this is stalled [default: the recording's,
    /// else 50ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stall_threshold: Option<Duration>,
    /// Report all the dumps as one culprit table (by namespace, workload, container
    /// and process) instead of one report each.
    #[arg(long)]
    pub merge: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl AnalyzeArgs {
    /// The options for one dump.
    pub fn options(&self, dump: &Path) -> AnalyzeOptions {
        AnalyzeOptions {
            dump: dump.to_path_buf(),
            probe_log: self.probe_log.clone(),
            stall_threshold_ns: self
                .stall_threshold
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

/// The dumps named: files as given, directories as their `*.jsonl` files (sorted).
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for p in paths {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading the directory {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == "jsonl") && f.is_file())
            .collect();
        if files.is_empty() {
            return Err(CodedError::new(
                ExitCode::BadInput,
                format!("{}: no *.jsonl dump in this directory", p.display()),
            )
            .into());
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

pub fn run(a: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let dumps = expand(&a.dumps)?;
    match dumps.as_slice() {
        [one] if !a.dumps[0].is_dir() && !a.merge => run_one(&a, one),
        _ => run_many(&a, &dumps),
    }
}

/// Several dumps: [`analyze_many`], each report printed as it comes.
fn run_many(a: &AnalyzeArgs, dumps: &[PathBuf]) -> anyhow::Result<ExitCode> {
    if a.perfetto.is_some() || a.probe_log.is_some() {
        return Err(CodedError::new(
            ExitCode::Usage,
            "--perfetto and --probe-log take a single dump",
        )
        .into());
    }
    let opts: Vec<AnalyzeOptions> = dumps.iter().map(|d| a.options(d)).collect();
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut failed = 0;
    let mut written: std::io::Result<()> = Ok(());
    let mut merged = Merged::default();
    analyze_many(&opts, jobs, |i, r| {
        let path = dumps[i].display();
        match r {
            Ok(report) if a.merge => {
                merged.add(&report);
                if !report.input.complete {
                    crate::errln!(
                        "stalltrace: warning: {path} was cut short; merged up to line {}",
                        report.input.lines
                    );
                }
            }
            Ok(report) => {
                if written.is_err() {
                    return;
                }
                written = match a.format {
                    Format::Text => writeln!(out, "==> {path} <==")
                        .and_then(|()| out.write_all(text::render(&report).as_bytes()))
                        .and_then(|()| writeln!(out)),
                    Format::Json => json::render_line(&report)
                        .map_err(std::io::Error::other)
                        .and_then(|j| writeln!(out, "{j}")),
                };
                if !report.input.complete {
                    crate::errln!(
                        "stalltrace: warning: {path} was cut short; reported up to line {}",
                        report.input.lines
                    );
                }
            }
            Err(e) => {
                failed += 1;
                crate::errln!("stalltrace: {:#}", anyhow::Error::from(e));
            }
        }
    });
    if a.merge {
        let m = merged.report();
        written = match a.format {
            Format::Text => out.write_all(merge::render_text(&m).as_bytes()),
            Format::Json => serde_json::to_string(&m)
                .map_err(std::io::Error::other)
                .and_then(|j| writeln!(out, "{j}")),
        };
    }
    written
        .and_then(|()| out.flush())
        .context("writing the reports")?;
    if failed > 0 {
        return Err(CodedError::new(
            ExitCode::BadInput,
            format!("{failed} of {} dumps could not be analysed", dumps.len()),
        )
        .into());
    }
    Ok(ExitCode::Ok)
}

fn run_one(a: &AnalyzeArgs, dump: &Path) -> anyhow::Result<ExitCode> {
    let mut trace = match &a.perfetto {
        Some(p) => {
            let f = stalltrace_analysis::output::create(p, a.force)
                .context("creating the Perfetto trace")?;
            Some(
                PerfettoWriter::new(BufWriter::with_capacity(1 << 16, f))
                    .with_context(|| format!("writing the Perfetto trace {}", p.display()))?,
            )
        }
        None => None,
    };
    let stdout = std::io::stdout().lock();
    let mut text = TextSink(BufWriter::new(stdout));
    let mut json = JsonSink(BufWriter::new(std::io::stdout()));
    let mut sinks: Vec<&mut dyn Sink> = vec![match a.format {
        Format::Text => &mut text,
        Format::Json => &mut json,
    }];
    if let Some(t) = trace.as_mut() {
        sinks.push(t);
    }
    let report = analyze(&a.options(dump), &mut sinks)?;
    drop(sinks);
    text.0.flush().context("writing the report")?;
    if !report.input.complete {
        crate::errln!(
            "stalltrace: warning: {} was cut short (no footer{}); reporting what it holds up to line {}",
            dump.display(),
            if report.input.partial_last_line { ", last line torn" } else { "" },
            report.input.lines
        );
    }
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory stands for its `*.jsonl` files, sorted; files are taken as given; a
    /// directory without a dump is an input error.
    #[test]
    fn a_directory_is_its_dumps() {
        let dir = stalltrace_testkit::scratch::Scratch::new("analyze-expand").unwrap();
        let d = dir.join("dumps");
        std::fs::create_dir_all(d.join("sub.jsonl")).unwrap();
        for f in ["b.jsonl", "a.jsonl", "notes.txt"] {
            std::fs::write(d.join(f), "").unwrap();
        }
        let lone = dir.join("x.log");
        let got = expand(&[d.clone(), lone.clone()]).unwrap();
        assert_eq!(got, vec![d.join("a.jsonl"), d.join("b.jsonl"), lone]);
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = expand(&[empty]).unwrap_err();
        assert_eq!(crate::exit::classify(&e), ExitCode::BadInput, "{e:#}");
    }
}
