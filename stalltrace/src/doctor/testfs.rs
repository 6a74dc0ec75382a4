//! Fixture trees for the doctor's tests: a private directory standing for `/`, with the
//! /sys and /proc files a test writes into it.
use std::path::{Path, PathBuf};

use stalltrace_testkit::scratch::Scratch;

use super::Roots;

pub struct Tree {
    dir: Scratch,
}

impl Tree {
    pub fn new(tag: &str) -> Self {
        Self {
            dir: Scratch::new(&format!("doctor-{tag}")).unwrap(),
        }
    }

    /// Both roots at this tree.
    pub fn roots(&self) -> Roots {
        Roots::new(self.dir.path(), self.dir.path())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    /// Writes `text` at `rel`, making its directories.
    pub fn file(&self, rel: &str, text: &str) -> &Self {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.path(rel)).unwrap();
        self
    }

    /// A symbolic link at `rel` pointing at `target` (as written).
    pub fn link(&self, rel: &str, target: &Path) -> &Self {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::os::unix::fs::symlink(target, p).unwrap();
        self
    }

    /// A thread in /proc: its `stat`, its `status` (Cpus_allowed_list) and, for a
    /// process's main thread, the process's `comm`.
    pub fn task(&self, t: Task) -> &Self {
        let flags: u64 = if t.kthread { 0x0020_8040 } else { 0x0040_0100 };
        // Fields 3.. of stat (field 1 is the tid, field 2 the name in parentheses).
        let mut rest: Vec<String> = vec!["S".into()];
        for field in 4..=52u32 {
            rest.push(match field {
                9 => flags.to_string(),
                14 => t.busy_ticks.to_string(),
                39 => t.last_cpu.to_string(),
                40 => t.rt_priority.to_string(),
                41 => t.policy.to_string(),
                _ => "0".into(),
            });
        }
        let stat = format!("{} ({}) {}\n", t.tid, t.comm, rest.join(" "));
        let status = format!(
            "Name:\t{}\nTgid:\t{}\nPid:\t{}\nCpus_allowed_list:\t{}\n",
            t.comm, t.pid, t.tid, t.allowed
        );
        self.file(&format!("proc/{}/task/{}/stat", t.pid, t.tid), &stat);
        self.file(&format!("proc/{}/task/{}/status", t.pid, t.tid), &status);
        if t.pid == t.tid {
            self.file(&format!("proc/{}/comm", t.pid), &format!("{}\n", t.comm));
        }
        self
    }
}

/// A fixture thread: SCHED_OTHER, idle, allowed on CPU 0, unless told otherwise.
pub struct Task {
    pid: u32,
    tid: u32,
    comm: String,
    kthread: bool,
    policy: u32,
    rt_priority: u32,
    allowed: String,
    last_cpu: u32,
    busy_ticks: u64,
}

impl Task {
    pub fn user(pid: u32, tid: u32, comm: &str) -> Self {
        Self {
            pid,
            tid,
            comm: comm.into(),
            kthread: false,
            policy: 0,
            rt_priority: 0,
            allowed: "0".into(),
            last_cpu: 0,
            busy_ticks: 0,
        }
    }

    pub fn kthread(pid: u32, comm: &str) -> Self {
        Self {
            kthread: true,
            ..Self::user(pid, pid, comm)
        }
    }

    /// May run on `cpus` (a list), last ran on the first of them.
    pub fn on(mut self, cpus: &str) -> Self {
        self.last_cpu = cpus
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.allowed = cpus.into();
        self
    }

    pub fn fifo(mut self, prio: u32) -> Self {
        self.policy = 1;
        self.rt_priority = prio;
        self
    }

    /// Spent `ticks` clock ticks on a CPU (user time).
    pub fn busy(mut self, ticks: u64) -> Self {
        self.busy_ticks = ticks;
        self
    }
}
