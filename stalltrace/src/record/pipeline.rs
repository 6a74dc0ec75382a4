//! The live loop shared by `record` and `watch`: the ring buffer and the prober feed
//! enrichment, whose records go through the analysis pipeline (correlator and sinks).
//! Records are taken in bounded batches, so signals, the deadline, the 100 ms tick
//! (flushes, closing episodes, warnings) are served however hard the kernel writes.
use std::{
    collections::{HashSet, VecDeque},
    net::IpAddr,
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use stalltrace_analysis::{
    analyze::Pipeline,
    correlate::align::{packet_key, probe_key, WireKey},
    dump::{Counts, ProbeRec, ProbeStatus, Record},
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};
use tracer_common::Filter;

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
    /// With the built-in prober: whether the packet hook sees its packets.
    pub sight: Option<ProbeSight>,
}

impl Decoder {
    fn hand_on(&mut self, mut rec: Record, p: &mut Pipeline<'_>) -> anyhow::Result<()> {
        rec.sanitize();
        self.counts.add(&rec);
        if let Some(s) = self.sight.as_mut() {
            s.see(&rec, Instant::now());
        }
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
        let sight = probe
            .as_ref()
            .map(|_| ProbeSight::new(tracer.packet_hook, &tracer.filter));
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
                sight,
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
        // A run too short for the live warning still says it at the end.
        if let Some(w) = self
            .dec
            .sight
            .as_mut()
            .and_then(|s| s.check(Instant::now(), true))
        {
            crate::errln!("warning: {w}");
        }
        Ok(stats)
    }

    /// What the recorder warned about, for the footer.
    pub fn warnings(&self) -> Vec<String> {
        self.dec
            .sight
            .as_ref()
            .and_then(|s| s.warning.clone())
            .into_iter()
            .collect()
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
                if let Some(w) = src.dec.sight.as_mut().and_then(|s| s.check(Instant::now(), false)) {
                    crate::errln!("warning: {w}");
                }
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

/// After this long with answered probes and none of their packets seen, say so.
pub const SIGHT_AFTER: Duration = Duration::from_secs(3);
/// … or after this many answered probes, whichever comes first.
pub const SIGHT_PROBES: u64 = 100;
/// Wire keys remembered on each side of the join (a few seconds of 10 ms probes).
const SIGHT_KEYS: usize = 4096;

/// The safety net for a packet path that misses the built-in prober's packets (a hook
/// that does not see them, a filter that excludes them, answers that bypass this
/// host's receive path): the prober's answered probes joined by wire identity with
/// the packets recorded, the way the correlator joins them. Answered probes and none
/// of their packets seen after [`SIGHT_AFTER`] or [`SIGHT_PROBES`] answers is said
/// once, live, naming the hook and what to try; the footer keeps it.
pub struct ProbeSight {
    hook: &'static str,
    filter: String,
    answered: u64,
    matched: u64,
    since: Option<Instant>,
    /// The prober's target and wire identity (echo id or TCP source port), from its
    /// first answered probe.
    prober: Option<(String, Option<u16>, bool)>,
    packets: KeySet,
    pending: KeySet,
    /// The warning, once said.
    pub warning: Option<String>,
}

/// Wire keys, the oldest forgotten first past a bound.
#[derive(Default)]
struct KeySet {
    set: HashSet<WireKey>,
    order: VecDeque<WireKey>,
}

impl KeySet {
    fn insert(&mut self, k: WireKey) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > SIGHT_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn take(&mut self, k: &WireKey) -> bool {
        // Its place in `order` stays until it comes round: a bound, not an exact LRU.
        self.set.remove(k)
    }
}

impl ProbeSight {
    /// `hook` as the tracer names it (`kprobe`, `tracepoint`), `filter` the in-kernel one.
    pub fn new(hook: &str, filter: &Filter) -> Self {
        let mut words = vec![];
        match filter.peer_family {
            4 => words.push(format!(
                "--peer {}",
                IpAddr::from([
                    filter.peer[0],
                    filter.peer[1],
                    filter.peer[2],
                    filter.peer[3]
                ])
            )),
            6 => words.push(format!("--peer {}", IpAddr::from(filter.peer))),
            _ => {}
        }
        if filter.icmp_id_set != 0 {
            words.push(format!("--icmp-id {}", filter.icmp_id));
        }
        if filter.tcp_port_set != 0 {
            words.push(format!("--tcp-port {}", filter.tcp_port));
        }
        Self {
            hook: if hook == "kprobe" {
                crate::kernel::packet_path::KPROBE
            } else {
                crate::kernel::packet_path::TRACEPOINT
            },
            filter: words.join(" "),
            answered: 0,
            matched: 0,
            since: None,
            prober: None,
            packets: KeySet::default(),
            pending: KeySet::default(),
            warning: None,
        }
    }

    /// Takes in one record handed on to the pipeline.
    pub fn see(&mut self, rec: &Record, now: Instant) {
        match rec {
            Record::Packet(p) => {
                if let Some(k) = packet_key(p) {
                    if self.pending.take(&k) {
                        self.matched += 1;
                    }
                    self.packets.insert(k);
                }
            }
            Record::Probe(p) if p.status == ProbeStatus::Ok => {
                self.answered += 1;
                self.since.get_or_insert(now);
                self.prober.get_or_insert_with(|| {
                    (
                        p.target.clone(),
                        p.wire_ident,
                        p.proto == stalltrace_analysis::dump::ProbeProto::Tcp,
                    )
                });
                if let Some(k) = probe_key(p) {
                    if self.packets.set.contains(&k) {
                        self.matched += 1;
                    } else {
                        self.pending.insert(k);
                    }
                }
            }
            _ => {}
        }
    }

    /// Answered probes and matched ones so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.answered, self.matched)
    }

    /// The warning, the first time it is due (`at_end`: the recording stopped, and
    /// any answered probe is enough).
    pub fn check(&mut self, now: Instant, at_end: bool) -> Option<String> {
        if self.warning.is_some() || self.matched > 0 || self.answered == 0 {
            return None;
        }
        let waited = self.since.map_or(Duration::ZERO, |t| now.duration_since(t));
        if !(at_end || self.answered >= SIGHT_PROBES || waited >= SIGHT_AFTER) {
            return None;
        }
        let (target, ident, tcp) = self.prober.clone().unwrap_or_default();
        let prober = match (ident, tcp) {
            (Some(port), true) => format!("to {target} from TCP port {port}"),
            (Some(id), false) => format!("to {target} with echo id {id}"),
            (None, _) => format!("to {target}"),
        };
        let what_to_try = if self.hook == crate::kernel::packet_path::KPROBE {
            "kprobe:icmp_echo sees IPv4 echo requests only: record with --attach tracepoint"
                .to_string()
        } else if !self.filter.is_empty() {
            format!(
                "the filter ({}) may exclude them: the prober talks {prober}; record without it \
                 or with --peer of the prober's target",
                self.filter
            )
        } else {
            format!(
                "nothing filters them out, so its answers ({prober}) do not pass this host's \
                 receive path where the hook sees them (an XDP program, a bypass?)"
            )
        };
        let w = format!(
            "{} answered probes in {:.1} s and the packet hook ({}) saw none of their packets: \
             no stall can be tied to them; {what_to_try}",
            self.answered,
            waited.as_secs_f64(),
            self.hook
        );
        self.warning = Some(w.clone());
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use stalltrace_analysis::dump::{PacketKind, PacketRec, ProbeProto, RxContext};

    use super::*;

    fn probe(seq: u16) -> Record {
        Record::Probe(ProbeRec {
            source: "builtin".into(),
            proto: ProbeProto::Icmp,
            target: "10.0.0.2".into(),
            seq: u32::from(seq),
            wire_ident: Some(0x4d2),
            wire_seq: Some(seq),
            sent_ns: Some(1),
            rtt_ns: Some(100_000),
            status: ProbeStatus::Ok,
            send_error: None,
        })
    }

    fn reply(seq: u16, ident: u16) -> Record {
        Record::Packet(PacketRec {
            ts_ns: 1,
            cpu: 0,
            pid: 0,
            tgid: 0,
            comm: "swapper/0".into(),
            context: RxContext::Idle,
            hook: "tracepoint".into(),
            proto: "icmp".into(),
            kind: PacketKind::EchoReply,
            src: "10.0.0.2".into(),
            dst: "10.0.0.1".into(),
            ident,
            seq,
            tcp_seq: None,
            rx_start_ns: None,
            drain_start_ns: None,
        })
    }

    fn filter_peer(octets: [u8; 4]) -> Filter {
        let mut f = Filter::all_icmp();
        f.peer_family = 4;
        f.peer[..4].copy_from_slice(&octets);
        f
    }

    /// Answers whose packets the hook never records: said once after SIGHT_PROBES of
    /// them, naming the hook and the filter that excludes them.
    #[test]
    fn answered_probes_without_packets_are_said_once() {
        let t0 = Instant::now();
        let mut s = ProbeSight::new("tracepoint", &filter_peer([10, 9, 9, 9]));
        for seq in 1..SIGHT_PROBES as u16 {
            s.see(&probe(seq), t0);
            // Other traffic the filter let through: another echo id.
            s.see(&reply(seq, 0x99), t0);
            assert_eq!(s.check(t0, false), None, "not yet at {seq}");
        }
        s.see(&probe(SIGHT_PROBES as u16), t0);
        let w = s.check(t0, false).expect("due at SIGHT_PROBES answers");
        assert!(w.starts_with("100 answered probes"), "{w}");
        assert!(w.contains("tracepoint:net:netif_receive_skb"), "{w}");
        assert!(w.contains("--peer 10.9.9.9"), "{w}");
        assert!(w.contains("echo id 1234"), "{w}");
        assert_eq!(s.check(t0 + SIGHT_AFTER, true), None, "once");
        assert_eq!(s.warning.as_deref(), Some(w.as_str()));
    }

    /// A few answers and SIGHT_AFTER gone by; and the kprobe's own advice.
    #[test]
    fn a_slow_prober_is_said_after_sight_after() {
        let t0 = Instant::now();
        let mut s = ProbeSight::new("kprobe", &Filter::all_icmp());
        s.see(&probe(1), t0);
        assert_eq!(s.check(t0 + SIGHT_AFTER / 2, false), None);
        let w = s.check(t0 + SIGHT_AFTER, false).expect("due");
        assert!(
            w.contains("kprobe:icmp_echo sees IPv4 echo requests only"),
            "{w}"
        );
        assert!(w.contains("--attach tracepoint"), "{w}");
    }

    /// One probe's packet seen, before or after its probe record: no warning, ever.
    #[test]
    fn a_seen_answer_silences_it() {
        let t0 = Instant::now();
        for reply_first in [true, false] {
            let mut s = ProbeSight::new("tracepoint", &Filter::all_icmp());
            if reply_first {
                s.see(&reply(1, 0x4d2), t0);
            }
            for seq in 1..=500 {
                s.see(&probe(seq), t0);
            }
            if !reply_first {
                s.see(&reply(500, 0x4d2), t0);
            }
            assert_eq!(s.counts(), (500, 1));
            assert_eq!(s.check(t0 + SIGHT_AFTER * 10, true), None);
        }
    }
}
