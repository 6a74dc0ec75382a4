//! What one read of memory.stat costs here: a few timed reads at the hierarchy root and
//! at the largest subtrees, and a pass over every memory.stat like cadvisor's, each
//! bounded in time. The read runs in the kernel on the reader's CPU; on the 2019 GitHub incident's node
//! it took 150 ms and the RX work queued behind it on that CPU waited as long.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use stalltrace_analysis::dump::CgroupFacts;

use super::{
    budget,
    cgroups::{Census, Dirs},
    count, dur,
    kernel::KernelFacts,
    Budget, Check, Status,
};

/// A single read slower than this: warn. Packets queued behind it on that CPU wait as
/// long, which p99.9 latency already shows.
pub const READ_WARN_NS: u64 = 5_000_000;
/// Slower than this: bad, half of what the 2019 GitHub incident saw (100+ ms stalls, 150 ms reads).
pub const READ_BAD_NS: u64 = 50_000_000;
/// A full pass over every memory.stat longer than this: warn (cadvisor makes one per
/// housekeeping interval, all of it CPU time in the kernel).
pub const PASS_WARN_NS: u64 = 1_000_000_000;
/// Larger files are cut: memory.stat is a few KiB.
const MAX_STAT_BYTES: u64 = 1 << 20;
/// Subtrees timed besides the root.
const SUBTREES_TIMED: usize = 3;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatSample {
    /// Below the hierarchy root; empty for the root itself.
    pub path: String,
    /// Cgroups in the subtree (directories walked).
    pub cgroups: Option<u64>,
    pub reads: u32,
    pub median_ns: Option<u64>,
    pub max_ns: Option<u64>,
    pub error: Option<String>,
}

/// Every memory.stat read once, as a stats collector does each interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FullPass {
    pub files_read: u64,
    /// Directories the pass had to cover.
    pub dirs: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// The slowest file, below the hierarchy root.
    pub slowest: String,
    /// Stopped at the time bound before covering every directory.
    pub cut: bool,
    pub budget_ms: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatCost {
    /// The root first (when it has a memory.stat), then the largest subtrees.
    pub samples: Vec<StatSample>,
    pub full_pass: Option<FullPass>,
    pub notes: Vec<String>,
}

fn timed_read(p: &Path, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    buf.clear();
    let started = Instant::now();
    std::fs::File::open(p)?
        .take(MAX_STAT_BYTES)
        .read_to_end(buf)?;
    Ok(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}

/// Times reads of memory.stat: `sample_time` bounds the sampled reads; `full` adds the
/// pass over every directory the census walked.
pub fn measure(c: &Census, dirs: &Dirs, sample_time: Duration, full: bool) -> StatCost {
    let mut cost = StatCost::default();
    let Some(root) = c.root.clone() else {
        cost.notes
            .push("no memory cgroup hierarchy: nothing to read".into());
        return cost;
    };
    let mut targets: Vec<(PathBuf, Option<u64>)> = vec![];
    if root.join("memory.stat").exists() {
        targets.push((root.clone(), Some(c.dirs_walked)));
    } else {
        cost.notes.push(format!(
            "{} has no memory.stat (this kernel has none at the cgroup v2 root): timing subtrees only",
            root.display()
        ));
    }
    for s in c
        .largest
        .iter()
        .take(SUBTREES_TIMED)
        .chain(c.kubepods.iter())
    {
        let p = root.join(&s.path);
        if !targets.iter().any(|(t, _)| *t == p) && p.join("memory.stat").exists() {
            targets.push((p, Some(s.cgroups)));
        }
    }
    let mut buf = Vec::with_capacity(8192);
    let mut bound = Budget::new(sample_time, u64::MAX);
    for (dir, cgroups) in targets {
        let file = dir.join("memory.stat");
        let mut sample = StatSample {
            path: rel(&root, &dir),
            cgroups,
            ..StatSample::default()
        };
        let mut times = vec![];
        for _ in 0..budget::STAT_READS_EACH {
            if !bound.take() {
                break;
            }
            match timed_read(&file, &mut buf) {
                Ok(ns) => times.push(ns),
                Err(e) => {
                    sample.error = Some(super::why(&file, &e));
                    break;
                }
            }
        }
        sample.reads = u32::try_from(times.len()).unwrap_or(u32::MAX);
        sample.max_ns = times.iter().max().copied();
        sample.median_ns = median(times);
        cost.samples.push(sample);
    }
    if bound.cut() {
        cost.notes.push(format!(
            "sampled reads stopped after {} ms (their time bound)",
            sample_time.as_millis()
        ));
    }
    if full {
        cost.full_pass = Some(full_pass(&root, &dirs.0, &mut buf));
        if c.walk_cut {
            cost.notes
                .push("the directory walk was cut: the full pass covers only what it saw".into());
        }
    }
    cost
}

fn full_pass(root: &Path, dirs: &[PathBuf], buf: &mut Vec<u8>) -> FullPass {
    let mut pass = FullPass {
        dirs: dirs.len() as u64,
        budget_ms: u64::try_from(budget::STAT_FULL_WALK.as_millis()).unwrap_or(u64::MAX),
        ..FullPass::default()
    };
    let mut bound = Budget::new(budget::STAT_FULL_WALK, u64::MAX);
    for dir in dirs {
        if !bound.take() {
            break;
        }
        let file = dir.join("memory.stat");
        match timed_read(&file, buf) {
            Ok(ns) => {
                pass.files_read += 1;
                pass.total_ns = pass.total_ns.saturating_add(ns);
                if ns > pass.max_ns {
                    pass.max_ns = ns;
                    pass.slowest = rel(root, &file);
                }
            }
            // v2 cgroups without the memory controller have no memory.stat.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => pass.errors += 1,
        }
    }
    pass.cut = bound.cut();
    pass
}

fn grade(ns: u64) -> Status {
    if ns >= READ_BAD_NS {
        Status::Bad
    } else if ns >= READ_WARN_NS {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn place(path: &str) -> &str {
    if path.is_empty() {
        "root"
    } else {
        path
    }
}

pub fn check(cost: &StatCost, census: &Census, kernel: &KernelFacts) -> Check {
    const ID: &str = "memory_stat_cost";
    const TITLE: &str = "memory.stat read cost";
    if census.root.is_none() {
        return Check::new(
            ID,
            TITLE,
            Status::Ok,
            "no memory cgroup hierarchy: nothing to read",
        );
    }
    let mut status = Status::Ok;
    let mut details = vec![];
    let mut parts = vec![];
    for s in &cost.samples {
        let size = match s.cgroups {
            Some(1) => ", 1 cgroup".to_string(),
            Some(n) => format!(", {} cgroups", count(n)),
            None => String::new(),
        };
        match (s.median_ns, s.max_ns) {
            (Some(med), Some(max)) => {
                status = status.max(grade(max));
                if parts.len() < 2 {
                    parts.push(format!(
                        "{} median {}, max {}",
                        place(&s.path),
                        dur(med),
                        dur(max)
                    ));
                }
                details.push(format!(
                    "{}{size}: {} reads, median {}, max {}",
                    place(&s.path),
                    s.reads,
                    dur(med),
                    dur(max)
                ));
            }
            _ => details.push(format!(
                "{}{size}: not timed ({})",
                place(&s.path),
                s.error.as_deref().unwrap_or("no time left")
            )),
        }
    }
    if let Some(p) = &cost.full_pass {
        status = status.max(grade(p.max_ns));
        let over = if p.cut {
            format!(
                "{} of {} files in {} (cut at the {} ms bound)",
                count(p.files_read),
                count(p.dirs),
                dur(p.total_ns),
                p.budget_ms
            )
        } else {
            format!("{} files in {}", count(p.files_read), dur(p.total_ns))
        };
        if p.cut || p.total_ns >= PASS_WARN_NS {
            status = status.max(Status::Warn);
        }
        parts.push(format!("full pass {over}"));
        let mut line = format!("full pass like cadvisor's: {over}");
        if p.files_read > 0 {
            line.push_str(&format!(
                ", slowest {} ({})",
                dur(p.max_ns),
                super::text::clip(&p.slowest, 80)
            ));
        }
        if p.errors > 0 {
            line.push_str(&format!(", {} unreadable", count(p.errors)));
        }
        details.push(line);
    }
    details.extend(cost.notes.iter().cloned());
    details.push(format!(
        "thresholds: a read over {} warns, over {} is bad, a full pass over {} warns: the read \
         runs in the kernel on the reader's CPU, and RX work waiting for that CPU (ksoftirqd, \
         a napi thread) can wait as long; the 2019 GitHub incident saw 150 ms reads and 100+ ms stalls",
        dur(READ_WARN_NS),
        dur(READ_BAD_NS),
        dur(PASS_WARN_NS)
    ));
    if let Some(v) = kernel.version {
        details.push(format!(
            "kernel {v}: {}",
            super::kernel::stat_read_cost_phrase(v)
        ));
    }
    if parts.is_empty() {
        return Check::new(ID, TITLE, Status::Unknown, "no memory.stat could be timed")
            .details(details);
    }
    let check = Check::new(ID, TITLE, status, parts.join("; ")).details(details);
    if status == Status::Ok {
        return check;
    }
    check.todo(
        "fewer dying memory cgroups make each read cheaper (see memory cgroups); poll less \
         often (cadvisor --housekeeping_interval, the kubelet's stats period); on kernels \
         before 5.2, upgrading removes the walk over every cgroup",
    )
}

/// The small summary `record` stores in its dump header.
/// (The cgroup census and the cost of reading memory.stat, together.)
pub fn facts(c: &Census, cost: &StatCost, measured_at: String) -> CgroupFacts {
    let root_sample = cost.samples.first().filter(|s| s.path.is_empty());
    let mut notes = c.notes.clone();
    if root_sample.is_none() {
        notes.push("the hierarchy root's memory.stat was not timed".into());
    }
    CgroupFacts {
        hierarchy: c.hierarchy,
        memcg_live: c.live,
        memcg_dying: c.dying,
        kubepods_live: c.kubepods.as_ref().map(|k| k.cgroups),
        kubepods_dying: c.kubepods.as_ref().and_then(|k| k.dying),
        root_stat_read_median_ns: root_sample.and_then(|s| s.median_ns),
        root_stat_read_max_ns: root_sample.and_then(|s| s.max_ns),
        root_stat_reads: root_sample.map(|s| s.reads).unwrap_or(0),
        measured_at,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{cgroups, testfs::Tree, Roots};

    fn tree() -> (Tree, Roots) {
        let t = Tree::new("memstat");
        t.file("proc/cgroups", "memory\t4\t9\t1\n")
            .file("sys/fs/cgroup/memory/memory.stat", "cache 0\nrss 0\n")
            .file("sys/fs/cgroup/memory/memory.usage_in_bytes", "0\n");
        for i in 0..4 {
            t.file(
                &format!("sys/fs/cgroup/memory/kubepods/pod{i}/memory.stat"),
                "cache 0\n",
            );
        }
        t.file("sys/fs/cgroup/memory/kubepods/memory.stat", "cache 0\n")
            .file("sys/fs/cgroup/memory/system.slice/memory.stat", "cache 0\n");
        let r = t.roots();
        (t, r)
    }

    #[test]
    fn times_root_subtrees_and_a_full_pass() {
        let (_t, roots) = tree();
        let (c, dirs) = cgroups::census(&roots, Budget::new(Duration::from_secs(10), 1000));
        let cost = measure(&c, &dirs, Duration::from_secs(5), true);
        assert_eq!(cost.samples[0].path, "");
        assert_eq!(cost.samples[0].reads, budget::STAT_READS_EACH);
        assert!(cost.samples[0].median_ns.is_some());
        assert!(cost
            .samples
            .iter()
            .any(|s| s.path == "kubepods" && s.cgroups == Some(5)));
        let pass = cost.full_pass.as_ref().unwrap();
        assert_eq!((pass.files_read, pass.dirs, pass.cut), (7, 7, false));
        let chk = check(&cost, &c, &KernelFacts::default());
        // Files on a tmpfs read in microseconds.
        assert_eq!(chk.status, Status::Ok, "{chk:#?}");
        assert!(chk.summary.starts_with("root median "), "{}", chk.summary);
        assert!(
            chk.summary.contains("full pass 7 files in "),
            "{}",
            chk.summary
        );
        let f = facts(&c, &cost, "t".into());
        assert_eq!(f.root_stat_reads, budget::STAT_READS_EACH);
        assert!(f.root_stat_read_max_ns >= f.root_stat_read_median_ns);
    }

    #[test]
    fn grades_measured_times() {
        let c = Census {
            root: Some("/x".into()),
            ..Census::default()
        };
        let mut cost = StatCost {
            samples: vec![StatSample {
                path: String::new(),
                cgroups: Some(5000),
                reads: 5,
                median_ns: Some(120_000_000),
                max_ns: Some(153_000_000),
                error: None,
            }],
            ..StatCost::default()
        };
        let chk = check(&cost, &c, &KernelFacts::default());
        assert_eq!(chk.status, Status::Bad);
        assert_eq!(chk.summary, "root median 120 ms, max 153 ms");
        assert!(chk.what_to_do.is_some());
        cost.samples[0].max_ns = Some(6_000_000);
        assert_eq!(
            check(&cost, &c, &KernelFacts::default()).status,
            Status::Warn
        );
        // Nothing timed: unknown, with the reason.
        cost.samples[0].median_ns = None;
        cost.samples[0].max_ns = None;
        cost.samples[0].error = Some("permission denied reading /x (run as root)".into());
        let chk = check(&cost, &c, &KernelFacts::default());
        assert_eq!(chk.status, Status::Unknown);
        assert!(chk.details.iter().any(|d| d.contains("permission denied")));
    }

    #[test]
    fn a_cut_pass_warns_and_says_how_far_it_got() {
        let c = Census {
            root: Some("/x".into()),
            ..Census::default()
        };
        let cost = StatCost {
            full_pass: Some(FullPass {
                files_read: 12_000,
                dirs: 40_000,
                total_ns: 3_000_000_000,
                max_ns: 900_000,
                slowest: "kubepods/besteffort/memory.stat".into(),
                cut: true,
                budget_ms: 3000,
                errors: 0,
            }),
            ..StatCost::default()
        };
        let chk = check(&cost, &c, &KernelFacts::default());
        assert_eq!(chk.status, Status::Warn);
        assert_eq!(
            chk.summary,
            "full pass 12 000 of 40 000 files in 3.0 s (cut at the 3000 ms bound)"
        );
    }
}
