//! The running kernel: its version and the behaviours of it that decide whether the
//! 2019 GitHub incident's stall can happen here, and what `record` can hook.
//!
//! What is claimed, and the changes it rests on (upstream commit titles):
//! - 4.9 "softirq: Let ksoftirqd do its job": NET_RX raised from an interrupt is left to
//!   ksoftirqd whenever ksoftirqd is runnable; 6.5 reverted it.
//! - memory.stat before 4.16 summed per-CPU counters of every memcg below the file
//!   ("mm: memcontrol: fix excessive complexity in memory.stat reporting", 4.16); the v1
//!   read walked the tree ~17 times until "memcg: reduce memcg tree traversals for stats
//!   collection" (4.19); the walk itself went with recursive counters in "mm: memcontrol:
//!   fix recursive statistics correctness & scalabilty" (5.2).
//! - 5.13 moved memcg stats to rstat ("mm: memcontrol: switch to rstat"): a read flushes
//!   pending per-CPU updates; 5.15 added a periodic 2 s flush and an update threshold
//!   ("memcg: infrastructure to flush memcg stats"); 6.8 reworked flushing again
//!   (per-memcg thresholds, subtree flushes).
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{read_text, Check, Roots, Status};
use crate::kernel::preflight;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl From<(u32, u32, u32)> for KernelVersion {
    fn from((major, minor, patch): (u32, u32, u32)) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl KernelVersion {
    /// `6.18.44-fc-v1045`, `5.4.0-150-generic`, `4.9.0` → the leading numbers.
    pub fn parse(release: &str) -> Option<Self> {
        let mut nums = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|s| s.parse::<u32>().ok());
        let major = nums.next()??;
        let minor = nums.next()??;
        let patch = nums.next().flatten().unwrap_or(0);
        Some((major, minor, patch).into())
    }
}

const V4_9: KernelVersion = KernelVersion {
    major: 4,
    minor: 9,
    patch: 0,
};
const V6_5: KernelVersion = KernelVersion {
    major: 6,
    minor: 5,
    patch: 0,
};

/// A known behaviour of some kernels, and whether it applies to this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    pub id: String,
    /// `None` when the version is unknown.
    pub applies: Option<bool>,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    pub version: Option<KernelVersion>,
    /// `uname -v` (carries the preemption model).
    pub build: String,
    pub preemption: String,
    pub btf: bool,
    pub btf_path: String,
    pub kprobes: bool,
    /// Why kprobes cannot be attached, when they cannot.
    pub kprobes_why: Option<String>,
    /// The hook `record --attach auto` reports packets with by default, and for a run
    /// that needs IPv4 echo requests alone (`--peer` IPv4) when that differs.
    pub packet_path: String,
    /// kernel.sched_rt_runtime_us (-1: real-time tasks are never throttled).
    pub rt_runtime_us: Option<i64>,
    pub rt_period_us: Option<u64>,
    pub behaviours: Vec<Behaviour>,
}

/// Whether NET_RX raised from an interrupt is deferred to a runnable ksoftirqd.
pub fn defers_net_rx_to_ksoftirqd(v: KernelVersion) -> bool {
    v >= V4_9 && v < V6_5
}

/// What a memory.stat read costs on `v`, in one sentence.
pub fn stat_read_cost_phrase(v: KernelVersion) -> &'static str {
    if v < (4, 16, 0).into() {
        "a memory.stat read sums every per-CPU counter of every memory cgroup below it, \
         dying ones included (cgroups × stat items × CPUs; fixed in 4.16)"
    } else if v < (4, 19, 0).into() {
        "a v1 memory.stat read walks every memory cgroup below it, dying ones included, \
         about 17 times (once from 4.19; not at all from 5.2)"
    } else if v < (5, 2, 0).into() {
        "a memory.stat read walks every memory cgroup below it once, dying ones included \
         (5.2 replaced the walk with counters kept on update)"
    } else if v < (5, 13, 0).into() {
        "a memory.stat read uses counters kept on update: no walk over cgroups"
    } else if v < (5, 15, 0).into() {
        "memcg stats are in rstat (5.13): a read first flushes the per-CPU updates pending \
         below it, on every CPU"
    } else {
        "memcg stats are in rstat: a read flushes pending per-CPU updates, bounded since \
         5.15 by a periodic 2 s flush and an update threshold (reworked again in 6.8)"
    }
}

fn behaviours(v: Option<KernelVersion>) -> Vec<Behaviour> {
    let b = |id: &str, applies: Option<bool>, text: String| Behaviour {
        id: id.into(),
        applies,
        text,
    };
    let defer = match v {
        Some(v) if defers_net_rx_to_ksoftirqd(v) => {
            "NET_RX raised from an interrupt waits for ksoftirqd whenever ksoftirqd is \
             runnable on that CPU (4.9 to 6.4): a busy or starved ksoftirqd holds all RX of \
             its CPU, the 2019 GitHub incident's mechanism"
                .to_string()
        }
        Some(v) if v >= V6_5 => "NET_RX raised from an interrupt runs at interrupt exit even \
             when ksoftirqd is busy (the 4.9 deferral was reverted in 6.5); RX still waits \
             for its CPU when it runs in a thread: threaded NAPI, or ksoftirqd after a \
             softirq round ran out of budget"
            .to_string(),
        Some(_) => "before 4.9: NET_RX raised from an interrupt runs at interrupt exit".into(),
        None => "unknown version: whether NET_RX is deferred to a busy ksoftirqd (4.9 to 6.4) \
                 cannot be said"
            .into(),
    };
    let stat = match v {
        Some(v) => stat_read_cost_phrase(v).to_string(),
        None => "unknown version: the cost model of memory.stat cannot be said".into(),
    };
    vec![
        b(
            "net_rx_deferred_to_ksoftirqd",
            v.map(defers_net_rx_to_ksoftirqd),
            defer,
        ),
        b(
            "memory_stat_walks_dying_cgroups",
            v.map(|v| v < (5, 2, 0).into()),
            stat,
        ),
    ]
}

/// `uname -v` and /proc/cmdline → the preemption model, as far as files say.
fn preemption(build: &str, cmdline: &str) -> String {
    let words: Vec<&str> = build.split_whitespace().collect();
    if words.contains(&"PREEMPT_RT") {
        return "PREEMPT_RT (softirqs run in threads)".into();
    }
    if words.contains(&"PREEMPT_DYNAMIC") {
        return match cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("preempt="))
        {
            Some(m) => format!("dynamic, preempt={m} on the command line"),
            None => "dynamic, the build's default (not readable without debugfs)".into(),
        };
    }
    if words.contains(&"PREEMPT") {
        return "full (PREEMPT)".into();
    }
    "none or voluntary: a long syscall keeps its CPU until it returns or reschedules".into()
}

pub fn read(roots: &Roots) -> KernelFacts {
    let trim = |rel: &str| {
        read_text(&roots.proc(rel))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let release = trim("proc/sys/kernel/osrelease");
    let build = trim("proc/sys/kernel/version");
    let version = KernelVersion::parse(&release);
    let btf_path = roots.sys("sys/kernel/btf/vmlinux");
    // `record` decides with preflight on the live machine; a fixture tree mirrors it.
    let kprobe = if roots.is_live() {
        preflight::kprobe_support()
    } else if roots.sys("sys/bus/event_source/devices/kprobe").exists() {
        Ok(())
    } else {
        Err(
            "this kernel has no kprobe support (CONFIG_KPROBES is off: no \
             /sys/bus/event_source/devices/kprobe)"
                .into(),
        )
    };
    KernelFacts {
        preemption: preemption(&build, &trim("proc/cmdline")),
        release,
        version,
        build,
        btf: btf_path.exists(),
        btf_path: btf_path.display().to_string(),
        kprobes: kprobe.is_ok(),
        packet_path: packet_path(&kprobe),
        kprobes_why: kprobe.err(),
        rt_runtime_us: trim("proc/sys/kernel/sched_rt_runtime_us").parse().ok(),
        rt_period_us: trim("proc/sys/kernel/sched_rt_period_us").parse().ok(),
        behaviours: behaviours(version),
    }
}

/// What `record --attach auto` decides on this kernel: by default (no `--peer`), and
/// for an IPv4 `--peer` alone when that differs.
fn packet_path(kprobes: &Result<(), String>) -> String {
    use crate::kernel::packet_path::{decide, AttachMode, Needs};
    let hook = |peer| {
        let needs = Needs {
            probe: false,
            tcp_port: None,
            peer,
            icmp: true,
        };
        decide(AttachMode::Auto, &needs, kprobes.clone()).map(|p| p.hook.name())
    };
    let default = hook(None).unwrap_or("?");
    match hook(Some(std::net::Ipv4Addr::new(192, 0, 2, 1).into())) {
        Ok(peer) if peer != default => format!("{default} ({peer} for --peer IPv4 alone)"),
        _ => default.to_string(),
    }
}

pub fn check(k: &KernelFacts) -> Check {
    const ID: &str = "kernel";
    const TITLE: &str = "kernel";
    let details = k
        .behaviours
        .iter()
        .map(|b| b.text.clone())
        .chain(std::iter::once(format!("preemption: {}", k.preemption)));
    let Some(v) = k.version else {
        let what = if k.release.is_empty() {
            "no readable /proc/sys/kernel/osrelease".to_string()
        } else {
            format!("unrecognised release {:?}", k.release)
        };
        return Check::new(
            ID,
            TITLE,
            Status::Unknown,
            format!("version unknown ({what})"),
        )
        .details(details);
    };
    let mut risks = vec![];
    if defers_net_rx_to_ksoftirqd(v) {
        risks.push("NET_RX waits for a busy ksoftirqd here (4.9 to 6.4)");
    }
    if v < (5, 2, 0).into() {
        risks.push("memory.stat reads walk every dying memory cgroup (before 5.2)");
    }
    if risks.is_empty() {
        return Check::new(
            ID,
            TITLE,
            Status::Ok,
            format!(
                "{}: no deferral of NET_RX to a busy ksoftirqd (6.5+), memory.stat reads do not walk cgroups (5.2+)",
                k.release
            ),
        )
        .details(details);
    }
    Check::new(
        ID,
        TITLE,
        Status::Warn,
        format!("{}: {}", k.release, risks.join("; ")),
    )
    .todo(
        "keep long-running work off the CPUs that take RX (see RX CPUs), keep dying memory \
         cgroups few (see memory cgroups); a kernel from 6.5 has neither behaviour",
    )
    .details(details)
}

pub fn tracing_check(k: &KernelFacts) -> Check {
    const ID: &str = "tracing";
    const TITLE: &str = "tracing support";
    let kprobes = match &k.kprobes_why {
        None => "kprobes: yes".to_string(),
        Some(why) => format!("kprobes: no: {why}"),
    };
    let details = vec![
        format!(
            "BTF: {} {}",
            k.btf_path,
            if k.btf { "present" } else { "missing" }
        ),
        kprobes,
        format!(
            "record --attach auto would take packets from {}",
            k.packet_path
        ),
        "tracefs: not needed (raw tracepoints and perf-PMU kprobes attach without it)".into(),
    ];
    let summary = format!(
        "BTF {}, kprobes {}, packets via {}",
        if k.btf { "present" } else { "missing" },
        if k.kprobes { "yes" } else { "no" },
        k.packet_path
    );
    if k.btf {
        Check::new(ID, TITLE, Status::Ok, summary).details(details)
    } else {
        Check::new(ID, TITLE, Status::Warn, summary)
            .todo(
                "record needs struct offsets: pass a BTF file for this kernel with --btf \
                 (e.g. from BTFHub), or use a kernel built with CONFIG_DEBUG_INFO_BTF",
            )
            .details(details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testfs::Tree;

    #[test]
    fn versions_parse_from_releases() {
        let p = |s: &str| KernelVersion::parse(s).map(|v| v.to_string());
        assert_eq!(p("6.18.44-fc-v1045").as_deref(), Some("6.18.44"));
        assert_eq!(p("5.4.0-150-generic\n").as_deref(), Some("5.4.0"));
        assert_eq!(p("4.9").as_deref(), Some("4.9.0"));
        assert_eq!(p("6.1.0-47-amd64").as_deref(), Some("6.1.0"));
        assert_eq!(p(""), None);
        assert_eq!(p("linux"), None);
        assert!(defers_net_rx_to_ksoftirqd((4, 9, 0).into()));
        assert!(defers_net_rx_to_ksoftirqd((6, 4, 16).into()));
        assert!(!defers_net_rx_to_ksoftirqd((6, 5, 0).into()));
        assert!(!defers_net_rx_to_ksoftirqd((4, 4, 0).into()));
    }

    fn tree(release: &str) -> Tree {
        let t = Tree::new("kernel");
        t.file("proc/sys/kernel/osrelease", &format!("{release}\n"))
            .file("proc/sys/kernel/version", "#1 SMP PREEMPT_DYNAMIC Debian\n")
            .file("proc/sys/kernel/sched_rt_runtime_us", "950000\n")
            .file("proc/sys/kernel/sched_rt_period_us", "1000000\n");
        t
    }

    #[test]
    fn the_2019_incident_kernel_warns_and_a_new_one_does_not() {
        let t = tree("4.9.0-19-amd64");
        let k = read(&t.roots());
        let c = check(&k);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.summary.contains("NET_RX waits for a busy ksoftirqd"),
            "{}",
            c.summary
        );
        assert!(c.summary.contains("walk every dying"), "{}", c.summary);
        assert!(c
            .details
            .iter()
            .any(|d| d.contains("about 17 times") || d.contains("per-CPU counter")));
        let t = tree("6.1.0-47-amd64");
        let c = check(&read(&t.roots()));
        assert_eq!(c.status, Status::Warn);
        assert!(!c.summary.contains("memory.stat"), "{}", c.summary);
        let t = tree("6.18.44-fc-v1045");
        let k = read(&t.roots());
        assert_eq!(k.rt_runtime_us, Some(950_000));
        assert!(k.preemption.starts_with("dynamic"));
        let c = check(&k);
        assert_eq!(c.status, Status::Ok, "{c:#?}");
        assert!(c.details.iter().any(|d| d.contains("reverted in 6.5")));
    }

    #[test]
    fn no_btf_no_kprobes_and_no_version_are_said() {
        let t = Tree::new("kernel-bare");
        let k = read(&t.roots());
        assert_eq!(check(&k).status, Status::Unknown);
        assert!(check(&k)
            .summary
            .contains("no readable /proc/sys/kernel/osrelease"));
        let c = tracing_check(&k);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.summary,
            "BTF missing, kprobes no, packets via tracepoint:net:netif_receive_skb"
        );
        assert!(c.what_to_do.as_deref().unwrap().contains("--btf"));
        t.file("sys/kernel/btf/vmlinux", "")
            .dir("sys/bus/event_source/devices/kprobe");
        let c = tracing_check(&read(&t.roots()));
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.summary,
            "BTF present, kprobes yes, packets via tracepoint:net:netif_receive_skb \
             (kprobe:icmp_echo for --peer IPv4 alone)"
        );
    }
}
