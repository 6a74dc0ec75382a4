//! `stalltrace doctor`: from "who held the CPU" to "why, and what to do". Read-only
//! checks of the node for the conditions behind the stalls `record` catches: dying memory
//! cgroups and the cost of reading `memory.stat` (the 2019 GitHub incident's cadvisor case), the kernel's
//! known behaviours, where RX runs and what else may hold those CPUs, and the tool's own
//! prerequisites.
//!
//! Every check reads files only (under [`Roots`], so tests read fixture trees), bounds
//! every walk by count and by time, and says `unknown` with the reason when it cannot
//! see. One module per group of checks; each turns its facts into [`Check`]s.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use stalltrace_analysis::dump::CgroupFacts;

use crate::exit::ExitCode;

pub mod cgroups;
pub mod contention;
pub mod cpus;
pub mod kernel;
pub mod memstat;
pub mod privileges;
pub mod rx;
pub mod tasks;
#[cfg(test)]
mod testfs;
mod text;

pub const REPORT_FORMAT: &str = "stalltrace-doctor";
pub const REPORT_VERSION: u32 = 1;

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Report format on standard output.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// (tests) Read /sys below this directory instead of /.
    #[arg(long, hide = true, default_value = "/", value_name = "DIR")]
    pub sys_root: PathBuf,
    /// (tests) Read /proc below this directory instead of /.
    #[arg(long, hide = true, default_value = "/", value_name = "DIR")]
    pub proc_root: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Where `/sys` and `/proc` are read from: `/` on a live node, a fixture tree in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

impl Roots {
    /// This machine.
    pub fn live() -> Self {
        Self::new("/", "/")
    }

    pub fn new(sys: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys.into(),
            proc: proc.into(),
        }
    }

    /// `rel` (e.g. `sys/fs/cgroup`) below the sys root.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sys.join(rel.trim_start_matches('/'))
    }

    /// `rel` (e.g. `proc/cgroups`) below the proc root.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.proc.join(rel.trim_start_matches('/'))
    }

    /// Reading this machine itself: then the answers `record` would get from
    /// `kernel::preflight` are used as they are.
    pub fn is_live(&self) -> bool {
        self.sys == Path::new("/") && self.proc == Path::new("/")
    }
}

/// A check's verdict. Only `bad` changes the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Unknown,
    Warn,
    Bad,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unknown => "unknown",
            Status::Warn => "warn",
            Status::Bad => "bad",
        }
    }
}

/// One line of the report: a verdict, the measured evidence, what to do, and the
/// details (numbers, names, thresholds and why) indented below it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable key for scripts (`memory_cgroups`, `memory_stat_cost`, …).
    pub id: String,
    /// What is checked, for people (`memory cgroups`).
    pub title: String,
    pub status: Status,
    /// The measured evidence in one phrase.
    pub summary: String,
    pub what_to_do: Option<String>,
    pub details: Vec<String>,
}

impl Check {
    pub fn new(id: &str, title: &str, status: Status, summary: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            status,
            summary: summary.into(),
            what_to_do: None,
            details: vec![],
        }
    }

    pub fn todo(mut self, what: impl Into<String>) -> Self {
        self.what_to_do = Some(what.into());
        self
    }

    pub fn detail(mut self, line: impl Into<String>) -> Self {
        self.details.push(line.into());
        self
    }

    pub fn details(mut self, lines: impl IntoIterator<Item = String>) -> Self {
        self.details.extend(lines);
        self
    }
}

/// Everything measured, behind the checks (for scripts and for `record`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub cgroups: CgroupFacts,
    pub memcg: cgroups::Census,
    pub stat_cost: memstat::StatCost,
    pub kernel: kernel::KernelFacts,
    pub rx: rx::RxLayout,
    pub tasks: tasks::TaskScan,
    pub tool: privileges::ToolFacts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    pub version: u32,
    pub host: String,
    /// `uname -r`.
    pub kernel: String,
    /// RFC 3339 wall-clock time the checks started.
    pub measured_at: String,
    /// How long the checks took.
    pub took_ms: u64,
    pub checks: Vec<Check>,
    pub facts: Facts,
}

impl DoctorReport {
    /// The worst verdict over all checks.
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.worst() == Status::Bad {
            ExitCode::DoctorBad
        } else {
            ExitCode::Ok
        }
    }
}

/// Budgets: together they keep `doctor` within seconds on a node with tens of thousands
/// of cgroups and tasks (the walks are what a slow node makes slow).
pub mod budget {
    use std::time::Duration;
    /// Directories of the memory hierarchy walked to count live cgroups.
    pub const CGROUP_DIRS: u64 = 200_000;
    pub const CGROUP_WALK: Duration = Duration::from_secs(2);
    /// Timed reads of one memory.stat (root, largest subtrees).
    pub const STAT_READS_EACH: u32 = 5;
    pub const STAT_SAMPLES_TOTAL: Duration = Duration::from_secs(2);
    /// The cadvisor-like pass over every memory.stat.
    pub const STAT_FULL_WALK: Duration = Duration::from_secs(3);
    /// Threads looked at for scheduling policy and affinity.
    pub const TASKS: u64 = 200_000;
    pub const TASK_SCAN: Duration = Duration::from_millis(1500);
    /// Network interfaces and queues looked at (a node with pods has a veth each).
    pub const INTERFACES: u64 = 4096;
    pub const QUEUES_PER_INTERFACE: usize = 1024;
    pub const NET_SCAN: Duration = Duration::from_secs(1);
    /// `record` measures its cgroup facts before attaching: cheaper bounds.
    pub const FACTS_WALK: Duration = Duration::from_secs(1);
    pub const FACTS_READS: Duration = Duration::from_millis(500);
}

/// A bound on a walk: so many items and so much time, whichever ends first.
#[derive(Debug)]
pub struct Budget {
    deadline: Instant,
    left: u64,
    cut: bool,
}

impl Budget {
    pub fn new(time: Duration, items: u64) -> Self {
        Self {
            deadline: Instant::now() + time,
            left: items,
            cut: false,
        }
    }

    /// Whether one more item may be taken; once refused, [`Budget::cut`] says so.
    pub fn take(&mut self) -> bool {
        if self.cut {
            return false;
        }
        if self.left == 0 || Instant::now() >= self.deadline {
            self.cut = true;
            return false;
        }
        self.left -= 1;
        true
    }

    pub fn cut(&self) -> bool {
        self.cut
    }
}

/// Largest file read whole (/proc/interrupts on a big machine is a few hundred KiB).
const MAX_FILE: u64 = 4 << 20;

/// A /proc or /sys text file, bounded in size.
pub(crate) fn read_text(p: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(p)?
        .take(MAX_FILE)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// A file holding one number (sysctls, sysfs attributes).
pub(crate) fn read_u64(p: &Path) -> Option<u64> {
    read_text(p).ok()?.trim().parse().ok()
}

/// Why a read failed, in words that say what to do about it.
pub(crate) fn why(p: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            format!("permission denied reading {} (run as root)", p.display())
        }
        std::io::ErrorKind::NotFound => format!("{} does not exist", p.display()),
        _ => format!("reading {}: {e}", p.display()),
    }
}

/// `3120` → `3 120`: counts people compare at a glance.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `9 µs`, `2.35 ms` (between 1 and 10 ms, where a stat read
/// starts to hurt), `150 ms`, `1.3 s`.
pub fn dur(ns: u64) -> String {
    if (1_000_000..10_000_000).contains(&ns) && !ns.is_multiple_of(1_000_000) {
        format!("{} ms", stalltrace_analysis::units::ms(ns, 2))
    } else {
        stalltrace_analysis::units::human_ns(ns)
    }
}

/// Runs every check against `roots`. Never fails: what cannot be read is `unknown`.
pub fn examine(roots: &Roots) -> DoctorReport {
    let started = Instant::now();
    let measured_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let kernel = kernel::read(roots);
    let (census, dirs) =
        cgroups::census(roots, Budget::new(budget::CGROUP_WALK, budget::CGROUP_DIRS));
    let stat_cost = memstat::measure(&census, &dirs, budget::STAT_SAMPLES_TOTAL, true);
    let tasks = tasks::scan(roots, Budget::new(budget::TASK_SCAN, budget::TASKS));
    let rx = rx::read(roots, &tasks);
    let tool = privileges::read(roots);
    let checks = vec![
        cgroups::check(&census, &kernel),
        memstat::check(&stat_cost, &census, &kernel),
        kernel::check(&kernel),
        rx::queues_check(&rx, &tasks),
        rx::budget_check(&rx),
        contention::check(&rx, &tasks, &kernel),
        kernel::tracing_check(&kernel),
        privileges::check(&tool, &kernel),
    ];
    let cgroups = memstat::facts(&census, &stat_cost, measured_at.clone());
    DoctorReport {
        format: REPORT_FORMAT.into(),
        version: REPORT_VERSION,
        host: crate::sys::read_trim(roots.proc("proc/sys/kernel/hostname")).unwrap_or_default(),
        kernel: kernel.release.clone(),
        measured_at,
        took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        checks,
        facts: Facts {
            cgroups,
            memcg: census,
            stat_cost,
            kernel,
            rx,
            tasks,
            tool,
        },
    }
}

/// The memory-cgroup facts `record` stores in its dump header: counts and a few timed
/// reads of the root's memory.stat, within about a second and a half.
pub fn cgroup_facts(roots: &Roots) -> CgroupFacts {
    let measured_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let (census, dirs) =
        cgroups::census(roots, Budget::new(budget::FACTS_WALK, budget::CGROUP_DIRS));
    let stat_cost = memstat::measure(&census, &dirs, budget::FACTS_READS, false);
    memstat::facts(&census, &stat_cost, measured_at)
}

/// `stalltrace doctor`.
pub fn run(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let roots = Roots::new(a.sys_root, a.proc_root);
    let report = examine(&roots);
    match a.format {
        Format::Text => {
            for line in text::render(&report) {
                crate::outln!("{line}");
            }
        }
        Format::Json => crate::outln!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_at_a_glance() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(3120), "3 120");
        assert_eq!(count(1_234_567), "1 234 567");
        assert_eq!(dur(212_000), "212 µs");
        assert_eq!(dur(2_345_000), "2.35 ms");
        assert_eq!(dur(153_000_000), "153 ms");
        assert_eq!(dur(5_000_000), "5 ms");
    }

    #[test]
    fn budget_stops_on_count_and_says_so() {
        let mut b = Budget::new(Duration::from_secs(60), 2);
        assert!(b.take() && b.take());
        assert!(!b.take());
        assert!(b.cut());
        let mut t = Budget::new(Duration::ZERO, 10);
        assert!(!t.take());
        assert!(t.cut());
    }

    use crate::doctor::testfs::{Task, Tree};

    /// The 2019 GitHub incident's node, and the lab's planted stall, in one fixture: kernel 4.9, cgroup
    /// v1 with 20 000 dying memory cgroups and a kubepods subtree, a virtio NIC whose
    /// queue interrupt goes to CPU 1, a napi thread pinned to CPU 1 next to a spinning
    /// SCHED_FIFO task, no BTF, no kprobes, and not root.
    fn bad_node() -> Tree {
        let t = Tree::new("node");
        t.file("proc/sys/kernel/osrelease", "4.9.0-19-amd64\n")
            .file("proc/sys/kernel/version", "#1 SMP Debian 4.9.320-2\n")
            .file("proc/sys/kernel/hostname", "kube-node-bad\n")
            .file("proc/sys/kernel/sched_rt_runtime_us", "950000\n")
            .file("proc/sys/kernel/sched_rt_period_us", "1000000\n")
            .file("proc/uptime", "1000.00 1500.00\n")
            .file(
                "proc/mounts",
                "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\nproc /proc proc rw 0 0\n",
            )
            .file("proc/cgroups", "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t20012\t1\n")
            .file("proc/self/status", "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n")
            .file("proc/self/limits", "Max locked memory         65536                65536                bytes\n")
            .file("sys/fs/cgroup/memory/memory.stat", "cache 0\n")
            .file("sys/fs/cgroup/memory/kubepods/memory.stat", "cache 0\n")
            .file("sys/fs/cgroup/memory/system.slice/memory.stat", "cache 0\n")
            .file(
                "proc/interrupts",
                "           CPU0       CPU1\n 38:  0  6494  PCI-MSI-edge  virtio2-input.0\n 39:  5579  0  PCI-MSI-edge  virtio2-output.0\n",
            )
            .file("proc/irq/38/smp_affinity_list", "1\n")
            .file("proc/irq/39/smp_affinity_list", "0\n")
            .file("sys/devices/system/cpu/online", "0-1\n")
            .file("proc/sys/net/core/netdev_budget", "300\n")
            .file("proc/sys/net/core/netdev_budget_usecs", "2000\n")
            .file("proc/sys/net/core/dev_weight", "64\n")
            .file("proc/sys/net/core/rps_sock_flow_entries", "0\n")
            .dir("sys/devices/pci0000:00/0000:00:03.0/virtio2")
            .link(
                "sys/class/net/eth0/device",
                &t.path("sys/devices/pci0000:00/0000:00:03.0/virtio2"),
            )
            .file("sys/class/net/eth0/queues/rx-0/rps_cpus", "0\n")
            .file("sys/class/net/eth0/threaded", "1\n")
            .task(Task::user(1, 1, "systemd").on("0-1"))
            .task(Task::kthread(16, "ksoftirqd/1").on("1"))
            .task(Task::kthread(812, "napi/eth0-8193").on("1"))
            .task(Task::user(4000, 4000, "cadvisor").on("0-1"))
            .task(Task::user(6000, 6000, "spin").on("1").fifo(50).busy(95_000));
        for i in 0..9 {
            t.dir(&format!("sys/fs/cgroup/memory/kubepods/pod{i}"));
        }
        t
    }

    #[test]
    fn a_bad_node_reads_as_one_line_per_check_and_exits_7() {
        let t = bad_node();
        let r = examine(&t.roots());
        let ids: Vec<&str> = r.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "memory_cgroups",
                "memory_stat_cost",
                "kernel",
                "rx_queues",
                "softirq_budget",
                "rx_cpus",
                "tracing",
                "privileges"
            ]
        );
        let status = |id: &str| r.checks.iter().find(|c| c.id == id).map(|c| c.status);
        assert_eq!(status("memory_cgroups"), Some(Status::Bad));
        assert_eq!(status("memory_stat_cost"), Some(Status::Ok));
        assert_eq!(status("kernel"), Some(Status::Warn));
        assert_eq!(status("rx_queues"), Some(Status::Ok));
        assert_eq!(status("softirq_budget"), Some(Status::Ok));
        assert_eq!(status("rx_cpus"), Some(Status::Bad));
        assert_eq!(status("tracing"), Some(Status::Warn));
        assert_eq!(status("privileges"), Some(Status::Warn));
        assert_eq!(r.exit_code(), ExitCode::DoctorBad);
        assert_eq!(r.host, "kube-node-bad");
        assert_eq!(r.facts.cgroups.memcg_dying, Some(20_000));
        assert_eq!(r.facts.cgroups.kubepods_live, Some(10));

        let text = text::render(&r);
        assert!(
            text[0].starts_with("stalltrace doctor on kube-node-bad (Linux 4.9.0-19-amd64)"),
            "{}",
            text[0]
        );
        assert!(text.contains(&"[bad] memory cgroups: 20 000 dying, 12 live (10 under kubepods); what to do: find what creates and removes short-lived cgroups that leave page cache behind (pods, jobs, transient units); for relief now `sync; echo 3 > /proc/sys/vm/drop_caches` frees the pages that pin them (the 2019 GitHub incident's workaround; cached files are re-read), and then watch this count; kernels from 5.2 stop walking them on every memory.stat read".to_string()), "{text:#?}");
        let rx = text
            .iter()
            .find(|l| l.starts_with("[bad] RX CPUs: "))
            .unwrap();
        assert!(
            rx.contains("napi/eth0-8193 (pid 812, SCHED_OTHER, CPUs 1"),
            "{rx}"
        );
        assert!(
            rx.contains("spin (pid 6000, SCHED_FIFO 50, CPUs 1, 95% CPU)"),
            "{rx}"
        );
        // Every check is one unindented line; everything else is indented detail.
        let heads = text.iter().filter(|l| l.starts_with('[')).count();
        assert_eq!(heads, r.checks.len());
        assert!(text[1..text.len() - 1]
            .iter()
            .all(|l| l.starts_with('[') || l.starts_with("    ")));
        assert_eq!(
            text.last().unwrap(),
            "2 bad, 3 warn, 0 unknown, 3 ok (exit code 7)"
        );
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let r = examine(&bad_node().roots());
        let json = serde_json::to_string_pretty(&r).unwrap();
        let back: DoctorReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["format"], "stalltrace-doctor");
        assert_eq!(v["checks"][0]["status"], "bad");
        assert_eq!(v["facts"]["cgroups"]["hierarchy"], "v1");
        assert_eq!(
            v["facts"]["rx"]["rx_cpus"]["1"][0],
            "irq 38 virtio2-input.0"
        );
    }

    #[test]
    fn garbage_everywhere_is_unknown_or_ok_never_a_panic() {
        let t = Tree::new("garbage");
        let junk = "\u{0}((( ))) -1 0x zz 99999999999999999999999 \u{202e}\n:\n";
        for f in [
            "proc/sys/kernel/osrelease",
            "proc/sys/kernel/version",
            "proc/sys/kernel/sched_rt_runtime_us",
            "proc/uptime",
            "proc/mounts",
            "proc/cgroups",
            "proc/self/status",
            "proc/self/limits",
            "proc/interrupts",
            "proc/irq/38/smp_affinity_list",
            "proc/net/softnet_stat",
            "proc/sys/net/core/netdev_budget",
            "sys/fs/cgroup/cgroup.controllers",
            "sys/fs/cgroup/memory/memory.stat",
            "sys/fs/cgroup/memory/cgroup.stat",
            "sys/devices/system/cpu/online",
            "sys/devices/system/cpu/isolated",
            "sys/class/net/eth0/queues/rx-0/rps_cpus",
            "sys/class/net/eth0/threaded",
            "proc/7/task/7/stat",
            "proc/7/task/7/status",
        ] {
            t.file(f, junk);
        }
        t.file("proc/8/task/8/stat", "8 (x) R 1 2 3")
            .file("proc/9/task/9/stat", "9 (y) S 0 0 0 0 0 not-a-number 0")
            .file("sys/devices/system/cpu/nohz_full", "0-4294967295\n");
        let r = examine(&t.roots());
        assert_eq!(r.checks.len(), 8);
        assert_ne!(r.exit_code(), ExitCode::DoctorBad, "{:#?}", r.checks);
        assert!(!text::render(&r).is_empty());
        let back: DoctorReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.checks, r.checks);
    }

    #[test]
    fn cgroup_facts_are_measured_within_their_bounds() {
        let started = Instant::now();
        let f = cgroup_facts(&bad_node().roots());
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(f.memcg_dying, Some(20_000));
        assert_eq!(f.memcg_live, Some(12));
        assert_eq!(f.root_stat_reads, budget::STAT_READS_EACH);
        assert!(f.root_stat_read_median_ns.is_some());
        assert!(!f.measured_at.is_empty());
    }

    #[test]
    fn worst_status_decides_the_exit_code() {
        let mut r = examine(&Roots::new("/nonexistent-sys", "/nonexistent-proc"));
        assert_ne!(r.worst(), Status::Bad, "{:#?}", r.checks);
        assert_eq!(r.exit_code(), ExitCode::Ok);
        r.checks.push(Check::new("x", "x", Status::Bad, "x"));
        assert_eq!(r.exit_code(), ExitCode::DoctorBad);
    }
}
