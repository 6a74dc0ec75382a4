//! The offline pipeline: a dump (and optionally a prober's log) streamed through the
//! correlator into sinks. Memory stays flat however long the recording; the engine and
//! the episode lines are the live recorder's own, so live and offline answers agree.
use std::{io, path::PathBuf};

use thiserror::Error;

use crate::correlate::outcome::InputInfo;
use crate::correlate::{Config, Correlator, Episode, Report};
use crate::dump::{DumpError, DumpReader, Record};
use crate::probelog::{self, ProbeLogError};

/// What to analyze and how; the command line builds one, so do the lab and tests.
#[derive(Debug, Clone, Default)]
pub struct AnalyzeOptions {
    /// The dump written by `stalltrace record -o`.
    pub dump: PathBuf,
    /// hping3 or ping output of the prober, matched to the dump by wire id/sequence.
    pub probe_log: Option<PathBuf>,
    /// A probe at or above this RTT is stalled; `None`: the recording's, else 50 ms.
    pub stall_threshold_ns: Option<u64>,
}

impl AnalyzeOptions {
    pub fn dump(path: impl Into<PathBuf>) -> Self {
        Self {
            dump: path.into(),
            ..Self::default()
        }
    }
}

/// Where the analysis goes while it streams: every record, every episode as it closes
/// (what the live recorder prints at that moment), then the whole report. The same
/// sinks serve `record` (live) and `analyze` (offline).
pub trait Sink {
    /// What it writes, for error messages ("the dump", "the Perfetto trace").
    fn what(&self) -> &str {
        "the report"
    }
    fn record(&mut self, _rec: &Record) -> io::Result<()> {
        Ok(())
    }
    fn episode(&mut self, _ep: &Episode) -> io::Result<()> {
        Ok(())
    }
    /// Live only: make what was written so far durable or visible (every ~100 ms).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn finish(&mut self, _report: &Report) -> io::Result<()> {
        Ok(())
    }
}

/// Records in, through the correlator, out to every sink: the one loop of `record`,
/// `watch` and `analyze`.
pub struct Pipeline<'a> {
    cor: Correlator,
    sinks: Vec<Box<dyn Sink + 'a>>,
}

impl<'a> Pipeline<'a> {
    pub fn new(cfg: Config, sinks: Vec<Box<dyn Sink + 'a>>) -> Self {
        Self {
            cor: Correlator::new(cfg),
            sinks,
        }
    }

    pub fn correlator(&self) -> &Correlator {
        &self.cor
    }

    pub fn correlator_mut(&mut self) -> &mut Correlator {
        &mut self.cor
    }

    fn each(
        &mut self,
        mut f: impl FnMut(&mut dyn Sink) -> io::Result<()>,
    ) -> Result<(), AnalyzeError> {
        for s in self.sinks.iter_mut() {
            f(s.as_mut()).map_err(|source| AnalyzeError::Sink {
                what: s.what().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    fn episodes(&mut self, eps: Vec<Episode>) -> Result<(), AnalyzeError> {
        for ep in &eps {
            self.each(|s| s.episode(ep))?;
        }
        Ok(())
    }

    /// One record (header and footer included).
    pub fn push(&mut self, rec: &Record) -> Result<(), AnalyzeError> {
        self.each(|s| s.record(rec))?;
        let eps = self.cor.push(rec);
        self.episodes(eps)
    }

    /// Live: the kernel clock moved on (boot ns); closes due episodes, flushes sinks.
    pub fn tick(&mut self, now_ns: u64) -> Result<(), AnalyzeError> {
        let eps = self.cor.tick(now_ns);
        self.episodes(eps)?;
        self.each(|s| s.flush())
    }

    /// Closes what is open and hands every sink the report (after `input` filled in
    /// what only the caller knows about where the records came from).
    pub fn finish(mut self, input: impl FnOnce(&mut InputInfo)) -> Result<Report, AnalyzeError> {
        let eps = self.cor.flush();
        self.episodes(eps)?;
        let mut report = self.cor.finish();
        input(&mut report.input);
        for s in self.sinks.iter_mut() {
            s.finish(&report).map_err(|source| AnalyzeError::Sink {
                what: s.what().to_string(),
                source,
            })?;
        }
        Ok(report)
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn what(&self) -> &str {
        (**self).what()
    }
    fn record(&mut self, rec: &Record) -> io::Result<()> {
        (**self).record(rec)
    }
    fn episode(&mut self, ep: &Episode) -> io::Result<()> {
        (**self).episode(ep)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn finish(&mut self, report: &Report) -> io::Result<()> {
        (**self).finish(report)
    }
}

/// A sink made of a closure over closing episodes.
pub struct OnEpisode<F: FnMut(&Episode)>(pub F);

impl<F: FnMut(&Episode)> Sink for OnEpisode<F> {
    fn episode(&mut self, ep: &Episode) -> io::Result<()> {
        (self.0)(ep);
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error("reading the probe log")]
    ProbeLog(#[from] ProbeLogError),
    #[error("writing {what}: {source}")]
    Sink { what: String, source: io::Error },
}

impl AnalyzeError {
    /// The input files were at fault (unreadable, malformed), not the machine.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, AnalyzeError::Sink { .. })
    }
}

/// Streams the dump through the correlator and every sink; returns the report.
pub fn analyze(o: &AnalyzeOptions, sinks: &mut [&mut dyn Sink]) -> Result<Report, AnalyzeError> {
    let mut reader = DumpReader::open(&o.dump)?;
    let header = reader.header().clone();
    let sinks = sinks
        .iter_mut()
        .map(|s| Box::new(&mut **s) as Box<dyn Sink + '_>)
        .collect();
    let mut p = Pipeline::new(Config::from_header(&header, o.stall_threshold_ns), sinks);
    let mut log_unknown = 0;
    if let Some(path) = &o.probe_log {
        let log = probelog::parse_file(path)?;
        log_unknown = log.unknown_lines;
        p.correlator_mut().set_probe_log(log.probes);
    }
    p.push(&Record::Header(header))?;
    while let Some(rec) = reader.next_ref()? {
        p.push(rec)?;
    }
    if let Some(f) = reader.footer() {
        p.push(&Record::Footer(f.clone()))?;
    }
    p.finish(|input| {
        input.path = Some(o.dump.display().to_string());
        input.lines = reader.line();
        input.partial_last_line = reader.partial_last_line();
        input.probe_log = o.probe_log.as_ref().map(|p| p.display().to_string());
        input.probe_log_unknown_lines = log_unknown;
    })
}

/// Analyzes several dumps in parallel, `jobs` at a time, each on its own thread with
/// its own reader and correlator: memory is that of `jobs` analyses, whatever the
/// number of dumps. `done(index, result)` is called on the caller's thread for each
/// dump as it finishes (in the order they finish; `index` is its place in `dumps`),
/// and the report is dropped once it returns.
pub fn analyze_many(
    dumps: &[AnalyzeOptions],
    jobs: usize,
    mut done: impl FnMut(usize, Result<Report, AnalyzeError>),
) {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, dumps.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(o) = dumps.get(i) else { break };
                if tx.send((i, analyze(o, &mut []))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            done(i, r);
        }
    });
}
