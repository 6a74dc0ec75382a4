//! `stalltrace watch`: the node agent. The record pipeline, run until SIGTERM with no
//! prober needed (an RX wait over the threshold is a stall for every packet behind
//! it), feeding Prometheus metrics with bounded label sets and a flight recorder that
//! writes one dump per episode. Deployed as a DaemonSet (deploy/daemonset.yaml);
//! Prometheus and Kubernetes are the fleet layer.
pub mod flight;
pub mod http;
pub mod node;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use stalltrace_analysis::{
    analyze::{Pipeline, Sink},
    correlate::{Config, Episode},
    dump::Record,
    report::{metrics::Metrics, text::episode_line},
    units::{duration_in, parse_size, SEC},
};

use self::flight::{FlightRecorder, Limits};
use crate::{
    exit::ExitCode,
    record::{
        args::TraceArgs,
        attach,
        pipeline::{self, Signals, Source},
        plan::TracePlan,
        Attached,
    },
};

const AFTER_HELP: &str = "\
Examples:
  sudo stalltrace watch                                   # metrics on 127.0.0.1:9910/metrics
  sudo stalltrace watch --listen 0.0.0.0:9910 --dump-dir /var/lib/stalltrace
  sudo stalltrace watch --probe 10.0.0.7                  # RTTs too

  sudo stalltrace watch --listen 10.0.3.7 --tls-cert tls.crt --tls-key tls.key \
       --tls-client-ca scraper-ca.crt                     # mutual TLS for /metrics

The endpoint answers GET only (bodies refused unread), heads up to 16 KiB received
within 10 s, at most 64 connections and 16 from one address (the longest idle gives its
place up), and runs on its own thread: no client holds up the recording.

Metrics at /metrics (OpenMetrics when the Accept header asks for it, the text format
0.0.4 otherwise); /healthz answers ok while the agent runs:
  stalltrace_rx_wait_seconds{cpu,kind}        every RX wait, from the kernel's histograms
  stalltrace_stall_episodes_total{culprit_namespace,culprit_workload,culprit_workload_kind,
                                  culprit_pod,culprit_container,culprit_comm}
                                              by culprit (top-K, then other)
  stalltrace_stall_delay_seconds_total{...}   the receive delay they caused
  stalltrace_workload_stall_episodes_total{culprit_namespace,culprit_workload,culprit_workload_kind},
  stalltrace_workload_stall_delay_seconds_total{...}   the same by workload (top-K)
  stalltrace_lost_events_total{kind}, stalltrace_bpf_run_seconds_total{program}, ...
Each episode also prints one line on stderr (kubectl logs).";

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct WatchArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Serve /metrics and /healthz on this address: ADDR:PORT, [IPV6]:PORT, or an
    /// address alone (port 9910; the DaemonSet passes its pod IP so).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9910",
          value_parser = http::parse_listen)]
    pub listen: SocketAddr,
    /// Serve over TLS with this certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: /metrics answers only clients presenting a certificate signed by this
    /// CA (PEM), or the bearer token of --auth-token-file. /healthz stays open.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// With TLS: /metrics answers only requests with `Authorization: Bearer <the token
    /// in FILE>` (or a client certificate of --tls-client-ca). Read at start.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub auth_token_file: Option<PathBuf>,
    /// Write one dump per episode (with its context) into this directory.
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Keep at most this many episode dumps (the oldest go first).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub dump_max_files: u64,
    /// Keep at most this many bytes of episode dumps (e.g. 256MiB).
    #[arg(long, value_name = "BYTES", default_value = "256MiB",
          value_parser = |s: &str| parse_size(s, 1 << 16, 1 << 40))]
    pub dump_max_bytes: u64,
    /// Records kept before and after each episode in its dump (0 to 30s).
    #[arg(long, value_name = "D", default_value = "2s",
          value_parser = duration_in::<0, { 30 * SEC }>)]
    pub dump_context: Duration,
    /// Culprits, and workloads, named in the metrics at most (the rest are `other`):
    /// bounds the series.
    #[arg(long, value_name = "K", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub top_k: u64,
}

/// Prints each closing episode's line on stderr.
struct EpisodeLog;

impl Sink for EpisodeLog {
    fn what(&self) -> &str {
        "the log"
    }
    fn episode(&mut self, ep: &Episode) -> std::io::Result<()> {
        crate::errln!("{}", episode_line(ep));
        Ok(())
    }
}

pub fn run(a: WatchArgs) -> anyhow::Result<ExitCode> {
    let plan = TracePlan::check(&a.trace, "stalltrace watch")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(watch(&a, plan))
}

async fn watch(a: &WatchArgs, plan: TracePlan) -> anyhow::Result<ExitCode> {
    for n in &plan.notes {
        crate::errln!("note: {n}");
    }
    let mut signals = Signals::install()?;
    let metrics = Metrics::new(
        usize::try_from(a.top_k).unwrap_or(1000),
        env!("CARGO_PKG_VERSION"),
    );
    // The endpoint answers from the start; /healthz says ok once the loop ticks.
    let alive = Arc::new(AtomicU64::new(0));
    let endpoint = http::Endpoint::new(
        a.listen,
        &http::Security {
            tls_cert: a.tls_cert.as_deref(),
            tls_key: a.tls_key.as_deref(),
            tls_client_ca: a.tls_client_ca.as_deref(),
            auth_token_file: a.auth_token_file.as_deref(),
        },
    )?;
    let (scheme, guard) = (endpoint.scheme(), endpoint.guard());
    let server = http::serve(endpoint, metrics.clone(), alive.clone())?;
    let Attached {
        tracer,
        enricher,
        header,
    } = attach(&plan)?;
    let flight = match &a.dump_dir {
        Some(d) => Some(
            FlightRecorder::new(
                d,
                Limits {
                    max_files: usize::try_from(a.dump_max_files).unwrap_or(usize::MAX),
                    max_bytes: a.dump_max_bytes,
                    context_ns: u64::try_from(a.dump_context.as_nanos()).unwrap_or(u64::MAX),
                },
            )
            .with_context(|| format!("preparing the dump directory {}", d.display()))?,
        ),
        None => None,
    };
    let mut cfg = Config::from_header(&header, Some(plan.stall_threshold_ns));
    // An agent runs for months and never prints a final report: no episode list, and
    // the culprit ranking kept as small as the metrics' table.
    watch_bounds(&mut cfg, a.top_k);
    let flight_stats = flight.as_ref().map(|f| f.stats.clone());
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(metrics.clone()), Box::new(EpisodeLog)];
    if let Some(f) = flight {
        sinks.push(Box::new(f));
    }
    let mut p = Pipeline::new(cfg, sinks);
    p.push(&Record::Header(header))?;
    let mut src = Source::start(tracer, enricher, plan.probe.clone())?;
    crate::errln!(
        "watching: metrics on {scheme}://{}/metrics{guard}{}; SIGTERM to stop",
        server.addr,
        a.dump_dir
            .as_ref()
            .map(|d| format!(", episode dumps in {}", d.display()))
            .unwrap_or_default()
    );
    let outcome = pipeline::run(&mut src, &mut p, &mut signals, None, |src, p, ticks| {
        let now = crate::sys::boot_ns();
        alive.store(now, Ordering::Relaxed);
        if ticks % 10 == 1 {
            if let (Some(f), Ok(lost)) = (&flight_stats, src.lost()) {
                f.note_lost(now, lost);
            }
            metrics.set_node(node::stats(src, p, flight_stats.as_deref()));
        }
        Ok(())
    })
    .await;
    // SIGTERM: stop within a second or two, detaching everything.
    let reason = outcome.as_ref().map(|r| *r).unwrap_or("error");
    let _ = src.stop(&mut p);
    drop(src);
    let _ = p.finish(|_| {});
    server.stop();
    crate::errln!("stopped ({reason})");
    outcome.map(|_| ExitCode::Ok)
}

/// The correlator's bounds for an agent: no episode kept for a final report, and
/// the ranking table as small as the metrics' (idle rows go, the rest fold into
/// `other`).
fn watch_bounds(cfg: &mut Config, top_k: u64) {
    cfg.max_listed_episodes = 0;
    cfg.max_listed_unexplained = 0;
    cfg.max_ranked = usize::try_from(top_k).unwrap_or(1000).max(1);
}
