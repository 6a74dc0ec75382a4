//! `record --stacks`: stack samples from the kernel's sampler, kept per CPU until the
//! wait they fall in is reported, then attached to that wait's holders as their most
//! frequent stacks, symbolized (kernel through kallsyms, user through blazesym while
//! the process lives) so the dump reads the same on another machine.
//!
//! Samples reach user space before the wait they belong to: both are written to one
//! ring buffer on the wait's CPU, the wait only when it ends.
pub mod ksyms;
pub mod usyms;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    rc::Rc,
};

use aya::maps::{MapData, StackTraceMap};
use tracer_common::StackEvent;

pub use self::{
    ksyms::KernelSymbols,
    usyms::{Blazesym, UserSymbolizer},
};
use stalltrace_analysis::dump::{
    HolderRec, HolderStacks, StackRec, StackStats, MAX_FRAMES, TOP_STACKS,
};
pub use stalltrace_analysis::stacks::frame_names;

/// `bpf_get_stackid`'s answer when there is no such stack (user space for the kernel
/// stack, a kernel thread for the user stack): not a miss.
const EFAULT: i32 = -14;

/// Samples kept per CPU, and for how long (boot ns) behind the newest: a wait longer
/// than that loses its earliest samples.
const KEEP_PER_CPU: usize = 1 << 16;
const KEEP_NS: u64 = 30_000_000_000;

/// Reads stacks by id (the kernel's `STACKS` map; a fake in tests).
pub trait StackSource {
    /// Instruction pointers of a stack, innermost first; `None` when the id is unknown.
    fn ips(&mut self, id: u32) -> Option<Vec<u64>>;
}

impl StackSource for StackTraceMap<MapData> {
    fn ips(&mut self, id: u32) -> Option<Vec<u64>> {
        self.get(&id, 0)
            .ok()
            .map(|t| t.frames().iter().map(|f| f.ip).collect())
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    ts_ns: u64,
    pid: u32,
    tgid: u32,
    kid: i32,
    uid: i32,
    /// Already attached to a holder (overlapping waits of one stall share samples:
    /// counted once in the stats).
    attached: bool,
}

type Frames = Rc<Vec<String>>;
/// Kernel and user function names of a stack.
type GroupKey = (Vec<String>, Vec<String>);

pub struct StackCollector {
    hz: u64,
    src: Box<dyn StackSource>,
    ksyms: KernelSymbols,
    usyms: Box<dyn UserSymbolizer>,
    by_cpu: HashMap<u32, VecDeque<Sample>>,
    newest: u64,
    /// Kernel stacks by id (ids are never reused: the map's entries are not deleted).
    kcache: HashMap<u32, Frames>,
    /// User stacks by (process, id): the same addresses mean different code in two
    /// processes.
    ucache: HashMap<(u32, u32), Frames>,
    ids_read: HashSet<u32>,
    stats: StackStats,
}

impl StackCollector {
    pub fn new(
        hz: u64,
        src: Box<dyn StackSource>,
        ksyms: KernelSymbols,
        usyms: Box<dyn UserSymbolizer>,
    ) -> Self {
        Self {
            hz,
            src,
            ksyms,
            usyms,
            by_cpu: HashMap::new(),
            newest: 0,
            kcache: HashMap::new(),
            ucache: HashMap::new(),
            ids_read: HashSet::new(),
            stats: StackStats {
                hz,
                ..Default::default()
            },
        }
    }

    pub fn hz(&self) -> u64 {
        self.hz
    }

    pub fn stats(&self) -> StackStats {
        self.stats.clone()
    }

    /// Keeps a sample until the wait it falls in is reported.
    pub fn push(&mut self, ev: &StackEvent) {
        self.stats.samples += 1;
        if ev.kstack_id < 0 && ev.kstack_id != EFAULT {
            self.stats.kernel_misses += 1;
        }
        if ev.ustack_id < 0 && ev.ustack_id != EFAULT {
            self.stats.user_misses += 1;
        }
        let ts = ev.header.ts_ns;
        self.newest = self.newest.max(ts);
        let floor = self.newest.saturating_sub(KEEP_NS);
        let q = self.by_cpu.entry(ev.header.cpu).or_default();
        while q.front().is_some_and(|s| s.ts_ns < floor) || q.len() >= KEEP_PER_CPU {
            q.pop_front();
        }
        q.push_back(Sample {
            ts_ns: ts,
            pid: ev.header.pid,
            tgid: ev.header.tgid,
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

    fn kernel_frames(&mut self, id: u32) -> Option<Frames> {
        if let Some(f) = self.kcache.get(&id) {
            return Some(f.clone());
        }
        let ips = self.read(id)?;
        let mut f = self.ksyms.frames(&ips);
        f.truncate(MAX_FRAMES);
        let f = Rc::new(f);
        self.kcache.insert(id, f.clone());
        Some(f)
    }

    fn user_frames(&mut self, tgid: u32, id: u32) -> Option<Frames> {
        if let Some(f) = self.ucache.get(&(tgid, id)) {
            return Some(f.clone());
        }
        let mut ips = self.read(id)?;
        ips.truncate(MAX_FRAMES);
        let f = Rc::new(self.usyms.frames(tgid, &ips));
        // Bounded: a recorder on a busy node sees many processes over hours.
        if self.ucache.len() >= 1 << 16 {
            self.ucache.clear();
        }
        self.ucache.insert((tgid, id), f.clone());
        Some(f)
    }

    fn read(&mut self, id: u32) -> Option<Vec<u64>> {
        let ips = self.src.ips(id)?;
        if self.ids_read.insert(id) {
            self.stats.distinct_stacks += 1;
        }
        Some(ips)
    }

    /// Stacks of one task's samples on `cpu` in `[start, end]`.
    pub fn holder_stacks(
        &mut self,
        cpu: u32,
        pid: u32,
        start: u64,
        end: u64,
    ) -> Option<HolderStacks> {
        let mut samples: Vec<Sample> = Vec::new();
        for s in self.by_cpu.get_mut(&cpu)?.iter_mut() {
            if s.pid == pid && s.ts_ns >= start && s.ts_ns <= end {
                samples.push(*s);
                if !s.attached {
                    s.attached = true;
                    self.stats.attributed += 1;
                }
            }
        }
        if samples.is_empty() {
            return None;
        }
        let mut out = HolderStacks {
            samples: u32::try_from(samples.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // (kernel id, user id) → count; a failed id counts as "no stack" of its side.
        let mut counts: HashMap<(i32, i32), (u32, u32)> = HashMap::new();
        for s in &samples {
            if s.kid == EFAULT {
                out.user_mode += 1;
            }
            let kmiss = s.kid < 0 && s.kid != EFAULT;
            let umiss = s.uid < 0 && s.uid != EFAULT;
            if kmiss || umiss {
                out.missing += 1;
            }
            let e = counts
                .entry((s.kid.max(-1), s.uid.max(-1)))
                .or_insert((0, s.tgid));
            e.0 += 1;
        }
        // Stacks that differ only in offsets (the leaf moved a few instructions) are
        // one code path: group by function names, show the most sampled member.
        let mut pairs: Vec<((i32, i32), (u32, u32))> = counts.into_iter().collect();
        pairs.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let mut groups: Vec<(GroupKey, StackRec)> = Vec::new();
        for ((kid, uid), (count, tgid)) in pairs {
            let kernel = u32::try_from(kid)
                .ok()
                .and_then(|id| self.kernel_frames(id));
            let user = u32::try_from(uid)
                .ok()
                .and_then(|id| self.user_frames(tgid, id));
            if kernel.is_none() && user.is_none() {
                continue;
            }
            let key = (
                kernel
                    .as_deref()
                    .map(|f| frame_names(f, usize::MAX))
                    .unwrap_or_default(),
                user.as_deref()
                    .map(|f| frame_names(f, usize::MAX))
                    .unwrap_or_default(),
            );
            match groups.iter_mut().find(|g| g.0 == key) {
                // Pairs come most sampled first: the first member is the representative.
                Some(g) => g.1.count += count,
                None => groups.push((
                    key,
                    StackRec {
                        count,
                        kernel: kernel.map(|f| f.to_vec()).unwrap_or_default(),
                        user: user.map(|f| f.to_vec()).unwrap_or_default(),
                    },
                )),
            }
        }
        groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        out.distinct = u32::try_from(groups.len()).unwrap_or(u32::MAX);
        out.top = groups
            .into_iter()
            .take(TOP_STACKS)
            .map(|(_, r)| r)
            .collect();
        Some(out)
    }

    /// Attaches to each holder of a wait on `cpu` in `[start, end]` its stacks.
    pub fn attach(&mut self, cpu: u32, start: u64, end: u64, holders: &mut [HolderRec]) {
        for h in holders.iter_mut() {
            if h.pid == 0 {
                continue;
            }
            h.stacks = self.holder_stacks(cpu, h.pid, start, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{EventHeader, EventKind, PENDING_RX_THREAD};

    use super::*;

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

    fn collector() -> StackCollector {
        let mut m = HashMap::new();
        m.insert(1, vec![0x1010, 0x2020, 0x3030, 0x4040]);
        m.insert(2, vec![0x3030, 0x4040]);
        m.insert(3, vec![0x1014, 0x2020, 0x3030, 0x4040]);
        m.insert(7, vec![0x55, 0x66]);
        StackCollector::new(499, Box::new(FakeMap(m)), ksyms(), Box::new(FakeUser))
    }

    fn sample(cpu: u32, ts: u64, pid: u32, kid: i32, uid: i32) -> StackEvent {
        StackEvent {
            header: EventHeader {
                kind: EventKind::StackSample as u32,
                cpu,
                ts_ns: ts,
                pid,
                tgid: pid,
                comm: [0; 16],
            },
            kstack_id: kid,
            ustack_id: uid,
            wait_start_ns: 0,
            pending: PENDING_RX_THREAD,
            _pad0: 0,
        }
    }

    #[test]
    fn samples_in_the_window_become_the_holders_top_stacks() {
        let mut c = collector();
        for ts in [100, 110, 120] {
            c.push(&sample(1, ts, 42, 1, 7));
        }
        c.push(&sample(1, 130, 42, 2, 7));
        c.push(&sample(1, 140, 42, EFAULT, 7)); // in user space
        c.push(&sample(1, 150, 42, -17, 7)); // kernel stack lost to a collision
        c.push(&sample(1, 50, 42, 2, 7)); // before the window
        c.push(&sample(0, 120, 42, 2, 7)); // another CPU
        c.push(&sample(1, 120, 43, 2, 7)); // another task
        let st = c.holder_stacks(1, 42, 100, 200).unwrap();
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
        // Then the user-mode sample and the one whose kernel stack was lost: user
        // frames only.
        assert_eq!(st.top[1].count, 2);
        assert!(st.top[1].kernel.is_empty() && st.top[1].user.len() == 2);
        assert_eq!(st.top[2].count, 1);
        assert_eq!(
            st.top[2].kernel,
            vec!["vfs_read+0x30", "__x64_sys_pread64+0x40"]
        );
        assert!(
            c.holder_stacks(1, 99, 0, 1000).is_none(),
            "no sample, no stacks"
        );
        let s = c.stats();
        assert_eq!((s.samples, s.kernel_misses, s.user_misses), (9, 1, 0));
        assert_eq!(s.distinct_stacks, 3);
    }

    #[test]
    fn stacks_differing_only_in_offsets_are_one_code_path() {
        let mut c = collector();
        c.push(&sample(1, 100, 42, 3, 7));
        c.push(&sample(1, 101, 42, 1, 7));
        c.push(&sample(1, 102, 42, 3, 7));
        c.push(&sample(1, 103, 42, 2, 7));
        let st = c.holder_stacks(1, 42, 0, 1000).unwrap();
        assert_eq!(st.distinct, 2);
        assert_eq!(st.top[0].count, 3);
        // The most sampled member's frames (id 3: leaf at +0x14).
        assert_eq!(st.top[0].kernel[0], "copy_page_to_iter+0x14");
        assert_eq!(st.top[1].count, 1);
        // Kept samples of a CPU age out 30 s behind the newest.
        c.push(&sample(1, 40_000_000_000, 1, 1, 7));
        assert!(c.holder_stacks(1, 42, 0, 1000).is_none());
    }

    #[test]
    fn attach_fills_holders_and_counts() {
        let mut c = collector();
        c.push(&sample(1, 100, 42, 1, -14));
        let h = |pid| HolderRec {
            pid,
            tgid: pid,
            comm: "t".into(),
            run_ns: 1,
            cgroup_id: 0,
            cgroup: None,
            policy: "SCHED_FIFO".into(),
            priority: 50,
            syscall: None,
            stacks: None,
        };
        let mut hs = vec![h(42), h(0)];
        c.attach(1, 0, 200, &mut hs);
        let st = hs[0].stacks.as_ref().unwrap();
        assert_eq!(st.top[0].kernel.len(), 4);
        assert!(
            st.top[0].user.is_empty(),
            "a kernel thread has no user stack"
        );
        assert!(hs[1].stacks.is_none());
        assert_eq!(c.stats().attributed, 1);
        // A second, overlapping wait of the same stall sees the sample again, but it
        // is attributed once.
        c.attach(1, 50, 150, &mut hs);
        assert_eq!(hs[0].stacks.as_ref().map(|s| s.samples), Some(1));
        assert_eq!(c.stats().attributed, 1);
    }
}
