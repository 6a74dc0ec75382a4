//! Matching probes to kernel packets by what is on the wire, never by clocks: the
//! prober's clock (maybe another host's) and the kernel's cannot be compared.
//!
//! A probe log from another host (hping3, ping) often lacks the ICMP identifier, and
//! its 16-bit wire sequence wraps every 65 536 probes, so many probes share a wire
//! sequence. [`LogAligner`] unwraps the sequence on both sides (log order, dump order)
//! and matches within the same wrap only.
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

/// A probe log held in memory, matched to the dump's packets in the order they come.
pub struct LogAligner {
    probes: Vec<ProbeRec>,
    keys: Vec<Option<WireKey>>,
    unwrapped: Vec<i64>,
    /// (proto, varying) → positions in the log, ascending.
    index: HashMap<(u8, u16), Vec<u32>>,
    /// Per protocol: the last packet's varying part and its unwrapped value.
    chain: HashMap<u8, (u16, i64)>,
}

impl LogAligner {
    pub fn new(probes: Vec<ProbeRec>) -> Self {
        let keys: Vec<Option<WireKey>> = probes.iter().map(probe_key).collect();
        let mut unwrapped = Vec::with_capacity(probes.len());
        // Per protocol: the last probe's varying part, unwrapped value and prober seq.
        let mut chain: HashMap<u8, (u16, i64, u32)> = HashMap::new();
        let mut index: HashMap<(u8, u16), Vec<u32>> = HashMap::new();
        for (i, (k, p)) in keys.iter().zip(&probes).enumerate() {
            let Some(k) = k else {
                unwrapped.push(0);
                continue;
            };
            let u = match chain.get(&k.proto) {
                Some(&(v, u, seq)) => {
                    // A filtered log (only slow probes) can skip whole wraps; the
                    // prober's own counter says how far it went when it agrees with
                    // the wire modulo 2^16.
                    let by_wire = step((v, u), k.varying) - u;
                    let by_seq = i64::from(p.seq) - i64::from(seq);
                    if (by_seq - by_wire).rem_euclid(1 << 16) == 0 {
                        u + by_seq
                    } else {
                        u + by_wire
                    }
                }
                None => UNWRAP_BASE + i64::from(k.varying),
            };
            chain.insert(k.proto, (k.varying, u, p.seq));
            unwrapped.push(u);
            if let Ok(pos) = u32::try_from(i) {
                index.entry((k.proto, k.varying)).or_default().push(pos);
            }
        }
        Self {
            probes,
            keys,
            unwrapped,
            index,
            chain: HashMap::new(),
        }
    }

    pub fn probes(&self) -> &[ProbeRec] {
        &self.probes
    }

    pub fn get(&self, pos: u32) -> Option<&ProbeRec> {
        self.probes.get(pos as usize)
    }

    /// The log position of the probe this packet belongs to, if any. Call once per
    /// packet, in dump order: it advances the packet side's unwrapping.
    pub fn match_packet(&mut self, key: &WireKey) -> Option<u32> {
        let predicted = match self.chain.get(&key.proto) {
            Some(&prev) => step(prev, key.varying),
            None => UNWRAP_BASE + i64::from(key.varying),
        };
        let found = self.nearest(key, predicted);
        let u = found
            .and_then(|p| self.unwrapped.get(p as usize).copied())
            .unwrap_or(predicted);
        // Resynchronise on every match so a dump that starts mid-log stays aligned.
        self.chain.insert(key.proto, (key.varying, u));
        found
    }

    fn nearest(&self, key: &WireKey, predicted: i64) -> Option<u32> {
        let cands = self.index.get(&(key.proto, key.varying))?;
        let u_of = |pos: u32| {
            self.unwrapped
                .get(pos as usize)
                .copied()
                .unwrap_or(i64::MIN)
        };
        let ok = |pos: u32| {
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
        let at = cands.partition_point(|&p| u_of(p) < predicted);
        // Look a few candidates each way (ident filtering may skip some).
        let lo = at.saturating_sub(8);
        let hi = (at + 8).min(cands.len());
        let mut best: Option<(i64, u32)> = None;
        for &pos in cands.get(lo..hi).unwrap_or(&[]) {
            if !ok(pos) {
                continue;
            }
            let d = (u_of(pos) - predicted).abs();
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, pos));
            }
        }
        // Only within the same wrap: a farther one is another probe with that number.
        best.filter(|(d, _)| *d < 1 << 15).map(|(_, p)| p)
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
}
