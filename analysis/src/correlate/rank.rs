//! Culprits ranked over the whole recording, and per-CPU totals, both aggregated as
//! episodes close so memory depends on the number of culprits, not of events. An agent
//! that runs for months through thousands of short-lived culprits bounds the table
//! ([`Ranking::with_limit`]) the way its metrics bound their series: when it is full,
//! a culprit idle for ten minutes gives its row up to a newcomer, and newcomers beyond
//! that are summed in one `other` row.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::episode::{Culprit, Episode};

/// Pids and syscall names kept per culprit (a busy process has many threads).
const MAX_PIDS: usize = 16;
const MAX_SYSCALLS: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CulpritRank {
    pub rank: u32,
    pub tgid: u32,
    /// The process's name (the thread's, when the dump does not know the process).
    pub comm: String,
    /// Its threads seen as culprit, by name (first few).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<String>,
    /// Its pod and container (or systemd unit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::identity::Identity>,
    /// Threads seen as culprit (first few).
    pub pids: Vec<u32>,
    pub episodes: u64,
    pub probes_delayed: u64,
    pub packets_delayed: u64,
    /// Sum of the episodes' waits.
    pub total_wait_ns: u64,
    pub worst_wait_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_rtt_ns: Option<u64>,
    /// Sum of its time on the CPU inside the waits.
    pub run_ns: u64,
    pub cpus: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The syscalls it was inside, with how many episodes each.
    pub syscalls: Vec<SyscallCount>,
    /// `record --stacks`: its headline stacks over all its episodes, most sampled
    /// first (at most 5); empty without stacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<StackCount>,
    /// What it was doing, summed over its episodes' samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<crate::dump::Activity>,
}

/// A stack of a culprit summed over episodes: `frames` are function names, leaf first
/// (the top frames of the kernel stack, or of the user stack for samples in user space).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackCount {
    /// `kernel` or `user`.
    pub side: String,
    pub frames: Vec<String>,
    pub samples: u64,
    pub episodes: u64,
}

const MAX_STACKS: usize = 5;
/// Distinct stacks tracked per culprit before the least sampled are dropped.
const TRACK_STACKS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyscallCount {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub episodes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuSummary {
    pub cpu: u32,
    pub episodes: u64,
    pub probes_delayed: u64,
    pub packets_delayed: u64,
    pub total_wait_ns: u64,
    pub worst_wait_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_rtt_ns: Option<u64>,
    /// The worst episode's culprit (by wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Culprit>,
    /// The context that ran RX in the worst episode.
    pub rx_comm: String,
    /// How many distinct processes were culprits on this CPU.
    pub culprits: u32,
}

/// A culprit with no episode for this long (kernel clock) gives its row up when the
/// table is full.
const IDLE_NS: u64 = 600_000_000_000;

/// The row culprits beyond the limit are summed in (no process has tgid 0).
const OTHER: (u32, &str) = (0, "other");

pub struct Ranking {
    /// Each culprit's row, and the kernel time of its last episode.
    by_proc: HashMap<(u32, String), (CulpritRank, u64)>,
    /// Rows at most, `other` included.
    max_rows: usize,
    cpus: BTreeMap<u32, (CpuSummary, Vec<u32>)>,
    pub without_culprit: u64,
}

impl Default for Ranking {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

/// Adds an episode's stacks of a culprit (each distinct headline counts the episode
/// once).
fn add_stacks(acc: &mut Vec<StackCount>, st: &crate::dump::HolderStacks) {
    let mut this: Vec<(&'static str, Vec<String>, u64)> = Vec::new();
    for t in &st.top {
        let (side, frames) = if !t.kernel.is_empty() {
            ("kernel", &t.kernel)
        } else if !t.user.is_empty() {
            ("user", &t.user)
        } else {
            continue;
        };
        let names = crate::stacks::frame_names(frames, crate::stacks::HEADLINE_FRAMES);
        match this.iter_mut().find(|x| x.0 == side && x.1 == names) {
            Some(x) => x.2 += u64::from(t.count),
            None => this.push((side, names, u64::from(t.count))),
        }
    }
    for (side, names, n) in this {
        match acc.iter_mut().find(|x| x.side == side && x.frames == names) {
            Some(x) => {
                x.samples += n;
                x.episodes += 1;
            }
            None => {
                if acc.len() >= TRACK_STACKS {
                    acc.sort_by_key(|x| std::cmp::Reverse(x.samples));
                    acc.truncate(TRACK_STACKS - 1);
                }
                acc.push(StackCount {
                    side: side.into(),
                    frames: names,
                    samples: n,
                    episodes: 1,
                });
            }
        }
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

impl Ranking {
    /// A table of at most `max_rows` rows (at least 2: one culprit and `other`).
    pub fn with_limit(max_rows: usize) -> Self {
        Self {
            by_proc: HashMap::new(),
            max_rows: max_rows.max(2),
            cpus: BTreeMap::new(),
            without_culprit: 0,
        }
    }

    /// Rows held now.
    pub fn rows(&self) -> usize {
        self.by_proc.len()
    }

    /// The row an episode of `key` goes to: its own, a new one while there is room
    /// (made by dropping rows idle for [`IDLE_NS`] when full), else `other`.
    fn row_for(&mut self, key: (u32, String), now_ns: u64) -> (u32, String) {
        if self.by_proc.contains_key(&key) {
            return key;
        }
        // One place is kept for `other`.
        let room = |r: &Self| {
            let other = r.by_proc.contains_key(&(OTHER.0, OTHER.1.to_string()));
            r.by_proc.len() - usize::from(other) + 1 < r.max_rows
        };
        if !room(self) {
            self.by_proc.retain(|k, (_, last)| {
                (k.0, k.1.as_str()) == OTHER || now_ns.saturating_sub(*last) < IDLE_NS
            });
        }
        if room(self) {
            key
        } else {
            (OTHER.0, OTHER.1.to_string())
        }
    }

    pub fn add(&mut self, ep: &Episode) {
        self.add_cpu(ep);
        let Some(c) = &ep.culprit else {
            self.without_culprit += 1;
            return;
        };
        // One row per process: threads of one process (cadvisor's readers) add up.
        let name = c.process.clone().unwrap_or_else(|| c.comm.clone());
        let key = self.row_for((c.tgid, name), ep.end_ns);
        let folded = (key.0, key.1.as_str()) == OTHER;
        let (r, last) = self.by_proc.entry(key.clone()).or_insert_with(|| {
            let row = CulpritRank {
                rank: 0,
                tgid: key.0,
                comm: key.1,
                threads: vec![],
                identity: if folded { None } else { c.identity.clone() },
                pids: vec![],
                episodes: 0,
                probes_delayed: 0,
                packets_delayed: 0,
                total_wait_ns: 0,
                worst_wait_ns: 0,
                worst_rtt_ns: None,
                run_ns: 0,
                cpus: vec![],
                cgroup: None,
                syscalls: vec![],
                stacks: vec![],
                activity: None,
            };
            (row, 0)
        });
        *last = (*last).max(ep.end_ns);
        r.episodes += 1;
        r.probes_delayed += u64::from(ep.probes_delayed);
        r.packets_delayed += u64::from(ep.packets_delayed);
        r.total_wait_ns = r.total_wait_ns.saturating_add(ep.wait_ns);
        r.worst_wait_ns = r.worst_wait_ns.max(ep.wait_ns);
        r.worst_rtt_ns = max_opt(r.worst_rtt_ns, ep.worst_rtt_ns);
        r.run_ns = r.run_ns.saturating_add(c.run_ns);
        if folded {
            // Many processes in one row: only the sums mean something.
            return;
        }
        if !r.pids.contains(&c.pid) && r.pids.len() < MAX_PIDS {
            r.pids.push(c.pid);
        }
        if c.process.as_ref().is_some_and(|p| *p != c.comm)
            && !r.threads.contains(&c.comm)
            && r.threads.len() < MAX_PIDS
        {
            r.threads.push(c.comm.clone());
        }
        if !r.cpus.contains(&ep.cpu) {
            r.cpus.push(ep.cpu);
            r.cpus.sort_unstable();
        }
        if r.cgroup.is_none() {
            r.cgroup.clone_from(&c.cgroup);
        }
        if let Some(st) = &c.stacks {
            add_stacks(&mut r.stacks, st);
        }
        if let Some(a) = &c.activity {
            r.activity.get_or_insert_with(Default::default).add(a);
        }
        if let Some(s) = &c.syscall {
            match r
                .syscalls
                .iter()
                .position(|x| x.name == s.name && x.path == s.path)
            {
                Some(i) => {
                    if let Some(x) = r.syscalls.get_mut(i) {
                        x.episodes += 1;
                    }
                }
                None if r.syscalls.len() < MAX_SYSCALLS => r.syscalls.push(SyscallCount {
                    name: s.name.clone(),
                    path: s.path.clone(),
                    episodes: 1,
                }),
                None => {}
            }
            r.syscalls
                .sort_by(|a, b| b.episodes.cmp(&a.episodes).then(a.name.cmp(&b.name)));
        }
    }

    fn add_cpu(&mut self, ep: &Episode) {
        let (s, tgids) = self.cpus.entry(ep.cpu).or_insert_with(|| {
            (
                CpuSummary {
                    cpu: ep.cpu,
                    episodes: 0,
                    probes_delayed: 0,
                    packets_delayed: 0,
                    total_wait_ns: 0,
                    worst_wait_ns: 0,
                    worst_rtt_ns: None,
                    culprit: None,
                    rx_comm: String::new(),
                    culprits: 0,
                },
                vec![],
            )
        });
        s.episodes += 1;
        s.probes_delayed += u64::from(ep.probes_delayed);
        s.packets_delayed += u64::from(ep.packets_delayed);
        s.total_wait_ns = s.total_wait_ns.saturating_add(ep.wait_ns);
        s.worst_rtt_ns = max_opt(s.worst_rtt_ns, ep.worst_rtt_ns);
        if ep.wait_ns > s.worst_wait_ns || s.episodes == 1 {
            s.worst_wait_ns = ep.wait_ns;
            s.culprit.clone_from(&ep.culprit);
            s.rx_comm.clone_from(&ep.rx.comm);
        }
        if let Some(c) = &ep.culprit {
            if !tgids.contains(&c.tgid) && tgids.len() < 1024 {
                tgids.push(c.tgid);
                s.culprits += 1;
            }
        }
    }

    /// Worst first: total delay caused, then episodes, then worst single wait.
    pub fn ranked(&self) -> Vec<CulpritRank> {
        let mut v: Vec<CulpritRank> = self.by_proc.values().map(|(r, _)| r.clone()).collect();
        v.sort_by(|a, b| {
            b.total_wait_ns
                .cmp(&a.total_wait_ns)
                .then(b.episodes.cmp(&a.episodes))
                .then(b.worst_wait_ns.cmp(&a.worst_wait_ns))
                .then(a.tgid.cmp(&b.tgid))
                .then(a.comm.cmp(&b.comm))
        });
        for (i, r) in v.iter_mut().enumerate() {
            r.rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
            r.stacks.sort_by(|a, b| {
                b.samples
                    .cmp(&a.samples)
                    .then(b.episodes.cmp(&a.episodes))
                    .then(a.frames.cmp(&b.frames))
            });
            r.stacks.truncate(MAX_STACKS);
        }
        v
    }

    pub fn cpus(&self) -> Vec<CpuSummary> {
        self.cpus.values().map(|(s, _)| s.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::episode::{Culprit, RxTask};
    use crate::dump::RxContext;

    fn ep(tgid: u32, comm: &str, end_ns: u64) -> Episode {
        Episode {
            id: 1,
            cpu: 1,
            start_ns: end_ns.saturating_sub(100),
            end_ns,
            wait_ns: 100,
            start_wall: None,
            waits: vec![],
            rx: RxTask {
                pid: 9,
                tgid: 9,
                comm: "napi/x-1".into(),
                context: RxContext::Napi,
            },
            culprit: Some(Culprit {
                pid: tgid,
                tgid,
                comm: comm.into(),
                process: None,
                identity: None,
                policy: "SCHED_OTHER".into(),
                priority: 0,
                cgroup_id: 0,
                cgroup: None,
                run_ns: 90,
                syscall: None,
                stacks: None,
                activity: None,
            }),
            holders: vec![],
            probes_delayed: 1,
            probes_in_run: 1,
            probes_lost: 0,
            packets_delayed: 1,
            packets_in_drain: 0,
            drain_ns: None,
            worst_rtt_ns: None,
            lines: vec![],
            lines_omitted: 0,
            truncated: false,
            why: None,
        }
    }

    /// Thousands of short-lived culprits through a table of 20 rows: never more rows,
    /// every episode counted in some row, the early ones named.
    #[test]
    fn a_limited_table_folds_newcomers_into_other_and_loses_no_episode() {
        let mut r = Ranking::with_limit(20);
        for i in 0..5000u32 {
            r.add(&ep(1000 + i, &format!("job-{i}"), u64::from(i) * 1_000_000));
            assert!(r.rows() <= 20);
        }
        let ranked = r.ranked();
        assert_eq!(ranked.iter().map(|c| c.episodes).sum::<u64>(), 5000);
        let other = ranked.iter().find(|c| c.comm == "other").expect("other");
        assert_eq!(other.episodes, 5000 - 19);
        assert!(other.pids.is_empty() && other.tgid == 0);
        assert!(ranked.iter().any(|c| c.comm == "job-0"));
        // Without a limit every culprit keeps its row.
        let mut all = Ranking::default();
        for i in 0..500u32 {
            all.add(&ep(1000 + i, "x", 0));
        }
        assert_eq!(all.rows(), 500);
    }

    /// When full, a culprit idle for ten minutes gives its row up to a newcomer; one
    /// idle a nanosecond less keeps it.
    #[test]
    fn idle_rows_give_their_place_up_only_when_full() {
        let mut r = Ranking::with_limit(3);
        r.add(&ep(1, "a", 0));
        r.add(&ep(2, "b", 1));
        // Full (two rows and the place kept for other); a is idle 1 ns short of ten
        // minutes: c goes to other.
        r.add(&ep(3, "c", IDLE_NS - 1));
        let names = |r: &Ranking| {
            let mut v: Vec<String> = r.ranked().into_iter().map(|c| c.comm).collect();
            v.sort();
            v
        };
        assert_eq!(names(&r), ["a", "b", "other"]);
        // At IDLE_NS, a (last at 0) is idle ten minutes; b (last at 1) is not.
        r.add(&ep(4, "d", IDLE_NS));
        assert_eq!(names(&r), ["b", "d", "other"]);
    }
}
