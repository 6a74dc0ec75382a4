//! The probing loop shared by the ICMP and TCP probers: absolute send schedule,
//! matching answers to sequences (16-bit wrap included), timeouts, duplicates,
//! reordering. One thread, no locks: it waits for answers with `ppoll` until the next
//! send or timeout is due.
use std::{
    collections::VecDeque,
    net::IpAddr,
    os::fd::RawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{
    schedule::{poll_wait, set_tight_timer_slack, step_toward, Schedule},
    stats::ProbeStats,
};
use crate::dump::{ProbeProto, ProbeRec, ProbeStatus};

/// What a prober put on the wire for one probe, as the kernel reads it big-endian.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub wire_ident: u16,
    pub wire_seq: u16,
}

/// Details of an answer, for the hping3-style line.
#[derive(Debug, Clone)]
pub enum ReplyInfo {
    Icmp {
        len: usize,
        from: IpAddr,
        ttl: Option<u8>,
        ip_id: Option<u16>,
    },
    Tcp {
        len: usize,
        from: IpAddr,
        ttl: Option<u8>,
        df: bool,
        ip_id: Option<u16>,
        sport: u16,
        flags: String,
        win: u16,
    },
}

/// An answer that belongs to this prober: `slot` is the sequence modulo
/// [`Transport::modulus`] (the 16-bit echo sequence, or the source-port offset).
#[derive(Debug, Clone)]
pub struct Reply {
    pub slot: u64,
    pub at: Instant,
    pub info: ReplyInfo,
}

pub trait Transport: Send {
    /// Sends probe number `counter` (its wire sequence is derived from it).
    fn send(&mut self, counter: u64) -> std::io::Result<Sent>;
    /// Reads one pending packet without blocking; `Ok(None)` when it was not ours or
    /// nothing was pending.
    fn try_recv(&mut self) -> std::io::Result<Option<Reply>>;
    fn fd(&self) -> RawFd;
    /// How many sequences the wire can tell apart (65536 for ICMP).
    fn modulus(&self) -> u64;
    fn proto(&self) -> ProbeProto;
}

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

/// Boot-clock nanoseconds (CLOCK_BOOTTIME), the eBPF side's `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on Linux ≥ 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
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

pub struct Engine {
    transport: Box<dyn Transport>,
    cfg: EngineConfig,
    sched: Schedule,
    tracker: Tracker,
    stats: ProbeStats,
}

impl Engine {
    pub fn new(transport: Box<dyn Transport>, cfg: EngineConfig) -> Self {
        let tracker = Tracker::new(cfg.timeout, transport.modulus());
        Self {
            transport,
            sched: Schedule::new(Instant::now(), cfg.interval),
            cfg,
            tracker,
            stats: ProbeStats::default(),
        }
    }

    pub fn stats(&self) -> &ProbeStats {
        &self.stats
    }

    #[allow(dead_code)] // used by spawn (the recorder's API)
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
        self.sched = Schedule::new(Instant::now(), self.cfg.interval);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            let more = self.cfg.count.is_none_or(|c| self.tracker.next < c);
            let due = self.sched.deadline(self.tracker.next);
            if more && due <= now {
                self.send_one(due)?;
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
            if poll_wait(self.transport.fd(), step_toward(until, now))? {
                // Drain what is queued, then go back to the schedule.
                for _ in 0..64 {
                    match self.transport.try_recv() {
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

    fn send_one(&mut self, due: Instant) -> std::io::Result<()> {
        let counter = self.tracker.next;
        let sent_boot_ns = boot_ns();
        let sent = Instant::now();
        let wire = match self.transport.send(counter) {
            Ok(w) => Some(w),
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    || e.raw_os_error() == Some(libc::EACCES) =>
            {
                return Err(e);
            }
            Err(e) => {
                // Unreachable network, full queue…: the probe counts as sent and lost.
                if self.stats.send_errors == 0 {
                    log::warn!("sending probe {counter}: {e}");
                }
                self.stats.send_errors += 1;
                None
            }
        };
        self.stats.drift.record(due, sent);
        self.stats.transmitted += 1;
        self.tracker.push(Slot {
            sent,
            sent_boot_ns,
            wire,
            state: State::Pending,
        });
        Ok(())
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
                self.stats.rtts_ns.push(rtt_ns);
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

/// Reads one datagram into `buf` with `recvfrom(MSG_DONTWAIT)`; returns its length and
/// the sender.
pub fn recv_from(
    sock: &socket2::Socket,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<std::net::SocketAddr>)> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and `recv_from`
    // only writes initialised bytes into it (socket2 documents it never de-initialises).
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    let (n, addr) = sock.recv_from_with_flags(uninit, libc::MSG_DONTWAIT)?;
    Ok((n, addr.as_socket()))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A scripted network: each probe's answers arrive after the given delays.
    struct Fake {
        script: fn(u64) -> Vec<u64>,
        queue: Vec<(Instant, u64)>,
        modulus: u64,
        // Always readable: a byte written and never read.
        pair: (
            std::os::unix::net::UnixStream,
            std::os::unix::net::UnixStream,
        ),
    }

    impl Fake {
        fn new(script: fn(u64) -> Vec<u64>, modulus: u64) -> Self {
            use std::io::Write;
            let mut pair = std::os::unix::net::UnixStream::pair().unwrap();
            pair.0.write_all(b"x").unwrap();
            Self {
                script,
                queue: Vec::new(),
                modulus,
                pair,
            }
        }
    }

    impl Transport for Fake {
        fn send(&mut self, counter: u64) -> std::io::Result<Sent> {
            let now = Instant::now();
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
            let now = Instant::now();
            let Some(i) = self.queue.iter().position(|(t, _)| *t <= now) else {
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
            use std::os::fd::AsRawFd;
            self.pair.1.as_raw_fd()
        }
        fn modulus(&self) -> u64 {
            self.modulus
        }
        fn proto(&self) -> ProbeProto {
            ProbeProto::Icmp
        }
    }

    fn run_fake(
        fake: Fake,
        interval_ms: u64,
        timeout_ms: u64,
        count: u64,
    ) -> (ProbeStats, Vec<ProbeRec>, Vec<u64>) {
        let cfg = EngineConfig {
            target: "10.0.0.2".parse().unwrap(),
            interval: Duration::from_millis(interval_ms),
            count: Some(count),
            timeout: Duration::from_millis(timeout_ms),
        };
        let mut e = Engine::new(Box::new(fake), cfg);
        let (mut recs, mut late) = (Vec::new(), Vec::new());
        let stop = AtomicBool::new(false);
        e.run(&stop, |o| {
            match o {
                Outcome::Answer { rec, .. } | Outcome::Lost { rec } => recs.push(rec),
                Outcome::Late { seq, .. } => late.push(seq),
            }
            true
        })
        .unwrap();
        (e.into_stats(), recs, late)
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
        let (st, recs, late) = run_fake(Fake::new(script, 65536), 20, 100, 16);
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
        assert_eq!(late, vec![6]);
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
        let r4 = recs.iter().find(|r| r.seq == 4).unwrap();
        assert!(r4.rtt_ns.unwrap() >= 35_000_000, "{r4:?}");
        assert!(recs.iter().all(|r| r.source == "builtin"
            && r.wire_ident == Some(7)
            && r.wire_seq == Some(r.seq as u16)));
        assert!(recs.iter().all(|r| r.sent_ns.is_some_and(|t| t > 0)));
        assert_eq!(st.rtts_ns.len(), 14);
        assert_eq!(st.drift.samples, 16);
    }

    #[test]
    fn wrapping_wire_sequence_maps_to_the_right_probe() {
        // A wire that tells only 4 sequences apart: probe 9 answers as slot 1. The
        // timeout leaves slack for a loaded machine (3 in flight at most: 80 / 30 + 1).
        let (st, recs, _) = run_fake(Fake::new(|_| vec![3], 4), 30, 80, 12);
        assert_eq!(
            (st.received, st.lost, st.duplicates, st.late),
            (12, 0, 0, 0),
            "{st:?}"
        );
        let seqs: Vec<u32> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..12).collect::<Vec<_>>());
        assert!(
            st.rtts_ns
                .iter()
                .all(|r| (3_000_000..80_000_000).contains(r)),
            "{:?}",
            st.rtts_ns
        );
    }

    #[test]
    fn counter_for_nothing_sent() {
        let t = Tracker::new(Duration::from_secs(1), 65536);
        assert_eq!(t.counter_for(0), None);
    }
}
