//! Scenarios whose starved RX thread is a napi thread pinned to the CPU (rt-hog,
//! slow-syscall, short-syscalls), and the set-up they and memcg-stat share.
use stalltrace_analysis::correlate::Report;

use super::{
    hog::HogArgs,
    ksoftirqd::Ksoftirqd,
    netns::Netns,
    scenario::{Lab, Scenario},
};

/// Threaded NAPI on the namespace side, its kthread pinned to the starved CPU. Two
/// kernels get ksoftirqd as the starved RX thread instead, fed as in the ksoftirqd
/// scenario (RPS to the CPU, a flood while the culprit runs), and the lab says why:
/// - before 5.12 there is no threaded NAPI (`/sys/class/net/<dev>/threaded`); those
///   kernels leave NET_RX raised while ksoftirqd is runnable to it, so it stalls;
/// - on PREEMPT_RT a starved napi thread's stall is not followed to its culprit (see
///   [`RT_NAPI`]); ksoftirqd always runs RPS's NET_RX there, and that stall is.
///
/// The culprit and what the verdict needs are the same either way.
pub(super) fn threaded_napi(lab: &mut Lab<'_>) -> anyhow::Result<String> {
    let why = if !has_threaded_napi(lab.ns) {
        Some("this kernel has no threaded NAPI (Linux 5.12+)")
    } else if crate::host::preempt_rt() {
        Some(RT_NAPI)
    } else {
        None
    };
    if let Some(why) = why {
        lab.rx_by_ksoftirqd = true;
        let how = Ksoftirqd.prepare(lab)?;
        return Ok(format!(
            "{how} — {why}, so the RX thread starved is ksoftirqd/{}",
            lab.cpu
        ));
    }
    let pid = lab.ns.threaded_napi(lab.cpu)?;
    Ok(format!(
        "namespace {} ({} <-> {}), RX by napi thread pid {pid} pinned to CPU {}",
        lab.ns.name, lab.ns.host_addr, lab.ns.ns_addr, lab.cpu
    ))
}

/// Why the lab does not starve a napi thread on PREEMPT_RT (docs/kernels.md): there
/// the napi thread takes the per-CPU bottom-half lock for each poll, so it mostly waits
/// blocked on that lock behind another softirq thread (ksoftirqd, an irq thread) that
/// the culprit starves, not runnable itself. stalltrace records that thread's wait and
/// its culprit, but does not tie the napi thread's packets to it: the probes show as
/// stalled "not right after a wait" (measured on 6.1-rt: 2 of 4 rt-hog runs and 0 of 4
/// slow-syscall runs blamed their culprit).
pub const RT_NAPI: &str = "PREEMPT_RT: a starved napi thread waits on the bottom-half lock behind another softirq thread, a chain stalltrace does not follow yet";

/// Whether the namespace side can have an RX kthread (`threaded` in its sysfs
/// directory, Linux 5.12+), as seen from inside the namespace (sysfs shows a
/// namespace's own devices only).
fn has_threaded_napi(ns: &Netns) -> bool {
    let path = format!("/sys/class/net/{}/threaded", ns.ns_if);
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "test", "-e", &path])
        .status()
        .is_ok_and(|s| s.success())
}

pub struct RtHog;

impl Scenario for RtHog {
    fn name(&self) -> &'static str {
        "rt-hog"
    }
    fn summary(&self) -> &'static str {
        "a SCHED_FIFO busy loop (stall-hog) holds the RX CPU in 100 ms bursts; the napi thread starves"
    }
    fn culprit(&self) -> &'static str {
        "stall-hog"
    }
    fn prepare(&self, lab: &mut Lab<'_>) -> anyhow::Result<String> {
        threaded_napi(lab)
    }
    fn hog(&self, _lab: &mut Lab<'_>, base: HogArgs) -> anyhow::Result<HogArgs> {
        Ok(base)
    }
}

pub struct SlowSyscall;

/// The slow-syscall reader's file and read size: one read() takes tens of ms.
const READ_SIZE: usize = 256 << 20;

impl Scenario for SlowSyscall {
    fn name(&self) -> &'static str {
        "slow-syscall"
    }
    fn summary(&self) -> &'static str {
        "a SCHED_FIFO reader (stat-reader) sits inside 256 MiB read()s of a file in 100 ms bursts, as cadvisor read memory.stat"
    }
    fn culprit(&self) -> &'static str {
        "stat-reader"
    }
    fn prepare(&self, lab: &mut Lab<'_>) -> anyhow::Result<String> {
        threaded_napi(lab)
    }
    fn hog(&self, lab: &mut Lab<'_>, mut base: HogArgs) -> anyhow::Result<HogArgs> {
        let file = lab.scratch.join("culprit.dat");
        std::fs::write(&file, vec![0u8; READ_SIZE])
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
        base.read_file = Some(file);
        base.read_size = READ_SIZE;
        Ok(base)
    }
}

pub struct ShortSyscalls;

/// The file the poller reads: small, in the kernel (like memory.stat or a cgroup's
/// cpu.stat), and its own.
const POLLED: &str = "/proc/self/status";

impl Scenario for ShortSyscalls {
    fn name(&self) -> &'static str {
        "short-syscalls"
    }
    fn summary(&self) -> &'static str {
        "a SCHED_FIFO poller (proc-poller) opens, reads and closes /proc/self/status over and over in 100 ms bursts, as a metrics agent walks small files"
    }
    fn culprit(&self) -> &'static str {
        "proc-poller"
    }
    fn prepare(&self, lab: &mut Lab<'_>) -> anyhow::Result<String> {
        threaded_napi(lab)
    }
    fn hog(&self, _lab: &mut Lab<'_>, mut base: HogArgs) -> anyhow::Result<HogArgs> {
        base.poll_file = Some(POLLED.into());
        Ok(base)
    }
    /// The culprit must read as in the kernel, reading the file: not "user space".
    fn check(&self, report: &Report) -> Result<(), String> {
        let Some(a) = report.culprits.first().and_then(|c| c.activity.as_ref()) else {
            return Err("the culprit's activity was not sampled".into());
        };
        let read = a
            .syscalls
            .iter()
            .any(|x| x.name == "read" && x.path.as_deref().is_some_and(|p| p.ends_with("/status")));
        let share = u64::from(a.in_syscalls()) * 100 / u64::from(a.samples.max(1));
        if read && share >= 50 {
            Ok(())
        } else {
            Err(format!(
                "its activity reads {}",
                stalltrace_analysis::activity::phrase(a).unwrap_or_default()
            ))
        }
    }
}
