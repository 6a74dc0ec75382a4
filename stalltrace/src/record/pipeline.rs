//! The live loop shared by `record` and `watch`: the ring buffer and the prober feed
//! enrichment, whose records go through the analysis pipeline (correlator and sinks).
//! Records are taken in bounded batches, so signals, the deadline, the 100 ms tick
//! (flushes, closing episodes, warnings) are served however hard the kernel writes.
use std::{
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use stalltrace_analysis::{
    analyze::Pipeline,
    dump::{Counts, ProbeRec, Record},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};

use crate::{
    enrich::Enricher,
    events::decode,
    kernel::loader::{LoadError, Tracer},
    probe::{self, ProbeStats, ProberConfig, ProberHandle},
};

/// Records handled per wakeup before the loop looks at signals and ticks again: about
/// a millisecond of work in a release build (a debug build is ~50 times slower).
pub const BATCH: usize = 512;
/// How long a stop keeps decoding what is queued.
pub const STOP_DRAIN: Duration = Duration::from_millis(250);
/// Then how long it counts what is left (the programs still run: under a flood the
/// ring never empties).
const STOP_COUNT: Duration = Duration::from_millis(100);

/// How often the loop ticks when the ring is quiet.
pub const TICK: Duration = Duration::from_millis(100);

/// The signals that end a run: Ctrl-C, `kill`, a closed terminal, Ctrl-\.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
}

impl Signals {
    /// Install before attaching, so a signal during set-up still ends cleanly.
    pub fn install() -> anyhow::Result<Self> {
        let mk = |k: SignalKind, name: &str| {
            signal(k).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Self {
            int: mk(SignalKind::interrupt(), "SIGINT")?,
            term: mk(SignalKind::terminate(), "SIGTERM")?,
            hup: mk(SignalKind::hangup(), "SIGHUP")?,
            quit: mk(SignalKind::quit(), "SIGQUIT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "sigint",
            _ = self.term.recv() => "sigterm",
            _ = self.hup.recv() => "sighup",
            _ = self.quit.recv() => "sigquit",
        }
    }
}

/// Where records come from while recording: the kernel's ring buffer (decoded and
/// enriched) and the built-in prober.
pub struct Source {
    pub tracer: Tracer,
    ring: AsyncFd<RingBuf<MapData>>,
    pub dec: Decoder,
    prober: Option<ProberHandle>,
    probes: Receiver<ProbeRec>,
    /// Records left in the ring when the stop's time was up: lost, and counted.
    pub unread_at_exit: u64,
}

/// Ring-buffer records to dump records.
pub struct Decoder {
    pub enricher: Enricher,
    /// Records handed on, by kind.
    pub counts: Counts,
    /// Ring-buffer records that did not decode (a kernel/user mismatch).
    pub undecodable: u64,
}

impl Decoder {
    fn hand_on(&mut self, mut rec: Record, p: &mut Pipeline<'_>) -> anyhow::Result<()> {
        rec.sanitize();
        self.counts.add(&rec);
        p.push(&rec)?;
        Ok(())
    }

    /// Up to `max` ring-buffer records into the pipeline; true when more are waiting.
    fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        p: &mut Pipeline<'_>,
        max: usize,
    ) -> anyhow::Result<bool> {
        for _ in 0..max {
            let ev = {
                let Some(item) = ring.next() else {
                    return Ok(false);
                };
                decode(&item)
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    self.undecodable += 1;
                    log::warn!("skipping a ring-buffer record: {e}");
                    continue;
                }
            };
            // A stack sample is no record: it shows up in the wait it falls in.
            if let Some(rec) = self.enricher.record(&ev) {
                self.hand_on(rec, p)?;
            }
        }
        Ok(true)
    }
}

impl Source {
    /// Takes the ring buffer from an attached tracer and starts the prober (after the
    /// programs are attached, so the kernel sees every probe).
    pub fn start(
        mut tracer: Tracer,
        enricher: Enricher,
        probe: Option<ProberConfig>,
    ) -> anyhow::Result<Self> {
        let ring = tracer.take_ring().map_err(super::load_err)?;
        // SAFETY: `register` requires that the fd stays open and is not reused while
        // registered: the RingBuf owns its map fd and is owned by the AsyncFd, so the fd
        // lives exactly as long as the registration.
        let ring = unsafe { AsyncFd::register(ring) }.context("polling the ring buffer")?;
        let (tx, probes) = mpsc::channel();
        let prober = match probe {
            Some(cfg) => Some(probe::spawn(cfg, tx).context("starting the prober")?),
            None => None,
        };
        Ok(Self {
            tracer,
            ring,
            dec: Decoder {
                enricher,
                counts: Counts::default(),
                undecodable: 0,
            },
            prober,
            probes,
            unread_at_exit: 0,
        })
    }

    fn drain_ring(&mut self, p: &mut Pipeline<'_>, max: usize) -> anyhow::Result<bool> {
        self.dec.drain(self.ring.get_mut(), p, max)
    }

    fn drain_probes(&mut self, p: &mut Pipeline<'_>) -> anyhow::Result<()> {
        while let Ok(rec) = self.probes.try_recv() {
            self.dec.hand_on(Record::Probe(rec), p)?;
        }
        Ok(())
    }

    /// Stops the prober (its last answers land), takes what is still queued (for
    /// [`STOP_DRAIN`] at most: a stop is prompt even under a flood), and returns the
    /// prober's statistics. What is still in the ring after that is counted, unread,
    /// in [`Source::unread_at_exit`].
    pub fn stop(&mut self, p: &mut Pipeline<'_>) -> anyhow::Result<Option<ProbeStats>> {
        let stats = self.prober.take().map(|h| {
            std::thread::sleep(Duration::from_millis(100));
            h.stop()
        });
        let t0 = Instant::now();
        while self.drain_ring(p, 256)? && t0.elapsed() < STOP_DRAIN {}
        let ring = self.ring.get_mut();
        let t0 = Instant::now();
        while t0.elapsed() < STOP_COUNT && ring.next().is_some() {
            self.unread_at_exit += 1;
        }
        self.drain_probes(p)?;
        Ok(stats)
    }

    /// The kernel's loss counters, and the records left unread at the stop.
    pub fn lost(&self) -> Result<stalltrace_analysis::dump::Lost, LoadError> {
        let mut lost = self.tracer.lost()?;
        lost.unread_at_exit = self.unread_at_exit;
        Ok(lost)
    }
}

/// Boot-clock nanoseconds now (the kernel's `bpf_ktime_get_boot_ns`).
pub fn boot_ns() -> u64 {
    probe::boot_ns()
}

/// Why a run ended, as the dump's footer says it.
pub type EndReason = &'static str;

/// Runs until a signal or `until`; `each_tick` runs every [`TICK`] with the number of
/// ticks so far. An error from a sink (the dump's disk is full) ends the run with it.
pub async fn run(
    src: &mut Source,
    p: &mut Pipeline<'_>,
    signals: &mut Signals,
    until: Option<Duration>,
    mut each_tick: impl FnMut(&Source, &Pipeline<'_>, u64) -> anyhow::Result<()>,
) -> anyhow::Result<EndReason> {
    let deadline = until.and_then(|d| tokio::time::Instant::now().checked_add(d));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = signals.recv() => return Ok(why),
            _ = sleep => return Ok("duration"),
            _ = tick.tick() => {
                ticks += 1;
                // Records written without a wakeup are collected here.
                src.drain_ring(p, BATCH)?;
                src.drain_probes(p)?;
                p.tick(boot_ns())?;
                each_tick(src, p, ticks)?;
            }
            g = src.ring.readable_mut() => {
                let mut g = g.context("polling the ring buffer")?;
                let more = src.dec.drain(g.get_inner_mut(), p, BATCH)?;
                if more {
                    // Back to the runtime between batches: it polls its drivers (the
                    // signal pipe, the timers) only when the task yields, and a ring
                    // that is always readable would otherwise keep a SIGTERM waiting
                    // for 128 batches (tokio's budget), seconds under a flood.
                    drop(g);
                    tokio::task::yield_now().await;
                } else {
                    g.clear_ready();
                }
            }
        }
    }
}
