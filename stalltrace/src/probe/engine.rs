//! The probing loop shared by the ICMP and TCP probers: absolute send schedule,
//! matching answers to sequences (16-bit wrap included), timeouts, duplicates,
//! reordering. One thread, no locks: it waits for answers (with `ppoll` on the real
//! [`Clock`]) until the next send or timeout is due.
use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{
    clock::{Clock, RealClock},
    schedule::{set_tight_timer_slack, Schedule},
    stats::ProbeStats,
    transport::{Reply, Sent, Transport},
};
use stalltrace_analysis::dump::{ProbeRec, ProbeStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Answered,
    Lost,
}

#[derive(Debug, Clone)]
struct Slot {
    sent: Instant,
    sent_boot_ns: u64,
    wire: Option<Sent>,
    state: State,
}

/// What happened to a probe, for the caller's line and record.
pub enum Outcome<'a> {
    Answer {
        rec: ProbeRec,
        reply: &'a Reply,
    },
    Lost {
        rec: ProbeRec,
    },
    /// An answer after the probe was declared lost: counted, not recorded.
    Late {
        seq: u64,
        rtt_ns: u64,
        reply: &'a Reply,
    },
}

pub struct EngineConfig {
    pub target: IpAddr,
    pub interval: Duration,
    pub count: Option<u64>,
    pub timeout: Duration,
}

/// Tracks in-flight probes by counter; slots are kept for a while after they are
/// settled so duplicates and late answers are recognised.
struct Tracker {
    base: u64,
    slots: VecDeque<Slot>,
    next: u64,
    expire_cursor: u64,
    highest_answered: Option<u64>,
    timeout: Duration,
    keep: Duration,
    modulus: u64,
}

impl Tracker {
    fn new(timeout: Duration, modulus: u64) -> Self {
        Self {
            base: 0,
            slots: VecDeque::new(),
            next: 0,
            expire_cursor: 0,
            highest_answered: None,
            timeout,
            keep: timeout.saturating_mul(2) + Duration::from_secs(1),
            modulus: modulus.max(1),
        }
    }

    fn push(&mut self, slot: Slot) {
        self.slots.push_back(slot);
        self.next += 1;
    }

    fn get(&mut self, counter: u64) -> Option<&mut Slot> {
        let i = counter.checked_sub(self.base)?;
        self.slots.get_mut(usize::try_from(i).ok()?)
    }

    /// The most recent counter whose wire slot is `slot` (wire sequences wrap).
    fn counter_for(&self, slot: u64) -> Option<u64> {
        let last = self.next.checked_sub(1)?;
        let back = (last % self.modulus + self.modulus - slot % self.modulus) % self.modulus;
        let c = last.checked_sub(back)?;
        (c >= self.base).then_some(c)
    }

    fn pending(&self) -> bool {
        self.slots.iter().any(|s| s.state == State::Pending)
    }

    fn next_expiry(&self) -> Option<Instant> {
        let i = usize::try_from(self.expire_cursor.checked_sub(self.base)?).ok()?;
        self.slots.get(i).map(|s| s.sent + self.timeout)
    }

    /// Forgets settled slots that are old, and never keeps more slots than the wire
    /// can tell apart (an older slot would alias a newer one).
    fn prune(&mut self, now: Instant) {
        while let Some(front) = self.slots.front() {
            let old = front.state != State::Pending
                && now.saturating_duration_since(front.sent) > self.keep;
            let too_many = self.slots.len() as u64 > self.modulus;
            if !(old || too_many) {
                break;
            }
            self.slots.pop_front();
            self.base += 1;
            self.expire_cursor = self.expire_cursor.max(self.base);
        }
    }
}

pub struct Engine<C = RealClock> {
    clock: C,
    transport: Box<dyn Transport>,
    cfg: EngineConfig,
    sched: Schedule,
    tracker: Tracker,
    stats: ProbeStats,
}

impl Engine {
    pub fn new(transport: Box<dyn Transport>, cfg: EngineConfig) -> Self {
        Self::with_clock(transport, cfg, RealClock)
    }
}

impl<C: Clock> Engine<C> {
    pub fn with_clock(transport: Box<dyn Transport>, cfg: EngineConfig, clock: C) -> Self {
        let tracker = Tracker::new(cfg.timeout, transport.modulus());
        Self {
            transport,
            sched: Schedule::new(clock.now(), cfg.interval),
            clock,
            cfg,
            tracker,
            stats: ProbeStats::default(),
        }
    }

    pub fn stats(&self) -> &ProbeStats {
        &self.stats
    }

    pub fn into_stats(self) -> ProbeStats {
        self.stats
    }

    fn record(
        &self,
        counter: u64,
        slot: &Slot,
        rtt_ns: Option<u64>,
        status: ProbeStatus,
    ) -> ProbeRec {
        ProbeRec {
            source: "builtin".into(),
            proto: self.transport.proto(),
            target: self.cfg.target.to_string(),
            // The printed sequence is the run's counter; it wraps only after 2^32 probes.
            seq: counter as u32,
            wire_ident: slot.wire.map(|w| w.wire_ident),
            wire_seq: slot.wire.map(|w| w.wire_seq),
            sent_ns: Some(slot.sent_boot_ns),
            rtt_ns,
            status,
            send_error: None,
        }
    }

    /// Runs until `count` probes are settled or `stop` is set. `on` sees every outcome;
    /// it returns false to stop the run (e.g. the receiver of records went away).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut on: impl FnMut(Outcome<'_>) -> bool,
    ) -> std::io::Result<()> {
        set_tight_timer_slack();
        self.sched = Schedule::new(self.clock.now(), self.cfg.interval);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = self.clock.now();
            let more = self.cfg.count.is_none_or(|c| self.tracker.next < c);
            let due = self.sched.deadline(self.tracker.next);
            if more && due <= now {
                if !self.send_one(due, &mut on) {
                    return Ok(());
                }
                continue;
            }
            if !self.expire(now, &mut on) {
                return Ok(());
            }
            self.tracker.prune(now);
            if !more && !self.tracker.pending() {
                return Ok(());
            }
            let mut until = self
                .tracker
                .next_expiry()
                .unwrap_or(now + Duration::from_millis(100));
            if more {
                until = until.min(due);
            }
            if self.clock.wait(now, until, Some(self.transport.as_ref()))? {
                // Drain what is queued, then go back to the schedule.
                for _ in 0..64 {
                    let got = self.transport.try_recv();
                    self.stats.forged = self.transport.forged();
                    match got {
                        Ok(Some(r)) => {
                            if !self.on_reply(r, &mut on) {
                                return Ok(());
                            }
                        }
                        Ok(None) => {}
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Sends probe `next`. A refused send (a firewall's EPERM, no route, a full queue)
    /// does not stop the run: the probe is lost at once, with the reason, so the
    /// caller can say so within the interval rather than after the timeout.
    fn send_one(&mut self, due: Instant, on: &mut impl FnMut(Outcome<'_>) -> bool) -> bool {
        let counter = self.tracker.next;
        let sent_boot_ns = self.clock.boot_ns();
        let sent = self.clock.now();
        let result = self.transport.send(counter);
        self.stats.drift.record(due, sent);
        self.stats.transmitted += 1;
        let (wire, state, error) = match result {
            Ok(w) => (Some(w), State::Pending, None),
            Err(e) => {
                self.stats.send_errors += 1;
                self.stats.lost += 1;
                (None, State::Lost, Some(e.to_string()))
            }
        };
        let slot = Slot {
            sent,
            sent_boot_ns,
            wire,
            state,
        };
        let rec = error.map(|e| {
            let mut rec = self.record(counter, &slot, None, ProbeStatus::Lost);
            rec.send_error = Some(e);
            rec
        });
        self.tracker.push(slot);
        rec.is_none_or(|rec| on(Outcome::Lost { rec }))
    }

    fn expire(&mut self, now: Instant, on: &mut impl FnMut(Outcome<'_>) -> bool) -> bool {
        while self.tracker.expire_cursor < self.tracker.next {
            let c = self.tracker.expire_cursor;
            let timeout = self.tracker.timeout;
            let Some(slot) = self.tracker.get(c) else {
                self.tracker.expire_cursor += 1;
                continue;
            };
            if slot.sent + timeout > now {
                break;
            }
            let was_pending = slot.state == State::Pending;
            if was_pending {
                slot.state = State::Lost;
            }
            let slot = slot.clone();
            self.tracker.expire_cursor += 1;
            if was_pending {
                self.stats.lost += 1;
                let rec = self.record(c, &slot, None, ProbeStatus::Lost);
                if !on(Outcome::Lost { rec }) {
                    return false;
                }
            }
        }
        true
    }

    fn on_reply(&mut self, r: Reply, on: &mut impl FnMut(Outcome<'_>) -> bool) -> bool {
        let Some(c) = self.tracker.counter_for(r.slot) else {
            return true; // older than anything we remember: not attributable
        };
        let highest = self.tracker.highest_answered;
        let Some(slot) = self.tracker.get(c) else {
            return true;
        };
        let rtt_ns =
            u64::try_from(r.at.saturating_duration_since(slot.sent).as_nanos()).unwrap_or(u64::MAX);
        let prev = slot.state;
        if prev == State::Pending {
            slot.state = State::Answered;
        }
        let slot = slot.clone();
        match prev {
            State::Pending => {
                self.stats.received += 1;
                self.stats.rtts.record(rtt_ns);
                if highest.is_some_and(|h| c < h) {
                    self.stats.reordered += 1;
                }
                self.tracker.highest_answered = Some(highest.map_or(c, |h| h.max(c)));
                let rec = self.record(c, &slot, Some(rtt_ns), ProbeStatus::Ok);
                on(Outcome::Answer { rec, reply: &r })
            }
            State::Answered => {
                self.stats.duplicates += 1;
                let rec = self.record(c, &slot, Some(rtt_ns), ProbeStatus::Dup);
                on(Outcome::Answer { rec, reply: &r })
            }
            State::Lost => {
                self.stats.late += 1;
                on(Outcome::Late {
                    seq: c,
                    rtt_ns,
                    reply: &r,
                })
            }
        }
    }
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::clock::VirtualClock;
    use crate::probe::transport::ReplyInfo;
    use stalltrace_analysis::dump::ProbeProto;
    use std::os::fd::RawFd;

    #[test]
    fn counter_for_handles_16_bit_wrap() {
        let mut t = Tracker::new(Duration::from_secs(1), 65536);
        let now = Instant::now();
        for _ in 0..70_000u64 {
            t.push(Slot {
                sent: now,
                sent_boot_ns: 0,
                wire: None,
                state: State::Answered,
            });
            t.prune(now);
        }
        // Never more slots than the wire tells apart.
        assert_eq!(t.slots.len(), 65536);
        // Wire 69_999 % 65536 = 4463 is the newest probe, not one 65536 earlier.
        assert_eq!(t.counter_for(69_999 % 65536), Some(69_999));
        // Wire 5000 is the newest counter ≡ 5000 mod 65536 → 5000 (still remembered).
        assert_eq!(t.counter_for(5000), Some(5000));
        // Wire 4464 is 69_999 - 65535 = 4464: the oldest remembered.
        assert_eq!(t.counter_for(4464), Some(4464));
    }

    /// A scripted network on virtual time: each probe's answers arrive after the given
    /// delays (ms); `stall_ms` is how long sending that probe blocks the prober.
    struct Fake {
        clock: VirtualClock,
        script: fn(u64) -> Vec<u64>,
        stall_ms: fn(u64) -> u64,
        /// Probes the kernel refuses to send (a firewall's EPERM).
        refused: fn(u64) -> bool,
        queue: Vec<(Instant, u64)>,
        modulus: u64,
    }

    impl Fake {
        fn new(clock: &VirtualClock, script: fn(u64) -> Vec<u64>, modulus: u64) -> Self {
            Self {
                clock: clock.clone(),
                script,
                stall_ms: |_| 0,
                refused: |_| false,
                queue: Vec::new(),
                modulus,
            }
        }
    }

    impl Transport for Fake {
        fn send(&mut self, counter: u64) -> std::io::Result<Sent> {
            self.clock
                .advance(Duration::from_millis((self.stall_ms)(counter)));
            if (self.refused)(counter) {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            let now = self.clock.now();
            for d in (self.script)(counter) {
                self.queue
                    .push((now + Duration::from_millis(d), counter % self.modulus));
            }
            Ok(Sent {
                wire_ident: 7,
                wire_seq: counter as u16,
            })
        }
        fn try_recv(&mut self) -> std::io::Result<Option<Reply>> {
            let now = self.clock.now();
            // The earliest answer due (the first scheduled among equals).
            let Some((i, _)) = self
                .queue
                .iter()
                .enumerate()
                .filter(|(_, (t, _))| *t <= now)
                .min_by_key(|(_, (t, _))| *t)
            else {
                return Err(std::io::ErrorKind::WouldBlock.into());
            };
            let (_, slot) = self.queue.remove(i);
            let info = ReplyInfo::Icmp {
                len: 28,
                from: "10.0.0.2".parse().unwrap(),
                ttl: None,
                ip_id: None,
            };
            Ok(Some(Reply {
                slot,
                at: now,
                info,
            }))
        }
        fn fd(&self) -> RawFd {
            -1
        }
        fn modulus(&self) -> u64 {
            self.modulus
        }
        fn proto(&self) -> ProbeProto {
            ProbeProto::Icmp
        }
        fn ready_at(&self) -> Option<Instant> {
            self.queue.iter().map(|(t, _)| *t).min()
        }
    }

    struct Run {
        st: ProbeStats,
        recs: Vec<ProbeRec>,
        /// (seq, rtt_ns) of answers that came after their probe was declared lost.
        late: Vec<(u64, u64)>,
        /// Virtual time from the engine's start to the end of the run.
        took: Duration,
    }

    const MS: u64 = 1_000_000;

    fn run_fake(fake: Fake, interval_ms: u64, timeout_ms: u64, count: u64) -> Run {
        let clock = fake.clock.clone();
        let cfg = EngineConfig {
            target: "10.0.0.2".parse().unwrap(),
            interval: Duration::from_millis(interval_ms),
            count: Some(count),
            timeout: Duration::from_millis(timeout_ms),
        };
        let start = clock.elapsed();
        let mut e = Engine::with_clock(Box::new(fake), cfg, clock.clone());
        let (mut recs, mut late) = (Vec::new(), Vec::new());
        let stop = AtomicBool::new(false);
        e.run(&stop, |o| {
            match o {
                Outcome::Answer { rec, .. } | Outcome::Lost { rec } => recs.push(rec),
                Outcome::Late { seq, rtt_ns, .. } => late.push((seq, rtt_ns)),
            }
            true
        })
        .unwrap();
        Run {
            st: e.into_stats(),
            recs,
            late,
            took: clock.elapsed() - start,
        }
    }

    /// A firewall refusing probes 3 to 6 (EPERM): each is lost at its send, with the
    /// reason, before the next probe's answer; the run goes on and 7.. are answered.
    #[test]
    fn a_refused_send_is_lost_at_once_and_the_run_goes_on() {
        let clock = VirtualClock::new();
        let mut fake = Fake::new(&clock, |_| vec![2], 65536);
        fake.refused = |c| (3..=6).contains(&c);
        let r = run_fake(fake, 20, 1000, 12);
        assert_eq!((r.st.send_errors, r.st.lost, r.st.received), (4, 4, 8));
        let order: Vec<(u32, ProbeStatus)> = r.recs.iter().map(|p| (p.seq, p.status)).collect();
        let expected: Vec<(u32, ProbeStatus)> = (0..12)
            .map(|s| {
                let st = if (3..=6).contains(&s) {
                    ProbeStatus::Lost
                } else {
                    ProbeStatus::Ok
                };
                (s, st)
            })
            .collect();
        assert_eq!(
            order, expected,
            "each refusal reported at its send, in order"
        );
        for p in r.recs.iter().filter(|p| p.status == ProbeStatus::Lost) {
            let e = p.send_error.as_deref().unwrap_or_default();
            assert!(e.contains("Operation not permitted"), "{e:?}");
            assert_eq!(p.wire_seq, None, "nothing went on the wire");
        }
        assert!(r
            .recs
            .iter()
            .filter(|p| p.status == ProbeStatus::Ok)
            .all(|p| p.send_error.is_none()));
    }

    #[test]
    fn duplicates_reordering_loss_and_late_answers() {
        // 20 ms apart, 100 ms timeout, 16 probes (the run lasts past 6's late answer).
        // 2: answered twice; 3: never; 4: answered after 5; 6: answered after its timeout.
        let script: fn(u64) -> Vec<u64> = |c| match c {
            2 => vec![2, 8],
            3 => vec![],
            4 => vec![35],
            6 => vec![130],
            _ => vec![2],
        };
        let clock = VirtualClock::new();
        let Run {
            st,
            recs,
            late,
            took,
        } = run_fake(Fake::new(&clock, script, 65536), 20, 100, 16);
        assert_eq!(
            (
                st.transmitted,
                st.received,
                st.lost,
                st.duplicates,
                st.reordered,
                st.late
            ),
            (16, 14, 2, 1, 1, 1),
            "{st:?}"
        );
        // 6 was sent at 120 ms, declared lost at 220 ms, answered at 250 ms.
        assert_eq!(late, vec![(6, 130 * MS)]);
        let of = |s: ProbeStatus| {
            recs.iter()
                .filter(|r| r.status == s)
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(of(ProbeStatus::Lost), vec![3, 6]);
        assert_eq!(of(ProbeStatus::Dup), vec![2]);
        let mut ok = of(ProbeStatus::Ok);
        ok.sort();
        assert_eq!(
            ok,
            [0, 1, 2, 4, 5].into_iter().chain(7..16).collect::<Vec<_>>()
        );
        // Every record in the order it happened, with the RTT the network scheduled:
        // 4's answer (115 ms) after 5's (102 ms); 3 lost at 160 ms, just after 8 was
        // sent; 6 lost at 220 ms, just after 11 was sent.
        use ProbeStatus::{Dup, Lost, Ok};
        let got: Vec<_> = recs.iter().map(|r| (r.seq, r.status, r.rtt_ns)).collect();
        let ms = |n: u64| Some(n * MS);
        let want = vec![
            (0, Ok, ms(2)),
            (1, Ok, ms(2)),
            (2, Ok, ms(2)),
            (2, Dup, ms(8)),
            (5, Ok, ms(2)),
            (4, Ok, ms(35)),
            (7, Ok, ms(2)),
            (3, Lost, None),
            (8, Ok, ms(2)),
            (9, Ok, ms(2)),
            (10, Ok, ms(2)),
            (6, Lost, None),
            (11, Ok, ms(2)),
            (12, Ok, ms(2)),
            (13, Ok, ms(2)),
            (14, Ok, ms(2)),
            (15, Ok, ms(2)),
        ];
        assert_eq!(got, want);
        assert!(recs.iter().all(|r| r.source == "builtin"
            && r.wire_ident == Some(7)
            && r.wire_seq == Some(r.seq as u16)));
        // Sent on the absolute schedule, stamped with the boot clock.
        assert!(recs
            .iter()
            .all(|r| r.sent_ns == Some(VirtualClock::BOOT0_NS + u64::from(r.seq) * 20 * MS)));
        assert_eq!(st.rtts.len(), 14);
        assert_eq!((st.min_ns(), st.max_ns()), (Some(2 * MS), Some(35 * MS)));
        assert_eq!(
            st.percentiles(&[50.0, 92.0, 93.0, 100.0]),
            Some(vec![2 * MS, 2 * MS, 35 * MS, 35 * MS])
        );
        assert_eq!((st.drift.samples, st.drift.max_ns), (16, 0));
        // The run ends as soon as everything is settled: 15's answer at 302 ms.
        assert_eq!(took, Duration::from_millis(302));
    }

    #[test]
    fn wrapping_wire_sequence_maps_to_the_right_probe() {
        // A wire that tells only 4 sequences apart: probe 9 answers as slot 1.
        let clock = VirtualClock::new();
        let Run { st, recs, .. } = run_fake(Fake::new(&clock, |_| vec![3], 4), 30, 80, 12);
        assert_eq!(
            (st.received, st.lost, st.duplicates, st.late),
            (12, 0, 0, 0),
            "{st:?}"
        );
        let seqs: Vec<u32> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..12).collect::<Vec<_>>());
        assert_eq!(
            (st.rtts.len(), st.min_ns(), st.max_ns()),
            (12, Some(3 * MS), Some(3 * MS))
        );

        // The same wire with 3 probes in flight: each answer arrives after the next two
        // probes went out (25 ms after its own, 10 ms apart), so slot 1 must map to probe
        // 9, not to 5 or 1 before it.
        let clock = VirtualClock::new();
        let Run { st, recs, .. } = run_fake(Fake::new(&clock, |_| vec![25], 4), 10, 30, 12);
        assert_eq!(
            (st.received, st.lost, st.duplicates, st.reordered, st.late),
            (12, 0, 0, 0, 0),
            "{st:?}"
        );
        let got: Vec<_> = recs.iter().map(|r| (r.seq, r.status, r.rtt_ns)).collect();
        let want: Vec<_> = (0..12)
            .map(|s| (s, ProbeStatus::Ok, Some(25 * MS)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_stalled_send_delays_one_probe_not_the_schedule() {
        // Sending probe 5 blocks the prober for 25 ms (it leaves at 125 ms): probe 6, due
        // at 120 ms, goes out 5 ms late; probe 7 and later are on time again.
        let clock = VirtualClock::new();
        let mut fake = Fake::new(&clock, |_| vec![2], 65536);
        fake.stall_ms = |c| if c == 5 { 25 } else { 0 };
        let Run { st, recs, took, .. } = run_fake(fake, 20, 100, 10);
        assert_eq!(
            (st.transmitted, st.received, st.lost),
            (10, 10, 0),
            "{st:?}"
        );
        let sent_ms = |seq: u32| {
            let r = recs.iter().find(|r| r.seq == seq).unwrap();
            (r.sent_ns.unwrap() - VirtualClock::BOOT0_NS) / MS
        };
        assert_eq!(
            (4..=8).map(sent_ms).collect::<Vec<_>>(),
            vec![80, 100, 125, 140, 160]
        );
        // The prober measures from its own send timestamp, so 5's RTT holds the stall.
        let rtt = |seq: u32| recs.iter().find(|r| r.seq == seq).unwrap().rtt_ns;
        assert_eq!((rtt(5), rtt(6)), (Some(27 * MS), Some(2 * MS)));
        assert_eq!(
            (
                st.drift.samples,
                st.drift.max_ns,
                st.drift.final_ns,
                st.drift.sum_ns
            ),
            (10, 5 * MS, 0, u128::from(5 * MS)),
            "{:?}",
            st.drift
        );
        assert_eq!(took, Duration::from_millis(182));
    }

    #[test]
    fn counter_for_nothing_sent() {
        let t = Tracker::new(Duration::from_secs(1), 65536);
        assert_eq!(t.counter_for(0), None);
    }
}
