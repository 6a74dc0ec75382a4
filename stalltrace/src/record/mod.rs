//! `stalltrace record`: flags → a checked [`plan::RecordPlan`] → load and attach →
//! the live [`pipeline`] (ring buffer and prober → enrichment → correlator → dump and
//! terminal) until Ctrl-C, SIGTERM or `--duration` → footer, summary, report.
pub mod args;
pub mod live;
pub mod pipeline;
pub mod plan;
pub mod summary;
pub mod terminal;

use std::time::Instant;

use anyhow::Context as _;
use stalltrace_analysis::{
    analyze::{analyze, AnalyzeOptions, OnEpisode, Pipeline, Sink},
    correlate::Config,
    dump::{DumpWriter, Footer, Header, Record, DUMP_FORMAT, DUMP_VERSION},
    report::text::{episode_line, render},
    units::human_ns,
};

pub use self::args::RecordArgs;
pub use self::plan::TracePlan;
use self::{
    live::LivePrinter,
    pipeline::{Signals, Source},
    plan::RecordPlan,
    terminal::Terminal,
};
use crate::{
    enrich::Enricher,
    exit::{CodedError, ExitCode},
    kernel::{
        loader::{LoadError, Tracer},
        packet_path::PacketPath,
    },
    samples::Sampler,
    stacks, sys,
};

pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let plan = RecordPlan::check(&args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(record(plan))
}

/// A [`LoadError`] with the exit code it deserves and what to do about it.
pub fn load_err(e: LoadError) -> anyhow::Error {
    let code = match &e {
        LoadError::KprobeUnavailable { .. }
        | LoadError::PerfUnavailable { .. }
        | LoadError::Verifier { .. }
        | LoadError::Attach { .. } => ExitCode::KernelFeature,
        _ => ExitCode::Failure,
    };
    let hint = match &e {
        LoadError::KprobeUnavailable { .. } => {
            "; use --attach tracepoint (or auto, which takes the tracepoint by itself)"
        }
        _ => "",
    };
    anyhow::Error::new(CodedError::new(code, format!("{e}{hint}")))
}

/// A tracer loaded and attached, and the enricher that turns its records into dump
/// records: what `record` and `watch` start the same way.
pub struct Attached {
    pub tracer: Tracer,
    pub enricher: Enricher,
    pub header: Header,
}

/// Loads and attaches everything the plan asks for (saying on stderr what fell back),
/// starts the sampler, and builds the dump header.
pub fn attach(plan: &TracePlan) -> anyhow::Result<Attached> {
    let mut tracer = Tracer::load(&plan.load, plan.syscalls).map_err(load_err)?;
    let packets = tracer
        .attach(&plan.packets, plan.syscalls)
        .map_err(load_err)?;
    crate::errln!("{}", packets.line());
    let mut degraded = tracer.degraded.clone();
    let enricher = enricher(plan, &mut tracer, &mut degraded)?
        .with_pod_dirs(plan.pods_dir.clone(), plan.containers_dir.clone());
    for d in &degraded {
        crate::errln!("note: {d}");
    }
    let sampling = enricher.sampler().is_some();
    let header = header(plan, &tracer, sampling, degraded, &packets);
    Ok(Attached {
        tracer,
        enricher,
        header,
    })
}

fn header(
    plan: &TracePlan,
    tracer: &Tracer,
    sampling: bool,
    degraded: Vec<String>,
    packets: &PacketPath,
) -> Header {
    Header {
        format: DUMP_FORMAT.into(),
        version: DUMP_VERSION,
        host: sys::hostname(),
        kernel: sys::kernel_release(),
        cpus: aya::util::nr_cpus().map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        boot_to_wall_ns: sys::boot_to_wall_ns(),
        started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        hooks: tracer.hooks.clone(),
        packet_hook: tracer.packet_hook.into(),
        options: plan.options(sampling, degraded, packets),
        // What a culprit reading cgroup files is up against (the doctor's numbers;
        // about a second on a node with tens of thousands of cgroups).
        cgroups: Some(crate::doctor::cgroup_facts(&crate::doctor::Roots::live())),
    }
}

/// Starts the sampler (what holders were doing; their stacks with `--stacks`) and
/// returns the enricher that joins its samples to waits. Without perf events the
/// recording goes on without it, said in `degraded` (with `--stacks` that is an error).
fn enricher(
    plan: &TracePlan,
    tracer: &mut Tracer,
    degraded: &mut Vec<String>,
) -> anyhow::Result<Enricher> {
    let cpus = match tracer.attach_sampler(plan.sample_hz) {
        Ok(c) => c,
        Err(e) if !plan.stacks && e.is_kernel_feature() => {
            degraded.push(format!(
                "{e}: culprits are named without what they were doing"
            ));
            return Ok(Enricher::default().exclude_self());
        }
        Err(e) => return Err(load_err(e)),
    };
    let stacks = if plan.stacks {
        let map = tracer.take_stacks().map_err(load_err)?;
        let ksyms = stacks::KernelSymbols::load().unwrap_or_else(|e| {
            crate::errln!("note: kernel frames print as addresses: {e}");
            stacks::KernelSymbols::empty()
        });
        crate::errln!("stacks: {} kernel symbols", ksyms.len());
        Some(stacks::StackCollector::new(
            plan.sample_hz,
            Box::new(map),
            ksyms,
            Box::<stacks::Blazesym>::default(),
        ))
    } else {
        None
    };
    crate::errln!(
        "sampling {} CPUs at {} Hz while an RX wait is pending{}",
        cpus.len(),
        plan.sample_hz,
        if plan.stacks { ", with stacks" } else { "" }
    );
    Ok(Enricher::with_sampler(Sampler::new(plan.sample_hz, stacks)).exclude_self())
}

/// `-o -`: the dump goes to standard output.
pub fn is_stdout(p: &std::path::Path) -> bool {
    p.as_os_str() == "-"
}

/// The dump's path, checked before anything is loaded: a new path, or with `force` an
/// existing regular file or link; never a device, FIFO, socket or directory (see
/// [`stalltrace_analysis::output`]). `-` is standard output, which `--probe-log` cannot
/// read back.
pub fn output_check(output: &std::path::Path, force: bool, probe_log: bool) -> anyhow::Result<()> {
    if is_stdout(output) {
        if probe_log {
            return Err(CodedError::new(
                ExitCode::Usage,
                "--probe-log reads the dump back after the recording: give -o a file, not -",
            )
            .into());
        }
        return Ok(());
    }
    use stalltrace_analysis::output::{check, OutputError};
    check(output, force).map_err(|e| match e {
        OutputError::Exists { path } => CodedError::new(
            ExitCode::Usage,
            format!(
                "{} exists; choose another -o or pass --force to replace it",
                path.display()
            ),
        )
        .into(),
        e => anyhow::Error::new(e).context("the dump"),
    })
}

async fn record(plan: RecordPlan) -> anyhow::Result<ExitCode> {
    let t = &plan.trace;
    for n in &t.notes {
        crate::errln!("note: {n}");
    }
    let mut signals = Signals::install()?;
    if plan.dry_run {
        let tracer = Tracer::load(&t.load, t.syscalls).map_err(load_err)?;
        for l in tracer.dry_run(&t.packets, t.syscalls, t.sample_hz, t.stacks) {
            crate::outln!("{l}");
        }
        return Ok(ExitCode::Ok);
    }
    let Attached {
        tracer,
        enricher,
        header,
    } = attach(t)?;
    // The dump exists only once everything is attached: a failed attach leaves nothing.
    let to_stdout = is_stdout(&plan.output);
    let dump = if to_stdout {
        DumpWriter::stdout().context("writing the dump to standard output")?
    } else {
        DumpWriter::create(&plan.output, plan.force)
            .with_context(|| format!("creating the dump {}", plan.output.display()))?
    };
    // Standard output carries the dump: the live lines and the report go to stderr.
    let mut term = if to_stdout {
        Terminal::stderr()
    } else {
        Terminal::stdout()
    };
    let shown = if to_stdout {
        "standard output".to_string()
    } else {
        plan.output.display().to_string()
    };
    let started = Instant::now();
    let cfg = Config::from_header(&header, Some(t.stall_threshold_ns));
    let sinks: Vec<Box<dyn Sink + '_>> = vec![
        Box::new(dump),
        Box::new(LivePrinter::new(&term, plan.quiet, t.stall_threshold_ns)),
    ];
    let mut p = Pipeline::new(cfg, sinks);
    p.push(&Record::Header(header))?;
    let mut src = Source::start(tracer, enricher, t.probe.clone())?;
    crate::errln!(
        "recording to {shown} ({}); Ctrl-C to stop",
        plan.duration
            .map(|d| format!("for {}", human_ns(d.as_nanos() as u64)))
            .unwrap_or_else(|| "until stopped".into())
    );

    let mut next_summary = plan.summary_every.map(|d| started + d);
    let mut last_lost = 0;
    let ring_kib = t.load.ring_bytes / 1024;
    let outcome = pipeline::run(&mut src, &mut p, &mut signals, plan.duration, |src, p, ticks| {
        if let (Some(at), Some(every)) = (next_summary, plan.summary_every) {
            if Instant::now() >= at {
                next_summary = Some(at + every);
                let hists = src.tracer.hists().map_err(load_err)?;
                summary::periodic(&term, started.elapsed(), &hists, &p.correlator().culprits_so_far());
            }
        }
        if ticks % 10 == 0 {
            let lost = src.lost().map_err(load_err)?.total();
            if lost > last_lost {
                crate::errln!(
                    "warning: {lost} events lost so far (ring buffer full); raise --ring-buffer (now {ring_kib} KiB)"
                );
                last_lost = lost;
            }
        }
        Ok(())
    })
    .await;
    let (reason, failure) = match outcome {
        Ok(r) => (r, None),
        Err(e) => ("error", Some(e)),
    };

    // Take what is queued, read the kernel's counters, then detach everything.
    let probe_stats = match src.stop(&mut p) {
        Ok(s) => s,
        Err(e) => {
            crate::errln!("warning: {e:#}");
            None
        }
    };
    let lost = src.lost().map_err(load_err)?;
    let hists = src.tracer.hists().map_err(load_err)?;
    let counts = src.dec.counts.clone();
    let stack_stats = src.dec.enricher.sampler().and_then(|c| c.stack_stats());
    let sampler_stats = src.dec.enricher.sampler().map(|c| c.stats());
    let warnings = src.warnings();
    drop(src);
    let footer = Footer {
        ended_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        duration_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        counts: counts.clone(),
        lost: lost.clone(),
        hist_net_rx: hists.net_rx.clone(),
        hist_rx_thread: hists.rx_thread.clone(),
        hist_net_tx: hists.net_tx.clone(),
        hist_timer: hists.timer.clone(),
        reason: reason.into(),
        stacks: stack_stats.clone(),
        sampler: sampler_stats,
        warnings,
    };
    // After a write error the footer may not fit either; what was written stays readable.
    let footer_written = p.push(&Record::Footer(footer));
    let report = p.finish(|_| {});
    if let Some(e) = failure {
        term.close();
        return Err(e.context(format!(
            "recording stopped; {shown} holds what was recorded until then"
        )));
    }
    footer_written.context("writing the dump footer")?;
    let report = report.context("closing the dump")?;
    if let Some(e) = probe_stats.as_ref().and_then(|s| s.error.as_ref()) {
        crate::errln!("warning: {e}");
    }
    if let Some(s) = &stack_stats {
        summary::stacks(s, lost.samples);
    }
    summary::end(
        &counts,
        &lost,
        &hists,
        std::path::Path::new(&shown),
        reason,
        term.dropped(),
    );
    // The final report: the live correlator's, or with an external prober's log, the
    // same engine over the dump and that log.
    let report = match &plan.probe_log {
        None => report,
        Some(log) => {
            let o = AnalyzeOptions {
                dump: plan.output.clone(),
                probe_log: Some(log.clone()),
                stall_threshold_ns: Some(t.stall_threshold_ns),
            };
            let mut lines = OnEpisode(|ep| term.line(&episode_line(ep)));
            analyze(&o, &mut [&mut lines])?
        }
    };
    term.line("");
    for l in render(&report).lines() {
        term.line(l);
    }
    term.close();
    Ok(ExitCode::Ok)
}
