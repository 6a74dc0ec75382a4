//! The correlator: one engine for live `record` and offline `analyze`.
//!
//! Records go in with [`Correlator::push`] in arrival order; episodes come out when
//! they close, i.e. once the kernel clock (the highest timestamp seen, or the live
//! recorder's [`Correlator::tick`]) is `linger` past their end. Only a few seconds of
//! packets, probes and syscalls are kept (more while a long wait is open), so memory
//! does not grow with the dump; the ranking is aggregated as episodes close.
//!
//! Joins: a packet was processed right after a wait when it ran on the wait's CPU and
//! its `rx_start_ns` equals the wait's `ts_ns`; it was processed in the wait's backlog
//! drain when its `drain_start_ns` equals the wait's `drain_of_ns` (the kernel keeps a
//! drain open from a wait until the CPU's RX work runs out: several RX runs, a budget
//! at a time, with short waits in between). A probe matches its packets by wire
//! identity ([`super::align`]). Waits on one CPU whose windows overlap and that end
//! within `merge_gap` (the NET_RX softirq wait and the ksoftirqd wait of one stall),
//! and waits of one backlog drain, are one stall.
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
use super::rank::{CulpritRank, Ranking};
use super::window::{Index, Window};
use crate::dump::{
    Header, PacketKind, PacketRec, ProbeRec, ProbeStatus, Record, RxContext, SyscallRec, WaitKind,
    WaitRec,
};

pub const DEFAULT_STALL_THRESHOLD_NS: u64 = 50_000_000;

/// Matches looked at per key lookup, newest first: a probe's packets are recent, and a
/// flood that repeats one sequence number must not make each lookup scan the window.
const LOOKUP_LIMIT: usize = 64;
/// Waits kept per open stall (more only stretch its window), and open stalls at most
/// (more close the oldest early): bounds for odd input, far above real recordings.
const MAX_WAITS_PER_STALL: usize = 64;
const MAX_OPEN_STALLS: usize = 4096;

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
    /// Packets kept at most, whatever their age: a node-wide flood (100k+ packets a
    /// second) would otherwise hold the whole window, hundreds of MiB in a node agent.
    pub max_packets: usize,
    /// Probe lines shown before an episode (the 2019 GitHub incident shows the two before).
    pub context_lines: usize,
    /// Lines kept per episode.
    pub max_lines: usize,
    /// Episodes kept for the report (all are counted and ranked).
    pub max_listed_episodes: usize,
    /// Rows of the culprit ranking at most (see [`Ranking::with_limit`]); unbounded
    /// for a recording's report, bounded in an agent that never ends.
    pub max_ranked: usize,
    pub max_listed_unexplained: usize,
    /// From the dump header; used to print wall-clock times.
    pub boot_to_wall_ns: Option<i64>,
    /// From the dump header: the recorder's own process, never a culprit.
    pub recorder_pid: Option<u32>,
    /// From the dump header: the node's memory cgroups at record time.
    pub cgroups: Option<crate::dump::CgroupFacts>,
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
            max_packets: 100_000,
            context_lines: 3,
            max_lines: 64,
            max_listed_episodes: 1000,
            max_ranked: usize::MAX,
            max_listed_unexplained: 50,
            boot_to_wall_ns: None,
            recorder_pid: None,
            cgroups: None,
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
        c.recorder_pid = h.options.recorder_pid;
        c.cgroups.clone_from(&h.cgroups);
        if h.options.probe.is_some() {
            c.mode = Some(Mode::Probes);
        }
        c
    }
}

/// A probe, in the dump (by its id in the inline window) or in a log (by position).
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
    drain_start_ns: Option<u64>,
    key: Option<WireKey>,
    probe: Option<ProbeJoin>,
}

/// Processed in a backlog drain, not in the RX run right after one of the stall's waits
/// (which end at `ends`, ascending): how long after the latest of them that ended
/// before it.
fn in_drain_after(p: &Pkt, ends: &[u64]) -> Option<u64> {
    p.drain_start_ns?;
    if p.rx_start_ns
        .is_some_and(|r| ends.binary_search(&r).is_ok())
    {
        return None;
    }
    let before = ends.partition_point(|&e| e <= p.ts_ns);
    let last = ends.get(before.checked_sub(1)?)?;
    Some(p.ts_ns - last)
}

/// Whether a packet's own probe shows it was sent after the latest of the stall's
/// waits (ending at `ends`, ascending) ended before it was processed: fresh traffic
/// processed while the drain was open, not part of the backlog. Its RTT bounds the
/// time from its send to its processing from above, whatever the two clocks' offset.
fn arrived_after(p: &Pkt, ends: &[u64]) -> bool {
    let Some(rtt) = p.probe.and_then(|j| j.rtt_ns) else {
        return false;
    };
    let before = ends.partition_point(|&e| e <= p.ts_ns);
    before
        .checked_sub(1)
        .and_then(|i| ends.get(i))
        .is_some_and(|&last| p.ts_ns.saturating_sub(rtt) > last)
}

impl OpenStall {
    /// Its waits' ends, ascending.
    fn ends(&self) -> Vec<u64> {
        let mut e: Vec<u64> = self.waits.iter().map(|w| w.ts_ns).collect();
        e.sort_unstable();
        e
    }
}

/// Keys of the packet and probe indexes.
type RunKey = (u32, u64);
type SeqKey = (u8, u16);

fn seq_key(k: &WireKey) -> SeqKey {
    (k.proto, k.varying)
}

/// Recent packets, by RX run, by backlog drain and by wire sequence.
#[derive(Default)]
struct Packets {
    window: Window<Pkt>,
    by_run: Index<RunKey>,
    by_drain: Index<RunKey>,
    by_seq: Index<SeqKey>,
    comms: HashMap<Box<str>, Rc<str>>,
}

impl Packets {
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

    /// Forgets packets seen before `keep_from`, and the oldest beyond `max` whatever
    /// their age; returns how many went early for the cap.
    fn forget_before(&mut self, keep_from: u64, max: usize) -> u64 {
        let mut early = 0;
        loop {
            let old = self.window.front().is_some_and(|p| p.seen_at < keep_from);
            let over = self.window.len() > max;
            if !(old || over) {
                break;
            }
            if !old {
                early += 1;
            }
            let Some((id, p)) = self.window.pop_front() else {
                break;
            };
            if let Some(k) = p.key {
                self.by_seq.forget(seq_key(&k), id);
            }
            if let Some(rx) = p.rx_start_ns {
                self.by_run.forget((p.cpu, rx), id);
            }
            if let Some(d) = p.drain_start_ns {
                self.by_drain.forget((p.cpu, d), id);
            }
        }
        early
    }
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
    seen_at: u64,
    rec: ProbeRec,
    key: Option<WireKey>,
    st: ProbeState,
}

/// Probe results: inline in the dump (recent ones), or a whole log from elsewhere.
#[derive(Default)]
struct Probes {
    inline: Window<InlineProbe>,
    by_seq: Index<SeqKey>,
    log: Option<(LogAligner, Vec<ProbeState>)>,
    /// A probe record was seen in the dump.
    seen: bool,
}

impl Probes {
    fn state(&mut self, idx: ProbeIdx) -> Option<&mut ProbeState> {
        match idx {
            ProbeIdx::Log(pos) => self.log.as_mut().and_then(|(_, s)| s.get_mut(pos as usize)),
            ProbeIdx::Inline(id) => self.inline.get_mut(id).map(|p| &mut p.st),
        }
    }
}

struct OpenStall {
    cpu: u32,
    start_ns: u64,
    end_ns: u64,
    /// The longest of its waits: a wait of the same drain may still be running, for
    /// about as long, when the last one ends.
    longest_ns: u64,
    waits: Vec<WaitRec>,
}

impl OpenStall {
    /// When it can close: `linger` after its end, or twice its longest wait when that
    /// is longer (a backlog drain's next wait, begun as this one ended, is reported
    /// only when it ends).
    fn due(&self, linger: u64) -> u64 {
        self.end_ns
            .saturating_add(linger.max(self.longest_ns.saturating_mul(2)))
    }

    /// The backlog drains of its waits.
    fn drains(&self) -> impl Iterator<Item = u64> + '_ {
        let mut seen: Vec<u64> = Vec::new();
        self.waits.iter().filter_map(move |w| {
            let d = w.drain_of_ns?;
            (!seen.contains(&d)).then(|| {
                seen.push(d);
                d
            })
        })
    }
}

/// Waits merged per CPU into stalls until they are due.
#[derive(Default)]
struct Stalls {
    open: Vec<OpenStall>,
    /// Earliest `end + linger` and earliest start over open stalls (`u64::MAX` when
    /// none), so a push does not scan them.
    next_due: u64,
    min_start: u64,
}

impl Stalls {
    fn changed(&mut self, linger: u64) {
        self.next_due = self
            .open
            .iter()
            .map(|s| s.due(linger))
            .min()
            .unwrap_or(u64::MAX);
        self.min_start = self
            .open
            .iter()
            .map(|s| s.start_ns)
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Adds a wait to the stall it belongs to (overlapping and ending together, or of
    /// the same backlog drain), or opens one.
    fn add(&mut self, w: &WaitRec, gap: u64, linger: u64) {
        let start = w.start_ns.min(w.ts_ns);
        let merge = self.open.iter_mut().find(|s| {
            s.cpu == w.cpu
                && ((start <= s.end_ns
                    && s.start_ns <= w.ts_ns
                    && s.waits.iter().any(|o| o.ts_ns.abs_diff(w.ts_ns) <= gap))
                    || w.drain_of_ns.is_some_and(|d| {
                        s.waits
                            .iter()
                            .any(|o| o.drain_of_ns == Some(d) || o.ts_ns == d)
                    }))
        });
        match merge {
            Some(s) => {
                s.start_ns = s.start_ns.min(start);
                s.end_ns = s.end_ns.max(w.ts_ns);
                s.longest_ns = s.longest_ns.max(w.wait_ns);
                if s.waits.len() < MAX_WAITS_PER_STALL {
                    s.waits.push(w.clone());
                }
            }
            None => self.open.push(OpenStall {
                cpu: w.cpu,
                start_ns: start,
                end_ns: w.ts_ns,
                longest_ns: w.wait_ns,
                waits: vec![w.clone()],
            }),
        }
        self.changed(linger);
    }

    /// The open stall to close next: due by `now`, or any if too many are open.
    fn take_due(&mut self, now: u64, linger: u64) -> Option<OpenStall> {
        let forced = self.open.len() > MAX_OPEN_STALLS;
        let i = self
            .open
            .iter()
            .enumerate()
            .filter(|(_, s)| forced || s.due(linger) <= now)
            .min_by_key(|(_, s)| (s.end_ns, s.cpu, s.start_ns))
            .map(|(i, _)| i)?;
        let st = self.open.swap_remove(i);
        self.changed(linger);
        Some(st)
    }
}

/// What the whole recording adds up to, as episodes close.
struct Tally {
    next_episode: u64,
    ranking: Ranking,
    episodes: Vec<Episode>,
    totals: Totals,
    input: InputInfo,
    unexplained: Vec<UnexplainedProbe>,
    unexplained_by: [u64; 3],
}

pub struct Correlator {
    cfg: Config,
    /// The kernel clock: the latest time seen.
    now: u64,
    packets: Packets,
    probes: Probes,
    stalls: Stalls,
    /// Long syscalls, with when they arrived.
    syscalls: VecDeque<(u64, SyscallRec)>,
    tally: Tally,
}

/// Which probes a stall's delayed run carried, and what it means for each.
#[derive(Default)]
struct Claims {
    /// (probe, explained by this stall, answered rather than lost)
    each: Vec<(ProbeIdx, bool, bool)>,
    delayed: u32,
    lost: u32,
    worst_rtt: Option<u64>,
    probes_in_run: u32,
}

impl Correlator {
    pub fn new(cfg: Config) -> Self {
        let ranking = Ranking::with_limit(cfg.max_ranked);
        Self {
            cfg,
            now: 0,
            packets: Packets::default(),
            probes: Probes::default(),
            stalls: Stalls {
                next_due: u64::MAX,
                min_start: u64::MAX,
                ..Stalls::default()
            },
            syscalls: VecDeque::new(),
            tally: Tally {
                next_episode: 1,
                ranking,
                episodes: Vec::new(),
                totals: Totals::default(),
                input: InputInfo {
                    probe_source: "none".into(),
                    ..Default::default()
                },
                unexplained: Vec::new(),
                unexplained_by: [0; 3],
            },
        }
    }

    /// Probes from a log (another host's hping3/ping). Call before the first push;
    /// probe records inside the dump are then ignored (they would count twice).
    pub fn set_probe_log(&mut self, probes: Vec<ProbeRec>) {
        for p in &probes {
            self.count_probe(p);
        }
        let n = probes.len();
        self.probes.log = Some((LogAligner::new(probes), vec![ProbeState::default(); n]));
        self.tally.input.probe_source = "log".into();
    }

    fn count_probe(&mut self, p: &ProbeRec) {
        let t = &mut self.tally.totals;
        t.probes += 1;
        if let Some(e) = &p.send_error {
            t.probes_not_sent += 1;
            t.first_send_error.get_or_insert_with(|| e.clone());
        }
        match p.status {
            ProbeStatus::Lost => t.probes_lost += 1,
            ProbeStatus::Ok if is_stalled(p, self.cfg.stall_threshold_ns) => t.probes_stalled += 1,
            _ => {}
        }
    }

    fn mode(&self) -> Mode {
        match self.cfg.mode {
            Some(m) => m,
            None if self.probes.log.is_some() || self.probes.seen => Mode::Probes,
            None => Mode::Packets,
        }
    }

    /// Feeds one record (header and footer included); returns the episodes that closed.
    pub fn push(&mut self, rec: &Record) -> Vec<Episode> {
        self.tally.totals.records += 1;
        match rec {
            Record::Header(h) => {
                self.tally.input.set_header(h);
                if self.cfg.boot_to_wall_ns.is_none() {
                    self.cfg.boot_to_wall_ns = Some(h.boot_to_wall_ns);
                }
            }
            Record::Footer(f) => self.tally.input.set_footer(f),
            Record::Packet(p) => self.on_packet(p),
            Record::Wait(w) => self.on_wait(w),
            Record::Syscall(s) => self.on_syscall(s),
            Record::Probe(p) => self.on_probe(p),
        }
        self.advance()
    }

    /// Live only: the kernel clock (boot ns) moved on without records; closes episodes
    /// whose wait ended `linger` ago. Call every 100–500 ms.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Episode> {
        self.now = self.now.max(now_ns);
        self.advance()
    }

    /// What the correlator holds right now: (packets, index keys and inline probes).
    /// Bounded by the join window whatever the length of the stream.
    pub fn retained(&self) -> (usize, usize) {
        (
            self.packets.window.len(),
            self.packets.by_seq.len()
                + self.packets.by_run.len()
                + self.probes.by_seq.len()
                + self.probes.inline.len(),
        )
    }

    /// The culprit ranking over the episodes closed so far (periodic live summaries).
    pub fn culprits_so_far(&self) -> Vec<CulpritRank> {
        self.tally.ranking.ranked()
    }

    /// Closes every open episode now (end of recording).
    pub fn flush(&mut self) -> Vec<Episode> {
        let mut open = std::mem::take(&mut self.stalls.open);
        self.stalls.changed(self.cfg.linger_ns);
        open.sort_by_key(|s| (s.end_ns, s.cpu, s.start_ns));
        open.into_iter()
            .filter_map(|st| self.close_stall(st))
            .collect()
    }

    fn on_packet(&mut self, p: &PacketRec) {
        self.tally.totals.packets += 1;
        self.now = self.now.max(p.ts_ns);
        let key = packet_key(p);
        let id = self.packets.window.next_id();
        let probe = key.and_then(|k| self.probe_of_packet(&k, p.cpu));
        if let Some(k) = key {
            self.packets.by_seq.add(seq_key(&k), id);
        }
        if let Some(rx) = p.rx_start_ns {
            self.packets.by_run.add((p.cpu, rx), id);
        }
        if let Some(d) = p.drain_start_ns {
            self.packets.by_drain.add((p.cpu, d), id);
        }
        let comm = self.packets.intern(&p.comm);
        self.packets.window.push(Pkt {
            seen_at: self.now,
            ts_ns: p.ts_ns,
            cpu: p.cpu,
            pid: p.pid,
            tgid: p.tgid,
            comm,
            context: p.context,
            kind: p.kind,
            rx_start_ns: p.rx_start_ns,
            drain_start_ns: p.drain_start_ns,
            key,
            probe,
        });
    }

    /// The probe a packet belongs to: in the log, or (rare: reordering) a probe record
    /// that came before its packet, newest match first.
    fn probe_of_packet(&mut self, k: &WireKey, cpu: u32) -> Option<ProbeJoin> {
        if let Some((al, states)) = &mut self.probes.log {
            let pos = al.match_packet(k)?;
            let r = al.get(pos)?;
            let s = states.get_mut(pos as usize)?;
            s.matched = true;
            s.cpu = Some(cpu);
            return Some(ProbeJoin {
                idx: ProbeIdx::Log(pos),
                seq: r.seq,
                rtt_ns: r.rtt_ns,
                status: r.status,
            });
        }
        let ids: Vec<u64> = self
            .probes
            .by_seq
            .get(&seq_key(k))
            .rev()
            .take(LOOKUP_LIMIT)
            .collect();
        for id in ids {
            let Some(ip) = self.probes.inline.get_mut(id) else {
                continue;
            };
            if ip.key.is_some_and(|pk| keys_match(&pk, k)) {
                ip.st.matched = true;
                ip.st.cpu = Some(cpu);
                return Some(ProbeJoin {
                    idx: ProbeIdx::Inline(id),
                    seq: ip.rec.seq,
                    rtt_ns: ip.rec.rtt_ns,
                    status: ip.rec.status,
                });
            }
        }
        None
    }

    fn on_wait(&mut self, w: &WaitRec) {
        self.tally.totals.waits += 1;
        self.now = self.now.max(w.ts_ns);
        self.stalls
            .add(w, self.cfg.merge_gap_ns, self.cfg.linger_ns);
    }

    fn on_syscall(&mut self, s: &SyscallRec) {
        self.tally.totals.syscalls += 1;
        self.now = self.now.max(s.ts_ns);
        self.syscalls.push_back((self.now, s.clone()));
    }

    fn on_probe(&mut self, p: &ProbeRec) {
        if self.probes.log.is_some() {
            self.tally.totals.probes_ignored += 1;
            return;
        }
        if !self.probes.seen {
            self.probes.seen = true;
            self.tally.input.probe_source = "dump".into();
        }
        self.count_probe(p);
        if let Some(sent) = p.sent_ns {
            // Sent on this host by the boot clock: it is no later than now.
            self.now = self.now.max(sent);
        }
        let id = self.probes.inline.next_id();
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
            self.join_packets(&k, join, &mut st);
            self.probes.by_seq.add(seq_key(&k), id);
        }
        self.probes.inline.push(InlineProbe {
            seen_at: self.now,
            rec: p.clone(),
            key,
            st,
        });
    }

    /// A probe's request and its reply may both have been seen: joins the newest
    /// unjoined packet of each direction (older ones are an earlier wrap).
    fn join_packets(&mut self, k: &WireKey, join: ProbeJoin, st: &mut ProbeState) {
        let ids: Vec<u64> = self
            .packets
            .by_seq
            .get(&seq_key(k))
            .rev()
            .take(LOOKUP_LIMIT)
            .collect();
        let (mut request, mut reply) = (false, false);
        for id in ids {
            let Some(pk) = self.packets.window.get_mut(id) else {
                continue;
            };
            let is_request = matches!(pk.kind, PacketKind::EchoRequest | PacketKind::Syn);
            let done = if is_request { &mut request } else { &mut reply };
            if *done || pk.probe.is_some() || !pk.key.is_some_and(|pkk| keys_match(k, &pkk)) {
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

    /// Closes due episodes, then forgets what no open or future episode can need.
    fn advance(&mut self) -> Vec<Episode> {
        let mut out = Vec::new();
        while self.stalls.next_due <= self.now || self.stalls.open.len() > MAX_OPEN_STALLS {
            let Some(st) = self.stalls.take_due(self.now, self.cfg.linger_ns) else {
                break;
            };
            out.extend(self.close_stall(st));
        }
        self.evict();
        out
    }

    fn evict(&mut self) {
        let floor = self.now.saturating_sub(self.cfg.max_retain_ns);
        let mut keep_from = self.now.saturating_sub(self.cfg.window_ns);
        // An open wait needs the packets just before it (the 2019 GitHub incident's context lines).
        if self.stalls.min_start != u64::MAX {
            keep_from = keep_from.min(self.stalls.min_start.saturating_sub(self.cfg.linger_ns));
        }
        keep_from = keep_from.max(floor);
        let early = self.packets.forget_before(keep_from, self.cfg.max_packets);
        self.tally.totals.packets_forgotten_early += early;
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
        while self
            .probes
            .inline
            .front()
            .is_some_and(|p| p.seen_at < probe_cut)
        {
            let Some((id, p)) = self.probes.inline.pop_front() else {
                break;
            };
            if let Some(k) = p.key {
                self.probes.by_seq.forget(seq_key(&k), id);
            }
            self.finalize_probe(&p.rec, p.st);
        }
    }

    fn finalize_probe(&mut self, rec: &ProbeRec, st: ProbeState) {
        let t = &mut self.tally;
        if rec.status == ProbeStatus::Ok {
            t.totals.probes_answered += 1;
            if st.matched {
                t.totals.probes_matched += 1;
            }
        }
        if rec.status != ProbeStatus::Ok
            || !is_stalled(rec, self.cfg.stall_threshold_ns)
            || st.claimed
        {
            return;
        }
        t.totals.probes_unexplained += 1;
        let reason = if !st.matched {
            Unexplained::NoPacket
        } else if st.short_wait {
            Unexplained::WaitTooShort
        } else {
            Unexplained::NoWait
        };
        t.unexplained_by[reason as usize] += 1;
        if t.unexplained.len() < self.cfg.max_listed_unexplained {
            t.unexplained.push(UnexplainedProbe {
                seq: rec.seq,
                wire_seq: rec.wire_seq,
                rtt_ns: rec.rtt_ns,
                reason,
                cpu: st.cpu,
            });
        }
    }

    /// Ids of the packets processed in the RX run(s) that ended the stall's waits, and
    /// later in the backlog drains those waits held up, ascending.
    fn run_of(&self, st: &OpenStall) -> Vec<u64> {
        let mut ids: Vec<u64> = st
            .waits
            .iter()
            .flat_map(|w| self.packets.by_run.get(&(st.cpu, w.ts_ns)))
            .collect();
        let ends = st.ends();
        for d in st.drains() {
            ids.extend(
                self.packets
                    .by_drain
                    .get(&(st.cpu, d))
                    // A drain's packets before this stall belong to an earlier one.
                    .filter(|&id| {
                        self.packets
                            .window
                            .get(id)
                            .is_some_and(|p| p.ts_ns >= st.start_ns && !arrived_after(p, &ends))
                    }),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Which probes this stall explains: one whose packet was in the delayed run and
    /// that waited at least half its RTT here.
    fn claims(&self, run: &[&Pkt], len: u64) -> Claims {
        let thr = self.cfg.stall_threshold_ns;
        let mut c = Claims::default();
        let mut seen: Vec<ProbeIdx> = Vec::new();
        for j in run.iter().filter_map(|p| p.probe) {
            if seen.contains(&j.idx) {
                continue;
            }
            seen.push(j.idx);
            match (j.status, j.rtt_ns) {
                (ProbeStatus::Lost, _) if len >= thr => {
                    c.lost += 1;
                    c.each.push((j.idx, true, false));
                }
                (ProbeStatus::Ok, Some(rtt)) if rtt >= thr => {
                    let explained = len.saturating_mul(2) >= rtt;
                    if explained {
                        c.delayed += 1;
                        c.worst_rtt = Some(c.worst_rtt.map_or(rtt, |w| w.max(rtt)));
                    }
                    c.each.push((j.idx, explained, true));
                }
                (ProbeStatus::Ok, Some(rtt)) => {
                    c.worst_rtt = Some(c.worst_rtt.map_or(rtt, |w| w.max(rtt)))
                }
                _ => {}
            }
        }
        c.probes_in_run = u32::try_from(seen.len()).unwrap_or(u32::MAX);
        c
    }

    /// The context that ran the delayed RX work: the run's first packet's, else the
    /// RX thread's (or the first) wait's.
    fn rx_task(run: &[&Pkt], st: &OpenStall) -> Option<RxTask> {
        if let Some(p) = run.first() {
            return Some(RxTask {
                pid: p.pid,
                tgid: p.tgid,
                comm: p.comm.to_string(),
                context: p.context,
            });
        }
        let w = st
            .waits
            .iter()
            .find(|w| w.kind == WaitKind::RxThread)
            .or(st.waits.first())?;
        Some(RxTask {
            pid: w.rx.pid,
            tgid: w.rx.tgid,
            comm: w.rx.comm.clone(),
            context: w.rx_context,
        })
    }

    /// The 2019 GitHub incident's table: probe packets on this CPU just before the delayed run, then
    /// the run, one row per probe (an echo request and its reply may both have been
    /// processed in the run: the first is shown).
    fn table(&self, st: &OpenStall, run: &[&Pkt], run_ids: &[u64]) -> (Vec<ProbeLine>, u32) {
        let ends = st.ends();
        let thr = self.cfg.stall_threshold_ns;
        let run_start = run.first().map_or(st.end_ns, |p| p.ts_ns.min(st.end_ns));
        let probe_rows_only = self.mode() == Mode::Probes;
        let mut seen_before: Vec<u16> = Vec::with_capacity(self.cfg.context_lines);
        let mut before: Vec<&Pkt> = self
            .packets
            .window
            .iter_ids()
            .rev()
            .filter(|(id, p)| {
                p.cpu == st.cpu
                    && p.ts_ns < run_start
                    && run_ids.binary_search(id).is_err()
                    && (!probe_rows_only || p.probe.is_some())
            })
            .map(|(_, p)| p)
            .filter(|p| match p.key {
                Some(k) if seen_before.contains(&k.varying) => false,
                Some(k) => {
                    seen_before.push(k.varying);
                    true
                }
                None => true,
            })
            .take(self.cfg.context_lines)
            .collect();
        before.reverse();
        let mut seen_run: Vec<SeqKey> = Vec::new();
        // With probes, the rows are the probes' packets: another sender's echoes (a
        // flood, a second prober) are counted, not listed.
        let rows: Vec<&&Pkt> = run
            .iter()
            .filter(|p| !probe_rows_only || p.probe.is_some())
            .filter(|p| match p.key {
                Some(k) if seen_run.contains(&seq_key(&k)) => false,
                Some(k) => {
                    seen_run.push(seq_key(&k));
                    true
                }
                None => true,
            })
            .collect();
        let line = |p: &Pkt, delayed: bool| ProbeLine {
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
            delayed,
            over_threshold: p.probe.and_then(|j| j.rtt_ns).is_some_and(|r| r >= thr),
            after_wait_ns: if delayed {
                in_drain_after(p, &ends)
            } else {
                None
            },
        };
        let mut lines: Vec<ProbeLine> = before.iter().map(|p| line(p, false)).collect();
        let room = self.cfg.max_lines.saturating_sub(lines.len());
        lines.extend(rows.iter().take(room).map(|p| line(p, true)));
        let omitted = u32::try_from(rows.len().saturating_sub(room)).unwrap_or(u32::MAX);
        (lines, omitted)
    }

    /// Marks the probes this episode explains (each once, though its request and its
    /// reply may both have been delayed), and why the others were not explained.
    fn settle_claims(&mut self, claims: &Claims, episode_closed: bool) {
        let mut newly_explained = 0;
        for &(idx, explained, answered) in &claims.each {
            let Some(s) = self.probes.state(idx) else {
                continue;
            };
            if !explained {
                s.short_wait = true;
            } else if episode_closed && !s.claimed {
                s.claimed = true;
                newly_explained += u64::from(answered);
            }
        }
        self.tally.totals.probes_explained += newly_explained;
    }

    fn close_stall(&mut self, st: OpenStall) -> Option<Episode> {
        let thr = self.cfg.stall_threshold_ns;
        let len = st.end_ns.saturating_sub(st.start_ns);
        if len >= thr {
            self.tally.totals.stalls_over_threshold += 1;
        }
        let run_ids = self.run_of(&st);
        let mut run: Vec<&Pkt> = run_ids
            .iter()
            .filter_map(|&id| self.packets.window.get(id))
            .collect();
        run.sort_by_key(|p| p.ts_ns);
        let claims = self.claims(&run, len);
        let qualifies = match self.mode() {
            Mode::Probes => claims.delayed > 0 || claims.lost > 0,
            // A long wait of receive work delayed packets whether or not any of them was
            // a recorded echo: NET_RX raised, or a NAPI thread woken, means packets
            // waited (ksoftirqd alone may have waited for other softirqs).
            Mode::Packets => {
                len >= thr
                    && (!run.is_empty()
                        || st.waits.iter().any(|w| {
                            w.kind == WaitKind::NetRxSoftirq
                                || matches!(w.rx_context, RxContext::Napi | RxContext::BacklogNapi)
                        }))
            }
        };
        if !qualifies {
            self.settle_claims(&claims, false);
            return None;
        }
        let rx = Self::rx_task(&run, &st)?;
        let holders = merge_holders(&st.waits);
        let culprit = pick_culprit(&holders, rx.pid, self.cfg.recorder_pid).map(|h| {
            let recent = &mut self.syscalls.iter().map(|(_, s)| s);
            Culprit::from_holder(h, culprit_syscall(h, st.start_ns, st.end_ns, recent))
        });
        let (lines, lines_omitted) = self.table(&st, &run, &run_ids);
        let packets_delayed = u32::try_from(run.len()).unwrap_or(u32::MAX);
        let ends = st.ends();
        let drained: Vec<u64> = run
            .iter()
            .filter_map(|p| in_drain_after(p, &ends))
            .collect();
        let packets_in_drain = u32::try_from(drained.len()).unwrap_or(u32::MAX);
        let drain_ns = drained.iter().copied().max();
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
            id: self.tally.next_episode,
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
            probes_delayed: claims.delayed,
            probes_in_run: claims.probes_in_run,
            probes_lost: claims.lost,
            packets_delayed,
            packets_in_drain,
            drain_ns,
            worst_rtt_ns: claims.worst_rtt,
            lines,
            lines_omitted,
            truncated: st.waits.iter().any(|w| w.truncated),
            why: None,
        };
        let mut ep = ep;
        ep.why = ep
            .culprit
            .as_ref()
            .and_then(|c| super::episode::why(c, self.cfg.cgroups.as_ref()));
        self.settle_claims(&claims, true);
        let t = &mut self.tally;
        t.next_episode += 1;
        t.totals.episodes += 1;
        t.totals.packets_delayed += u64::from(packets_delayed);
        t.ranking.add(&ep);
        if t.episodes.len() < self.cfg.max_listed_episodes {
            t.episodes.push(ep.clone());
        } else {
            t.totals.episodes_not_listed += 1;
        }
        Some(ep)
    }

    /// Closes what is open and returns the whole-recording report.
    pub fn finish(mut self) -> Report {
        let _ = self.flush();
        while let Some((_, p)) = self.probes.inline.pop_front() {
            self.finalize_probe(&p.rec, p.st);
        }
        if let Some((al, states)) = self.probes.log.take() {
            for (rec, st) in al.probes().iter().zip(states) {
                self.finalize_probe(rec, st);
            }
        }
        let mode = self.mode();
        let mut t = self.tally;
        t.episodes.sort_by_key(|e| (e.start_ns, e.cpu, e.id));
        Report {
            input: t.input,
            stall_threshold_ns: self.cfg.stall_threshold_ns,
            mode,
            totals: t.totals,
            episodes: t.episodes,
            culprits: t.ranking.ranked(),
            cpus: t.ranking.cpus(),
            episodes_without_culprit: t.ranking.without_culprit,
            unexplained: t.unexplained,
            unexplained_no_packet: t.unexplained_by[Unexplained::NoPacket as usize],
            unexplained_no_wait: t.unexplained_by[Unexplained::NoWait as usize],
            unexplained_wait_too_short: t.unexplained_by[Unexplained::WaitTooShort as usize],
        }
    }
}
