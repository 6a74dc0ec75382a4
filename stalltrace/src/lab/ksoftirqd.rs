//! The 2019 GitHub incident's mechanism as a lab scenario: NET_RX deferred to a starved `ksoftirqd/N`.
//!
//! No threaded NAPI here: the namespace side of the veth pair keeps veth's default
//! (no NAPI instance), so each packet sent into the namespace goes through
//! `netif_rx` into a per-CPU backlog. RPS on the namespace side (`rps_cpus`) sends that
//! backlog to the starved CPU, where an IPI raises NET_RX. A flood into the namespace
//! makes NET_RX overrun its budget there, which wakes `ksoftirqd/N`; the planted
//! SCHED_FIFO culprit, holding the CPU without pause, keeps `ksoftirqd/N` off it until
//! RT throttling lets it run. On kernels 4.9–6.4 a NET_RX raised while `ksoftirqd` is
//! runnable is left to it ("let ksoftirqd do its job"), so every probe waits until then:
//! the 2019 GitHub incident's staircase, with `ksoftirqd/N` as RX context. Since 6.5 NET_RX raised from
//! an interrupt runs at irq exit anyway, so the same set-up does not stall there: the lab
//! then says so (exit 6) instead of passing or failing. On PREEMPT_RT kernels (any
//! version) a softirq raised in hard-irq context, as RPS's IPI raises NET_RX, is always
//! left to `ksoftirqd/N`: the stall reproduces there too, and means the same thing.
//!
//! The flood (`stalltrace flood`, a plain UDP socket) goes to the discard port of the
//! namespace's own address (never anything outside the lab), pinned to CPU 0 like the
//! prober, as long as the culprit runs, and bounded twice: its own duration and death
//! with the lab. UDP rather than the 2019 GitHub incident's `hping3 --icmp`: the
//! NET_RX load is the same, and it adds no ICMP echoes to the recording (which keeps
//! every echo to or from the namespace's address).
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use stalltrace_analysis::dump::{DumpReader, Record, RxContext, WaitKind};

use super::{
    hog::HogArgs,
    journal::Journal,
    scenario::{Lab, Load, Scenario},
};
use crate::host::{kernel_at_least, preempt_rt};

/// Waits at least this long count as the stall the scenario is after.
const STALL_NS: u64 = 50_000_000;

/// `net.core.netdev_budget` and `net.core.dev_weight` (the backlog's poll quota; NIC
/// drivers set their own) lowered to one packet while the flood runs. Then NET_RX on
/// the starved CPU re-raises itself after every packet, so a backlog of a dozen packets
/// uses up `__do_softirq`'s ten restarts and wakes `ksoftirqd/N`, which the culprit
/// then starves: the 2019 GitHub incident's deferral on every run, instead of only when the flood
/// happens to outrun 10 rounds of 64 packets. Both settings are global: the journal
/// records their values first, and they are put back the moment the flood ends.
const SYSCTLS: [&str; 2] = [
    "/proc/sys/net/core/netdev_budget",
    "/proc/sys/net/core/dev_weight",
];

pub struct Ksoftirqd;

impl Scenario for Ksoftirqd {
    fn name(&self) -> &'static str {
        "ksoftirqd"
    }

    fn summary(&self) -> &'static str {
        "the 2019 GitHub incident's case: RPS sends the namespace's RX to one CPU, a flood wakes ksoftirqd there, a SCHED_FIFO busy loop (stall-hog) starves it (stalls on kernels before 6.5, and on PREEMPT_RT)"
    }

    fn culprit(&self) -> &'static str {
        "stall-hog"
    }

    /// Steers the namespace's RX to the CPU (RPS, no threaded NAPI).
    fn prepare(&self, lab: &mut Lab<'_>) -> anyhow::Result<String> {
        // NAPI on the namespace side: the sender's CPU polls veth in batches and RPS
        // hands the starved CPU a burst per IPI, a backlog deep enough to overrun
        // NET_RX there. (Without it each packet comes with its own IPI and the starved
        // CPU keeps up in irq context, so ksoftirqd is woken only by chance.)
        lab.ns
            .napi()
            .context("giving the namespace side a NAPI instance")?;
        lab.ns
            .rps_to(lab.cpu)
            .context("steering the namespace's RX to one CPU (rps_cpus)")?;
        Ok(format!(
            "namespace {} ({} <-> {}), RX by the backlog of CPU {cpu} (RPS, no threaded NAPI): NET_RX there, or ksoftirqd/{cpu} once woken",
            lab.ns.name,
            lab.ns.host_addr,
            lab.ns.ns_addr,
            cpu = lab.cpu
        ))
    }

    /// The culprit holds the CPU for its whole run, without the other scenarios' 30 ms
    /// gaps: once the flood has woken ksoftirqd, it stays starved until real-time
    /// throttling (`sched_rt_runtime_us`, 950 ms of each second by default) lets it
    /// run, as in the set-up that first showed this stall under qemu (a staircase from
    /// ~1.8 s down). With gaps, ksoftirqd catches up in each one and has to be woken
    /// again in the next burst, which the flood does only when NET_RX overruns its
    /// budget: too much left to chance. Where RT throttling is off the stall lasts the
    /// whole run (bounded by `--duration`).
    fn hog(&self, _lab: &mut Lab<'_>, mut a: HogArgs) -> anyhow::Result<HogArgs> {
        a.burst = a.duration;
        a.gap = Duration::ZERO;
        Ok(a)
    }

    /// Floods the namespace address from CPU 0 for `length` (the culprit's run), in the
    /// background; the flood ends by itself then, or earlier when stopped. Why as long
    /// as the culprit: the 2019 GitHub incident's 0.5 s burst wakes ksoftirqd once, but whether it is
    /// woken again after it caught up depends on how slow NET_RX runs (under qemu's
    /// emulation it often is, on a fast machine not); flooding throughout wakes it
    /// every time.
    fn load(
        &self,
        lab: &mut Lab<'_>,
        culprit_pid: u32,
        length: Duration,
    ) -> anyhow::Result<Option<Box<dyn Load>>> {
        if !wait_for_fifo(culprit_pid, Duration::from_secs(10)) {
            crate::outln!("lab: note: the culprit (pid {culprit_pid}) did not show as SCHED_FIFO within 10 s; flooding anyway");
        }
        let mut lowered = 0;
        for p in SYSCTLS {
            match lab.journal.set_sysctl(p, "1") {
                Ok(()) => lowered += 1,
                Err(e) => crate::outln!("lab: note: {e:#}"),
            }
        }
        if lowered < SYSCTLS.len() {
            crate::outln!(
                "lab: note: could not lower the NET_RX budget sysctls; relying on the flood alone"
            );
        }
        // The flood ends by itself after `length` (its --duration), earlier when
        // stopped, and with the lab (SIGKILL on the lab's death, set before exec).
        let exe = std::env::current_exe().context("finding the stalltrace binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "flood",
            "--to",
            &format!("{}:9", lab.ns.ns_addr),
            "--duration",
        ])
        .arg(format!("{}ms", length.as_millis().max(1)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        super::tied::tie_to_lab(&mut cmd, libc::SIGKILL, Some(0));
        let child = cmd.spawn().context("starting the flood")?;
        lab.journal.child(child.id(), "the flood")?;
        crate::outln!(
            "lab: flooding {} (UDP port 9) from CPU 0 for {} ms to keep waking ksoftirqd",
            lab.ns.ns_addr,
            length.as_millis()
        );
        Ok(Some(Box::new(Flood { child: Some(child) })))
    }

    fn not_reproduced(&self, dump: &Path) -> anyhow::Result<Option<String>> {
        not_reproduced(dump)
    }
}

/// A running flood (`stalltrace flood`), stopped and reaped on drop.
struct Flood {
    child: Option<Child>,
}

impl Flood {
    /// SIGTERM (the flooder stops and reports what it sent); SIGKILL if that did not
    /// end it within 2 s.
    fn end(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let (Ok(None), Ok(pid)) = (c.try_wait(), i32::try_from(c.id())) {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Load for Flood {
    fn stop(&mut self, journal: &mut Journal) {
        self.end();
        if let Err(e) = journal.restore_sysctls() {
            crate::errln!("lab: warning: {e:#}; run `stalltrace lab --cleanup`");
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.end();
    }
}

/// Waits until `pid` has taken SCHED_FIFO (the hog sets its name and policy after
/// exec, before its first burst; the other scenarios' culprits, which also use this
/// flood on kernels without threaded NAPI, have other names): flooding earlier would
/// wake ksoftirqd while nothing starves it.
fn wait_for_fifo(pid: u32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after "(comm)" start at field 3; policy is field 41.
        let policy = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(41 - 3));
        if policy == Some("1") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// `Some(why)` when the recording holds no NET_RX wait of 50 ms or more run by
/// ksoftirqd: the 2019 GitHub incident's mechanism did not happen on this kernel.
pub fn not_reproduced(dump: &Path) -> anyhow::Result<Option<String>> {
    let mut r = DumpReader::open(dump)?;
    let kernel = r.header().kernel.clone();
    let (mut deferred, mut starved) = (0u64, 0u64);
    while let Some(rec) = r.next_record()? {
        // Only NET_RX itself waiting for ksoftirqd is the 2019 GitHub incident's stall: since 6.5 a
        // starved ksoftirqd still shows long RX-thread waits, but the packets were
        // already handled at irq exit.
        if let Record::Wait(w) = rec {
            if w.rx_context == RxContext::Ksoftirqd && w.wait_ns >= STALL_NS {
                match w.kind {
                    WaitKind::NetRxSoftirq => deferred += 1,
                    WaitKind::RxThread => starved += 1,
                }
            }
        }
    }
    if deferred > 0 {
        return Ok(None);
    }
    let since_6_5 = kernel_at_least(&kernel, 6, 5) && !preempt_rt();
    let why = if since_6_5 {
        "since Linux 6.5 a NET_RX raised from an interrupt runs at irq exit even while ksoftirqd is busy, \
         so a starved ksoftirqd no longer holds packets back (the 2019 GitHub incident's mechanism needs 4.9–6.4)"
    } else {
        "NET_RX never waited 50 ms or more for ksoftirqd"
    };
    let starved = if starved > 0 {
        format!(
            "; ksoftirqd itself waited 50 ms or more {starved} times, but no packet waited for it"
        )
    } else {
        String::new()
    };
    Ok(Some(format!(
        "no stall reproduced on this kernel (Linux {kernel}): {why}{starved}"
    )))
}
