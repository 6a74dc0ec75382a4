//! Where the prober's time comes from. The engine and the scheduler read the time and
//! wait only through [`Clock`]: the real clock is the monotonic clock, CLOCK_BOOTTIME
//! and `ppoll` on the socket; the tests' virtual clock jumps straight to the next
//! event (a send, a timeout, a scripted answer), so a run is exact and instant and
//! does not depend on how loaded the machine is.
use std::{
    os::fd::RawFd,
    time::{Duration, Instant},
};

use super::transport::Transport;

pub trait Clock: Send {
    /// Monotonic time.
    fn now(&self) -> Instant;
    /// Boot-clock nanoseconds (CLOCK_BOOTTIME) for records, matching `now()`.
    fn boot_ns(&self) -> u64;
    /// Waits from `now` toward `until`, or until `io` has something to read (without
    /// `io`, just sleeps). It may return before `until` (a bounded step, a signal), so
    /// callers loop on [`Clock::now`]. True when `io` may have something to read.
    fn wait(
        &self,
        now: Instant,
        until: Instant,
        io: Option<&dyn Transport>,
    ) -> std::io::Result<bool>;
}

pub use crate::sys::boot_ns;

/// The machine's clocks; waits are `ppoll` (ns resolution) on the transport's socket,
/// in steps of at most 100 ms that stop 1 ms short of long deadlines ([`step_toward`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn boot_ns(&self) -> u64 {
        boot_ns()
    }

    fn wait(
        &self,
        now: Instant,
        until: Instant,
        io: Option<&dyn Transport>,
    ) -> std::io::Result<bool> {
        let step = step_toward(until, now);
        match io {
            Some(t) => poll_wait(t.fd(), step),
            None => {
                if poll_wait(-1, step).is_err() {
                    std::thread::sleep(until.saturating_duration_since(now));
                }
                Ok(false)
            }
        }
    }
}

/// How long to wait now to reach `until`. The kernel lets a wait overrun by its
/// "slack" (0.1% of the wait, at least the thread's timer slack), so long waits stop
/// 1 ms short and the last stretch is a short, precise wait; never more than 100 ms,
/// so a stop request is seen promptly.
pub fn step_toward(until: Instant, now: Instant) -> Duration {
    let left = until
        .saturating_duration_since(now)
        .min(Duration::from_millis(100));
    if left > Duration::from_millis(2) {
        left - Duration::from_millis(1)
    } else {
        left
    }
}

/// Waits up to `wait` (ns resolution, unlike poll's ms) for `fd` to become readable;
/// a negative `fd` just sleeps. A signal ends the wait early (returns false) so
/// Ctrl-C is seen at once.
pub fn poll_wait(fd: RawFd, wait: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfd` and `ts` are valid for the call; one entry (poll ignores a negative
    // fd); a null sigmask keeps the thread's signal mask.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
}

/// Test time: starts at the moment it is made and moves only when a wait jumps to its
/// next event or a test calls [`VirtualClock::advance`]. Clones share the same time (the
/// engine's clock and the fake network's).
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct VirtualClock {
    t0: Instant,
    elapsed_ns: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[cfg(test)]
impl VirtualClock {
    /// The boot clock at virtual time zero (1000 s after "boot").
    pub const BOOT0_NS: u64 = 1_000_000_000_000;

    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            elapsed_ns: Default::default(),
        }
    }

    pub fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.elapsed_ns.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Moves time forward by `d` (a stall: the thread was not running).
    pub fn advance(&self, d: std::time::Duration) {
        self.advance_to(self.now() + d);
    }

    /// Moves time forward to `t`; never backward.
    fn advance_to(&self, t: Instant) {
        let ns = u64::try_from(t.saturating_duration_since(self.t0).as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_ns
            .fetch_max(ns, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        self.t0 + self.elapsed()
    }

    fn boot_ns(&self) -> u64 {
        Self::BOOT0_NS + self.elapsed_ns.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Jumps to `until` or to the transport's next scripted answer, whichever is first.
    fn wait(
        &self,
        _now: Instant,
        until: Instant,
        io: Option<&dyn Transport>,
    ) -> std::io::Result<bool> {
        let ready = io.and_then(|t| t.ready_at());
        let to = ready.map_or(until, |r| r.min(until));
        self.advance_to(to);
        Ok(ready.is_some_and(|r| r <= self.now()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn virtual_time_moves_only_when_told() {
        let c = VirtualClock::new();
        let t = c.now();
        assert_eq!(c.now(), t);
        assert_eq!(c.boot_ns(), VirtualClock::BOOT0_NS);
        // A wait without anything to read jumps to its deadline at once.
        assert!(!c.wait(t, t + Duration::from_secs(3600), None).unwrap());
        assert_eq!(c.now() - t, Duration::from_secs(3600));
        c.advance(Duration::from_nanos(5));
        assert_eq!(c.elapsed(), Duration::from_nanos(3_600_000_000_005));
        assert_eq!(c.boot_ns(), VirtualClock::BOOT0_NS + 3_600_000_000_005);
        // Never backward; clones share the time.
        let c2 = c.clone();
        assert!(!c2.wait(t, t, None).unwrap());
        assert_eq!(c.now() - t, Duration::from_nanos(3_600_000_000_005));
    }

    #[test]
    fn real_wait_sleeps_without_a_socket() {
        let c = RealClock;
        let now = c.now();
        assert!(!c.wait(now, now + Duration::from_millis(1), None).unwrap());
        // Monotonic, and the boot clock is running.
        assert!(c.now() > now && c.boot_ns() > 0);
    }
}
