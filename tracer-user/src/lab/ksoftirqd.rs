//! The seed's mechanism as a lab scenario: NET_RX deferred to a starved `ksoftirqd/N`.
//!
//! No threaded NAPI here: the namespace side of the veth pair keeps veth's default
//! (no NAPI instance), so each packet sent into the namespace goes through
//! `netif_rx` into a per-CPU backlog. RPS on the namespace side (`rps_cpus`) sends that
//! backlog to the starved CPU, where an IPI raises NET_RX. A short flood into the
//! namespace makes NET_RX exceed its budget there, which wakes `ksoftirqd/N`; the planted
//! SCHED_FIFO culprit then keeps `ksoftirqd/N` off the CPU. On kernels 4.9–6.4 a
//! NET_RX raised while `ksoftirqd` is runnable is left to it ("let ksoftirqd do its
//! job"), so every probe waits until the culprit lets go: the seed's staircase, with
//! `ksoftirqd/N` as RX context. Since 6.5 NET_RX raised from an interrupt runs at irq
//! exit anyway, so the same set-up does not stall there: the lab then says so (exit 6)
//! instead of passing or failing.
//!
//! The flood is UDP to the discard port of the namespace's own address (never anything
//! outside the lab), pinned to CPU 0 like the prober, bounded twice: this process stops
//! it after [`FLOOD_FOR`], and it runs under `timeout` so it also ends if the lab is
//! killed. UDP rather than the seed's `hping3 --icmp`: the NET_RX load is the same, and
//! it adds no ICMP echoes to the recording (the recorder filters on the namespace
//! address, and the kprobe path sees every echo request).
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{netns::Netns, Scenario};
use crate::{
    dump::{DumpReader, Record, RxContext, WaitKind},
    exit::{CodedError, ExitCode},
};

pub const NAME: &str = "ksoftirqd";

pub const SCENARIO: Scenario = Scenario {
    name: NAME,
    summary: "the seed's case: RPS sends the namespace's RX to one CPU, a flood wakes ksoftirqd there, a SCHED_FIFO busy loop (stall-hog) starves it (stalls on kernels before 6.5 only)",
    culprit: "stall-hog",
    reads_file: false,
};

/// How long the flood lasts (the seed's set-up used a 0.5 s hping3 burst).
pub const FLOOD_FOR: Duration = Duration::from_millis(500);

/// Waits at least this long count as the stall the scenario is after.
const STALL_NS: u64 = 50_000_000;

/// Steers the namespace's RX to `cpu` (RPS, no threaded NAPI); prints the lab line.
pub fn prepare(ns: &Netns, cpu: u32) -> anyhow::Result<()> {
    if Command::new("hping3").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        return Err(CodedError::new(
            ExitCode::Failure,
            "the ksoftirqd scenario floods with hping3, which is not installed (apt-get install hping3)",
        )
        .into());
    }
    ns.rps_to(cpu).context("steering the namespace's RX to one CPU (rps_cpus)")?;
    println!(
        "lab: namespace {} ({} <-> {}), RX by the backlog of CPU {cpu} (RPS, no threaded NAPI): NET_RX there, or ksoftirqd/{cpu} once woken",
        ns.name, ns.host_addr, ns.ns_addr
    );
    Ok(())
}

/// A running flood (`timeout … hping3`), stopped and reaped on drop.
struct Flood(Option<Child>);

impl Flood {
    /// SIGTERM to `timeout`, which passes it on to hping3; SIGKILL if that did not end
    /// it within 2 s (`timeout`'s own limit still ends hping3 then).
    fn stop(&mut self) {
        let Some(c) = self.0.as_mut() else { return };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = c.try_wait() {
                self.0 = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        self.0 = None;
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Floods the namespace address from CPU 0 for [`FLOOD_FOR`] (less if `stop` is set),
/// then stops the flood. Call it once the culprit holds the CPU.
pub fn flood_burst(ns: &Netns, stop: &AtomicBool) -> anyhow::Result<()> {
    // `timeout` bounds the flood even if this process dies without running drops.
    let limit = format!("{}ms", FLOOD_FOR.as_millis() + 1500);
    let mut flood = Flood(Some(
        Command::new("timeout")
            .args(["-s", "KILL", &limit, "taskset", "-c", "0", "hping3", "--udp", "-p", "9", "--flood", "-q"])
            .arg(&ns.ns_addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the hping3 flood")?,
    ));
    println!("lab: flooding {} (UDP port 9) from CPU 0 for {} ms to wake ksoftirqd", ns.ns_addr, FLOOD_FOR.as_millis());
    let t0 = Instant::now();
    while t0.elapsed() < FLOOD_FOR && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    flood.stop();
    Ok(())
}

/// `Some(why)` when the recording holds no NET_RX wait of 50 ms or more run by
/// ksoftirqd: the seed's mechanism did not happen on this kernel.
pub fn not_reproduced(dump: &Path) -> anyhow::Result<Option<String>> {
    let mut r = DumpReader::open(dump)?;
    let kernel = r.header().kernel.clone();
    let (mut deferred, mut starved) = (0u64, 0u64);
    while let Some(rec) = r.next_record()? {
        // Only NET_RX itself waiting for ksoftirqd is the seed's stall: since 6.5 a
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
    let since_6_5 = kernel_at_least(&kernel, 6, 5);
    let why = if since_6_5 {
        "since Linux 6.5 a NET_RX raised from an interrupt runs at irq exit even while ksoftirqd is busy, \
         so a starved ksoftirqd no longer holds packets back (the seed's mechanism needs 4.9–6.4)"
    } else {
        "NET_RX never waited 50 ms or more for ksoftirqd"
    };
    let starved = if starved > 0 {
        format!("; ksoftirqd itself waited 50 ms or more {starved} times, but no packet waited for it")
    } else {
        String::new()
    };
    Ok(Some(format!("no stall reproduced on this kernel (Linux {kernel}): {why}{starved}")))
}

/// Whether a `uname -r` string is at least `major.minor`.
pub fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let ma = it.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let mi = it.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_versions_compare() {
        assert!(!kernel_at_least("6.1.0-56-amd64", 6, 5));
        assert!(!kernel_at_least("5.15.0", 6, 5));
        assert!(kernel_at_least("6.5.0", 6, 5));
        assert!(kernel_at_least("6.12.117+deb12-amd64", 6, 5));
        assert!(kernel_at_least("6.18.0", 6, 5));
        assert!(!kernel_at_least("garbage", 6, 5));
    }
}
