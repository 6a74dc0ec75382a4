//! The correlator: one engine for live `record` and offline `analyze`.
//!
//! Records go in with [`Correlator::push`] in arrival order; episodes come out when
//! they close, i.e. once the kernel clock (the highest timestamp seen, or the live
//! recorder's [`Correlator::tick`]) is `linger` past their end. Only a few seconds of
//! packets, probes and syscalls are kept (more while a long wait is open), so memory
//! does not grow with the dump; the ranking is aggregated as episodes close.
//!
//! Joins: a packet was processed right after a wait when it ran on the wait's CPU and
//! its `rx_start_ns` equals the wait's `ts_ns`. A probe matches its packets by wire
//! identity ([`super::align`]). Waits on one CPU whose windows overlap and that end
//! within `merge_gap` (the NET_RX softirq wait and the ksoftirqd wait of one stall)
//! are one stall.
use std::{
    collections::{HashMap, VecDeque},
    rc::Rc,
};

use super::align::{is_stalled, keys_match, packet_key, probe_key, LogAligner, WireKey};
use super::episode::{
    culprit_syscall, merge_holders, pick_culprit, wall_time, Culprit, Episode, HolderSummary,
    ProbeLine, RxTask, WaitPart,
};
use super::outcome::{InputInfo, Mode, Report, Totals, Unexplained, UnexplainedProbe};
use super::rank::Ranking;
use crate::dump::{
    Header, PacketKind, PacketRec, ProbeRec, ProbeStatus, Record, RxContext, SyscallRec, WaitKind,
    WaitRec,
};

pub const DEFAULT_STALL_THRESHOLD_NS: u64 = 50_000_000;

#[derive(Debug, Clone)]
pub struct Config {
    /// A probe at or above this RTT is stalled; in packet-only mode, a wait at or above
    /// it delays the packets processed after it.
    pub stall_threshold_ns: u64,
    /// `None`: probe mode as soon as a probe is seen, packet-only mode before.
    pub mode: Option<Mode>,
    /// Waits on one CPU ending this close together are one stall.
    pub merge_gap_ns: u64,
    /// An episode closes this long (kernel clock) after its wait ended.
    pub linger_ns: u64,
    /// How long packets, probes and syscalls are kept for joining.
    pub window_ns: u64,
    /// Hard cap on that, whatever waits are open (bounds memory on odd input).
    pub max_retain_ns: u64,
    /// Probe lines shown before an episode (the seed shows the two before).
    pub context_lines: usize,
    /// Lines kept per episode.
    pub max_lines: usize,
    /// Episodes kept for the report (all are counted and ranked).
    pub max_listed_episodes: usize,
    pub max_listed_unexplained: usize,
    /// From the dump header; used to print wall-clock times.
    pub boot_to_wall_ns: Option<i64>,
}

impl Config {
    pub fn new(stall_threshold_ns: u64) -> Self {
        Self {
            stall_threshold_ns,
            mode: None,
            merge_gap_ns: 1_000_000,
            linger_ns: 1_000_000_000,
            window_ns: 3_000_000_000,
            max_retain_ns: 60_000_000_000,
            context_lines: 3,
            max_lines: 64,
            max_listed_episodes: 1000,
            max_listed_unexplained: 50,
            boot_to_wall_ns: None,
        }
    }

    /// Threshold from the command line, else the recording's, else 50 ms; probe mode
    /// when the recording ran a prober.
    pub fn from_header(h: &Header, stall_threshold_ns: Option<u64>) -> Self {
        let thr = stall_threshold_ns
            .or((h.options.stall_threshold_ns > 0).then_some(h.options.stall_threshold_ns))
            .unwrap_or(DEFAULT_STALL_THRESHOLD_NS);
        let mut c = Self::new(thr);
        c.boot_to_wall_ns = Some(h.boot_to_wall_ns);
        if h.options.probe.is_some() {
            c.mode = Some(Mode::Probes);
        }
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeIdx {
    Inline(u64),
    Log(u32),
}

/// What a packet knows of its probe (a copy: the probe may leave the window first).
#[derive(Debug, Clone, Copy)]
struct ProbeJoin {
    idx: ProbeIdx,
    seq: u32,
    rtt_ns: Option<u64>,
    status: ProbeStatus,
}

struct Pkt {
    id: u64,
    /// The kernel clock when it arrived: eviction order, immune to odd timestamps.
    seen_at: u64,
    ts_ns: u64,
    cpu: u32,
    pid: u32,
    tgid: u32,
    comm: Rc<str>,
    context: RxContext,
    kind: PacketKind,
    rx_start_ns: Option<u64>,
    key: Option<WireKey>,
    probe: Option<ProbeJoin>,
}

/// Per-probe bookkeeping, for probes inline in the dump and for a probe log.
#[derive(Debug, Clone, Copy, Default)]
struct ProbeState {
    matched: bool,
    claimed: bool,
    short_wait: bool,
    cpu: Option<u32>,
}

struct InlineProbe {
    id: u64,
    seen_at: u64,
    rec: ProbeRec,
    key: Option<WireKey>,
    st: ProbeState,
}

struct OpenStall {
    cpu: u32,
    start_ns: u64,
    end_ns: u64,
    waits: Vec<WaitRec>,
}

/// Keys of the packet indexes.
type RunKey = (u32, u64);
type SeqKey = (u8, u16);

pub struct Correlator {
    cfg: Config,
    now: u64,
    pkts: VecDeque<Pkt>,
    next_pkt: u64,
    by_run: HashMap<RunKey, Vec<u64>>,
    by_key: HashMap<SeqKey, Vec<u64>>,
    probes: VecDeque<InlineProbe>,
    next_probe: u64,
    probes_by_key: HashMap<SeqKey, Vec<u64>>,
    log: Option<(LogAligner, Vec<ProbeState>)>,
    probe_seen: bool,
    stalls: Vec<OpenStall>,
    /// Earliest `end + linger` and earliest start over open stalls (`u64::MAX` when
    /// none), so a push does not scan them.
    next_due: u64,
    open_min_start: u64,
    syscalls: VecDeque<(u64, SyscallRec)>,
    comms: HashMap<Box<str>, Rc<str>>,
    next_episode: u64,
    ranking: Ranking,
    episodes: Vec<Episode>,
    totals: Totals,
    input: InputInfo,
    unexplained: Vec<UnexplainedProbe>,
    unexplained_by: [u64; 3],
}

fn unindex<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u64>>, k: K, id: u64) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(k) {
        e.get_mut().retain(|&x| x != id);
        if e.get().is_empty() {
            e.remove();
        }
    }
}

impl Correlator {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            now: 0,
            pkts: VecDeque::new(),
            next_pkt: 0,
            by_run: HashMap::new(),
            by_key: HashMap::new(),
            probes: VecDeque::new(),
            next_probe: 0,
            probes_by_key: HashMap::new(),
            log: None,
            probe_seen: false,
            stalls: Vec::new(),
            next_due: u64::MAX,
            open_min_start: u64::MAX,
            syscalls: VecDeque::new(),
            comms: HashMap::new(),
            next_episode: 1,
            ranking: Ranking::default(),
            episodes: Vec::new(),
            totals: Totals::default(),
            input: InputInfo {
                probe_source: "none".into(),
                ..Default::default()
            },
            unexplained: Vec::new(),
            unexplained_by: [0; 3],
        }
    }

    /// Probes from a log (another host's hping3/ping). Call before the first push;
    /// probe records inside the dump are then ignored (they would count twice).
    pub fn set_probe_log(&mut self, probes: Vec<ProbeRec>) {
        let thr = self.cfg.stall_threshold_ns;
        for p in &probes {
            self.count_probe(p, thr);
        }
        let n = probes.len();
        self.log = Some((LogAligner::new(probes), vec![ProbeState::default(); n]));
        self.input.probe_source = "log".into();
    }

    fn count_probe(&mut self, p: &ProbeRec, thr: u64) {
        self.totals.probes += 1;
        match p.status {
            ProbeStatus::Lost => self.totals.probes_lost += 1,
            ProbeStatus::Ok if is_stalled(p, thr) => self.totals.probes_stalled += 1,
            _ => {}
        }
    }

    fn mode(&self) -> Mode {
        match self.cfg.mode {
            Some(m) => m,
            None if self.log.is_some() || self.probe_seen => Mode::Probes,
            None => Mode::Packets,
        }
    }

    /// Feeds one record (header and footer included); returns the episodes that closed.
    pub fn push(&mut self, rec: &Record) -> Vec<Episode> {
        self.totals.records += 1;
        match rec {
            Record::Header(h) => {
                self.input.set_header(h);
                if self.cfg.boot_to_wall_ns.is_none() {
                    self.cfg.boot_to_wall_ns = Some(h.boot_to_wall_ns);
                }
            }
            Record::Footer(f) => self.input.set_footer(f),
            Record::Packet(p) => self.on_packet(p),
            Record::Wait(w) => self.on_wait(w),
            Record::Syscall(s) => self.on_syscall(s),
            Record::Probe(p) => self.on_probe(p),
        }
        self.advance()
    }

    #[cfg_attr(not(test), allow(dead_code))] // the live recorder's entry point
    /// Live only: the kernel clock (boot ns) moved on without records; closes episodes
    /// whose wait ended `linger` ago. Call every 100–500 ms.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Episode> {
        self.now = self.now.max(now_ns);
        self.advance()
    }

    /// What the correlator holds right now: (packets, index entries). Bounded by the
    /// join window whatever the length of the stream; `watch` reports it.
    pub fn retained(&self) -> (usize, usize) {
        (
            self.pkts.len(),
            self.by_key.len() + self.by_run.len() + self.probes_by_key.len() + self.probes.len(),
        )
    }

    /// The culprit ranking over the episodes closed so far (periodic live summaries).
    pub fn culprits_so_far(&self) -> Vec<crate::correlate::rank::CulpritRank> {
        self.ranking.ranked()
    }

    /// Closes every open episode now (end of recording).
    pub fn flush(&mut self) -> Vec<Episode> {
        let mut out = Vec::new();
        self.stalls.sort_by_key(|s| (s.end_ns, s.cpu, s.start_ns));
        for st in std::mem::take(&mut self.stalls) {
            if let Some(ep) = self.close_stall(st) {
                out.push(ep);
            }
        }
        self.stalls_changed();
        out
    }

    fn intern(&mut self, s: &str) -> Rc<str> {
        if let Some(r) = self.comms.get(s) {
            return r.clone();
        }
        let r: Rc<str> = Rc::from(s);
        // Comms are few (threads of a host); past this, odd input: stop caching.
        if self.comms.len() < 1 << 16 {
            self.comms.insert(Box::from(s), r.clone());
        }
        r
    }

    fn on_packet(&mut self, p: &PacketRec) {
        self.totals.packets += 1;
        self.now = self.now.max(p.ts_ns);
        let key = packet_key(p);
        let id = self.next_pkt;
        self.next_pkt += 1;
        let mut probe = None;
        if let Some(k) = key {
            if let Some((al, states)) = &mut self.log {
                if let Some(pos) = al.match_packet(&k) {
                    if let (Some(r), Some(s)) = (al.get(pos), states.get_mut(pos as usize)) {
                        s.matched = true;
                        s.cpu = Some(p.cpu);
                        probe = Some(ProbeJoin {
                            idx: ProbeIdx::Log(pos),
                            seq: r.seq,
                            rtt_ns: r.rtt_ns,
                            status: r.status,
                        });
                    }
                }
            } else if let Some(ids) = self.probes_by_key.get(&(k.proto, k.varying)) {
                // The probe came first (rare: reordering); newest match wins.
                let base = self.probes.front().map_or(0, |f| f.id);
                for &pid in ids.iter().rev() {
                    let Some(ip) = pid
                        .checked_sub(base)
                        .and_then(|i| self.probes.get_mut(i as usize))
                    else {
                        continue;
                    };
                    if ip.key.is_some_and(|pk| keys_match(&pk, &k)) {
                        ip.st.matched = true;
                        ip.st.cpu = Some(p.cpu);
                        probe = Some(ProbeJoin {
                            idx: ProbeIdx::Inline(ip.id),
                            seq: ip.rec.seq,
                            rtt_ns: ip.rec.rtt_ns,
                            status: ip.rec.status,
                        });
                        break;
                    }
                }
            }
            self.by_key
                .entry((k.proto, k.varying))
                .or_default()
                .push(id);
        }
        if let Some(rx) = p.rx_start_ns {
            self.by_run.entry((p.cpu, rx)).or_default().push(id);
        }
        let comm = self.intern(&p.comm);
        self.pkts.push_back(Pkt {
            id,
            seen_at: self.now,
            ts_ns: p.ts_ns,
            cpu: p.cpu,
            pid: p.pid,
            tgid: p.tgid,
            comm,
            context: p.context,
            kind: p.kind,
            rx_start_ns: p.rx_start_ns,
            key,
            probe,
        });
    }

    fn on_wait(&mut self, w: &WaitRec) {
        self.totals.waits += 1;
        self.now = self.now.max(w.ts_ns);
        let gap = self.cfg.merge_gap_ns;
        let start = w.start_ns.min(w.ts_ns);
        let merge = self.stalls.iter_mut().find(|s| {
            s.cpu == w.cpu
                && start <= s.end_ns
                && s.start_ns <= w.ts_ns
                && s.waits.iter().any(|o| o.ts_ns.abs_diff(w.ts_ns) <= gap)
        });
        match merge {
            Some(s) => {
                s.start_ns = s.start_ns.min(start);
                s.end_ns = s.end_ns.max(w.ts_ns);
                s.waits.push(w.clone());
            }
            None => self.stalls.push(OpenStall {
                cpu: w.cpu,
                start_ns: start,
                end_ns: w.ts_ns,
                waits: vec![w.clone()],
            }),
        }
        self.stalls_changed();
    }

    fn stalls_changed(&mut self) {
        let linger = self.cfg.linger_ns;
        self.next_due = self
            .stalls
            .iter()
            .map(|s| s.end_ns.saturating_add(linger))
            .min()
            .unwrap_or(u64::MAX);
        self.open_min_start = self
            .stalls
            .iter()
            .map(|s| s.start_ns)
            .min()
            .unwrap_or(u64::MAX);
    }

    fn on_syscall(&mut self, s: &SyscallRec) {
        self.totals.syscalls += 1;
        self.now = self.now.max(s.ts_ns);
        self.syscalls.push_back((self.now, s.clone()));
    }

    fn on_probe(&mut self, p: &ProbeRec) {
        if self.log.is_some() {
            self.totals.probes_ignored += 1;
            return;
        }
        if !self.probe_seen {
            self.probe_seen = true;
            self.input.probe_source = "dump".into();
        }
        self.count_probe(p, self.cfg.stall_threshold_ns);
        if let Some(sent) = p.sent_ns {
            // Sent on this host by the boot clock: it is no later than now.
            self.now = self.now.max(sent);
        }
        let id = self.next_probe;
        self.next_probe += 1;
        let key = if p.status == ProbeStatus::Dup {
            None
        } else {
            probe_key(p)
        };
        let mut st = ProbeState::default();
        if let Some(k) = key {
            let join = ProbeJoin {
                idx: ProbeIdx::Inline(id),
                seq: p.seq,
                rtt_ns: p.rtt_ns,
                status: p.status,
            };
            // Its request and its reply may both have been seen: join the newest
            // unjoined one of each direction (older ones are an earlier wrap).
            if let Some(ids) = self.by_key.get(&(k.proto, k.varying)) {
                let base = self.pkts.front().map_or(0, |f| f.id);
                let (mut request, mut reply) = (false, false);
                for &pid in ids.iter().rev() {
                    let Some(pk) = pid
                        .checked_sub(base)
                        .and_then(|i| self.pkts.get_mut(i as usize))
                    else {
                        continue;
                    };
                    let is_request = matches!(pk.kind, PacketKind::EchoRequest | PacketKind::Syn);
                    let done = if is_request { &mut request } else { &mut reply };
                    if *done
                        || pk.probe.is_some()
                        || !pk.key.is_some_and(|pkk| keys_match(&k, &pkk))
                    {
                        continue;
                    }
                    *done = true;
                    pk.probe = Some(join);
                    if !st.matched || is_request {
                        st.cpu = Some(pk.cpu);
                    }
                    st.matched = true;
                    if request && reply {
                        break;
                    }
                }
            }
            self.probes_by_key
                .entry((k.proto, k.varying))
                .or_default()
                .push(id);
        }
        self.probes.push_back(InlineProbe {
            id,
            seen_at: self.now,
            rec: p.clone(),
            key,
            st,
        });
    }

    /// Closes due episodes, then forgets what no open or future episode can need.
    fn advance(&mut self) -> Vec<Episode> {
        let mut out = Vec::new();
        let linger = self.cfg.linger_ns;
        while self.next_due <= self.now {
            let Some(i) = self
                .stalls
                .iter()
                .enumerate()
                .filter(|(_, s)| s.end_ns.saturating_add(linger) <= self.now)
                .min_by_key(|(_, s)| (s.end_ns, s.cpu, s.start_ns))
                .map(|(i, _)| i)
            else {
                break;
            };
            let st = self.stalls.swap_remove(i);
            self.stalls_changed();
            if let Some(ep) = self.close_stall(st) {
                out.push(ep);
            }
        }
        self.evict();
        out
    }

    fn evict(&mut self) {
        let floor = self.now.saturating_sub(self.cfg.max_retain_ns);
        let mut keep_from = self.now.saturating_sub(self.cfg.window_ns);
        // An open wait needs the packets just before it (the seed's context lines).
        if self.open_min_start != u64::MAX {
            keep_from = keep_from.min(self.open_min_start.saturating_sub(self.cfg.linger_ns));
        }
        keep_from = keep_from.max(floor);
        while self.pkts.front().is_some_and(|p| p.seen_at < keep_from) {
            let Some(p) = self.pkts.pop_front() else {
                break;
            };
            if let Some(k) = p.key {
                unindex(&mut self.by_key, (k.proto, k.varying), p.id);
            }
            if let Some(rx) = p.rx_start_ns {
                unindex(&mut self.by_run, (p.cpu, rx), p.id);
            }
        }
        while self
            .syscalls
            .front()
            .is_some_and(|(seen, _)| *seen < keep_from)
        {
            self.syscalls.pop_front();
        }
        // Probes arrive after their packets, so their episodes closed (linger) before
        // they leave the window; a stalled one still unclaimed is unexplained.
        let probe_cut = self.now.saturating_sub(self.cfg.window_ns);
        while self.probes.front().is_some_and(|p| p.seen_at < probe_cut) {
            let Some(p) = self.probes.pop_front() else {
                break;
            };
            if let Some(k) = p.key {
                unindex(&mut self.probes_by_key, (k.proto, k.varying), p.id);
            }
            self.finalize_probe(&p.rec, p.st);
        }
    }

    fn finalize_probe(&mut self, rec: &ProbeRec, st: ProbeState) {
        if rec.status == ProbeStatus::Ok {
            self.totals.probes_answered += 1;
            if st.matched {
                self.totals.probes_matched += 1;
            }
        }
        if rec.status != ProbeStatus::Ok
            || !is_stalled(rec, self.cfg.stall_threshold_ns)
            || st.claimed
        {
            return;
        }
        self.totals.probes_unexplained += 1;
        let reason = if !st.matched {
            Unexplained::NoPacket
        } else if st.short_wait {
            Unexplained::WaitTooShort
        } else {
            Unexplained::NoWait
        };
        self.unexplained_by[reason as usize] += 1;
        if self.unexplained.len() < self.cfg.max_listed_unexplained {
            self.unexplained.push(UnexplainedProbe {
                seq: rec.seq,
                wire_seq: rec.wire_seq,
                rtt_ns: rec.rtt_ns,
                reason,
                cpu: st.cpu,
            });
        }
    }

    fn probe_state(&mut self, idx: ProbeIdx) -> Option<&mut ProbeState> {
        match idx {
            ProbeIdx::Log(pos) => self.log.as_mut().and_then(|(_, s)| s.get_mut(pos as usize)),
            ProbeIdx::Inline(id) => {
                let base = self.probes.front().map_or(0, |f| f.id);
                let i = id.checked_sub(base)?;
                self.probes
                    .get_mut(usize::try_from(i).ok()?)
                    .map(|p| &mut p.st)
            }
        }
    }

    fn close_stall(&mut self, st: OpenStall) -> Option<Episode> {
        let thr = self.cfg.stall_threshold_ns;
        let len = st.end_ns.saturating_sub(st.start_ns);
        if len >= thr {
            self.totals.stalls_over_threshold += 1;
        }
        // The packets of the RX run(s) that followed the wait(s).
        let mut ids: Vec<u64> = st
            .waits
            .iter()
            .filter_map(|w| self.by_run.get(&(st.cpu, w.ts_ns)))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let base = self.pkts.front().map_or(0, |f| f.id);
        let mut run: Vec<&Pkt> = ids
            .iter()
            .filter_map(|&id| {
                id.checked_sub(base)
                    .and_then(|i| self.pkts.get(usize::try_from(i).ok()?))
            })
            .collect();
        run.sort_by_key(|p| (p.ts_ns, p.id));

        // Which probes does this wait explain? One that waited at least half its RTT.
        let mut seen: Vec<ProbeIdx> = Vec::new();
        let (mut delayed, mut lost, mut worst) = (0u32, 0u32, None::<u64>);
        // (probe, explained here, answered-and-stalled rather than lost)
        let mut claims: Vec<(ProbeIdx, bool, bool)> = Vec::new();
        for p in &run {
            let Some(j) = p.probe else { continue };
            if seen.contains(&j.idx) {
                continue;
            }
            seen.push(j.idx);
            match (j.status, j.rtt_ns) {
                (ProbeStatus::Lost, _) if len >= thr => {
                    lost += 1;
                    claims.push((j.idx, true, false));
                }
                (ProbeStatus::Ok, Some(rtt)) if rtt >= thr => {
                    if len.saturating_mul(2) >= rtt {
                        delayed += 1;
                        worst = Some(worst.map_or(rtt, |w| w.max(rtt)));
                        claims.push((j.idx, true, true));
                    } else {
                        claims.push((j.idx, false, true));
                    }
                }
                (ProbeStatus::Ok, Some(rtt)) => worst = Some(worst.map_or(rtt, |w| w.max(rtt))),
                _ => {}
            }
        }
        let probes_in_run = u32::try_from(seen.len()).unwrap_or(u32::MAX);
        let qualifies = match self.mode() {
            Mode::Probes => delayed > 0 || lost > 0,
            Mode::Packets => len >= thr && !run.is_empty(),
        };
        let run_len = run.len();
        if !qualifies {
            // Remember why a stalled probe was not explained here.
            for (idx, explained, _) in claims {
                if !explained {
                    if let Some(s) = self.probe_state(idx) {
                        s.short_wait = true;
                    }
                }
            }
            return None;
        }

        let rx = match run.first() {
            Some(p) => RxTask {
                pid: p.pid,
                tgid: p.tgid,
                comm: p.comm.to_string(),
                context: p.context,
            },
            None => {
                let w = st
                    .waits
                    .iter()
                    .find(|w| w.kind == WaitKind::RxThread)
                    .or(st.waits.first())?;
                RxTask {
                    pid: w.rx.pid,
                    tgid: w.rx.tgid,
                    comm: w.rx.comm.clone(),
                    context: w.rx_context,
                }
            }
        };
        let holders = merge_holders(&st.waits);
        let culprit = pick_culprit(&holders, rx.pid).map(|h| {
            let sys = culprit_syscall(
                h,
                st.start_ns,
                st.end_ns,
                &mut self.syscalls.iter().map(|(_, s)| s),
            );
            Culprit::from_holder(h, sys)
        });

        // The seed's view: probe packets on this CPU just before, then the delayed run.
        let run_start = run.first().map_or(st.end_ns, |p| p.ts_ns.min(st.end_ns));
        let want_probe_pkts = self.mode() == Mode::Probes;
        // One row per probe: an echo request and its reply can both be on this CPU.
        let mut seen_keys: Vec<u16> = Vec::with_capacity(self.cfg.context_lines);
        let mut before: Vec<&Pkt> = self
            .pkts
            .iter()
            .rev()
            .filter(|p| {
                p.cpu == st.cpu
                    && p.ts_ns < run_start
                    && ids.binary_search(&p.id).is_err()
                    && (!want_probe_pkts || p.key.is_some())
            })
            .filter(|p| match p.key {
                Some(k) if seen_keys.contains(&k.varying) => false,
                Some(k) => {
                    seen_keys.push(k.varying);
                    true
                }
                None => true,
            })
            .take(self.cfg.context_lines)
            .collect();
        before.reverse();
        let mk = |p: &Pkt, in_run: bool| ProbeLine {
            ts_ns: p.ts_ns,
            cpu: p.cpu,
            tgid: p.tgid,
            pid: p.pid,
            comm: p.comm.to_string(),
            context: p.context,
            kind: p.kind,
            wire_seq: p.key.map_or(0, |k| k.varying),
            seq: p.probe.map(|j| j.seq),
            rtt_ns: p.probe.and_then(|j| j.rtt_ns),
            status: p.probe.map(|j| j.status),
            delayed: in_run,
            over_threshold: p.probe.and_then(|j| j.rtt_ns).is_some_and(|r| r >= thr),
        };
        let mut lines: Vec<ProbeLine> = before.iter().map(|p| mk(p, false)).collect();
        let room = self.cfg.max_lines.saturating_sub(lines.len());
        lines.extend(run.iter().take(room).map(|p| mk(p, true)));
        let lines_omitted = u32::try_from(run_len.saturating_sub(room)).unwrap_or(u32::MAX);

        let mut waits: Vec<WaitPart> = st
            .waits
            .iter()
            .map(|w| WaitPart {
                kind: w.kind,
                start_ns: w.start_ns,
                ts_ns: w.ts_ns,
                wait_ns: w.wait_ns,
                nr_switches: w.nr_switches,
            })
            .collect();
        waits.sort_by_key(|w| (w.start_ns, w.ts_ns, w.kind as u8));

        let ep = Episode {
            id: self.next_episode,
            cpu: st.cpu,
            start_ns: st.start_ns,
            end_ns: st.end_ns,
            wait_ns: len,
            start_wall: wall_time(st.start_ns, self.cfg.boot_to_wall_ns),
            waits,
            rx,
            culprit,
            holders: holders
                .iter()
                .map(|h| HolderSummary {
                    pid: h.pid,
                    tgid: h.tgid,
                    comm: h.comm.clone(),
                    run_ns: h.run_ns,
                })
                .collect(),
            probes_delayed: delayed,
            probes_in_run,
            probes_lost: lost,
            packets_delayed: u32::try_from(run_len).unwrap_or(u32::MAX),
            worst_rtt_ns: worst,
            lines,
            lines_omitted,
            truncated: st.waits.iter().any(|w| w.truncated),
        };
        self.next_episode += 1;

        let mut newly_explained = 0;
        for (idx, explained, answered) in claims {
            let Some(s) = self.probe_state(idx) else {
                continue;
            };
            if !explained {
                s.short_wait = true;
            } else if !s.claimed {
                // Request and reply both delayed: the probe is explained once.
                s.claimed = true;
                newly_explained += u64::from(answered);
            }
        }
        self.totals.probes_explained += newly_explained;
        self.totals.episodes += 1;
        self.totals.packets_delayed += run_len as u64;
        self.ranking.add(&ep);
        if self.episodes.len() < self.cfg.max_listed_episodes {
            self.episodes.push(ep.clone());
        } else {
            self.totals.episodes_not_listed += 1;
        }
        Some(ep)
    }

    /// Closes what is open and returns the whole-recording report.
    pub fn finish(mut self) -> Report {
        let _ = self.flush();
        while let Some(p) = self.probes.pop_front() {
            self.finalize_probe(&p.rec, p.st);
        }
        if let Some((al, states)) = self.log.take() {
            for (rec, st) in al.probes().iter().zip(states) {
                self.finalize_probe(rec, st);
            }
        }
        self.episodes.sort_by_key(|e| (e.start_ns, e.cpu, e.id));
        let mode = self.mode();
        Report {
            input: self.input,
            stall_threshold_ns: self.cfg.stall_threshold_ns,
            mode,
            totals: self.totals,
            episodes: self.episodes,
            culprits: self.ranking.ranked(),
            cpus: self.ranking.cpus(),
            episodes_without_culprit: self.ranking.without_culprit,
            unexplained: self.unexplained,
            unexplained_no_packet: self.unexplained_by[Unexplained::NoPacket as usize],
            unexplained_no_wait: self.unexplained_by[Unexplained::NoWait as usize],
            unexplained_wait_too_short: self.unexplained_by[Unexplained::WaitTooShort as usize],
        }
    }
}
