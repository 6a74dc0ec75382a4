//! `stalltrace analyze`: the command line over [`stalltrace_analysis::analyze`].
use std::{
    io::{BufWriter, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use stalltrace_analysis::{
    analyze::{analyze, AnalyzeOptions, Sink},
    report::{json::JsonSink, perfetto::PerfettoWriter, text::TextSink},
    units::parse_duration,
};

use crate::exit::ExitCode;

const AFTER_HELP: &str = "\
Examples:
  stalltrace analyze stalls.jsonl
  stalltrace analyze stalls.jsonl --probe-log hping3.log --stall-threshold 80ms
  stalltrace analyze stalls.jsonl --format json > report.json
  stalltrace analyze stalls.jsonl --perfetto stalls.trace.json   # open in ui.perfetto.dev

The Perfetto file is created new (mode 0600, never through a symlink): an existing
one is replaced only with --force, and never when it is a device, FIFO or directory.
A dump recorded on another machine works as is. A dump without its footer (the
recorder was killed) is reported up to its last complete line, and said so.
Malformed input fails with file:line and exit code 5.";

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct AnalyzeArgs {
    /// The dump written by `stalltrace record -o`.
    pub dump: PathBuf,
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
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl AnalyzeArgs {
    pub fn options(&self) -> AnalyzeOptions {
        AnalyzeOptions {
            dump: self.dump.clone(),
            probe_log: self.probe_log.clone(),
            stall_threshold_ns: self
                .stall_threshold
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

pub fn run(a: AnalyzeArgs) -> anyhow::Result<ExitCode> {
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
    let report = analyze(&a.options(), &mut sinks)?;
    drop(sinks);
    text.0.flush().context("writing the report")?;
    if !report.input.complete {
        crate::errln!(
            "stalltrace: warning: {} was cut short (no footer{}); reporting what it holds up to line {}",
            a.dump.display(),
            if report.input.partial_last_line { ", last line torn" } else { "" },
            report.input.lines
        );
    }
    Ok(ExitCode::Ok)
}
