//! Threads that matter for RX: real-time user tasks (they keep SCHED_OTHER RX threads off
//! their CPUs), NAPI threads (`napi/<dev>-<id>`) and ksoftirqd. One pass over
//! /proc/*/task/*/stat, bounded; status files are read only for the threads kept.
use serde::{Deserialize, Serialize};

use super::{
    cpus::{self, CpuSet},
    read_text, Budget, Roots,
};

/// At most this many real-time user tasks are kept (named in the report).
const MAX_RT_KEPT: usize = 512;
/// PF_KTHREAD in the stat flags.
const PF_KTHREAD: u64 = 0x0020_0000;
/// CPU share from which a task is said to spin (most of its lifetime on a CPU).
pub const SPINNING_SHARE: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Other,
    Fifo,
    Rr,
    Batch,
    Idle,
    Deadline,
    Unknown(u32),
}

impl Policy {
    fn from_raw(n: u32) -> Self {
        match n {
            0 => Policy::Other,
            1 => Policy::Fifo,
            2 => Policy::Rr,
            3 => Policy::Batch,
            5 => Policy::Idle,
            6 => Policy::Deadline,
            n => Policy::Unknown(n),
        }
    }

    /// Runs before every SCHED_OTHER task on its CPU.
    pub fn realtime(self) -> bool {
        matches!(self, Policy::Fifo | Policy::Rr | Policy::Deadline)
    }

    pub fn label(self) -> String {
        match self {
            Policy::Other => "SCHED_OTHER".into(),
            Policy::Fifo => "SCHED_FIFO".into(),
            Policy::Rr => "SCHED_RR".into(),
            Policy::Batch => "SCHED_BATCH".into(),
            Policy::Idle => "SCHED_IDLE".into(),
            Policy::Deadline => "SCHED_DEADLINE".into(),
            Policy::Unknown(n) => format!("policy {n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub pid: u32,
    pub tid: u32,
    /// The thread's name.
    pub comm: String,
    /// The process's name, when it differs from the thread's.
    pub process: Option<String>,
    pub policy: Policy,
    pub rt_priority: u32,
    pub kernel_thread: bool,
    /// CPUs it may run on (Cpus_allowed_list).
    pub allowed: CpuSet,
    pub last_cpu: Option<u32>,
    /// Fraction of its lifetime spent on a CPU (user + system time / age).
    pub cpu_share: Option<f64>,
}

impl TaskInfo {
    /// `hog (pid 77, SCHED_FIFO 50, CPUs 1, 99% CPU)`.
    pub fn label(&self) -> String {
        let who = match &self.process {
            Some(p) => format!("{} (tid {} of {p} pid {}", self.comm, self.tid, self.pid),
            None if self.tid != self.pid => {
                format!("{} (pid {} tid {}", self.comm, self.pid, self.tid)
            }
            None => format!("{} (pid {}", self.comm, self.pid),
        };
        let prio = if self.policy.realtime() {
            format!(" {}", self.rt_priority)
        } else {
            String::new()
        };
        let share = self
            .cpu_share
            .map(|s| format!(", {:.0}% CPU", s * 100.0))
            .unwrap_or_default();
        format!(
            "{who}, {}{prio}, CPUs {}{share})",
            self.policy.label(),
            cpus::format(&self.allowed)
        )
    }

    pub fn spins(&self) -> bool {
        self.cpu_share.is_some_and(|s| s >= SPINNING_SHARE)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskScan {
    pub tasks_scanned: u64,
    pub cut: bool,
    pub scan_ms: u64,
    /// Threads whose stat could not be read (not ones that exited meanwhile).
    pub unreadable: u64,
    /// Real-time user threads (SCHED_FIFO, SCHED_RR, SCHED_DEADLINE).
    pub rt_user: Vec<TaskInfo>,
    /// Real-time user threads beyond the ones kept.
    pub rt_user_more: u64,
    /// Real-time kernel threads (migration/N, irq/N-…, …): expected, not contenders.
    pub rt_kernel: u64,
    pub napi: Vec<TaskInfo>,
    pub ksoftirqd: Vec<TaskInfo>,
    /// Other users' processes are hidden from us (/proc mounted with hidepid, not root).
    pub hidden: Option<String>,
}

struct Stat<'a> {
    comm: &'a str,
    flags: u64,
    utime: u64,
    stime: u64,
    start: u64,
    last_cpu: Option<u32>,
    rt_priority: u32,
    policy: u32,
}

/// /proc/PID/task/TID/stat; the name may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat(s: &str) -> Option<Stat<'_>> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?;
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state).
    let field = |n: usize| rest.get(n.checked_sub(3)?).copied();
    let num = |n: usize| field(n).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        comm,
        flags: num(9)?,
        utime: num(14).unwrap_or(0),
        stime: num(15).unwrap_or(0),
        start: num(22).unwrap_or(0),
        last_cpu: field(39).and_then(|v| v.parse().ok()),
        rt_priority: field(40).and_then(|v| v.parse().ok()).unwrap_or(0),
        policy: field(41).and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

fn allowed_cpus(status: &str) -> CpuSet {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(cpus::parse_list)
        .unwrap_or_default()
}

/// Clock ticks per second of the times in stat (USER_HZ).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn numeric_entries(dir: &std::path::Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Whether other users' processes are hidden from us, and how.
fn hidden(roots: &Roots) -> Option<String> {
    let mounts = read_text(&roots.proc("proc/mounts")).ok()?;
    let opt = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(2) != Some(&"proc") {
            return None;
        }
        f.get(3)?
            .split(',')
            .find(|o| o.starts_with("hidepid=") && !matches!(*o, "hidepid=0" | "hidepid=off"))
            .map(str::to_string)
    })?;
    let status = read_text(&roots.proc("proc/self/status")).ok()?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u32>()
        .ok()?;
    (euid != 0).then(|| format!("/proc is mounted with {opt} and this is not root"))
}

pub fn scan(roots: &Roots, mut budget: Budget) -> TaskScan {
    let started = std::time::Instant::now();
    let mut out = TaskScan {
        hidden: hidden(roots),
        ..TaskScan::default()
    };
    let hz = clock_ticks();
    let uptime_ticks = read_text(&roots.proc("proc/uptime"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| secs * hz);
    let proc_dir = roots.proc("proc");
    'pids: for pid in numeric_entries(&proc_dir) {
        let task_dir = proc_dir.join(pid.to_string()).join("task");
        for tid in numeric_entries(&task_dir) {
            if !budget.take() {
                break 'pids;
            }
            out.tasks_scanned += 1;
            let dir = task_dir.join(tid.to_string());
            let text = match read_text(&dir.join("stat")) {
                Ok(t) => t,
                // Exited between the listing and the read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    out.unreadable += 1;
                    continue;
                }
            };
            let Some(st) = parse_stat(&text) else {
                out.unreadable += 1;
                continue;
            };
            let policy = Policy::from_raw(st.policy);
            let kthread = st.flags & PF_KTHREAD != 0;
            let is_napi = kthread && st.comm.starts_with("napi/");
            let is_ksoftirqd = kthread && st.comm.starts_with("ksoftirqd/");
            let rt_user = policy.realtime() && !kthread;
            if policy.realtime() && kthread && !is_napi && !is_ksoftirqd {
                out.rt_kernel += 1;
            }
            if !(is_napi || is_ksoftirqd || rt_user) {
                continue;
            }
            if rt_user && out.rt_user.len() >= MAX_RT_KEPT {
                out.rt_user_more += 1;
                continue;
            }
            let cpu_share = uptime_ticks.and_then(|up| {
                let age = up - st.start as f64;
                (age > hz).then(|| ((st.utime + st.stime) as f64 / age).min(1.0))
            });
            let process = if tid != pid {
                read_text(&proc_dir.join(pid.to_string()).join("comm"))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|p| p != st.comm)
            } else {
                None
            };
            let info = TaskInfo {
                pid,
                tid,
                comm: st.comm.to_string(),
                process,
                policy,
                rt_priority: st.rt_priority,
                kernel_thread: kthread,
                allowed: allowed_cpus(&read_text(&dir.join("status")).unwrap_or_default()),
                last_cpu: st.last_cpu,
                cpu_share,
            };
            if is_napi {
                out.napi.push(info);
            } else if is_ksoftirqd {
                out.ksoftirqd.push(info);
            } else {
                out.rt_user.push(info);
            }
        }
    }
    out.cut = budget.cut();
    out.scan_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::doctor::testfs::{Task, Tree};

    #[test]
    fn stat_with_a_hostile_name_parses_from_the_last_parenthesis() {
        let s = "77 (a) (b) c) S 1 77 77 0 -1 4194560 0 0 0 0 90 10 0 0 -51 0 1 0 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 17 1 50 1 0 0 0\n";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, "a) (b) c");
        assert_eq!(st.flags, 4194560);
        assert_eq!((st.utime, st.stime, st.start), (90, 10, 100));
        assert_eq!((st.last_cpu, st.rt_priority, st.policy), (Some(1), 50, 1));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x)").is_none());
    }

    #[test]
    fn finds_rt_user_tasks_napi_threads_and_ksoftirqd() {
        let t = Tree::new("tasks");
        t.file("proc/uptime", "1000.0 1000.0\n")
            .task(Task::user(1, 1, "init").on("0-1"))
            .task(Task::kthread(10, "ksoftirqd/1").on("1"))
            .task(Task::kthread(11, "migration/1").on("1").fifo(99))
            .task(Task::kthread(200, "napi/vB-8193").on("1"))
            .task(Task::user(300, 300, "rtapp").on("0-1"))
            .task(Task::user(300, 301, "hog").on("1").fifo(50).busy(90_000));
        let s = scan(&t.roots(), Budget::new(Duration::from_secs(5), 1000));
        assert_eq!(s.tasks_scanned, 6);
        assert!(!s.cut);
        assert_eq!(s.rt_kernel, 1);
        assert_eq!(s.napi.len(), 1);
        assert_eq!(s.napi[0].comm, "napi/vB-8193");
        assert_eq!(cpus::format(&s.napi[0].allowed), "1");
        assert_eq!(s.ksoftirqd.len(), 1);
        assert_eq!(s.rt_user.len(), 1);
        let hog = &s.rt_user[0];
        assert_eq!(
            (hog.pid, hog.tid, hog.policy, hog.rt_priority),
            (300, 301, Policy::Fifo, 50)
        );
        assert_eq!(hog.process.as_deref(), Some("rtapp"));
        // 900 of 1000 seconds on a CPU.
        assert!(hog.spins());
        assert_eq!(
            hog.label(),
            "hog (tid 301 of rtapp pid 300, SCHED_FIFO 50, CPUs 1, 90% CPU)"
        );
        // A scan cut by its budget says so.
        let s = scan(&t.roots(), Budget::new(Duration::from_secs(5), 2));
        assert!(s.cut);
        assert_eq!(s.tasks_scanned, 2);
    }

    #[test]
    fn hidepid_without_root_is_reported() {
        let t = Tree::new("hidepid");
        t.file(
            "proc/mounts",
            "proc /proc proc rw,nosuid,hidepid=invisible 0 0\n",
        )
        .file(
            "proc/self/status",
            "Name:\tdoctor\nUid:\t1000\t1000\t1000\t1000\n",
        );
        let s = scan(&t.roots(), Budget::new(Duration::from_secs(5), 10));
        assert!(s.hidden.as_deref().unwrap().contains("hidepid=invisible"));
        t.file("proc/self/status", "Uid:\t0\t0\t0\t0\n");
        assert_eq!(
            scan(&t.roots(), Budget::new(Duration::from_secs(5), 10)).hidden,
            None
        );
    }
}
