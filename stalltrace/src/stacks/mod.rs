//! `record --stacks`: the stacks of a holder's samples (see [`crate::samples`]) as its
//! most frequent code paths, symbolized (kernel through kallsyms, user through blazesym
//! while the process lives) so the dump reads the same on another machine.
pub mod ksyms;
pub mod usyms;

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
};

use aya::maps::{MapData, StackTraceMap};

pub use self::{
    ksyms::KernelSymbols,
    usyms::{Blazesym, UserSymbolizer},
};
use stalltrace_analysis::dump::{HolderStacks, StackRec, StackStats, MAX_FRAMES, TOP_STACKS};

pub use stalltrace_analysis::stacks::frame_names;

/// `bpf_get_stackid`'s answer when there is no such stack (user space for the kernel
/// stack, a kernel thread for the user stack): not a miss.
pub const EFAULT: i32 = -14;

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

type Frames = Rc<Vec<String>>;
/// Kernel and user function names of a stack.
type GroupKey = (Vec<String>, Vec<String>);

/// What the stacks need of one sample: its process (for user symbols) and its stack
/// ids (negative errnos when the kernel gave none).
#[derive(Debug, Clone, Copy)]
pub struct SampleStacks {
    pub tgid: u32,
    pub kid: i32,
    pub uid: i32,
}

pub struct StackCollector {
    hz: u64,
    src: Box<dyn StackSource>,
    ksyms: KernelSymbols,
    usyms: Box<dyn UserSymbolizer>,
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

    /// Counts a sample's stacks that the kernel could not keep (the samples and
    /// their attribution are counted by [`crate::samples::Sampler`]).
    pub fn note(&mut self, kid: i32, uid: i32) {
        self.stats.samples += 1;
        if kid < 0 && kid != EFAULT {
            self.stats.kernel_misses += 1;
        }
        if uid < 0 && uid != EFAULT {
            self.stats.user_misses += 1;
        }
    }

    pub fn set_attributed(&mut self, n: u64) {
        self.stats.attributed = n;
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

    /// The most frequent code paths of one task's samples (one wait window).
    pub fn holder_stacks(&mut self, samples: &[SampleStacks]) -> Option<HolderStacks> {
        if samples.is_empty() {
            return None;
        }
        let mut out = HolderStacks {
            samples: u32::try_from(samples.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // (kernel id, user id) → count; a failed id counts as "no stack" of its side.
        let mut counts: HashMap<(i32, i32), (u32, u32)> = HashMap::new();
        for s in samples {
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
}
