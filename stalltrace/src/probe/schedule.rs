//! Absolute send schedule: probe `i` leaves at `t0 + i * interval`, never at
//! "previous send + interval", so a late wake-up delays one probe and does not shift
//! every probe after it (no drift over hours at 10 ms).
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::clock::{Clock, RealClock};

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    t0: Instant,
    interval: Duration,
}

impl Schedule {
    pub fn new(t0: Instant, interval: Duration) -> Self {
        Self { t0, interval }
    }

    /// When probe `i` is due. Computed from `t0` each time (no accumulated error).
    pub fn deadline(&self, i: u64) -> Instant {
        let ns = self.interval.as_nanos().saturating_mul(u128::from(i));
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        self.t0
            .checked_add(Duration::from_nanos(ns))
            .unwrap_or(self.t0)
    }
}

/// How late sends were against their absolute deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drift {
    pub samples: u64,
    pub max_ns: u64,
    pub final_ns: u64,
    pub sum_ns: u128,
}

impl Drift {
    pub fn record(&mut self, deadline: Instant, actual: Instant) {
        let late = u64::try_from(actual.saturating_duration_since(deadline).as_nanos())
            .unwrap_or(u64::MAX);
        self.samples += 1;
        self.max_ns = self.max_ns.max(late);
        self.final_ns = late;
        self.sum_ns += u128::from(late);
    }

    pub fn mean_ns(&self) -> u64 {
        if self.samples == 0 {
            0
        } else {
            u64::try_from(self.sum_ns / u128::from(self.samples)).unwrap_or(u64::MAX)
        }
    }

    /// `schedule drift: max X µs, final Y µs, mean Z µs over N sends`.
    pub fn line(&self) -> String {
        format!(
            "schedule drift: max {} µs, final {} µs, mean {} µs over {} sends",
            self.max_ns / 1_000,
            self.final_ns / 1_000,
            self.mean_ns() / 1_000,
            self.samples
        )
    }
}

/// Asks for 1 µs timer slack on this thread (default 50 µs) so sends are on time.
pub fn set_tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only affects this thread.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        log::debug!("PR_SET_TIMERSLACK: {}", std::io::Error::last_os_error());
    }
}

/// Waits until `deadline` the way the prober does, or until `stop` is set; returns
/// false when stopped.
pub fn sleep_until(clock: &impl Clock, deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = clock.now();
        if now >= deadline {
            return true;
        }
        // Without a transport the wait only sleeps; a failed wait already slept.
        let _ = clock.wait(now, deadline, None);
    }
}

/// The drift benchmark: runs the scheduler alone (no sockets, no root) for `count`
/// slots and returns how late each wake-up was against its absolute deadline.
pub fn bench(count: u64, interval: Duration, stop: &AtomicBool) -> Drift {
    set_tight_timer_slack();
    run_slots(&RealClock, count, interval, stop, |_| {})
}

/// Wakes up at each of `count` slots on `clock` and records how late it was; `after`
/// runs after each wake-up, before the lateness is measured.
fn run_slots(
    clock: &impl Clock,
    count: u64,
    interval: Duration,
    stop: &AtomicBool,
    mut after: impl FnMut(u64),
) -> Drift {
    let sched = Schedule::new(clock.now(), interval);
    let mut drift = Drift::default();
    for i in 0..count {
        let due = sched.deadline(i);
        if !sleep_until(clock, due, stop) {
            break;
        }
        after(i);
        drift.record(due, clock.now());
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_absolute_and_do_not_accumulate() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, Duration::from_millis(10));
        assert_eq!(s.deadline(0), t0);
        assert_eq!(s.deadline(1) - t0, Duration::from_millis(10));
        // 10 ms * 360 000 = one hour, exactly: no rounding creeps in.
        assert_eq!(s.deadline(360_000) - t0, Duration::from_secs(3600));
        // 1/3 ms does not divide evenly in ns, yet slot i is still i * interval.
        let s = Schedule::new(t0, Duration::from_nanos(333_333));
        assert_eq!(
            s.deadline(3_000_000) - t0,
            Duration::from_nanos(333_333 * 3_000_000)
        );
    }

    #[test]
    fn late_wakeups_do_not_shift_later_slots() {
        use super::super::clock::VirtualClock;
        let clock = VirtualClock::new();
        let stop = AtomicBool::new(false);
        let interval = Duration::from_millis(2);
        let drift = run_slots(&clock, 50, interval, &stop, |i| {
            if i == 10 {
                // A stall in the prober: 7 ms late for this one.
                clock.advance(Duration::from_millis(7));
            }
        });
        assert_eq!(drift.samples, 50);
        // Slot 10 (20 ms) was 7 ms late; slots 11-13, due during the stall, went at once
        // when it ended (27 ms: 5, 3 and 1 ms late); slot 14 (28 ms) was on time again…
        assert_eq!(
            (drift.max_ns, drift.sum_ns),
            (7_000_000, (7 + 5 + 3 + 1) * 1_000_000),
            "{drift:?}"
        );
        // …and so was every later one, the final one included, which a relative schedule
        // could not achieve; the run ended at slot 49's deadline.
        assert_eq!(drift.final_ns, 0, "{drift:?}");
        assert_eq!(clock.elapsed(), interval * 49);
    }

    #[test]
    fn sleep_until_waits_for_the_deadline_or_a_stop() {
        use super::super::clock::VirtualClock;
        let clock = VirtualClock::new();
        let stop = AtomicBool::new(false);
        let due = clock.now() + Duration::from_secs(5);
        assert!(sleep_until(&clock, due, &stop));
        assert_eq!(clock.now(), due);
        stop.store(true, Ordering::Relaxed);
        assert!(!sleep_until(&clock, due + Duration::from_secs(1), &stop));
        assert_eq!(clock.now(), due);
    }

    #[test]
    fn bench_stops_on_request() {
        let stop = AtomicBool::new(true);
        let d = bench(1000, Duration::from_millis(10), &stop);
        assert_eq!(d.samples, 0);
    }
}
