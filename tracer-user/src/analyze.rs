//! `stalltrace analyze`: the correlator over a recorded dump, streamed line by line
//! (memory stays flat however long the recording), with the same engine and the same
//! episode lines as the live recorder.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::attribution::{Config, Correlator, Episode, Report};
use crate::dump::{DumpReader, Record};
use crate::exit::ExitCode;
use crate::report::{self, perfetto::PerfettoWriter};

const AFTER_HELP: &str = "\
Examples:
  stalltrace analyze stalls.jsonl
  stalltrace analyze stalls.jsonl --probe-log hping3.log --stall-threshold 80ms
  stalltrace analyze stalls.jsonl --format json > report.json
  stalltrace analyze stalls.jsonl --perfetto stalls.trace.json   # open in ui.perfetto.dev

A dump recorded on another machine works as is. A dump without its footer (the
recorder was killed) is reported up to its last complete line, and said so.
Malformed input fails with file:line and exit code 5.";

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct AnalyzeArgs {
    /// The dump written by `stalltrace record -o`.
    pub dump: PathBuf,
    /// hping3 or ping output from the prober (possibly run on another host); its
    /// probes are matched to the dump's packets by ICMP id/seq on the wire.
    #[arg(long, value_name = "FILE")]
    pub probe_log: Option<PathBuf>,
    /// Report format on standard output.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also write a Perfetto / Chrome trace-event JSON file (open in ui.perfetto.dev).
    #[arg(long, value_name = "OUT")]
    pub perfetto: Option<PathBuf>,
    /// A probe whose RTT is at or above this is stalled [default: the recording's,
    /// else 50ms].
    #[arg(long, value_name = "DURATION", value_parser = crate::timefmt::parse_duration)]
    pub stall_threshold: Option<Duration>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub fn run(a: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let report = analyze(&a, |_| {})?;
    if !report.input.complete {
        crate::errln!(
            "stalltrace: warning: {} was cut short (no footer{}); reporting what it holds up to line {}",
            a.dump.display(),
            if report.input.partial_last_line { ", last line torn" } else { "" },
            report.input.lines
        );
    }
    let text = match a.format {
        Format::Text => report::text::render(&report),
        Format::Json => report::json::render(&report).context("encoding the JSON report")?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the report")?;
    Ok(ExitCode::Ok)
}

/// Streams the dump through the correlator; `on_episode` sees each episode as it
/// closes (what the live recorder would print at that moment).
pub fn analyze(a: &AnalyzeArgs, mut on_episode: impl FnMut(&Episode)) -> anyhow::Result<Report> {
    let mut reader = DumpReader::open(&a.dump)?;
    let header = reader.header().clone();
    let cfg = Config::from_header(
        &header,
        a.stall_threshold
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    );
    let mut cor = Correlator::new(cfg);
    let mut log_unknown = 0;
    if let Some(p) = &a.probe_log {
        let log = crate::probe::log::parse_file(p)
            .with_context(|| format!("reading the probe log {}", p.display()))?;
        log_unknown = log.unknown_lines;
        cor.set_probe_log(log.probes);
    }
    let mut trace = match &a.perfetto {
        Some(p) => Some(open_trace(p)?),
        None => None,
    };
    let trace_err = |p: &Option<PathBuf>| {
        format!(
            "writing the Perfetto trace {}",
            p.as_deref()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        )
    };

    let mut feed = |cor: &mut Correlator,
                    rec: &Record,
                    trace: &mut Option<PerfettoWriter<BufWriter<File>>>|
     -> anyhow::Result<()> {
        if let Some(t) = trace.as_mut() {
            t.record(rec).with_context(|| trace_err(&a.perfetto))?;
        }
        for ep in cor.push(rec) {
            if let Some(t) = trace.as_mut() {
                t.episode(&ep).with_context(|| trace_err(&a.perfetto))?;
            }
            on_episode(&ep);
        }
        Ok(())
    };
    feed(&mut cor, &Record::Header(header), &mut trace)?;
    while let Some(rec) = reader.next_record()? {
        feed(&mut cor, &rec, &mut trace)?;
    }
    if let Some(f) = reader.footer() {
        feed(&mut cor, &Record::Footer(f.clone()), &mut trace)?;
    }
    for ep in cor.flush() {
        if let Some(t) = trace.as_mut() {
            t.episode(&ep).with_context(|| trace_err(&a.perfetto))?;
        }
        on_episode(&ep);
    }
    if let Some(t) = trace {
        let mut w = t.finish().with_context(|| trace_err(&a.perfetto))?;
        w.flush().with_context(|| trace_err(&a.perfetto))?;
    }
    let mut report = cor.finish();
    report.input.path = Some(a.dump.display().to_string());
    report.input.lines = reader.line();
    report.input.partial_last_line = reader.partial_last_line();
    report.input.probe_log = a.probe_log.as_ref().map(|p| p.display().to_string());
    report.input.probe_log_unknown_lines = log_unknown;
    Ok(report)
}

fn open_trace(p: &Path) -> anyhow::Result<PerfettoWriter<BufWriter<File>>> {
    let f =
        File::create(p).with_context(|| format!("creating the Perfetto trace {}", p.display()))?;
    PerfettoWriter::new(BufWriter::with_capacity(1 << 16, f))
        .with_context(|| format!("writing the Perfetto trace {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::fixture::{self, Seed, MS};
    use crate::report::text::episode_line;

    fn args(dump: PathBuf) -> AnalyzeArgs {
        AnalyzeArgs {
            dump,
            probe_log: None,
            format: Format::Text,
            perfetto: None,
            stall_threshold: None,
        }
    }

    /// The live path: records pushed as they come, a tick every 100 ms of kernel time.
    fn live_lines(recs: &[Record]) -> Vec<String> {
        let Record::Header(h) = &recs[0] else {
            panic!("no header")
        };
        let mut cor = Correlator::new(Config::from_header(h, None));
        let mut lines = vec![];
        let mut now = 0;
        for r in recs {
            let ts = match r {
                Record::Packet(p) => p.ts_ns,
                Record::Wait(w) => w.ts_ns,
                _ => now,
            };
            if ts > now + 100 * MS {
                now = ts;
                lines.extend(cor.tick(now).iter().map(episode_line));
            }
            lines.extend(cor.push(r).iter().map(episode_line));
        }
        // The recorder stops: ticks run on for a while before it flushes.
        lines.extend(cor.tick(now + 2_000 * MS).iter().map(episode_line));
        lines.extend(cor.flush().iter().map(episode_line));
        lines
    }

    #[test]
    fn live_and_offline_print_the_same_episode_lines() {
        let recs = fixture::records(Seed::default());
        let live = live_lines(&recs);
        assert_eq!(live.len(), 1, "{live:?}");
        let path = fixture::temp_path("seed.jsonl");
        std::fs::write(&path, fixture::jsonl(&recs)).unwrap();
        let mut offline = vec![];
        let report = analyze(&args(path.clone()), |e| offline.push(episode_line(e))).unwrap();
        assert_eq!(live, offline);
        // And the text report prints those very lines.
        let text = report::text::render(&report);
        for l in &live {
            assert!(text.contains(l.as_str()), "{l}\nnot in\n{text}");
        }
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn the_live_path_reports_within_a_second_of_the_end() {
        let recs = fixture::records(Seed::default());
        let Record::Header(h) = &recs[0] else {
            panic!()
        };
        let mut cor = Correlator::new(Config::from_header(h, None));
        let end = fixture::arrival(1953) + 99 * MS;
        let mut got = None;
        for r in &recs {
            // Feed everything up to the end of the stall plus the probe results.
            let past = matches!(r, Record::Packet(p) if p.ts_ns > end + 5 * MS);
            if past {
                break;
            }
            assert!(cor.push(r).is_empty());
        }
        for step in 1..=20u64 {
            let eps = cor.tick(end + step * 100 * MS);
            if !eps.is_empty() {
                got = Some(step * 100);
                break;
            }
        }
        let ms = got.expect("the episode closed on tick");
        assert!(ms <= 1100, "closed {ms} ms after the stall");
    }

    #[test]
    fn cut_short_dump_is_reported_with_what_it_holds() {
        let recs = fixture::records(Seed {
            footer: false,
            ..Seed::default()
        });
        let mut text = fixture::jsonl(&recs);
        text.push_str("{\"type\":\"packet\",\"ts_ns\":12"); // torn
        let path = fixture::temp_path("cut.jsonl");
        std::fs::write(&path, text).unwrap();
        let r = analyze(&args(path.clone()), |_| {}).unwrap();
        assert!(!r.input.complete);
        assert!(r.input.partial_last_line);
        assert_eq!(r.totals.episodes, 1);
        assert!(
            report::summary(&r)[0].contains("cut short"),
            "{:?}",
            report::summary(&r)
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn malformed_line_is_an_input_error_naming_the_line() {
        let recs = fixture::records(Seed::default());
        let mut lines: Vec<String> = fixture::jsonl(&recs).lines().map(str::to_string).collect();
        lines[4] = "{\"type\":\"wait\",\"cpu\":\"eleven\"}".into();
        let path = fixture::temp_path("bad.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let e = analyze(&args(path.clone()), |_| {}).unwrap_err();
        assert_eq!(crate::exit::classify(&e), ExitCode::BadInput);
        assert!(
            format!("{e:#}").contains(&format!("{}:5:", path.display())),
            "{e:#}"
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn perfetto_trace_is_written_alongside() {
        let path = fixture::temp_path("seed.jsonl");
        std::fs::write(&path, fixture::jsonl(&fixture::records(Seed::default()))).unwrap();
        let out = fixture::temp_path("seed.trace.json");
        let mut a = args(path.clone());
        a.perfetto = Some(out.clone());
        analyze(&a, |_| {}).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let evs = v["traceEvents"].as_array().unwrap();
        assert!(evs.iter().any(|e| e["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("episode 1: cadvisor"))));
        std::fs::remove_file(path).ok();
        std::fs::remove_file(out).ok();
    }
}
