//! Matching probes to kernel packets by what is on the wire, never by clocks: the
//! prober's clock (maybe another host's) and the kernel's cannot be compared.
//!
//! A probe log from another host (hping3, ping) often lacks the ICMP identifier, and
//! its 16-bit wire sequence wraps every 65 536 probes, so many probes share a wire
//! sequence. [`LogAligner`] matches such a log to the dump's packets in dump order:
//!
//! - **Unwrapping per sender.** The log's sequence is unwrapped in log order, the dump's
//!   per (protocol, ICMP identifier) in dump order, and a packet matches a probe within
//!   the same wrap only. Echoes of other senders (another prober's identifier, a flood,
//!   a second ping) keep their own chain and never move the log's.
//! - **Segments.** Where the log's own sequence steps back by more than
//!   [`MAX_REORDER`] (a prober restarted: ping and hping3 count from 1 and 0 again), a new
//!   segment of the log begins. Each segment belongs to one sender at a time.
//! - **Locking a segment to a sender.** A log without identifiers cannot say whose
//!   echoes are its own. A sender whose packets match [`LOCK_AFTER`] consecutive
//!   candidates of a segment that look like one prober's run (each at most
//!   [`MAX_STEP`] probes past the one before, never back) locks that segment: from then
//!   on only its packets match there, and other identifiers are ignored for the log
//!   (an hping3 flood writes its sequence in host order, so its wire numbers jump by 256
//!   and never form such a run). Until a segment is locked, any sender's candidate
//!   matches, so the first probes of a run are not lost.
//! - **Re-locking.** When the holder of a segment stops matching there while another
//!   sender matches [`RELOCK_AFTER`] consecutive candidates of it, that sender takes the
//!   segment over (the log's prober changed identifier, or a sender seen earlier held
//!   the same numbers).
//!
//! Limits: two senders from the same host using the same sequence numbers at the same
//! time cannot be told apart on the wire; the segment goes to whichever shows a run
//! first. Only the [`SCAN`] probes nearest the expected place are looked at per packet.
//!
//! **hping3 TCP logs** (`hping3 -S -p PORT`) do not carry the probe's source port:
//! probe `seq=i` left from port `base + i` (mod 2^16), `base` random per run
//! (1024–3023 unless `--baseport`). The aligner learns `base` from the dump: the first
//! packet to or from PORT whose other port it has not placed gives a provisional base
//! (`port - first seq of the log`); three consecutive ports outside the current base's
//! range start a new run, which replaces a provisional base, or, once the base is
//! confirmed by three matches, starts the next segment of the log (hping3 restarted
//! with a new base). Packets to PORT from other clients use ephemeral ports that map
//! outside the log's range and match nothing. Limit: the dump must hold hping3's first
//! SYN (start recording before hping3); a dump that starts later places every probe
//! that many ports off.
use std::collections::HashMap;

use crate::dump::{PacketKind, PacketRec, ProbeProto, ProbeRec, ProbeStatus};

/// The per-probe part of the wire identity: `varying` changes with each probe (ICMP
/// echo seq; TCP probe source port), `fixed` stays (ICMP echo id; TCP target port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireKey {
    pub proto: u8,
    pub varying: u16,
    pub fixed: Option<u16>,
}

const P_ICMP: u8 = 1;
const P_ICMPV6: u8 = 2;
const P_TCP: u8 = 3;

pub fn packet_key(p: &PacketRec) -> Option<WireKey> {
    let proto = match p.proto.as_str() {
        "icmp" => P_ICMP,
        "icmpv6" => P_ICMPV6,
        "tcp" => P_TCP,
        _ => return None,
    };
    let (varying, fixed) = match (proto, p.kind) {
        (P_TCP, PacketKind::Syn) => (p.ident, p.seq),
        // Replies come back with the ports swapped: the probe's port is the destination.
        (P_TCP, _) => (p.seq, p.ident),
        (_, PacketKind::EchoRequest | PacketKind::EchoReply) => (p.seq, p.ident),
        _ => return None,
    };
    Some(WireKey {
        proto,
        varying,
        fixed: Some(fixed),
    })
}

pub fn probe_key(p: &ProbeRec) -> Option<WireKey> {
    let (proto, varying, fixed) = match p.proto {
        ProbeProto::Icmp => (P_ICMP, p.wire_seq?, p.wire_ident),
        ProbeProto::Icmpv6 => (P_ICMPV6, p.wire_seq?, p.wire_ident),
        ProbeProto::Tcp => (P_TCP, p.wire_ident?, p.wire_seq),
    };
    Some(WireKey {
        proto,
        varying,
        fixed,
    })
}

/// A probe key matches a packet key when the varying parts agree and the fixed parts
/// do not disagree (a log without the identifier matches any).
pub fn keys_match(probe: &WireKey, packet: &WireKey) -> bool {
    probe.proto == packet.proto
        && probe.varying == packet.varying
        && match (probe.fixed, packet.fixed) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// RTT at or above the threshold, or no answer at all.
pub fn is_stalled(p: &ProbeRec, threshold_ns: u64) -> bool {
    match p.status {
        ProbeStatus::Ok => p.rtt_ns.is_some_and(|r| r >= threshold_ns),
        ProbeStatus::Lost => true,
        ProbeStatus::Dup => false,
    }
}

/// Start of the unwrapped space: far from zero so early backward steps stay positive.
const UNWRAP_BASE: i64 = 1 << 32;

fn step(prev: (u16, i64), v: u16) -> i64 {
    prev.1 + i64::from(v.wrapping_sub(prev.0) as i16)
}

/// Consecutive run-like candidates that lock an unlocked segment to their sender.
pub const LOCK_AFTER: u32 = 3;
/// Consecutive run-like candidates that hand a segment to another sender, when its
/// holder matched nothing there meanwhile.
pub const RELOCK_AFTER: u32 = 16;
/// Largest step forward, in log lines, between two consecutive candidates of one sender
/// that still reads as one prober's run (lines of unanswered probes are missing from
/// hping3 logs; a filtered log keeps few lines).
pub const MAX_STEP: u32 = 64;
/// A step back in the log's sequence of at most this many is reordered lines, not a
/// restarted prober.
pub const MAX_REORDER: i64 = 2;
/// Candidates looked at on each side of the expected place in the log.
pub const SCAN: usize = 32;
/// Recent ports remembered per hping3 TCP target port while a new run may be forming.
const TCP_RECENT: usize = 32;

/// A stretch of the log written by one run of a prober.
#[derive(Debug, Default, Clone, Copy)]
struct Segment {
    /// The sender (ICMP identifier, TCP target port) whose packets match here.
    holder: Option<u16>,
    /// When (in packets seen) the holder last matched here.
    last_match: u64,
}

/// One sender's packets in dump order.
#[derive(Debug, Default, Clone, Copy)]
struct Chain {
    /// The last packet's varying part and its unwrapped value.
    prev: Option<(u16, i64)>,
    /// The log position of its last candidate.
    last_cand: Option<u32>,
    /// Consecutive run-like candidates so far, and when (in packets seen) they began.
    streak: u32,
    streak_from: u64,
}

/// What the aligner decided, for whoever reports on the match.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AlignStats {
    /// Packets of other senders not matched because a segment was locked to one.
    pub ignored_other_senders: u64,
    /// Segments handed from one sender to another.
    pub relocks: u64,
    /// hping3 TCP logs: (target port, source-port base) as learnt, in order.
    pub tcp_bases: Vec<(u16, u16)>,
}

/// hping3 TCP probes to one port, whose source ports the log does not give.
#[derive(Debug, Default)]
struct HpingTcp {
    segs: Vec<TcpSeg>,
    /// The base in use.
    cur: Option<TcpBase>,
    /// Ports seen outside the current base's range, newest last: a new run forming.
    outside: std::collections::VecDeque<u16>,
    last_pos: Option<u32>,
}

/// One run of hping3 (its seq counts up from 0) in the log.
#[derive(Debug)]
struct TcpSeg {
    first: u32,
    last: u32,
    /// Log positions by printed seq (mod 2^16, as the port wraps).
    by_seq: HashMap<u16, Vec<u32>>,
}

#[derive(Debug, Clone, Copy)]
struct TcpBase {
    seg: usize,
    base: u16,
    /// Packets matched with it: from [`LOCK_AFTER`] on it is confirmed.
    matches: u32,
}

impl TcpSeg {
    fn new(seq: u32) -> Self {
        Self {
            first: seq,
            last: seq,
            by_seq: HashMap::new(),
        }
    }

    /// Whether the printed seq `s` (mod 2^16) falls in this run.
    fn holds(&self, s: u16) -> bool {
        let span = (self.last - self.first).min(u32::from(u16::MAX));
        u32::from(s.wrapping_sub(self.first as u16)) <= span
    }
}

impl HpingTcp {
    fn add(&mut self, seq: u32, pos: u32) {
        let restart = self
            .segs
            .last()
            .is_none_or(|s| i64::from(seq) < i64::from(s.last) - MAX_REORDER);
        if restart {
            self.segs.push(TcpSeg::new(seq));
        }
        if let Some(s) = self.segs.last_mut() {
            s.first = s.first.min(seq);
            s.last = s.last.max(seq);
            s.by_seq.entry(seq as u16).or_default().push(pos);
        }
    }

    fn in_range(&self, c: &TcpBase, port: u16) -> bool {
        self.segs
            .get(c.seg)
            .is_some_and(|s| s.holds(port.wrapping_sub(c.base)))
    }

    fn base_for(&self, seg: usize, run_start: u16) -> Option<TcpBase> {
        let s = self.segs.get(seg)?;
        Some(TcpBase {
            seg,
            base: run_start.wrapping_sub(s.first as u16),
            matches: 0,
        })
    }

    /// Learns from one packet's probe-side port; returns the base that changed, if any.
    fn learn(&mut self, port: u16) -> Option<u16> {
        let Some(cur) = self.cur else {
            self.cur = self.base_for(0, port);
            return self.cur.map(|c| c.base);
        };
        if self.in_range(&cur, port) {
            return None;
        }
        if !self.outside.contains(&port) {
            self.outside.push_back(port);
            if self.outside.len() > TCP_RECENT {
                self.outside.pop_front();
            }
        }
        let has = |p: u16| self.outside.contains(&p);
        if !(has(port.wrapping_sub(1)) && has(port.wrapping_sub(2))) {
            return None;
        }
        let mut start = port.wrapping_sub(2);
        while has(start.wrapping_sub(1)) && start != port {
            start = start.wrapping_sub(1);
        }
        // A base not yet confirmed was a stray packet's; a confirmed one ended with
        // its run, and a new run is the log's next segment (hping3 started again).
        let seg = if cur.matches < LOCK_AFTER {
            cur.seg
        } else if cur.seg + 1 < self.segs.len() {
            cur.seg + 1
        } else {
            return None;
        };
        self.cur = self.base_for(seg, start);
        self.outside.clear();
        self.cur.map(|c| c.base)
    }

    fn match_port(&mut self, port: u16) -> Option<u32> {
        let c = self.cur?;
        if !self.in_range(&c, port) {
            return None;
        }
        let cands = self
            .segs
            .get(c.seg)?
            .by_seq
            .get(&port.wrapping_sub(c.base))?;
        // Several only past 65 536 probes in one run: the nearest to the last match.
        let last = self.last_pos.unwrap_or(0);
        let pos = *cands.iter().min_by_key(|&&p| p.abs_diff(last))?;
        self.last_pos = Some(pos);
        if let Some(c) = self.cur.as_mut() {
            c.matches = c.matches.saturating_add(1);
        }
        Some(pos)
    }
}

/// A probe log held in memory, matched to the dump's packets in the order they come
/// (see the module documentation for how).
pub struct LogAligner {
    probes: Vec<ProbeRec>,
    keys: Vec<Option<WireKey>>,
    unwrapped: Vec<i64>,
    /// The segment of each probe (unused for probes without a key).
    segment: Vec<u32>,
    /// (proto, varying) → positions in the log, ascending.
    index: HashMap<(u8, u16), Vec<u32>>,
    segments: Vec<Segment>,
    /// (proto, fixed part) → that sender's chain.
    chains: HashMap<(u8, u16), Chain>,
    /// hping3 TCP probes by target port.
    tcp: HashMap<u16, HpingTcp>,
    /// Packets seen: the aligner's clock.
    seen: u64,
    stats: AlignStats,
}

impl LogAligner {
    pub fn new(probes: Vec<ProbeRec>) -> Self {
        let keys: Vec<Option<WireKey>> = probes.iter().map(probe_key).collect();
        let mut unwrapped = Vec::with_capacity(probes.len());
        let mut segment = Vec::with_capacity(probes.len());
        let mut segments: Vec<Segment> = Vec::new();
        let mut tcp: HashMap<u16, HpingTcp> = HashMap::new();
        // Per protocol: the last probe's varying part, unwrapped value, prober seq and
        // segment.
        let mut chain: HashMap<u8, (u16, i64, u32, u32)> = HashMap::new();
        let mut index: HashMap<(u8, u16), Vec<u32>> = HashMap::new();
        for (i, (k, p)) in keys.iter().zip(&probes).enumerate() {
            let Ok(pos) = u32::try_from(i) else {
                break;
            };
            let Some(k) = k else {
                // hping3 TCP: the log gives the target port and the seq, not the source.
                if p.proto == ProbeProto::Tcp && p.status != ProbeStatus::Dup {
                    if let (None, Some(port)) = (p.wire_ident, p.wire_seq) {
                        tcp.entry(port).or_default().add(p.seq, pos);
                    }
                }
                unwrapped.push(0);
                segment.push(u32::MAX);
                continue;
            };
            let new_segment = |segments: &mut Vec<Segment>| {
                segments.push(Segment::default());
                u32::try_from(segments.len() - 1).unwrap_or(u32::MAX)
            };
            let (u, seg) = match chain.get(&k.proto) {
                Some(&(v, u, seq, seg)) => {
                    // A filtered log (only slow probes) can skip whole wraps; the
                    // prober's own counter says how far it went forward when it agrees
                    // with the wire modulo 2^16 (ping and hping3 print a 16-bit one
                    // that wraps: then the wire's step is the one to take).
                    let by_wire = step((v, u), k.varying) - u;
                    let by_seq = i64::from(p.seq) - i64::from(seq);
                    let d = if by_seq >= 0 && (by_seq - by_wire).rem_euclid(1 << 16) == 0 {
                        by_seq
                    } else {
                        by_wire
                    };
                    let restart = d < -MAX_REORDER && p.status != ProbeStatus::Dup;
                    (
                        u + d,
                        if restart {
                            new_segment(&mut segments)
                        } else {
                            seg
                        },
                    )
                }
                None => (
                    UNWRAP_BASE + i64::from(k.varying),
                    new_segment(&mut segments),
                ),
            };
            // A duplicate answer does not move the log's place.
            if p.status != ProbeStatus::Dup || !chain.contains_key(&k.proto) {
                chain.insert(k.proto, (k.varying, u, p.seq, seg));
            }
            unwrapped.push(u);
            segment.push(seg);
            index.entry((k.proto, k.varying)).or_default().push(pos);
        }
        Self {
            probes,
            keys,
            unwrapped,
            segment,
            index,
            segments,
            chains: HashMap::new(),
            tcp,
            seen: 0,
            stats: AlignStats::default(),
        }
    }

    pub fn probes(&self) -> &[ProbeRec] {
        &self.probes
    }

    pub fn get(&self, pos: u32) -> Option<&ProbeRec> {
        self.probes.get(pos as usize)
    }

    /// What the aligner decided so far.
    pub fn stats(&self) -> &AlignStats {
        &self.stats
    }

    /// The log position of the probe this packet belongs to, if any. Call once per
    /// packet, in dump order: it advances the packet side's unwrapping.
    pub fn match_packet(&mut self, key: &WireKey) -> Option<u32> {
        self.seen += 1;
        let sender = key.fixed.unwrap_or(0);
        if key.proto == P_TCP {
            if let Some(h) = self.tcp.get_mut(&sender) {
                if let Some(base) = h.learn(key.varying) {
                    self.stats.tcp_bases.push((sender, base));
                }
                return h.match_port(key.varying);
            }
        }
        let mut chain = self
            .chains
            .get(&(key.proto, sender))
            .copied()
            .unwrap_or_default();
        let predicted = chain.prev.map(|prev| step(prev, key.varying));
        let found = self.candidate(key, predicted, sender);
        let u = found
            .and_then(|(p, _)| self.unwrapped.get(p as usize).copied())
            .or(predicted)
            .unwrap_or(UNWRAP_BASE + i64::from(key.varying));
        chain.prev = Some((key.varying, u));
        let verdict = found.and_then(|(pos, _)| self.judge(&mut chain, pos, sender));
        self.chains.insert((key.proto, sender), chain);
        verdict
    }

    /// Whether a sender's candidate matches: always when the log names the identifier;
    /// otherwise as the segment's lock decides (module documentation).
    fn judge(&mut self, chain: &mut Chain, pos: u32, sender: u16) -> Option<u32> {
        if self
            .keys
            .get(pos as usize)
            .copied()
            .flatten()
            .is_some_and(|k| k.fixed.is_some())
        {
            return Some(pos);
        }
        let seg_of = |p: u32| self.segment.get(p as usize).copied().unwrap_or(u32::MAX);
        let run_like = chain
            .last_cand
            .is_some_and(|q| seg_of(q) == seg_of(pos) && pos >= q && pos - q <= MAX_STEP);
        if run_like {
            chain.streak = chain.streak.saturating_add(1);
        } else {
            chain.streak = 1;
            chain.streak_from = self.seen;
        }
        chain.last_cand = Some(pos);
        let seen = self.seen;
        let seg = self.segments.get_mut(seg_of(pos) as usize)?;
        match seg.holder {
            Some(h) if h == sender => {
                seg.last_match = seen;
                Some(pos)
            }
            None => {
                if chain.streak >= LOCK_AFTER {
                    seg.holder = Some(sender);
                    seg.last_match = seen;
                }
                Some(pos)
            }
            Some(_) if chain.streak >= RELOCK_AFTER && seg.last_match < chain.streak_from => {
                seg.holder = Some(sender);
                seg.last_match = seen;
                self.stats.relocks += 1;
                Some(pos)
            }
            Some(_) => {
                self.stats.ignored_other_senders += 1;
                None
            }
        }
    }

    /// The best candidate of the log for a packet of `sender`, and its class: 0 in a
    /// segment it holds, 1 in an unlocked one, 2 in another sender's. Within a class
    /// the nearest to where its chain expects it; a sender's first packet has no
    /// expectation and takes the first in log order.
    fn candidate(&self, key: &WireKey, predicted: Option<i64>, sender: u16) -> Option<(u32, u8)> {
        let cands = self.index.get(&(key.proto, key.varying))?;
        let u_of = |pos: u32| {
            self.unwrapped
                .get(pos as usize)
                .copied()
                .unwrap_or(i64::MIN)
        };
        let usable = |pos: u32| {
            self.keys
                .get(pos as usize)
                .copied()
                .flatten()
                .is_some_and(|k| keys_match(&k, key))
                && self
                    .probes
                    .get(pos as usize)
                    .is_some_and(|p| p.status != ProbeStatus::Dup)
        };
        let class = |pos: u32| {
            let holder = self
                .segment
                .get(pos as usize)
                .and_then(|&s| self.segments.get(s as usize))
                .and_then(|s| s.holder);
            match holder {
                Some(h) if h == sender => 0u8,
                None => 1,
                Some(_) => 2,
            }
        };
        let window = match predicted {
            None => cands.get(..cands.len().min(2 * SCAN)),
            Some(pr) => {
                let at = cands.partition_point(|&p| u_of(p) < pr);
                cands.get(at.saturating_sub(SCAN)..(at + SCAN).min(cands.len()))
            }
        };
        let mut best: Option<(u8, i64, u32)> = None;
        for &pos in window.unwrap_or(&[]) {
            if !usable(pos) {
                continue;
            }
            let d = predicted.map_or(0, |pr| (u_of(pos) - pr).abs());
            // Only within the same wrap: a farther one is another probe with that number.
            if d >= 1 << 15 {
                continue;
            }
            let rank = (class(pos), d, pos);
            if best.is_none_or(|b| rank < b) {
                best = Some(rank);
            }
        }
        best.map(|(c, _, p)| (p, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(seq: u32, rtt_ms: u64) -> ProbeRec {
        ProbeRec {
            source: "hping3".into(),
            proto: ProbeProto::Icmp,
            target: "10.0.0.2".into(),
            seq,
            wire_ident: None,
            wire_seq: Some(seq as u16),
            sent_ns: None,
            rtt_ns: Some(rtt_ms * 1_000_000),
            status: ProbeStatus::Ok,
            send_error: None,
        }
    }

    fn key(v: u16) -> WireKey {
        WireKey {
            proto: P_ICMP,
            varying: v,
            fixed: Some(0x77),
        }
    }

    #[test]
    fn wrapped_sequences_match_within_their_own_wrap() {
        // A filtered log (only slow probes) spanning a wrap: 1953 occurs twice.
        let log = vec![probe(1953, 99), probe(1954, 89), probe(65536 + 1953, 120)];
        let mut a = LogAligner::new(log);
        let mut got = vec![];
        // Dump: every probe's packet, 1950..=1955, then the next wrap's 1950..=1955.
        for wrap in 0..2u32 {
            for s in 1950u32..=1955 {
                let _ = wrap;
                got.push(a.match_packet(&key(s as u16)));
            }
            for s in (1956u32..65536).step_by(1000).chain(std::iter::once(65535)) {
                assert_eq!(a.match_packet(&key(s as u16)), None);
            }
            for s in 0u32..1950 {
                if s % 500 == 0 {
                    a.match_packet(&key(s as u16));
                }
            }
        }
        let first: Vec<_> = got[..6].to_vec();
        let second: Vec<_> = got[6..].to_vec();
        assert_eq!(first, vec![None, None, None, Some(0), Some(1), None]);
        assert_eq!(second, vec![None, None, None, Some(2), None, None]);
    }

    #[test]
    fn request_and_reply_both_match_the_same_probe() {
        let mut a = LogAligner::new(vec![probe(10, 1), probe(11, 1)]);
        assert_eq!(a.match_packet(&key(10)), Some(0));
        assert_eq!(a.match_packet(&key(10)), Some(0));
        assert_eq!(a.match_packet(&key(11)), Some(1));
    }

    #[test]
    fn identifier_when_known_must_agree() {
        let mut p = probe(5, 1);
        p.wire_ident = Some(0x99);
        let mut a = LogAligner::new(vec![p]);
        assert_eq!(a.match_packet(&key(5)), None);
        assert_eq!(
            a.match_packet(&WireKey {
                proto: P_ICMP,
                varying: 5,
                fixed: Some(0x99)
            }),
            Some(0)
        );
    }

    #[test]
    fn tcp_replies_match_with_ports_swapped() {
        let mut pk = PacketRec {
            ts_ns: 0,
            cpu: 0,
            pid: 0,
            tgid: 0,
            comm: "swapper/0".into(),
            context: crate::dump::RxContext::Idle,
            hook: "tracepoint".into(),
            proto: "tcp".into(),
            kind: PacketKind::Syn,
            src: "a".into(),
            dst: "b".into(),
            ident: 2000,
            seq: 80,
            tcp_seq: None,
            rx_start_ns: None,
            drain_start_ns: None,
        };
        let mut pr = probe(0, 1);
        pr.proto = ProbeProto::Tcp;
        pr.wire_ident = Some(2000);
        pr.wire_seq = Some(80);
        let want = probe_key(&pr).unwrap();
        assert!(keys_match(&want, &packet_key(&pk).unwrap()));
        pk.kind = PacketKind::SynAck;
        pk.ident = 80;
        pk.seq = 2000;
        assert!(keys_match(&want, &packet_key(&pk).unwrap()));
        pk.seq = 2001;
        assert!(!keys_match(&want, &packet_key(&pk).unwrap()));
        // ICMPv6 echoes are keyed like ICMP ones, under their own protocol.
        pk.proto = "icmpv6".into();
        pk.kind = PacketKind::EchoRequest;
        let mut pr = probe(7, 1);
        pr.proto = ProbeProto::Icmpv6;
        pr.wire_ident = Some(2000);
        pk.seq = 7;
        pk.ident = 2000;
        let v6 = packet_key(&pk);
        assert!(v6.is_some_and(|k| k.proto == P_ICMPV6 && keys_match(&probe_key(&pr).unwrap(), &k)));
    }

    /// The first packet is placed in the log's first wrap, however high its number.
    #[test]
    fn a_first_packet_with_a_high_sequence_matches() {
        let mut a = LogAligner::new(vec![probe(20_000, 1)]);
        assert_eq!(a.match_packet(&key(20_000)), Some(0));
        assert_eq!(a.probes().len(), 1);
    }

    /// One number several times in one wrap (the prober restarted): the first in the
    /// log wins, even past the 8 candidates looked at each side.
    #[test]
    fn of_probes_at_one_place_the_first_matches() {
        let mut a = LogAligner::new(vec![probe(5, 1), probe(5, 2)]);
        assert_eq!(a.match_packet(&key(5)), Some(0));
        let mut a = LogAligner::new((0..10).map(|i| probe(5, i)).collect());
        assert_eq!(a.match_packet(&key(5)), Some(0));
    }

    /// Twenty wraps of one number: each packet finds its own wrap's probe, not only
    /// among the first few candidates.
    #[test]
    fn many_wraps_each_match_their_own_probe() {
        // 0, 30000, 60000 per wrap: steps of at most 30000 keep the unwrapping.
        let seqs: Vec<u32> = (0..20u32)
            .flat_map(|w| [0, 30_000, 60_000].map(|s| w * 65_536 + s))
            .collect();
        let mut a = LogAligner::new(seqs.iter().map(|&s| probe(s, 1)).collect());
        let got: Vec<Option<u32>> = seqs
            .iter()
            .map(|&s| a.match_packet(&key(s as u16)))
            .collect();
        // Position i for the i-th packet.
        let want: Vec<Option<u32>> = (0..60).map(Some).collect();
        assert_eq!(got, want);
    }

    fn icmp(v: u16, id: u16) -> WireKey {
        WireKey {
            proto: P_ICMP,
            varying: v,
            fixed: Some(id),
        }
    }

    /// A ping log without identifiers: seqs as printed (network order on the wire).
    fn ping_log(seqs: impl IntoIterator<Item = u32>) -> Vec<ProbeRec> {
        seqs.into_iter()
            .map(|s| {
                let mut p = probe(s, 1);
                p.source = "ping".into();
                p
            })
            .collect()
    }

    /// Feeds packets in order; returns, per packet, the log position it matched.
    fn feed(a: &mut LogAligner, keys: &[WireKey]) -> Vec<Option<u32>> {
        keys.iter().map(|k| a.match_packet(k)).collect()
    }

    /// Log positions matched by at least one packet.
    fn matched(got: &[Option<u32>]) -> std::collections::BTreeSet<u32> {
        got.iter().flatten().copied().collect()
    }

    /// The field's mix: ping (id 125, seq 1..=654, requests only, as the node sees
    /// them) and, after seq 155, an hping3 flood of another id whose sequence is in host
    /// order (wire numbers 0x0000, 0x0100, …, several inside the log's range). One
    /// chain per protocol lost the log at the first flood packet.
    #[test]
    fn an_hping3_flood_of_another_id_does_not_derail_a_log_without_ids() {
        let mut a = LogAligner::new(ping_log(1..=654));
        let mut keys = vec![];
        let mut flood = (0u16..202).map(|i| icmp(i.swap_bytes(), 0x3a41));
        for s in 1u16..=654 {
            keys.push(icmp(s, 125));
            if s >= 155 {
                // The burst interleaves: a few flood echoes after each ping.
                keys.extend(flood.by_ref().take(10));
            }
        }
        let got = feed(&mut a, &keys);
        for (k, g) in keys.iter().zip(&got) {
            if k.fixed == Some(125) {
                assert_eq!(*g, Some(u32::from(k.varying) - 1), "ping seq {}", k.varying);
            } else {
                assert_eq!(*g, None, "flood echo {k:?} is not the log's");
            }
        }
        assert_eq!(matched(&got).len(), 654);
        assert!(a.stats().ignored_other_senders > 0, "{:?}", a.stats());
    }

    /// Another sender's echoes with the very numbers of the log (a flood in network
    /// order, ten per probe, running ahead of the log's prober): the segment is the
    /// log's prober's from its first probes, and the flood matches nothing.
    #[test]
    fn an_interleaved_flood_with_overlapping_numbers_matches_nothing() {
        let mut a = LogAligner::new(ping_log(1..=600));
        let mut keys = vec![];
        let mut flood = (1u16..=6000).map(|s| icmp(s, 999));
        for s in 1u16..=600 {
            // Request and reply of each probe (a prober in a namespace of this host).
            keys.push(icmp(s, 4242));
            keys.push(icmp(s, 4242));
            if s > 100 {
                keys.extend(flood.by_ref().take(10));
            }
        }
        let got = feed(&mut a, &keys);
        for (k, g) in keys.iter().zip(&got) {
            let want = (k.fixed == Some(4242)).then(|| u32::from(k.varying) - 1);
            assert_eq!(*g, want, "{k:?}");
        }
        assert_eq!(matched(&got).len(), 600);
    }

    /// A second pinger of this host (its own id, its own numbers, started later so
    /// they lag the log's) and a stray slow one from before: neither takes the log.
    #[test]
    fn a_second_sender_does_not_take_the_log() {
        let mut a = LogAligner::new(ping_log(1..=500));
        let mut keys = vec![icmp(1, 7), icmp(1, 7)];
        for s in 1u16..=500 {
            keys.push(icmp(s, 300));
            if s > 200 {
                keys.push(icmp(s - 200, 301));
                keys.push(icmp(s - 200, 301));
            }
            keys.push(icmp(s, 300));
            if s % 100 == 0 {
                keys.push(icmp(s / 100 + 1, 7));
            }
        }
        let got = feed(&mut a, &keys);
        assert_eq!(matched(&got).len(), 500);
        for (k, g) in keys.iter().zip(&got).skip(2) {
            let want = (k.fixed == Some(300)).then(|| u32::from(k.varying) - 1);
            assert_eq!(*g, want, "{k:?}");
        }
    }

    /// ping stopped and started again (a new id, counting from 1) with both runs in
    /// one log: each run's packets match that run's lines.
    #[test]
    fn a_restarted_ping_matches_each_run_to_its_own_lines() {
        let mut a = LogAligner::new(ping_log((1..=300).chain(1..=200)));
        let mut keys: Vec<WireKey> = (1u16..=300).map(|s| icmp(s, 0x1111)).collect();
        keys.extend((1u16..=200).map(|s| icmp(s, 0x2222)));
        let got = feed(&mut a, &keys);
        let want: Vec<Option<u32>> = (0..500).map(Some).collect();
        assert_eq!(got, want);
    }

    /// The holder stops and another sender goes on through the same lines: after
    /// RELOCK_AFTER run-like packets it takes the segment over.
    #[test]
    fn a_segment_changes_hands_when_its_holder_stops() {
        let mut a = LogAligner::new(ping_log(1..=400));
        let mut keys: Vec<WireKey> = (1u16..=100).map(|s| icmp(s, 1)).collect();
        keys.extend((101u16..=400).map(|s| icmp(s, 2)));
        let got = feed(&mut a, &keys);
        let lost = RELOCK_AFTER as usize - 1;
        assert_eq!(matched(&got).len(), 400 - lost);
        assert!(got[..100].iter().all(Option::is_some));
        assert!(got[100..100 + lost].iter().all(Option::is_none));
        assert!(got[100 + lost..].iter().all(Option::is_some));
        assert_eq!(a.stats().relocks, 1);
    }

    fn hping_tcp(seqs: impl IntoIterator<Item = u32>, port: u16) -> Vec<ProbeRec> {
        seqs.into_iter()
            .map(|s| ProbeRec {
                source: "hping3".into(),
                proto: ProbeProto::Tcp,
                target: "10.0.0.2".into(),
                seq: s,
                wire_ident: None,
                wire_seq: Some(port),
                sent_ns: None,
                rtt_ns: Some(1_000_000),
                status: ProbeStatus::Ok,
                send_error: None,
            })
            .collect()
    }

    fn tcp(probe_port: u16, target: u16) -> WireKey {
        WireKey {
            proto: P_TCP,
            varying: probe_port,
            fixed: Some(target),
        }
    }

    /// hping3 -S: probe i leaves from base + i; the log has i, not the port. The base
    /// is learnt from the SYNs; other clients' SYNs to the port (ephemeral ports) match
    /// nothing, and SYN-ACKs seen too match the same probe.
    #[test]
    fn hping3_tcp_probes_match_once_the_base_is_learnt() {
        let log = crate::probelog::parse_str(
            &(0..300)
                .map(|i| format!("len=44 ip=10.0.0.2 ttl=64 DF id=0 sport=8080 flags=SA seq={i} win=64240 rtt=1.0 ms\n"))
                .collect::<String>(),
        );
        assert_eq!(log.probes.len(), 300);
        let mut a = LogAligner::new(log.probes);
        let mut keys = vec![];
        for i in 0u16..300 {
            keys.push(tcp(2000 + i, 8080));
            keys.push(tcp(2000 + i, 8080));
            if i % 7 == 3 {
                keys.push(tcp(40_000 + i * 13, 8080));
            }
        }
        let got = feed(&mut a, &keys);
        for (k, g) in keys.iter().zip(&got) {
            let want = (k.varying < 40_000).then(|| u32::from(k.varying) - 2000);
            assert_eq!(*g, want, "{k:?}");
        }
        assert_eq!(a.stats().tcp_bases, vec![(8080, 2000)]);
    }

    /// A stray SYN first gives a wrong base; hping3's run replaces it after three
    /// consecutive ports (its first two probes stay unmatched). A run of hping3 started
    /// again later (new base, seq from 0) is the log's next segment; a port base near
    /// the top wraps.
    #[test]
    fn hping3_tcp_base_recovers_from_a_stray_syn_and_follows_a_restart() {
        let mut a = LogAligner::new(hping_tcp((0..100).chain(0..50), 443));
        let mut keys = vec![tcp(51_234, 443)];
        keys.extend((0u16..100).map(|i| tcp(1500 + i, 443)));
        keys.extend((0u16..50).map(|i| tcp(65_510u16.wrapping_add(i), 443)));
        let got = feed(&mut a, &keys);
        assert_eq!(&got[1..3], &[None, None]);
        let first: Vec<Option<u32>> = (2..100).map(Some).collect();
        assert_eq!(&got[3..101], &first[..]);
        // The restart: its first two ports come before its run is known.
        let second: Vec<Option<u32>> = (100..150).map(Some).collect();
        assert_eq!(&got[101 + 2..], &second[2..]);
        assert_eq!(
            a.stats().tcp_bases,
            vec![(443, 51_234), (443, 1500), (443, 65_510)]
        );
    }

    /// ping and hping3 print a 16-bit sequence that wraps (65535, then 0): the log
    /// goes on forward, not 65 535 back.
    #[test]
    fn a_printed_sequence_that_wraps_goes_forward() {
        let seqs: Vec<u32> = (65_530..=65_535).chain(0..=5).collect();
        let mut a = LogAligner::new(ping_log(seqs.iter().copied()));
        let keys: Vec<WireKey> = seqs.iter().map(|&s| icmp(s as u16, 9)).collect();
        let got = feed(&mut a, &keys);
        let want: Vec<Option<u32>> = (0..12).map(Some).collect();
        assert_eq!(got, want);
    }
}
