//! Backlog drains. A long wait leaves a backlog that takes several RX runs to clear (a
//! budget at a time, with short waits in between): its packets were delayed by the
//! wait even when they are not processed right after it. A drain opens when a wait of
//! at least `drain_window_ns` (the stall threshold) ends. Waits that begin while it is
//! open join it; once its RX context has run out of work (the backlog cleared), a long
//! wait is a stall of its own and opens a new drain. Packets join it until
//! `drain_window_ns` after its latest wait, or `drain_grace_ns` after RX work last ran
//! out: packets the device signals late (interrupts moderated, or emulated) were queued
//! behind the stall too.
use crate::maps::{CpuState, CONFIG};

/// The drain a wait from `start` to `end` belongs to (0: none), opening one for a long
/// wait. Until the backlog first clears, any wait joins and keeps the drain open; after
/// that a short one (the RX thread preempted while it finishes the backlog) still
/// belongs to it without keeping it open, and a long one opens a drain of its own.
#[inline(always)]
pub fn join(st: &mut CpuState, start: u64, end: u64) -> u64 {
    let c = CONFIG.load();
    let long = end.saturating_sub(start) >= c.drain_window_ns;
    if is_open(st, start) {
        if st.drain_cleared == 0 {
            if end > st.drain_last_end {
                st.drain_last_end = end;
            }
            return st.drain_of;
        }
        if !long {
            return st.drain_of;
        }
    }
    if !long {
        st.drain_of = 0;
        return 0;
    }
    st.drain_of = end;
    st.drain_last_end = end;
    st.drain_idle_since = 0;
    st.drain_cleared = 0;
    end
}

/// Whether the drain is still open at `at`.
#[inline(always)]
fn is_open(st: &CpuState, at: u64) -> bool {
    let c = CONFIG.load();
    st.drain_of != 0
        && at <= st.drain_last_end.saturating_add(c.drain_window_ns)
        && (st.drain_idle_since == 0 || at <= st.drain_idle_since.saturating_add(c.drain_grace_ns))
}

/// This CPU's RX work ran out at `now` (nothing raised, no RX thread pending).
#[inline(always)]
pub fn ran_out(st: &mut CpuState, now: u64) {
    if st.drain_of != 0 && st.drain_idle_since == 0 {
        st.drain_idle_since = now;
        st.drain_cleared = 1;
    }
}

/// The drain a packet processed at `now` belongs to (0: none); RX work going on within
/// the grace means the drain's packets are not over.
#[inline(always)]
pub fn of_packet(st: &mut CpuState, now: u64) -> u64 {
    if !is_open(st, now) {
        st.drain_of = 0;
        return 0;
    }
    st.drain_idle_since = 0;
    st.drain_of
}
