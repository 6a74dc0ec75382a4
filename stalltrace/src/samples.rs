//! Samples of whoever holds a CPU while an RX wait is pending there (the kernel's
//! sampler, always on; it records nothing outside waits), kept per CPU until the wait
//! they fall in is reported, then turned into each holder's activity: user space, the
//! syscalls and files, the kernel otherwise; and with `--stacks` its code paths.
//!
//! Samples reach user space before the wait they belong to: both are written to one
//! ring buffer on the wait's CPU, the wait only when it ends.
use std::{
    collections::{HashMap, VecDeque},
    rc::Rc,
};

use stalltrace_analysis::{
    activity::Doing,
    dump::{Activity, HolderRec, SamplerStats, StackStats},
};
use tracer_common::{SampleEvent, SampleMode};

use crate::{
    events::comm_str,
    stacks::{SampleStacks, StackCollector},
    syscall::{fd_path, syscall_name, takes_fd},
};

/// Samples kept per CPU, and for how long (boot ns) behind the newest: a wait longer
/// than that loses its earliest samples.
const KEEP_PER_CPU: usize = 1 << 16;
const KEEP_NS: u64 = 30_000_000_000;

/// One sample, with the file it named resolved while the process lived.
#[derive(Debug, Clone)]
pub struct Sample {
    pub ts_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub mode: u32,
    pub nr: i64,
    /// The syscall's name in [`SampleMode::Syscall`].
    pub name: Option<Rc<str>>,
    pub path: Option<Rc<str>>,
    /// Stack ids (`--stacks`), or negative errnos.
    pub kid: i32,
    pub uid: i32,
    /// Already attached to a holder (overlapping waits of one stall share samples:
    /// counted once).
    attached: bool,
}

impl Sample {
    fn doing(&self) -> Doing<'_> {
        match SampleMode::from_u32(self.mode) {
            Some(SampleMode::User) => Doing::User,
            Some(SampleMode::Kernel) => Doing::Kernel,
            Some(SampleMode::Kthread) => Doing::Kthread,
            Some(SampleMode::Syscall) => Doing::Syscall {
                nr: self.nr,
                name: self.name.as_deref().unwrap_or("?"),
                path: self.path.as_deref(),
            },
            Some(SampleMode::KernelUnknown) | None => Doing::Unknown,
        }
    }
}

/// The file a syscall sample names: its path argument (openat and friends), else the
/// file behind its fd argument, read from /proc now; when the fd is already closed
/// again (a loop of open, read, close), the file the task last opened.
#[derive(Default)]
struct Files {
    last_opened: HashMap<u32, Rc<str>>,
    /// (thread group, fd) → the file it was last seen to be: a process that has exited
    /// by the time its samples are read still names its files.
    fds: HashMap<(u32, u64), Rc<str>>,
    interned: HashMap<Box<str>, Rc<str>>,
}

impl Files {
    fn intern(&mut self, s: &str) -> Rc<str> {
        if let Some(r) = self.interned.get(s) {
            return r.clone();
        }
        if self.interned.len() >= 1 << 14 {
            self.interned.clear();
        }
        let r: Rc<str> = Rc::from(s);
        self.interned.insert(Box::from(s), r.clone());
        r
    }

    /// The syscall's name and the file it names.
    fn of(&mut self, ev: &SampleEvent) -> (Option<Rc<str>>, Option<Rc<str>>) {
        if ev.mode != SampleMode::Syscall as u32 {
            return (None, None);
        }
        let name = self.intern(&syscall_name(ev.nr));
        (Some(name.clone()), self.file(ev, &name))
    }

    fn file(&mut self, ev: &SampleEvent, name: &str) -> Option<Rc<str>> {
        let mut arg = comm_str(&ev.path);
        if !ev.path.contains(&0) {
            // The kernel's copy filled the buffer: the path goes on.
            arg.push('…');
        }
        if !arg.is_empty() {
            let p = self.intern(&absolute_proc(&arg, ev.header.tgid, ev.header.pid));
            if self.last_opened.len() >= 1 << 14 {
                self.last_opened.clear();
            }
            self.last_opened.insert(ev.header.tgid, p.clone());
            return Some(p);
        }
        let key = (ev.header.tgid, ev.arg0);
        match fd_path(ev.header.pid, name, ev.arg0) {
            Some(p) => {
                let p = self.intern(&p);
                if self.fds.len() >= 1 << 14 {
                    self.fds.clear();
                }
                self.fds.insert(key, p.clone());
                Some(p)
            }
            None if takes_fd(name) => self
                .last_opened
                .get(&ev.header.tgid)
                .or_else(|| self.fds.get(&key))
                .cloned(),
            None => None,
        }
    }
}

/// `/proc/self/…` as the task meant it (`/proc/<its pid>/…`), so a path argument and
/// the same file read back through an fd are one file.
fn absolute_proc(path: &str, tgid: u32, pid: u32) -> String {
    if let Some(rest) = path.strip_prefix("/proc/self/") {
        format!("/proc/{tgid}/{rest}")
    } else if let Some(rest) = path.strip_prefix("/proc/thread-self/") {
        format!("/proc/{tgid}/task/{pid}/{rest}")
    } else {
        path.to_string()
    }
}

pub struct Sampler {
    hz: u64,
    by_cpu: HashMap<u32, VecDeque<Sample>>,
    newest: u64,
    files: Files,
    stats: SamplerStats,
    /// `--stacks`: symbolizes the samples' stacks.
    stacks: Option<StackCollector>,
}

impl Sampler {
    pub fn new(hz: u64, stacks: Option<StackCollector>) -> Self {
        Self {
            hz,
            by_cpu: HashMap::new(),
            newest: 0,
            files: Files::default(),
            stats: SamplerStats {
                hz,
                ..Default::default()
            },
            stacks,
        }
    }

    pub fn hz(&self) -> u64 {
        self.hz
    }

    pub fn stats(&self) -> SamplerStats {
        self.stats.clone()
    }

    /// The file an fd of a thread group was last seen to be (by a sample while the
    /// process lived).
    pub fn file_of(&self, tgid: u32, fd: u64) -> Option<String> {
        self.files.fds.get(&(tgid, fd)).map(|p| p.to_string())
    }

    /// `--stacks`: what the stack side delivered.
    pub fn stack_stats(&self) -> Option<StackStats> {
        self.stacks.as_ref().map(|s| s.stats())
    }

    /// Keeps a sample until the wait it falls in is reported.
    pub fn push(&mut self, ev: &SampleEvent) {
        self.stats.samples += 1;
        if let Some(st) = self.stacks.as_mut() {
            st.note(ev.kstack_id, ev.ustack_id);
        }
        let ts = ev.header.ts_ns;
        self.newest = self.newest.max(ts);
        let floor = self.newest.saturating_sub(KEEP_NS);
        let (name, path) = self.files.of(ev);
        let q = self.by_cpu.entry(ev.header.cpu).or_default();
        while q.front().is_some_and(|s| s.ts_ns < floor) || q.len() >= KEEP_PER_CPU {
            q.pop_front();
        }
        q.push_back(Sample {
            ts_ns: ts,
            pid: ev.header.pid,
            tgid: ev.header.tgid,
            mode: ev.mode,
            nr: ev.nr,
            name,
            path,
            kid: ev.kstack_id,
            uid: ev.ustack_id,
            attached: false,
        });
        // Now and then, the CPUs that stopped sampling too.
        if self.stats.samples.is_multiple_of(4096) {
            for q in self.by_cpu.values_mut() {
                while q.front().is_some_and(|s| s.ts_ns < floor) {
                    q.pop_front();
                }
            }
        }
    }

    /// One task's samples on `cpu` in `[start, end]`, marked attributed.
    fn window(&mut self, cpu: u32, pid: u32, start: u64, end: u64) -> Vec<Sample> {
        let Some(q) = self.by_cpu.get_mut(&cpu) else {
            return vec![];
        };
        let mut out = vec![];
        for s in q.iter_mut() {
            if s.pid == pid && s.ts_ns >= start && s.ts_ns <= end {
                if !s.attached {
                    s.attached = true;
                    self.stats.attributed += 1;
                }
                out.push(s.clone());
            }
        }
        out
    }

    /// Gives each holder of a wait on `cpu` in `[start, end]` its activity (and its
    /// stacks with `--stacks`).
    pub fn attach(&mut self, cpu: u32, start: u64, end: u64, holders: &mut [HolderRec]) {
        for h in holders.iter_mut() {
            if h.pid == 0 {
                continue;
            }
            let samples = self.window(cpu, h.pid, start, end);
            if samples.is_empty() {
                continue;
            }
            h.activity = Some(Activity::from_samples(samples.iter().map(Sample::doing)));
            if let Some(st) = self.stacks.as_mut() {
                let ids: Vec<SampleStacks> = samples
                    .iter()
                    .map(|s| SampleStacks {
                        tgid: s.tgid,
                        kid: s.kid,
                        uid: s.uid,
                    })
                    .collect();
                h.stacks = st.holder_stacks(&ids);
                st.set_attributed(self.stats.attributed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use stalltrace_analysis::dump::HolderRec;
    use tracer_common::{EventHeader, EventKind, PENDING_RX_THREAD, SAMPLE_PATH_LEN};

    use super::*;
    use crate::stacks::{KernelSymbols, StackSource, UserSymbolizer, EFAULT};

    struct FakeMap(HashMap<u32, Vec<u64>>);
    impl StackSource for FakeMap {
        fn ips(&mut self, id: u32) -> Option<Vec<u64>> {
            self.0.get(&id).cloned()
        }
    }
    struct FakeUser;
    impl UserSymbolizer for FakeUser {
        fn frames(&mut self, tgid: u32, ips: &[u64]) -> Vec<String> {
            ips.iter().map(|ip| format!("u{ip:x}@{tgid}")).collect()
        }
    }

    fn ksyms() -> KernelSymbols {
        let mut m = std::collections::BTreeMap::new();
        m.insert(0x1000, "copy_page_to_iter".to_string());
        m.insert(0x2000, "shmem_file_read_iter".to_string());
        m.insert(0x3000, "vfs_read".to_string());
        m.insert(0x4000, "__x64_sys_pread64".to_string());
        KernelSymbols::from_map(m).unwrap()
    }

    fn with_stacks() -> Sampler {
        let mut m = HashMap::new();
        m.insert(1, vec![0x1010, 0x2020, 0x3030, 0x4040]);
        m.insert(2, vec![0x3030, 0x4040]);
        m.insert(3, vec![0x1014, 0x2020, 0x3030, 0x4040]);
        m.insert(7, vec![0x55, 0x66]);
        let st = StackCollector::new(499, Box::new(FakeMap(m)), ksyms(), Box::new(FakeUser));
        Sampler::new(499, Some(st))
    }

    pub fn sample(cpu: u32, ts: u64, pid: u32, mode: u32, nr: i64, path: &str) -> SampleEvent {
        let mut p = [0u8; SAMPLE_PATH_LEN];
        p[..path.len()].copy_from_slice(path.as_bytes());
        SampleEvent {
            header: EventHeader {
                kind: EventKind::Sample as u32,
                cpu,
                ts_ns: ts,
                pid,
                tgid: pid,
                comm: [0; 16],
            },
            wait_start_ns: 0,
            pending: PENDING_RX_THREAD,
            mode,
            nr,
            arg0: 3,
            kstack_id: -2,
            ustack_id: -2,
            path: p,
        }
    }

    fn stack_sample(cpu: u32, ts: u64, pid: u32, kid: i32, uid: i32) -> SampleEvent {
        let mode = if kid == EFAULT {
            SampleMode::User as u32
        } else {
            SampleMode::Syscall as u32
        };
        let mut s = sample(cpu, ts, pid, mode, 17, "");
        s.kstack_id = kid;
        s.ustack_id = uid;
        s
    }

    fn holder(pid: u32) -> HolderRec {
        HolderRec {
            pid,
            tgid: pid,
            comm: "t".into(),
            process: None,
            identity: None,
            run_ns: 1,
            cgroup_id: 0,
            cgroup: None,
            policy: "SCHED_FIFO".into(),
            priority: 50,
            syscall: None,
            stacks: None,
            activity: None,
        }
    }

    /// The short-syscall culprit: opens and reads of one file, closes, user space.
    /// A closed fd's read is named by the file the task last opened.
    #[test]
    fn samples_in_the_window_become_the_holders_activity() {
        let mut s = Sampler::new(499, None);
        let f = "/proc/self/status";
        let pid = u32::MAX - 7; // no such process: fds resolve through the last open
        for i in 0..10u64 {
            s.push(&sample(
                1,
                100 + i * 10,
                pid,
                SampleMode::Syscall as u32,
                257,
                f,
            ));
            s.push(&sample(
                1,
                101 + i * 10,
                pid,
                SampleMode::Syscall as u32,
                0,
                "",
            ));
            s.push(&sample(
                1,
                102 + i * 10,
                pid,
                SampleMode::Syscall as u32,
                0,
                "",
            ));
            s.push(&sample(
                1,
                103 + i * 10,
                pid,
                SampleMode::Syscall as u32,
                3,
                "",
            ));
            s.push(&sample(
                1,
                104 + i * 10,
                pid,
                SampleMode::User as u32,
                -1,
                "",
            ));
        }
        s.push(&sample(1, 99, pid, SampleMode::User as u32, -1, "")); // before the window
        s.push(&sample(0, 150, pid, SampleMode::User as u32, -1, "")); // another CPU
        let mut hs = vec![holder(pid), holder(0), holder(5)];
        s.attach(1, 100, 1000, &mut hs);
        let a = hs[0].activity.as_ref().unwrap();
        assert_eq!((a.samples, a.user, a.in_syscalls()), (50, 10, 40));
        let read = a.syscalls.iter().find(|x| x.name == "read").unwrap();
        assert_eq!(read.samples, 20);
        let close = a.syscalls.iter().find(|x| x.name == "close").unwrap();
        let mine = format!("/proc/{pid}/status");
        assert_eq!(
            close.path.as_deref(),
            Some(mine.as_str()),
            "close(fd) of the file last opened"
        );
        assert_eq!(
            read.path.as_deref(),
            Some(mine.as_str()),
            "/proc/self is the task's own"
        );
        assert!(hs[1].activity.is_none() && hs[2].activity.is_none());
        assert_eq!((s.stats().samples, s.stats().attributed), (52, 50));
        // Attached once: a second wait over the same window counts nothing new.
        s.attach(1, 100, 1000, &mut hs);
        assert_eq!(s.stats().attributed, 50);
    }

    #[test]
    fn samples_in_the_window_become_the_holders_top_stacks() {
        let mut c = with_stacks();
        for ts in [100, 110, 120] {
            c.push(&stack_sample(1, ts, 42, 1, 7));
        }
        c.push(&stack_sample(1, 130, 42, 2, 7));
        c.push(&stack_sample(1, 140, 42, EFAULT, 7)); // in user space
        c.push(&stack_sample(1, 150, 42, -17, 7)); // kernel stack lost to a collision
        c.push(&stack_sample(1, 50, 42, 2, 7)); // before the window
        c.push(&stack_sample(0, 120, 42, 2, 7)); // another CPU
        c.push(&stack_sample(1, 120, 43, 2, 7)); // another task
        let mut hs = vec![holder(42)];
        c.attach(1, 100, 200, &mut hs);
        let st = hs[0].stacks.as_ref().unwrap();
        assert_eq!((st.samples, st.user_mode, st.missing), (6, 1, 1));
        assert_eq!((st.top.len(), st.distinct), (3, 3));
        assert_eq!(st.top[0].count, 3);
        assert_eq!(
            st.top[0].kernel,
            vec![
                "copy_page_to_iter+0x10",
                "shmem_file_read_iter+0x20",
                "vfs_read+0x30",
                "__x64_sys_pread64+0x40"
            ]
        );
        assert_eq!(st.top[0].user, vec!["u55@42", "u66@42"]);
        assert_eq!(st.top[1].count, 2);
        assert!(st.top[1].kernel.is_empty() && st.top[1].user.len() == 2);
        assert_eq!(st.top[2].count, 1);
        assert_eq!(
            st.top[2].kernel,
            vec!["vfs_read+0x30", "__x64_sys_pread64+0x40"]
        );
        let s = c.stack_stats().unwrap();
        assert_eq!((s.samples, s.kernel_misses, s.user_misses), (9, 1, 0));
        assert_eq!((s.distinct_stacks, s.attributed), (3, 6));
    }

    #[test]
    fn stacks_differing_only_in_offsets_are_one_code_path() {
        let mut c = with_stacks();
        c.push(&stack_sample(1, 100, 42, 3, 7));
        c.push(&stack_sample(1, 101, 42, 1, 7));
        c.push(&stack_sample(1, 102, 42, 3, 7));
        c.push(&stack_sample(1, 103, 42, 2, 7));
        let mut hs = vec![holder(42)];
        c.attach(1, 0, 1000, &mut hs);
        let st = hs[0].stacks.as_ref().unwrap();
        assert_eq!(st.distinct, 2);
        assert_eq!(st.top[0].count, 3);
        // The most sampled member's frames (id 3: leaf at +0x14).
        assert_eq!(st.top[0].kernel[0], "copy_page_to_iter+0x14");
        // Kept samples of a CPU age out 30 s behind the newest.
        c.push(&stack_sample(1, 40_000_000_000, 1, 1, 7));
        let mut hs = vec![holder(42)];
        c.attach(1, 0, 1000, &mut hs);
        assert!(hs[0].stacks.is_none());
    }
}
